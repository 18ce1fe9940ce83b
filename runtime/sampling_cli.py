"""Command-line options that choose how to sample, shared by ``ddpm-run`` and ``ddpm-eval``.

``--sampler``'s choices and every sampler setting's flag and help are drawn from the sampler specs
(``ddpm.core.samplers``); the values pass through unchecked and become one :class:`SamplingPlan`,
whose errors come back as errors about the flags. The flags that choose the model and where it runs are
in model_flags.py.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any, TypeVar

import click

from ..core.console import FiniteFloatRange, with_options
from ..core.plan import DEFAULT_GUIDANCE, DEFAULT_SAMPLER, DIGIT_SAMPLER, MAX_GUIDANCE, SamplingPlan, SettingError
from ..core.samplers import SPECS, Option, accepting, choices, option_names
from .pipeline import DDPM

DEFAULT_COUNT = 16
MAX_DIGIT_LIST = 1000  # a --digit list longer than this is a mistake (lists are cycled over the samples)
FLAGS = {"digits": "--digit", "n": "--num-samples", "batch_size": "--batch-size"}
SAMPLER_SETTINGS = ("sampler", "steps", *option_names())  # the keywords sampling_options adds
Args = TypeVar("Args")


def flag(setting: str) -> str:
    """The command-line flag of a library setting."""
    return FLAGS.get(setting, "--" + setting.replace("_", "-"))


def _grouped(values: dict[str, object]) -> str:
    """ "a for x, y; b for z": sampler names grouped by the value they take."""
    groups: dict[str, list[str]] = {}
    for name, value in values.items():
        groups.setdefault(str(value), []).append(name)
    return "; ".join(f"{value} for {', '.join(names)}" for value, names in groups.items())


def _sampler_help() -> str:
    kinds = "; ".join(f"'{spec.name}': {spec.summary}" for spec in SPECS)
    return (
        f"The sampling method. {kinds}. Each in detail: docs/MODELS.md, Samplers. "
        f"[default: {DEFAULT_SAMPLER}; {DIGIT_SAMPLER} with --digit]"
    )


def _steps_help() -> str:
    defaults = {spec.name: spec.steps or "T" for spec in SPECS}
    return f"Network evaluations per sample, at most the model's T. [default: {_grouped(defaults)}]"


def _option_help(name: str) -> str:
    specs = accepting(name)
    first: Option = specs[0].option(name)
    defaults = {spec.name: spec.option(name).default for spec in specs}
    return f"{first.help} [default: {_grouped(defaults)}; only for {', '.join(spec.name for spec in specs)}]"


def _option(name: str) -> Callable:
    first = accepting(name)[0].option(name)
    metavar = "|".join(first.choices) if first.choices else first.kind.__name__.upper()
    kind = FiniteFloatRange() if first.kind is float else first.kind  # its bounds are the plan's to check, per sampler
    return click.option(flag(name), name, type=kind, default=None, metavar=metavar, help=_option_help(name))


def sampling_options(function: Callable) -> Callable:
    options = [
        click.option("--sampler", type=click.Choice(choices()), default=None, help=_sampler_help()),
        click.option("--steps", type=int, default=None, metavar="INTEGER", help=_steps_help()),
        *(_option(name) for name in option_names()),
        click.option(
            "--digit",
            default=None,
            metavar="D|D,E,...|all",
            help="Class-conditional models: the digit to draw, a list (cycled over the samples), or 'all' "
            "(every digit in turn; the grids get one column per digit). [default: every digit equally "
            "often, in an order drawn from the seed]",
        ),
        click.option(
            "--guidance",
            type=FiniteFloatRange(),
            default=None,
            metavar="FLOAT",
            help=f"Classifier-free guidance w with --digit, 0 to {MAX_GUIDANCE:g}: ε = (1+w)·ε(x,y) − w·ε(x,∅); "
            f"0 = plain conditional. [default: {DEFAULT_GUIDANCE:g} with --digit]",
        ),
    ]
    return with_options(options)(function)


def split_sampling(cls: type[Args], options: dict[str, Any]) -> Args:
    """A command's arguments, ``cls`` (a dataclass with a ``sampling`` field), from click's keywords: each
    field by its name, and the rest, the sampler flags of :func:`sampling_options`, in ``sampling``."""
    named = {field.name for field in fields(cls)} - {"sampling"}
    sampling = {name: value for name, value in options.items() if name not in named}
    return cls(**{name: value for name, value in options.items() if name in named}, sampling=sampling)


@dataclass
class SamplingRequest:
    """The checked plan, the sample count, and the grid's column count (one column per digit asked for)."""

    n: int
    plan: SamplingPlan
    columns: int | None


def sampling_request(
    ddpm: DDPM, n: int | None, digit: str | None = None, frames: int = 0, show: str = "xt", **settings: Any
) -> SamplingRequest:
    """The plan for these options (``settings``: the sampler flags, by keyword) on this model; one-line
    errors, about the flags, for what cannot work.

    ``n`` None is the default count: 16, or two per class with ``--digit all``.
    """
    digits = None if digit is None else parse_digits(digit, ddpm.info.num_classes)
    try:
        plan = ddpm.plan(digits=digits, frames=frames, show=show, **settings)
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
        remedy = f"; add {flag(name)}" + ("" if value is None else f" {value}")
    return click.BadParameter(exc.problem + remedy, param_hint=f"'{flag(exc.setting)}'")


def parse_digits(text: str, classes: int) -> list[int]:
    """The classes a ``--digit`` value names: "D", "D,E,..." or "all" (0, 1, ..., K−1)."""
    if not classes:
        raise click.BadParameter(
            "this model is unconditional: --digit needs a class-conditional export", param_hint="'--digit'"
        )
    text = text.strip().lower()
    if text == "all":
        return list(range(classes))
    parts = text.split(",")
    if len(parts) > MAX_DIGIT_LIST:
        raise click.BadParameter(
            f"lists at most {MAX_DIGIT_LIST} digits (they are cycled over the samples)", param_hint="'--digit'"
        )
    try:
        return [int(part) for part in parts]
    except ValueError:
        raise click.BadParameter(
            f"takes a digit, a comma-separated list or 'all', got {text!r}", param_hint="'--digit'"
        ) from None
