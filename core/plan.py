"""How to sample, decided once: a :class:`SamplingPlan` is built and checked against the model where
the request enters (the command-line options, the Python API's keywords) and trusted after.

Which settings a sampler takes, their bounds and their defaults are its spec's (``ddpm.core.samplers``).
The request-wide defaults are here: the reference ancestral loop over all T steps; with requested
digits 10 calls of UniPC and guidance 1, which the shipped model draws as well as the reference
100 times faster (docs/RESULTS.md, Quality).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .errors import SettingError
from .metadata import ModelInfo
from .samplers import Sampler, SamplerSpec, accepting, find
from .schedule import Schedule

__all__ = [
    "SamplingPlan",
    "SettingError",
    "StudentWarning",
    "SHOW",
    "DEFAULT_SAMPLER",
    "DIGIT_SAMPLER",
    "STUDENT_SAMPLER",
    "DEFAULT_GUIDANCE",
    "MAX_GUIDANCE",
]

SHOW = ("xt", "x0", "both")  # what the animation frames hold
DEFAULT_SAMPLER = "ancestral"  # the reference loop
DIGIT_SAMPLER = "unipc"  # with digits: every digit judged as asked at 10 calls, FD as with 20 of DPM-Solver++ SDE
DEFAULT_GUIDANCE = 1.0  # of 0, 1 and 3 for the shipped model: every digit judged as asked, lowest FD
STUDENT_SAMPLER = "consistency"  # a few-step student's default, with or without digits
MAX_SEED = 2**63 - 1  # seeds are NumPy generator seeds, and fit a signed 64-bit integer everywhere
MAX_GUIDANCE = 50.0  # (1+w)·ε − w·ε(∅): the shipped model already draws near-identical digits at w = 3


class StudentWarning(UserWarning):
    """Another sampler than the one a few-step student learned for."""


@dataclass(frozen=True)
class SamplingPlan:
    """A checked sampling request: which sampler, how many network evaluations, the sampler's own
    settings (``options``: every one its spec declares, defaults filled in), the requested digits
    (cycled over the samples; None draws every class equally often on a class-conditional model),
    classifier-free guidance w, and the frames to keep."""

    sampler: str
    steps: int
    options: dict[str, Any] = field(default_factory=dict)
    digits: tuple[int, ...] | None = None
    guidance: float = 0.0
    frames: int = 0
    show: str = "xt"

    @classmethod
    def build(
        cls,
        info: ModelInfo,
        schedule: Schedule,
        sampler: str | None = None,
        steps: int | None = None,
        digits: Sequence[int] | None = None,
        guidance: float | None = None,
        frames: int = 0,
        show: str = "xt",
        **options: Any,
    ) -> SamplingPlan:
        """The plan for these settings on this model; None takes the default. ``options`` are the
        sampler's own settings (``eta=``, ``spacing=``, ...). One :class:`SettingError` for the first
        setting that cannot work."""
        chosen = _check_digits(info, digits)
        spec = find(sampler if sampler is not None else _default_sampler(info, chosen))
        if spec.student and info.student is None:
            raise SettingError(
                "sampler", f"{spec.name} samples few-step students (made by ddpm-distill); this model is not one"
            )
        if info.student is not None and not spec.student:
            warnings.warn(
                f"this model is a few-step student (ddpm-distill): {spec.name} runs it, but it learned to draw "
                f"in 1 to {len(info.student['timesteps'])} calls of the {STUDENT_SAMPLER} sampler",
                StudentWarning,
                stacklevel=2,
            )
        plan = cls(
            sampler=spec.name,
            steps=spec.check_steps(steps, schedule, info),
            options=_check_options(spec, options),
            digits=chosen,
            guidance=_check_guidance(info, chosen, guidance),
            frames=_check_frames(frames, show),
            show=show,
        )
        if info.graph == "fused-step":
            plan._check_fused(spec, schedule.timesteps)
        return plan

    @property
    def spec(self) -> SamplerSpec:
        return find(self.sampler)

    def _check_fused(self, spec: SamplerSpec, total: int) -> None:
        """A fused-step graph holds the T-step ancestral update and keeps ε inside."""
        if not spec.fused:
            raise SettingError(
                "sampler",
                f"a fused-step model has the ancestral update built in; use the plain export for {self.sampler}",
            )
        if self.steps != total:
            raise SettingError(
                "steps",
                f"a fused-step model has its {total}-step update built in; it cannot respace to {self.steps} steps",
            )
        if self.frames and self.show != "xt":
            raise SettingError(
                "show", "a fused-step model keeps ε inside its graph, so x̂_0 cannot be shown; use the plain export"
            )

    def make_sampler(self, info: ModelInfo, schedule: Schedule) -> Sampler:
        """A fresh sampler for one loop (a multistep solver remembers its previous steps)."""
        return self.spec.build(schedule, info, self.steps, **self.options)

    def labels(self, n: int) -> np.ndarray | None:
        """The requested digits cycled over ``n`` samples, or None when none were requested."""
        return None if self.digits is None else np.resize(np.asarray(self.digits, dtype=np.int64), n)

    def settings(self) -> dict:
        """The sampler's settings as recorded beside the samples (only those it uses); the labels and
        guidance are recorded with the labels actually drawn."""
        return {"sampler": self.sampler, "steps": self.steps, **self.options}


def _check_options(spec: SamplerSpec, given: dict[str, Any]) -> dict[str, Any]:
    """Every setting of ``spec``: the given value checked against its bounds, or its default. A setting
    this sampler does not take is refused, naming the samplers that do."""
    for name, value in given.items():
        if value is not None and spec.option(name) is None:
            others = accepting(name)
            if not others:
                raise SettingError(
                    name,
                    f"is not a setting of any sampler (the {spec.name} sampler takes "
                    f"{', '.join(o.name for o in spec.options) or 'only steps'})",
                )
            label = others[0].option(name).label or name
            raise SettingError(
                name,
                f"{label} is a setting of {', '.join(o.name for o in others)}, not of {spec.name}",
                needs=("sampler", others[0].name),
            )
    return {
        option.name: option.default if given.get(option.name) is None else option.check(given[option.name])
        for option in spec.options
    }


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


def _default_sampler(info: ModelInfo, digits: tuple[int, ...] | None) -> str:
    if info.student is not None:
        return STUDENT_SAMPLER
    return DIGIT_SAMPLER if digits is not None else DEFAULT_SAMPLER


def _check_guidance(info: ModelInfo, digits: tuple[int, ...] | None, guidance: float | None) -> float:
    """w of (1+w)·ε(y) − w·ε(∅), 0 for none. A student has its teacher's guidance built into its
    one row per digit, so the runtime adds none."""
    if info.student is not None:
        if guidance is not None and guidance != info.student["guidance"]:
            raise SettingError(
                "guidance",
                f"this few-step student has guidance {info.student['guidance']:g} built in "
                "(ddpm-distill --guidance); it takes no other",
            )
        return 0.0
    if guidance is None:
        return DEFAULT_GUIDANCE if digits is not None else 0.0
    if not info.num_classes:
        raise SettingError("guidance", "needs a class-conditional model; this one is unconditional")
    if digits is None:
        raise SettingError("guidance", "steers towards a digit", needs=("digits", None))
    if not 0 <= guidance <= MAX_GUIDANCE:
        raise SettingError(
            "guidance",
            f"must be between 0 and {MAX_GUIDANCE:g} (beyond, (1+w)·ε only saturates the pixels), got {guidance}",
        )
    return float(guidance)


def _check_frames(frames: int, show: str) -> int:
    if frames < 0:
        raise SettingError("frames", f"must be >= 0, got {frames}")
    if show not in SHOW:
        raise SettingError("show", f"must be one of {', '.join(SHOW)}, got {show!r}")
    return int(frames)
