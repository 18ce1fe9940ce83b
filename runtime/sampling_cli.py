"""Command-line options that choose how to sample (sampler, steps, η, spacing, digit, guidance),
shared by ``ddpm-run`` and ``ddpm-eval``: they become one :class:`SamplingPlan`, and the plan's
errors come back as errors about the flags."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import click

from ..core.errors import DDPMError
from ..core.plan import DEFAULT_GUIDANCE, DEFAULT_SAMPLER, DEFAULT_STEPS, DIGIT_SAMPLER, MAX_GUIDANCE, SAMPLERS, SamplingPlan, SettingError
from ..core.sampler import SPACINGS
from .pipeline import DDPM

DEFAULT_COUNT = 16
MAX_DIGIT_LIST = 1000  # a --digit list longer than this is a mistake (lists are cycled over the samples)
FLAGS = {"sampler": "--sampler", "steps": "--steps", "eta": "--eta", "spacing": "--spacing", "digits": "--digit",
         "guidance": "--guidance", "frames": "--frames", "show": "--show", "engine": "--engine", "n": "--num-samples",
         "batch_size": "--batch-size", "seed": "--seed"}


def sampling_options(function: Callable) -> Callable:
    options = [
        click.option("--sampler", type=click.Choice(SAMPLERS), default=None,
                     help="'ancestral': the DDPM loop, T steps (the reference; respaced with --steps); 'ddim': DDIM, "
                          "deterministic with --eta 0; 'dpm++2m': DPM-Solver++ (2M), a second-order ODE solver; "
                          "'dpm++2m-sde': its stochastic variant. For speed: dpm++2m-sde or dpm++2m with "
                          f"{DEFAULT_STEPS['dpm++2m']} steps (see the README's sampler table). [default: {DEFAULT_SAMPLER}; "
                          f"{DIGIT_SAMPLER} with --digit]"),
        click.option("--steps", type=click.IntRange(min=1), default=None,
                     help=f"Network evaluations per sample, at most the model's T. [default: T for ancestral, "
                          f"{DEFAULT_STEPS['ddim']} for ddim, {DEFAULT_STEPS['dpm++2m']} for dpm++; one dpm++ step is first order]"),
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
    """The checked plan, the sample count, and the grid's column count (one column per digit asked for)."""

    n: int
    plan: SamplingPlan
    columns: int | None


def sampling_request(ddpm: DDPM, n: int | None, sampler: str | None, steps: int | None, eta: float | None,
                     spacing: str | None, digit: str | None, guidance: float | None, frames: int = 0,
                     show: str = "xt") -> SamplingRequest:
    """The plan for these options on this model; one-line errors, about the flags, for what cannot work.

    ``n`` None is the default count: 16, or two per class with ``--digit all``.
    """
    digits = None if digit is None else parse_digits(digit, ddpm.info.num_classes)
    try:
        plan = ddpm.plan(sampler, steps, eta, spacing, digits, guidance, frames, show)
    except SettingError as exc:
        raise flag_error(exc) from None
    if n is None:
        n = 2 * len(digits) if digit is not None and digit.strip().lower() == "all" else DEFAULT_COUNT
    return SamplingRequest(n, plan, len(digits) if digits is not None and len(digits) > 1 else None)


def flag_error(exc: SettingError) -> click.BadParameter:
    """A library setting error spelled in the command line's flags."""
    remedy = ""
    if exc.needs is not None:
        name, value = exc.needs
        remedy = f"; add {FLAGS.get(name, name)}" + ("" if value is None else f" {value}")
    return click.BadParameter(exc.problem + remedy, param_hint=f"'{FLAGS.get(exc.setting, exc.setting)}'")


def parse_digits(text: str, classes: int) -> list[int]:
    """The classes a ``--digit`` value names: "D", "D,E,..." or "all" (0, 1, ..., K−1)."""
    if not classes:
        raise DDPMError("this model is unconditional: --digit needs a class-conditional export")
    text = text.strip().lower()
    if text == "all":
        return list(range(classes))
    parts = text.split(",")
    if len(parts) > MAX_DIGIT_LIST:
        raise DDPMError(f"--digit lists at most {MAX_DIGIT_LIST} digits (they are cycled over the samples)")
    try:
        return [int(part) for part in parts]
    except ValueError:
        raise DDPMError(f"--digit takes a digit, a comma-separated list or 'all', got {text!r}") from None
