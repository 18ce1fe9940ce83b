"""What a training run starts from: new settings from the option values, or a checkpoint to resume
and the settings it was trained with.

Errors are one-line DDPMErrors; ``SettingsConflict`` marks the settings that contradict each other
or the checkpoint, which the command line reports as a usage error.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ..core.errors import DDPMError
from .config import (
    AUTOENCODER_DATA,
    AUTOENCODER_PRESETS,
    AUTOENCODER_SECTIONS,
    AUTOENCODER_TRAINING,
    PRESET_TRAINING,
    PRESETS,
    SECTIONS,
    STUDENT_SECTIONS,
    DataConfig,
    DistillConfig,
    ScheduleConfig,
    Settings,
    TrainConfig,
)
from .options import flag_name, from_args, option_fields

# Resuming may change --epochs and --max-steps; the other settings may be repeated but must match the checkpoint's.
RESUMABLE = {f.name for f in option_fields(TrainConfig) if f.metadata["setting"]["resumable"]}
KINDS = {"unet": SECTIONS, "autoencoder": AUTOENCODER_SECTIONS, "student": STUDENT_SECTIONS}
COMMANDS = {"unet": "ddpm-train", "autoencoder": "ddpm-autoencoder", "student": "ddpm-distill"}


class SettingsConflict(DDPMError):
    """Settings that cannot hold together, or that differ from those of the checkpoint being resumed."""


@dataclass(frozen=True)
class ResolvedRun:
    """The settings to train with and, when a checkpoint is resumed, the checkpoint and where it was read."""

    settings: Settings
    checkpoint: dict[str, Any] | None = None
    source: str | Path | None = None


def resolve_run(
    values: dict[str, Any],
    explicit: set[str],
    resume: str | None,
    out_dir: Path,
    warn: Callable[[str], None],
    kind: str = "unet",
) -> ResolvedRun:
    """The run to train: ``values`` holds every setting by field name (``explicit``: those the user gave),
    ``resume`` a checkpoint path, "auto" (the newest readable one in ``out_dir``, else a new run) or None.

    Only the resumable settings (``RESUMABLE``) may differ from a resumed checkpoint's. ``kind``:
    "unet" (ddpm-train; ``values["autoencoder"]`` names the autoencoder of a latent model) or
    "autoencoder" (ddpm-autoencoder) or "student" (ddpm-distill; ``values["teacher"]`` names the teacher,
    which a resumed student carries and need not be given again).
    """
    from .checkpoint import find_resumable, load_checkpoint

    checkpoint = load_checkpoint(Path(resume)) if resume not in (None, "auto") else None
    fresh = _fresh_settings(values, explicit, kind)
    if resume == "auto":
        found = find_resumable(out_dir, warn)
        if found is None:
            warn(f"no checkpoint in {out_dir}: starting a new run")
        else:
            resume, checkpoint = found
    if checkpoint is None:
        if fresh is None:
            raise SettingsConflict("a new student needs its teacher: name a ddpm-train checkpoint with --teacher")
        return ResolvedRun(fresh)
    stored = _settings_from_checkpoint(checkpoint, resume)
    if stored.kind != kind:
        raise DDPMError(f"{resume} is a checkpoint of {COMMANDS[stored.kind]}; continue it with that command")
    if fresh is None:  # a student resumed without --teacher: the options given, over the checkpoint's own
        fresh = _student_options(stored, values)
    differing = (
        _differing_settings(fresh, stored, explicit) + _other_autoencoder(fresh, stored) + _other_teacher(fresh, stored)
    )
    if differing:
        raise SettingsConflict(f"{resume} was trained with other settings: {'; '.join(differing)}")
    train = replace(stored.train, **{name: values[name] for name in RESUMABLE & explicit})
    return ResolvedRun(replace(stored, train=train), checkpoint, resume)


def _fresh_settings(values: dict[str, Any], explicit: set[str], kind: str) -> Settings | None:
    """A new run's settings from the option values (None: a student without --teacher)."""
    if kind == "autoencoder":
        return _autoencoder_settings(values)
    if kind == "student":
        if values.get("teacher") is None:
            return None
        from .distill import student_settings

        return student_settings(Path(values["teacher"]), from_args(DistillConfig(), values), values)
    return _settings_from_args(values, explicit)


def _student_options(stored: Settings, values: dict[str, Any]) -> Settings:
    distill = from_args(DistillConfig(**{name: stored.student[name] for name in DistillConfig().to_dict()}), values)
    return replace(stored, train=from_args(stored.train, values), student={**stored.student, **distill.to_dict()})


def _other_teacher(fresh: Settings, stored: Settings) -> list[str]:
    """A student resumed with another --teacher than the one its checkpoint learned from."""
    if fresh.student is None or stored.student is None:
        return []
    mine, theirs = fresh.student["teacher_sha256"], stored.student["teacher_sha256"]
    return [] if mine == theirs else [f"--teacher of sha256 {mine[:12]} (checkpoint: {theirs[:12]})"]


