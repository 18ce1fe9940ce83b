"""Dataclass fields that are also ``ddpm-train`` options: one declaration gives the field, its flag and its help."""

from __future__ import annotations

from dataclasses import Field, field, fields, replace
from typing import Any

import click

from ..core.console import FiniteFloatRange, with_options


def setting(
    default: Any,
    help: str,
    type: Any = None,
    /,
    *,
    flag: str | None = None,
    preset: bool = False,
    resumable: bool = False,
    **option: Any,
) -> Any:
    """A dataclass field with the option that sets it: ``--flag`` (the field's name by default).

    ``type`` bool makes a ``--flag/--no-flag`` switch. ``preset``: the option's default is None, so the
    value comes from the preset. ``resumable`` (TrainConfig): may change when a run resumes; every
    other setting must match the checkpoint. ``option`` goes to click.Option as is (is_flag, envvar,
    or a ``default`` written as typed on the command line).
    """
    spec = {"flag": flag, "help": help, "type": type, "preset": preset, "resumable": resumable, "option": option}
    return field(default=default, metadata={"setting": spec})


def option_fields(cls: type) -> list[Field]:
    return [f for f in fields(cls) if "setting" in f.metadata]


def flag_name(f: Field) -> str:
    return f.metadata["setting"]["flag"] or f.name.replace("_", "-")


def click_options(
    *classes: type,
    skip: frozenset[str] = frozenset(),
    helps: dict[str, str] | None = None,
    from_preset: frozenset[str] = frozenset(),
) -> list[click.Option]:
    """The options of these classes' settings, in declaration order, but for the fields named in ``skip``
    (another command's); each stores its value under the field's name. ``helps`` replaces the help of
    the fields it names, and ``from_preset`` names fields whose default comes from this command's
    presets (the option's default is None, as a preset setting's is)."""
    options = []
    for f in (f for cls in classes for f in option_fields(cls) if f.name not in skip):
        spec, flag = f.metadata["setting"], flag_name(f)
        declaration = f"--{flag}/--no-{flag}" if spec["type"] is bool else f"--{flag}"
        default = None if spec["preset"] or f.name in from_preset else f.default
        options.append(
            click.Option(
                [declaration, f.name],
                type=spec["type"],
                help=(helps or {}).get(f.name, spec["help"]),
                **{"default": default, **spec["option"]},
            )
        )
    return options


def from_args(base: Any, args: dict[str, Any]) -> Any:
    """``base`` with the values its options were given (None, an unset preset option or one the command
    does not offer, keeps ``base``'s)."""
    return replace(base, **{f.name: args[f.name] for f in option_fields(type(base)) if args.get(f.name) is not None})


class IntList(click.ParamType):
    name = "INTS"

    def convert(self, value: Any, param: Any, ctx: Any) -> tuple[int, ...]:
        if isinstance(value, tuple):
            return value
        try:
            items = tuple(int(item) for item in str(value).split(","))
        except ValueError:
            self.fail(f"{value!r} is not a comma-separated list of integers", param, ctx)
        if any(item < 1 for item in items):
            self.fail(f"{value!r}: every entry must be >= 1", param, ctx)
        return items


class BoolList(click.ParamType):
    name = "FLAGS"
    TRUE, FALSE = {"1", "t", "true", "y", "yes"}, {"0", "f", "false", "n", "no"}

    def convert(self, value: Any, param: Any, ctx: Any) -> tuple[bool, ...]:
        if isinstance(value, tuple):
            return value
        flags = []
        for item in str(value).lower().split(","):
            if item not in self.TRUE | self.FALSE:
                self.fail(f"{value!r}: use a comma-separated list of 1/0 (one per resolution level)", param, ctx)
            flags.append(item in self.TRUE)
        return tuple(flags)


class Betas(click.ParamType):
    name = "B1,B2"

    def convert(self, value: Any, param: Any, ctx: Any) -> tuple[float, float]:
        if isinstance(value, tuple):
            return value
        try:
            betas = tuple(float(item) for item in str(value).split(","))
        except ValueError:
            betas = ()
        if len(betas) != 2 or not all(0.0 <= b < 1.0 for b in betas):
            self.fail(f"{value!r}: expected two numbers in [0, 1) such as 0.9,0.999", param, ctx)
        return betas


class ChoiceOf(click.Choice):
    """A choice among the names of ``values``, converted to the value it names."""

    def __init__(self, values: dict[str, Any]) -> None:
        super().__init__(tuple(values))
        self.values = values

    def convert(self, value: Any, param: Any, ctx: Any) -> Any:
        return self.values[super().convert(value, param, ctx)]


POSITIVE_INT = click.IntRange(min=1)
POSITIVE_FLOAT = FiniteFloatRange(min=0.0, min_open=True)
FRACTION = FiniteFloatRange(min=0.0, max=1.0, max_open=True)  # [0, 1): dropout rates, EMA decays


def run_options(dry_run: str):
    """The options every training command shares, in this order: --overwrite, --resume, --threads and
    --dry-run (whose help, ``dry_run``, says what that command checks before it exits)."""
    shared = [
        click.option(
            "--overwrite",
            is_flag=True,
            help="Start a new run even if OUT/model.pt exists (it is replaced at the first save).",
        ),
        click.option(
            "--resume",
            default=None,
            metavar="PATH|auto",
            help="Continue from this checkpoint with its settings and optimizer; only --epochs/--max-steps "
            "may change. 'auto': the newest readable checkpoint in --out (skipping corrupt ones), or a "
            "new run if none.",
        ),
        click.option(
            "--threads",
            type=click.IntRange(1, 1024),
            default=None,
            help="CPU threads for PyTorch. [default: PyTorch's choice]",
        ),
        click.option("--dry-run", is_flag=True, help=dry_run),
    ]
    return with_options(shared)
