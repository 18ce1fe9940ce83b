"""How to sample, decided once: a :class:`SamplingPlan` is built and checked against the model where
the request enters (the command-line options, the Python API's keywords) and trusted after.

Every setting has one default, here: the reference ancestral loop over all T steps; with requested
digits the 20-step DPM-Solver++ SDE and guidance 1, which the shipped model draws as well as the
reference 50 times faster (README, Quality).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from .errors import DDPMError
from .metadata import ModelInfo
from .sampler import LAMBDA_MIN, SPACINGS, AncestralSampler, DDIMSampler, DPMSolverSampler, solver_step_limit
from .schedule import Schedule

SAMPLERS = ("ancestral", "ddim", "dpm++2m", "dpm++2m-sde")
SOLVERS = {"dpm++2m": False, "dpm++2m-sde": True}  # DPM-Solver++ (2M): stochastic or not
SHOW = ("xt", "x0", "both")  # what the animation frames hold
DEFAULT_SAMPLER = "ancestral"  # the reference loop
DIGIT_SAMPLER = "dpm++2m-sde"  # with digits: as good as the reference for the shipped model, 50x faster
DEFAULT_STEPS = {"ddim": 50, "dpm++2m": 20, "dpm++2m-sde": 20}  # the ancestral loop takes all T
# The second-order solvers are second order in λ, so they step evenly in it (uniform-in-t steps leave
# a last step 5x longer in λ than the one before).
DEFAULT_SPACING = {"ancestral": "uniform", "ddim": "uniform", "dpm++2m": "logsnr", "dpm++2m-sde": "logsnr"}
DEFAULT_GUIDANCE = 1.0  # of 0, 1 and 3 for the shipped model: every digit judged as asked, lowest FD
MAX_GUIDANCE = 50.0  # (1+w)·ε − w·ε(∅): the shipped model already draws near-identical digits at w = 3

Sampler = AncestralSampler | DDIMSampler | DPMSolverSampler


class SettingError(DDPMError):
    """A sampling setting that cannot work with this model. ``setting`` names the parameter; ``needs``
    is the (setting, value) that would make it work, for a front end to spell in its own terms."""

    def __init__(self, setting: str, problem: str, needs: tuple[str, str | None] | None = None) -> None:
        self.setting, self.problem, self.needs = setting, problem, needs
        remedy = "" if needs is None else f"; set {needs[0]}" + ("" if needs[1] is None else f"={needs[1]!r}")
        super().__init__(f"{setting}: {problem}{remedy}")


@dataclass(frozen=True)
class SamplingPlan:
    """A checked sampling request: which sampler, how many network evaluations, its η and timestep
    spacing, the requested digits (cycled over the samples; None draws every class equally often
    on a class-conditional model), classifier-free guidance w, and the frames to keep."""

    sampler: str
    steps: int
    eta: float
    spacing: str
    digits: tuple[int, ...] | None
    guidance: float
    frames: int
    show: str

    @classmethod
    def build(cls, info: ModelInfo, schedule: Schedule, sampler: str | None = None, steps: int | None = None,
              eta: float | None = None, spacing: str | None = None, digits: Sequence[int] | None = None,
              guidance: float | None = None, frames: int = 0, show: str = "xt") -> "SamplingPlan":
        """The plan for these settings on this model; None takes the default. One :class:`SettingError`
        for the first setting that cannot work."""
        chosen = _check_digits(info, digits)
        if sampler is None:
            sampler = DIGIT_SAMPLER if chosen is not None else DEFAULT_SAMPLER
        if sampler not in SAMPLERS:
            raise SettingError("sampler", f"must be one of {', '.join(SAMPLERS)}, got {sampler!r}")
        plan = cls(
            sampler=sampler,
            steps=_check_steps(sampler, steps, schedule),
            eta=_check_eta(sampler, eta),
            spacing=_check_spacing(sampler, spacing),
            digits=chosen,
            guidance=_check_guidance(info, chosen, guidance),
            frames=_check_frames(frames, show),
            show=show,
        )
        if info.graph == "fused-step":
            plan._check_fused(schedule.timesteps)
        return plan

    def _check_fused(self, total: int) -> None:
        """A fused-step graph holds the T-step ancestral update and keeps ε inside."""
        if self.sampler != "ancestral":
            raise SettingError("sampler", f"a fused-step model has the ancestral update built in; use the plain export for {self.sampler}")
        if self.steps != total:
            raise SettingError("steps", f"a fused-step model has its {total}-step update built in; it cannot respace to {self.steps} steps")
        if self.frames and self.show != "xt":
            raise SettingError("show", "a fused-step model keeps ε inside its graph, so x̂_0 cannot be shown; use the plain export")

    def make_sampler(self, info: ModelInfo, schedule: Schedule) -> Sampler:
        """A fresh sampler for one loop (the multistep solver remembers its previous step)."""
        if self.sampler == "ddim":
            return DDIMSampler(schedule, self.steps, eta=self.eta, spacing=self.spacing)
        if self.sampler in SOLVERS:
            return DPMSolverSampler(schedule, self.steps, spacing=self.spacing, stochastic=SOLVERS[self.sampler])
        return AncestralSampler(schedule, self.steps, variance=info.variance, noise_at_last_step=info.noise_at_last_step)

    def labels(self, n: int) -> np.ndarray | None:
        """The requested digits cycled over ``n`` samples, or None when none were requested."""
        return None if self.digits is None else np.resize(np.asarray(self.digits, dtype=np.int64), n)

    def settings(self) -> dict:
        """The sampler's settings as recorded beside the samples (only those it uses); the labels and
        guidance are recorded with the labels actually drawn."""
        record: dict = {"sampler": self.sampler, "steps": self.steps}
        if self.sampler == "ddim":
            record["eta"] = self.eta
        if self.sampler != "ancestral":
            record["spacing"] = self.spacing
        return record


def _check_digits(info: ModelInfo, digits: Sequence[int] | None) -> tuple[int, ...] | None:
    if digits is None:
        return None
    classes = info.num_classes
    if not classes:
        raise SettingError("digits", "this model is unconditional: digits need a class-conditional export")
    try:
        chosen = tuple(int(d) for d in np.asarray(digits).reshape(-1))
    except (TypeError, ValueError):
        raise SettingError("digits", f"must be class indices, got {digits!r}") from None
    if not chosen:
        raise SettingError("digits", "name at least one digit")
    bad = [d for d in chosen if not 0 <= d < classes]
    if bad:
        raise SettingError("digits", f"{bad[0]} is out of range: this model knows classes 0-{classes - 1}")
    return chosen


def _check_steps(sampler: str, steps: int | None, schedule: Schedule) -> int:
    total = schedule.timesteps
    if steps is None:
        return min(DEFAULT_STEPS.get(sampler, total), total)
    limit, why = (solver_step_limit(schedule), f"the steps with log-SNR above {2 * LAMBDA_MIN:g}") if sampler in SOLVERS else (total, "the model's T")
    if not 1 <= steps <= limit:
        raise SettingError("steps", f"must be between 1 and {limit} ({why}), got {steps}")
    return int(steps)


def _check_eta(sampler: str, eta: float | None) -> float:
    if eta is None:
        return 0.0
    if sampler != "ddim":
        raise SettingError("eta", "η is a DDIM setting", needs=("sampler", "ddim"))
    if not 0 <= eta <= 1:  # 1: as much noise as the ancestral sampler; beyond it no direction term is left
        raise SettingError("eta", f"must be between 0 (deterministic) and 1 (as noisy as the ancestral sampler), got {eta}")
    return float(eta)


def _check_spacing(sampler: str, spacing: str | None) -> str:
    if spacing is None:
        return DEFAULT_SPACING[sampler]
    if spacing not in SPACINGS:
        raise SettingError("spacing", f"must be one of {', '.join(SPACINGS)}, got {spacing!r}")
    if sampler == "ancestral" and spacing != "uniform":
        raise SettingError("spacing", f"{spacing} spacing is for the ddim and dpm++ samplers; the ancestral one respaces uniformly",
                           needs=("sampler", "ddim"))
    return spacing


def _check_guidance(info: ModelInfo, digits: tuple[int, ...] | None, guidance: float | None) -> float:
    if guidance is None:
        return DEFAULT_GUIDANCE if digits is not None else 0.0
    if not info.num_classes:
        raise SettingError("guidance", "needs a class-conditional model; this one is unconditional")
    if digits is None:
        raise SettingError("guidance", "steers towards a digit", needs=("digits", None))
    if not 0 <= guidance <= MAX_GUIDANCE:
        raise SettingError("guidance", f"must be between 0 and {MAX_GUIDANCE:g} (beyond, (1+w)·ε only saturates the pixels), "
                                       f"got {guidance}")
    return float(guidance)


def _check_frames(frames: int, show: str) -> int:
    if frames < 0:
        raise SettingError("frames", f"must be >= 0, got {frames}")
    if show not in SHOW:
        raise SettingError("show", f"must be one of {', '.join(SHOW)}, got {show!r}")
    return int(frames)
