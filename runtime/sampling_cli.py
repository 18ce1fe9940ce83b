"""Command-line options that choose how to sample (sampler, steps, η, spacing, digit, guidance),
shared by ``ddpm-run`` and ``ddpm-eval``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import click
import numpy as np

from ..core.errors import DDPMError
from .pipeline import DEFAULT_SPACING, MAX_GUIDANCE, SAMPLERS, DDPM
from ..core.sampler import SPACINGS

DDIM_DEFAULT_STEPS = 50
SOLVER_DEFAULT_STEPS = 20
DEFAULT_COUNT = 16
DEFAULT_GUIDANCE = 1.0  # of 0, 1 and 3 for the shipped model: every digit judged as asked, lowest FD (README, Quality)
DEFAULT_SAMPLER = "ancestral"  # the reference loop
DIGIT_SAMPLER = "dpm++2m-sde"  # with --digit: as good as the reference for the shipped model, 50x faster (README, Quality)


def sampling_options(function: Callable) -> Callable:
    options = [
        click.option("--sampler", type=click.Choice(SAMPLERS), default=None,
                     help="'ancestral': the DDPM loop, T steps (the reference; respaced with --steps); 'ddim': DDIM, "
                          "deterministic with --eta 0; 'dpm++2m': DPM-Solver++ (2M), a second-order ODE solver; "
                          "'dpm++2m-sde': its stochastic variant. For speed: dpm++2m-sde or dpm++2m with "
                          f"{SOLVER_DEFAULT_STEPS} steps (see the README's sampler table). [default: {DEFAULT_SAMPLER}; "
                          f"{DIGIT_SAMPLER} with --digit]"),
        click.option("--steps", type=click.IntRange(min=1), default=None,
                     help=f"Network evaluations per sample, at most the model's T. [default: T for ancestral, "
                          f"{DDIM_DEFAULT_STEPS} for ddim, {SOLVER_DEFAULT_STEPS} for dpm++; one dpm++ step is first order]"),
        click.option("--eta", type=click.FloatRange(0.0, 1.0), default=None,
                     help="DDIM noise: 0 deterministic, 1 as much as the ancestral sampler (with β̃). [default: 0]"),
        click.option("--spacing", type=click.Choice(SPACINGS), default=None,
                     help="ddim and dpm++ timesteps: evenly spaced in t, quadratic in t (denser near t = 0), or evenly "
                          "spaced in log-SNR. [default: uniform for ddim, logsnr for dpm++]"),
        click.option("--digit", default=None, metavar="D|D,E,...|all",
                     help="Class-conditional models: the digit to draw, a list (cycled over the samples), or 'all' "
                          "(every digit in turn; the grids get one column per digit). [default: every digit equally "
                          "often, in an order drawn from the seed]"),
        click.option("--guidance", type=click.FloatRange(0.0, MAX_GUIDANCE), default=None,
                     help=f"Classifier-free guidance w with --digit: ε = (1+w)·ε(x,y) − w·ε(x,∅); 0 = plain "
                          f"conditional. [default: {DEFAULT_GUIDANCE:g} with --digit]"),
    ]
    for option in reversed(options):
        function = option(function)
    return function


@dataclass
class SamplingRequest:
    """``DDPM.generate`` keywords for the chosen options, and the grid's column count."""

    n: int
    kwargs: dict[str, Any]
    steps: int
    columns: int | None


def sampling_request(ddpm: DDPM, n: int | None, sampler: str | None, steps: int | None, eta: float | None,
                     spacing: str | None, digit: str | None, guidance: float | None) -> SamplingRequest:
    """Check the sampling options against the model; one-line errors for what cannot work.

    ``n`` None is the default count: 16, or two per class with ``--digit all``; ``sampler`` None is
    the reference loop, or the fast solver with ``--digit``.
    """
    if sampler is None:
        sampler = DIGIT_SAMPLER if digit is not None else DEFAULT_SAMPLER
    if steps is not None and steps > ddpm.timesteps:
        raise click.BadParameter(f"{steps} is more than the model's {ddpm.timesteps} diffusion steps", param_hint="'--steps'")
    if sampler != "ddim" and eta is not None:
        raise click.BadParameter("η is a DDIM setting; add --sampler ddim", param_hint="'--eta'")
    if sampler == "ancestral" and spacing not in (None, "uniform"):
        raise click.BadParameter(f"{spacing} spacing is for --sampler ddim and dpm++; the ancestral sampler respaces uniformly",
                                 param_hint="'--spacing'")
    if steps is None and sampler != "ancestral":
        steps = min(DDIM_DEFAULT_STEPS if sampler == "ddim" else SOLVER_DEFAULT_STEPS, ddpm.timesteps)
    if guidance is not None and not ddpm.info.num_classes:
        raise DDPMError("--guidance needs a class-conditional model; this one is unconditional")
    if guidance is not None and digit is None:
        raise click.BadParameter("guidance steers towards a digit; add --digit", param_hint="'--guidance'")
    labels = columns = None
    if digit is None:
        n = n or DEFAULT_COUNT
    else:
        chosen = ddpm.digit_choices(digit)
        n = n or (2 * len(chosen) if digit.strip().lower() == "all" else DEFAULT_COUNT)
        labels = np.resize(np.asarray(chosen, dtype=np.int64), n)
        columns = len(chosen) if len(chosen) > 1 else None
    kwargs: dict[str, Any] = {"sampler": sampler, "steps": steps}
    if sampler != "ancestral":
        kwargs["spacing"] = spacing or DEFAULT_SPACING[sampler]
    if sampler == "ddim":
        kwargs["eta"] = eta or 0.0
    if labels is not None:
        kwargs.update(labels=labels, guidance=DEFAULT_GUIDANCE if guidance is None else guidance)
    return SamplingRequest(n, kwargs, steps or ddpm.timesteps, columns)
