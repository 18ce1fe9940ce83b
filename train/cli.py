"""``ddpm-train``: train a U-Net on MNIST and write checkpoints.

The options are the fields of the settings dataclasses (train/config.py); torch is imported only
once a run starts, so that --help and argument errors stay fast.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import click

from ..core.console import run_command
from ..core.errors import DDPMError
from ..core.files import check_writable_dir
from .config import DataConfig, RunOptions, ScheduleConfig, TrainConfig, UNetConfig
from .describe import describe, describe_autoencoder
from .options import click_options, from_args, run_options
from .resume import ResolvedRun, SettingsConflict, resolve_run

AUTOENCODER_ONLY = frozenset({"kl_weight"})


def warn(message: str) -> None:
    """One line on stderr, prefixed with the running command's name (ddpm-train or ddpm-autoencoder)."""
    context = click.get_current_context(silent=True)
    name = context.find_root().info_name if context is not None else None
    click.echo(f"{name or 'ddpm-train'}: {message}", err=True)


def resolve(args: dict[str, Any], explicit: set[str], out_dir: Path, kind: str = "unet") -> ResolvedRun:
    """The run to train (train/resume.py): conflicting settings are a usage error; a checkpoint that
    --resume auto found is named on stderr."""
    try:
        run = resolve_run(args, explicit, args["resume"], out_dir, warn, kind)
    except SettingsConflict as exc:
        raise click.UsageError(str(exc)) from None
    if run.checkpoint is not None and args["resume"] == "auto":
        click.echo(f"resuming {run.source} (step {run.checkpoint['progress']['step']})", err=True)
    return run


def claim_out_dir(ctx: click.Context, out_dir: Path, resumed: str | Path | None, args: dict[str, Any]) -> None:
    """Lock OUT for this run; a folder that holds another run is refused unless --overwrite."""
    from .checkpoint import RunLock, run_files

    check_writable_dir(out_dir)
    if int(os.environ.get("RANK", "0")) == 0:  # under torchrun, rank 0 writes for all
        ctx.call_on_close(RunLock(out_dir).release)
    found = run_files(out_dir)
    if args["resume"] == "auto" and resumed is None:  # the same run starting over: only unreadable checkpoints stop it
        found = [path for path in found if path.name.startswith("ckpt-")]
    in_place = resumed is not None and Path(os.path.realpath(resumed)).parent == Path(
        os.path.realpath(out_dir)
    )  # realpath: a link loop raises nothing
    if found and not in_place and not args["overwrite"]:
        raise DDPMError(
            f"{out_dir} holds another run ({found[0].name}); continue it with --resume auto, "
            "or pass --overwrite or another --out"
        )


@click.command(
    context_settings={"help_option_names": ["-h", "--help"], "show_default": True},
    params=click_options(TrainConfig, UNetConfig, ScheduleConfig, DataConfig, RunOptions, skip=AUTOENCODER_ONLY),
)
@click.option(
    "--autoencoder",
    type=click.Path(path_type=Path),
    default=None,
    help="Train a latent model: the U-Net learns this ddpm-autoencoder checkpoint's latents, which it carries "
    "(its image size, transform and range become the run's). Use with --preset latent.",
)
@run_options(dry_run="Check the data and settings, print the model's size and cost, and exit.")
@click.pass_context
def train_command(ctx: click.Context, **args: Any) -> None:
    """Train a DDPM U-Net on MNIST (L_simple, AdamW, EMA) and write OUT/model.pt.

    \b
    CPU:  ddpm-train --preset small --data-dir data/mnist --out runs/small
    GPU:  ddpm-train --preset labml --device cuda --out runs/labml
    latent: ddpm-train --preset latent --autoencoder runs/ae32/model.pt --out runs/latent
    """
    train(ctx, args, "unet")


def finished(trainer: Any, resume: str | None, out_dir: Path) -> bool:
    """Whether the checkpoint already ends the run: repeating a finished run's command with --resume auto
    says so and is no error (True); resuming it any other way is refused in one line."""
    if trainer.step < trainer.total_steps:
        return False
    if resume != "auto":
        raise DDPMError(
            f"the checkpoint is already at step {trainer.step}, the end of this run; raise --epochs or "
            "--max-steps to go on"
        )
    if trainer.dist.is_main:
        click.echo(
            f"the run in {out_dir} is complete (step {trainer.step} of {trainer.total_steps}); nothing to do "
            "(raise --epochs or --max-steps to go on)"
        )
    return True


def train(ctx: click.Context, args: dict[str, Any], kind: str) -> None:
    """Resolve, describe and run a training run of ``kind`` ("unet" or "autoencoder") from a command's arguments."""
    import torch

    from .autoencoder_trainer import AutoencoderTrainer
    from .checkpoint import step_checkpoints
    from .data import data_change, resolve_data_dir
    from .distributed import resolve_device, shutdown_distributed
    from .trainer import Trainer

    explicit = {name for name in args if ctx.get_parameter_source(name) == click.core.ParameterSource.COMMANDLINE}
    options = from_args(RunOptions(out_dir=Path("runs") / args["preset"]), args)
    run = resolve(args, explicit, options.out_dir, kind)
    settings, checkpoint, resumed = run.settings, run.checkpoint, run.source
    device = resolve_device(options.device)
    if settings.train.precision == "bf16" and device.type == "cpu" and not torch.backends.mkldnn.is_available():
        raise DDPMError("--precision bf16 on CPU needs a PyTorch build with oneDNN")
    if args["threads"]:
        torch.set_num_threads(args["threads"])
    resolve_data_dir(options.data_dir, options.download)  # fetched, or refused, before OUT is made
    if not args["dry_run"]:
        claim_out_dir(ctx, options.out_dir, resumed, args)
    options.replace_old = checkpoint is None and bool(step_checkpoints(options.out_dir))
    trainer = (AutoencoderTrainer if kind == "autoencoder" else Trainer)(settings, options, resume=checkpoint)
    if (
        checkpoint is not None
        and trainer.dist.is_main
        and (change := data_change(checkpoint.get("data_fingerprint"), trainer.data_fingerprint))
    ):
        warn(f"--data-dir {options.data_dir} holds {change}; the run goes on with it")
    try:
        if not args["dry_run"] and finished(trainer, args["resume"], options.out_dir):
            return
        if trainer.dist.is_main:
            (describe_autoencoder if kind == "autoencoder" else describe)(trainer)
        if args["dry_run"]:
            return
        path = trainer.run(warn)
        if trainer.dist.is_main:
            click.echo(f"wrote {path} (step {trainer.step})")
    finally:
        shutdown_distributed()


def main() -> None:
    run_command(train_command, "ddpm-train")


if __name__ == "__main__":
    main()
