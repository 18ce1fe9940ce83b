"""``ddpm-distill``: a few-step student of a trained U-Net (train/distill.py), written as OUT/model.pt."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from ..core.console import run_command
from .cli import claim_out_dir, finished, resolve, warn
from .config import DISTILL_TRAINING, DistillConfig, RunOptions, TrainConfig
from .options import click_options, from_args, run_options

# Settings of a diffusion run that a student takes from its teacher or does not use.
NOT_DISTILL = frozenset(
    {
        "preset",
        "max_images",
        "label_dropout",
        "kl_weight",
        "loss_weighting",
        "min_snr_gamma",
        "data_dir",
        "download",
        "sample_steps",
    }
)
HELPS = {
    "epochs": f"Passes over every (teacher solve, student timestep) pair. [default: {DISTILL_TRAINING['epochs']}]",
    "batch_size": f"Pairs per step. [default: {DISTILL_TRAINING['batch_size']}]",
    "lr": f"AdamW peak learning rate. [default: {DISTILL_TRAINING['lr']:g}]",
    "lr_warmup_steps": "Ramp the learning rate linearly over this many steps. "
    f"[default: {DISTILL_TRAINING['lr_warmup_steps']}]",
    "lr_schedule": f"After warm-up: constant, or cosine/linear decay to 0 at the run's last step. "
    f"[default: {DISTILL_TRAINING['lr_schedule']}]",
    "ema_decay": f"EMA decay of the student's weights. [default: {DISTILL_TRAINING['ema_decay']}]",
    "out_dir": "Output folder for model.pt (always the latest checkpoint), trajectories.pt (the teacher's solves), "
    "log.jsonl and sample grids. [default: runs/student]",
    "sample_grid": "Write an EMA sample grid PNG (2 calls) at the end of each epoch.",
}


def describe(trainer: Any) -> None:
    """What student is about to be trained, from what and how: three lines on stderr."""
    import torch

    record, config, size = trainer.settings.student, trainer.config, trainer.sample_size
    pairs = trainer.states.shape[0] * trainer.states.shape[1]
    guidance = f", guidance {record['guidance']:g} built in" if trainer.model_config.num_classes else ""
    latent = " on latents" if trainer.settings.latent else ""
    for line in (
        f"teacher: the {config.preset} preset's U-Net{latent}, checkpoint sha256 {record['teacher_sha256'][:12]} "
        f"(step {record['teacher_step']:,}); {record['trajectories']:,} solves of {record['teacher_steps']} "
        f"DPM-Solver++ (2M) steps{guidance}, {trainer.model_config.image_channels}x{size}x{size}",
        f"student: learns at timesteps {record['timesteps']} (1 to {len(record['timesteps'])} calls); "
        f"device {trainer.device.type} ({'bf16 autocast' if trainer.use_bf16 else 'fp32'}, "
        f"{torch.get_num_threads()} threads)",
        f"plan: steps {trainer.step} -> {trainer.total_steps} "
        f"({trainer.steps_per_epoch} per epoch of {pairs:,} pairs, batch {config.batch_size}), "
        f"lr {config.lr:g} ({config.lr_schedule}), EMA {config.ema_decay:g}; "
        f"checkpoints in {trainer.options.out_dir}/model.pt",
    ):
        click.echo(line, err=True)


@click.command(
    context_settings={"help_option_names": ["-h", "--help"], "show_default": True},
    params=click_options(
        TrainConfig, DistillConfig, RunOptions, skip=NOT_DISTILL, helps=HELPS, from_preset=frozenset({"out_dir"})
    ),
)
@click.option(
    "--teacher",
    type=click.Path(path_type=Path),
    default=None,
    help="The ddpm-train checkpoint (pixel or latent U-Net) to learn from; its EMA weights start the student. "
    "Needed for a new run; a resumed student carries its teacher.",
)
@run_options(dry_run="Check the teacher and settings, print the plan, and exit (no solves).")
@click.pass_context
def distill_command(ctx: click.Context, **args: Any) -> None:
    """Distil a trained U-Net into a few-step student and write OUT/model.pt.

    The teacher solves its ODE (DPM-Solver++ 2M, guidance built in) from --trajectories noise samples
    once, into OUT/trajectories.pt; the student, started from the teacher's weights, learns where each
    solve lands from its states at --student-steps timesteps. Export it with ddpm-export and sample it
    with ddpm-run --sampler consistency (the default for a student) in 1 to --student-steps calls.

    \b
    ddpm-distill --teacher runs/latent/model.pt --out runs/latent-student
    ddpm-distill --resume auto --out runs/latent-student
    """
    import torch

    from .checkpoint import step_checkpoints
    from .data import data_change
    from .distill_trainer import DistillTrainer

    explicit = {name for name in args if ctx.get_parameter_source(name) == click.core.ParameterSource.COMMANDLINE}
    options = from_args(RunOptions(out_dir=Path("runs") / "student"), args)
    if args["threads"]:
        torch.set_num_threads(args["threads"])
    run = resolve(args, explicit, options.out_dir, "student")
    if args["dry_run"]:
        record = run.settings.student
        click.echo(
            f"teacher {record['teacher_sha256'][:12]}: student timesteps {record['timesteps']}, "
            f"{record['trajectories']:,} solves of {record['teacher_steps']} steps",
            err=True,
        )
        return
    claim_out_dir(ctx, options.out_dir, run.source, args)
    options.replace_old = run.checkpoint is None and bool(step_checkpoints(options.out_dir))
    trainer = DistillTrainer(run.settings, options, resume=run.checkpoint)
    if run.checkpoint is not None and (
        change := data_change(run.checkpoint.get("data_fingerprint"), trainer.data_fingerprint)
    ):
        warn(
            f"the teacher's solves in {options.out_dir} differ from those the checkpoint learned ({change}); "
            "the run goes on with them"
        )
    if finished(trainer, args["resume"], options.out_dir):
        return
    describe(trainer)
    path = trainer.run(warn)
    click.echo(f"wrote {path} (step {trainer.step})")


def main() -> None:
    run_command(distill_command, "ddpm-distill")


if __name__ == "__main__":
    main()
