"""A sampler's spec: its names, the settings it accepts (each with its bounds, one default and a
line of help), what it needs from the model, and how it is built from a checked plan.

The plan validates every setting against the spec once; the command line draws its ``--sampler``
choices and each setting's help from the specs; benchmarks enumerate them. Adding a sampler is one
file with its class and spec, and one entry in the registry (``ddpm.core.samplers``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import SettingError
from ..schedule import Schedule
from .base import SPACINGS, Sampler, solver_step_limit

if TYPE_CHECKING:
    from ..metadata import ModelInfo


@dataclass(frozen=True)
class Option:
    """One setting a sampler accepts: ``name`` is the keyword (``DDPM.plan(eta=...)``) and the flag
    (``--eta``); ``kind`` is int, float or str; str settings take one of ``choices``, numbers lie in
    [``low``, ``high``] (``bounds`` says what the ends mean, for the error)."""

    name: str
    help: str
    default: int | float | str
    kind: type = float
    low: float | None = None
    high: float | None = None
    choices: tuple[str, ...] = ()
    bounds: str = ""
    label: str = ""  # how a message names the setting (η); the name where empty

    def check(self, value: Any) -> int | float | str:
        """``value`` as this setting's kind, or a :class:`SettingError` naming it."""
        if self.choices:
            if value not in self.choices:
                raise SettingError(self.name, f"must be one of {', '.join(self.choices)}, got {value!r}")
            return value
        try:
            number = self.kind(value)
        except (TypeError, ValueError):
            raise SettingError(self.name, f"must be a number, got {value!r}") from None
        if (self.low is not None and not number >= self.low) or (self.high is not None and not number <= self.high):
            raise SettingError(
                self.name, f"must be {self.bounds or f'between {self.low:g} and {self.high:g}'}, got {value}"
            )
        return number


def spacing(default: str) -> Option:
    """The timestep spacing setting, shared by the samplers that space their steps freely."""
    return Option(
        "spacing",
        "Timesteps evenly spaced in t, quadratic in t (denser near t = 0), or evenly spaced in log-SNR.",
        default,
        kind=str,
        choices=SPACINGS,
    )


@dataclass(frozen=True)
class SamplerSpec:
    """Everything the rest of the code knows of one sampler.

    ``build(schedule, info, steps, **options)`` makes a fresh sampler for one loop from checked
    values. ``steps`` is the default number of network calls (None: all T). ``solver``: an ODE/SDE
    solver in λ, which needs a schedule with λ ≥ LAMBDA_MIN at its steps, so its steps stop there.
    ``fused``: a fused-step export (the ancestral update inside the graph) runs this sampler.
    ``student``: it runs few-step students only (their metadata names the timesteps), and its steps
    are bounded by the timesteps the student was trained at.
    """

    name: str
    summary: str
    build: Callable[..., Sampler]
    steps: int | None = None
    options: tuple[Option, ...] = ()
    aliases: tuple[str, ...] = ()
    solver: bool = False
    fused: bool = False
    student: bool = False

    def option(self, name: str) -> Option | None:
        return next((option for option in self.options if option.name == name), None)

    def step_limit(self, schedule: Schedule, info: ModelInfo) -> tuple[int, str]:
        """The most network calls this sampler can make on ``schedule`` with this model, and why: the
        words that follow "between 1 and N" in the error."""
        if self.student:
            return len(info.student["timesteps"]), "(the timesteps the student was trained at)"
        if self.solver:
            limit = solver_step_limit(schedule)
            left_out = schedule.timesteps - limit
            return limit, f"for {self.name} on this model" + (
                f" (a solver leaves out its schedule's {left_out} noisiest steps)" if left_out else ""
            )
        return schedule.timesteps, "(the model's T)"

    def check_steps(self, steps: int | None, schedule: Schedule, info: ModelInfo) -> int:
        limit, why = self.step_limit(schedule, info)
        if steps is None:
            return min(self.steps or schedule.timesteps, limit)
        if not 1 <= steps <= limit:
            raise SettingError("steps", f"must be between 1 and {limit} {why}, got {steps}")
        return int(steps)
