"""What a client sends and gets: the request body, checked once into a plan, and the job views.

A body's types and ranges are checked by its pydantic model; what depends on the model and the
sampler (digits on an unconditional model, η for a sampler without it, steps beyond T) is checked by
building the :class:`~ddpm.core.plan.SamplingPlan`, which gives the same one-line reason ``ddpm-run``
gives, spelled in the body's field names.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, create_model

from ..core.plan import (
    DEFAULT_GUIDANCE,
    DEFAULT_SAMPLER,
    DIGIT_SAMPLER,
    MAX_GUIDANCE,
    MAX_SEED,
    SHOW,
    SamplingPlan,
    SettingError,
)
from ..core.samplers import accepting, choices, option_names
from ..runtime.pipeline import DDPM

MAX_SAMPLES = 64  # per request: a 8x8 grid; more is several requests
MAX_FRAMES = 100  # frames a job keeps for its events and its GIF
FRESH_SEED_BITS = (
    53  # fresh seeds stay exact as JSON numbers in JavaScript (2^53); a client may send any up to 2^63 - 1
)


class _Body(BaseModel):
    """How to sample: every field but ``n`` is optional and takes ``ddpm-run``'s default. JSON types are
    strict (no "3" for 3); what a value means is checked against the model and the sampler."""

    model_config = ConfigDict(extra="forbid", strict=True)

    n: int = Field(ge=1, le=MAX_SAMPLES, description=f"How many digits, 1 to {MAX_SAMPLES}.")
    digits: list[int] | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_SAMPLES,
        description=f"Class-conditional models: the digits to draw, cycled over the samples (at most {MAX_SAMPLES}). "
        "[default: every digit equally often, in an order drawn from the seed]",
    )
    sampler: str | None = Field(
        default=None,
        json_schema_extra={"enum": [*choices(), None]},
        description=f"One of {', '.join(choices())}. [default: {DEFAULT_SAMPLER}; {DIGIT_SAMPLER} with digits]",
    )
    # The plan checks steps and guidance (its reason names the model's limit); the schema states the bounds.
    steps: int | None = Field(
        default=None,
        json_schema_extra={"minimum": 1},
        description="Network evaluations per sample, at most the model's T. [default: the sampler's own]",
    )
    guidance: float | None = Field(
        default=None,
        json_schema_extra={"minimum": 0, "maximum": MAX_GUIDANCE},
        description=f"Classifier-free guidance w with digits, 0 to {MAX_GUIDANCE:g}. "
        f"[default: {DEFAULT_GUIDANCE:g} with digits]",
    )
    seed: int | None = Field(
        default=None, ge=0, le=MAX_SEED, description="Seed of the noise. [default: fresh; returned in X-DDPM-Seed]"
    )
    format: Literal["png", "npz"] = Field(
        default="png", description="The grid as a PNG, or the npz ddpm-run --npz writes."
    )
    scale: int = Field(default=3, ge=1, le=8, description="Pixel upscaling of the PNG and GIF grids.")
    frames: int = Field(
        default=0, ge=0, le=MAX_FRAMES, description="Frames kept for a job's events and its GIF (0: none)."
    )
    show: Literal[SHOW] = Field(default="xt", description="What the frames show: x_t, the predicted x̂_0, or both.")


def _option_field(name: str) -> tuple[type, object]:
    """A body field for a sampler setting, typed and described from the specs that accept it. The
    plan checks the value (its reason names the sampler); the schema states the choices and bounds
    that any sampler taking the setting accepts."""
    specs = accepting(name)
    options = [spec.option(name) for spec in specs]
    option = options[0]
    kind = str if option.choices else float if option.kind is float else int
    defaults = "; ".join(f"{each.default} for {spec.name}" for spec, each in zip(specs, options))
    bounds: dict[str, object] = {}
    if option.choices:
        bounds["enum"] = [*dict.fromkeys(choice for each in options for choice in each.choices), None]
    if all(each.low is not None for each in options):
        bounds["minimum"] = min(each.low for each in options)
    if all(each.high is not None for each in options):
        bounds["maximum"] = max(each.high for each in options)
    return kind | None, Field(
        default=None, json_schema_extra=bounds or None, description=f"{option.help} [default: {defaults}]"
    )


# The sampler settings come from the specs, so that a new sampler's settings appear here by themselves.
SampleBody = create_model(
    "SampleBody", __base__=_Body, __doc__=_Body.__doc__, **{name: _option_field(name) for name in option_names()}
)


class JobView(BaseModel):
    """A job's state and progress."""

    id: str
    state: Literal["queued", "running", "done", "failed", "cancelled"]
    position: int = Field(description="Steps done.")
    steps: int
    frames: int = Field(description="Frames made so far.")
    seed: int
    error: str | None = None


class Problem(BaseModel):
    """Every error the server sends: one line saying what is wrong and, where it can, what to do."""

    detail: str = Field(description='What is wrong, in one line; a body field comes first ("n: ...").')


class Health(BaseModel):
    status: Literal["ok", "draining"]
    model: str
    provider: str
    rows_per_call: int | None = Field(default=None, description="Rows one network call takes (a local engine's).")


@dataclass(frozen=True)
class Checked:
    """A body checked against the model: the plan and what the response needs."""

    n: int
    plan: SamplingPlan
    seed: int
    format: str
    scale: int
    columns: int | None


def check(ddpm: DDPM, body: _Body) -> Checked:
    """The plan for ``body`` on this model; :class:`SettingError` (named by field) for what cannot work."""
    if body.digits is not None and not ddpm.info.num_classes:
        raise SettingError("digits", "this model is unconditional: digits need a class-conditional export")
    options = {name: getattr(body, name) for name in option_names() if getattr(body, name) is not None}
    plan = ddpm.plan(
        sampler=body.sampler,
        steps=body.steps,
        digits=body.digits,
        guidance=body.guidance,
        frames=body.frames,
        show=body.show,
        **options,
    )
    seed = secrets.randbits(FRESH_SEED_BITS) if body.seed is None else body.seed
    columns = len(body.digits) if body.digits and len(body.digits) > 1 else None
    return Checked(body.n, plan, seed, body.format, body.scale, columns)


def reason(exc: SettingError) -> str:
    """A setting error named by its body field (the library's setting names are the fields' names):
    "eta: η is a setting of ddim, not of ancestral; set sampler to ddim"."""
    remedy = ""
    if exc.needs is not None:
        name, value = exc.needs
        remedy = f"; set {name}" + ("" if value is None else f" to {value}")
    return f"{exc.setting}: {exc.problem}{remedy}"