def _settings_from_args(args: dict[str, Any], explicit: set[str]) -> Settings:
    """Model, data, schedule and training settings of a new run, from the option values."""
    name = args["preset"]
    model_config = from_args(PRESETS[name], args)
    data_config, autoencoder = from_args(DataConfig(), args), None
    if name == "latent" and args.get("autoencoder") is None:
        raise SettingsConflict(
            "--preset latent learns an autoencoder's latents: name its checkpoint with --autoencoder "
            "(trained by ddpm-autoencoder)"
        )
    if args.get("autoencoder") is not None:
        autoencoder, data_config = _latent_source(Path(args["autoencoder"]), data_config, explicit)
        model_config = replace(model_config, image_channels=int(autoencoder["config"]["latent_channels"]))
    problems = model_config.problems()
    if problems:
        raise SettingsConflict("invalid model settings: " + "; ".join(problems))
    levels, side = model_config.downsamplings(), data_config.image_size
    if autoencoder is not None:
        side //= 2 ** (len(autoencoder["config"]["widths"]) - 1)
    if side % 2**levels:
        what = f"the {side}x{side} latent" if autoencoder is not None else f"--image-size {side}"
        raise SettingsConflict(f"{what} must be divisible by {2**levels} ({levels} downsamplings)")
    schedule = from_args(ScheduleConfig(), args)
    if schedule.kind == "cosine" and explicit & {"beta_start", "beta_end"}:
        raise SettingsConflict(
            "--beta-start/--beta-end set the linear schedule; the cosine schedule has no such settings"
        )
    if schedule.kind == "linear" and not schedule.beta_start <= schedule.beta_end:
        raise SettingsConflict("--beta-start must not exceed --beta-end")
    train_config = from_args(TrainConfig(preset=name, **PRESET_TRAINING[name]), args)
    return Settings(model_config, data_config, schedule.to_dict(), train_config, autoencoder)


def _latent_source(path: Path, data_config: DataConfig, explicit: set[str]) -> tuple[dict[str, Any], DataConfig]:
    """The autoencoder record of a new latent run and the data it was trained on, which the U-Net takes;
    data options given on the command line must agree with it."""
    from .latent import autoencoder_record

    record = autoencoder_record(path)
    stored = DataConfig.from_dict(record["data"])
    given = {name: getattr(data_config, name) for name in ("image_size", "transform", "data_range") if name in explicit}
    for name, value in given.items():
        if value != getattr(stored, name):
            flag = "--" + name.replace("_", "-")
            raise SettingsConflict(
                f"{flag} {value} differs from the autoencoder's ({getattr(stored, name)}); "
                "a latent model takes its data settings from its autoencoder"
            )
    return record, stored


def _autoencoder_settings(args: dict[str, Any]) -> Settings:
    """An autoencoder run's settings from ddpm-autoencoder's option values (the preset's where none was given)."""
    name = args["preset"]
    model_config = from_args(AUTOENCODER_PRESETS[name], args)
    problems = model_config.problems()
    if problems:
        raise SettingsConflict("invalid autoencoder settings: " + "; ".join(problems))
    data_config = from_args(DataConfig(**AUTOENCODER_DATA[name]), args)
    if data_config.image_size % model_config.factor:
        raise SettingsConflict(
            f"--image-size {data_config.image_size} must be divisible by {model_config.factor} "
            f"({model_config.downsamplings()} downsamplings)"
        )
    train_config = from_args(TrainConfig(preset=name, **AUTOENCODER_TRAINING), args)
    return Settings(model_config, data_config, {}, train_config)


def _other_autoencoder(fresh: Settings, stored: Settings) -> list[str]:
    """A latent run resumed with another --autoencoder than the one its checkpoint carries."""
    if fresh.autoencoder is None or stored.autoencoder is None:
        return []
    if fresh.autoencoder["sha256"] == stored.autoencoder["sha256"]:
        return []
    return [
        f"--autoencoder of sha256 {fresh.autoencoder['sha256'][:12]} (checkpoint: {stored.autoencoder['sha256'][:12]})"
    ]


def _settings_from_checkpoint(checkpoint: dict[str, Any], origin: Any) -> Settings:
    try:
        return Settings.from_dict(checkpoint)
    except (KeyError, TypeError, ValueError) as exc:
        raise DDPMError(f"{origin}: checkpoint settings are unreadable ({exc})") from None


def _differing_settings(fresh: Settings, stored: Settings, explicit: set[str]) -> list[str]:
    """Options given on the command line whose values differ from the checkpoint's."""
    given, recorded = fresh.to_dict(), stored.to_dict()
    differing = {}
    fixed = [
        (section, f)
        for section, cls in KINDS[stored.kind].items()
        for f in option_fields(cls)
        if f.name not in RESUMABLE
    ]
    for section, f in fixed:
        mine, theirs = given[section].get(f.name), recorded[section].get(f.name)
        if f.name in explicit and mine != theirs:
            differing[flag_name(f)] = f"--{flag_name(f)} {mine} (checkpoint: {theirs})"
    return [differing[flag] for flag in sorted(differing)]
