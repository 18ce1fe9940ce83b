"""The samplers and their registry: every sampler the plan, the command line and the benchmarks know
is one entry of :data:`SPECS` (its spec lives beside its class, one file per sampler)."""

from __future__ import annotations

from ..errors import SettingError
from . import ancestral, consistency, ddim, dpm_solver, unipc
from .ancestral import AncestralSampler
from .base import (
    LAMBDA_MIN,
    SPACINGS,
    Multistep,
    Sampler,
    half_log_snr,
    predict_x0,
    solver_step_limit,
    solver_timesteps,
    spaced_timesteps,
)
from .consistency import ConsistencySampler, student_timesteps
from .ddim import DDIMSampler
from .dpm_solver import DPMSolverSampler
from .spec import Option, SamplerSpec
from .unipc import UniPCSampler

SPECS: tuple[SamplerSpec, ...] = (ancestral.SPEC, ddim.SPEC, *dpm_solver.SPECS, unipc.SPEC, consistency.SPEC)
NAMES = tuple(spec.name for spec in SPECS)
_BY_NAME = {name: spec for spec in SPECS for name in (spec.name, *spec.aliases)}


def find(name: str) -> SamplerSpec:
    """The spec a sampler name or alias names, or a :class:`SettingError` listing the choices."""
    spec = _BY_NAME.get(name) if isinstance(name, str) else None
    if spec is None:
        raise SettingError("sampler", f"must be one of {', '.join(NAMES)}, got {name!r}")
    return spec


def choices() -> tuple[str, ...]:
    """Every name and alias, for a front end's list of choices."""
    return tuple(_BY_NAME)


def option_names() -> tuple[str, ...]:
    """The settings any sampler accepts beyond ``steps``, in the order the specs declare them."""
    return tuple(dict.fromkeys(option.name for spec in SPECS for option in spec.options))


def accepting(name: str) -> tuple[SamplerSpec, ...]:
    """The samplers that accept the setting ``name``."""
    return tuple(spec for spec in SPECS if spec.option(name) is not None)


__all__ = [
    "AncestralSampler",
    "ConsistencySampler",
    "DDIMSampler",
    "DPMSolverSampler",
    "LAMBDA_MIN",
    "Multistep",
    "NAMES",
    "Option",
    "SPACINGS",
    "SPECS",
    "Sampler",
    "SamplerSpec",
    "UniPCSampler",
    "accepting",
    "choices",
    "find",
    "half_log_snr",
    "option_names",
    "predict_x0",
    "solver_step_limit",
    "solver_timesteps",
    "spaced_timesteps",
    "student_timesteps",
]
