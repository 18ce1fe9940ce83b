"""``ddpm-train``: train a U-Net on MNIST and write checkpoints."""

from __future__ import annotations

import math
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

import click

from ..core.console import OutputPath, run_command
from ..core.errors import DDPMError
from ..core.files import check_writable_dir

PRESET_NAMES = ("small", "labml", "tiny")
# Training defaults per preset; `labml` follows the seed's own settings.
# `small` is the recipe measured fastest to clean digits on a CPU (benchmarks/results/recipe-ablation.md).
PLAIN_RECIPE = {"lr_schedule": "constant", "lr_warmup_steps": 0, "loss_weighting": "none", "ema_decay": 0.999}
PRESET_TRAINING: dict[str, dict[str, Any]] = {
    "small": {"batch_size": 128, "lr": 1e-3, "epochs": 20, "lr_schedule": "cosine", "lr_warmup_steps": 200,
              "loss_weighting": "min-snr", "ema_decay": 0.9995},
    "labml": {"batch_size": 64, "lr": 2e-5, "epochs": 3, **PLAIN_RECIPE},
    "tiny": {"batch_size": 32, "lr": 1e-3, "epochs": 1, **PLAIN_RECIPE},
}


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


SETTING_KEYS = {
    "preset": ("train", "preset"), "batch_size": ("train", "batch_size"), "lr": ("train", "lr"),
    "adam_betas": ("train", "adam_betas"), "weight_decay": ("train", "weight_decay"), "grad_clip": ("train", "grad_clip"),
    "lr_warmup_steps": ("train", "lr_warmup_steps"), "lr_schedule": ("train", "lr_schedule"),
    "loss_weighting": ("train", "loss_weighting"), "min_snr_gamma": ("train", "min_snr_gamma"), "ema_decay": ("train", "ema_decay"), "ema_warmup": ("train", "ema_warmup"),
    "max_images": ("train", "max_images"), "seed": ("train", "seed"), "precision": ("train", "precision"),
    "base_channels": ("model_config", "base_channels"), "channel_mults": ("model_config", "channel_mults"),
    "attention": ("model_config", "attention"), "blocks": ("model_config", "blocks_per_resolution"),
    "norm_groups": ("model_config", "norm_groups"), "final_norm_groups": ("model_config", "final_norm_groups"),
    "dropout": ("model_config", "dropout"), "width_rule": ("model_config", "width_rule"),
    "image_size": ("data", "image_size"), "transform": ("data", "transform"), "data_range": ("data", "data_range"),
    "timesteps": ("schedule", "timesteps"), "beta_start": ("schedule", "beta_start"), "beta_end": ("schedule", "beta_end"),
    "schedule": ("schedule", "kind"), "conditional": ("model_config", "num_classes"), "label_dropout": ("train", "label_dropout"),
}
MNIST_CLASSES = 10
LR_SCHEDULES = ("constant", "cosine", "linear")  # as ddpm.train.trainer (not imported here: --help stays torch-free)
LOSS_WEIGHTINGS = ("none", "min-snr")


def settings_from_args(args: dict[str, Any]):
    """Model, data, schedule and training settings of a new run, from the command line."""
    from .config import preset as make_preset
    from .data import DATA_RANGES, DataConfig
    from .trainer import TrainConfig

    defaults = PRESET_TRAINING[args["preset"]]
    chosen = lambda key: defaults[key] if args[key] is None else args[key]  # noqa: E731
    overrides = {
        "base_channels": args["base_channels"], "channel_mults": args["channel_mults"], "attention": args["attention"],
        "blocks_per_resolution": args["blocks"], "norm_groups": args["norm_groups"],
        "final_norm_groups": args["final_norm_groups"], "dropout": args["dropout"], "width_rule": args["width_rule"],
        "num_classes": MNIST_CLASSES if args["conditional"] else None,
    }
    model_config = make_preset(args["preset"], **{k: v for k, v in overrides.items() if v is not None})
    problems = model_config.problems()
    if problems:
        raise click.UsageError("invalid model settings: " + "; ".join(problems))
    data_config = DataConfig(args["image_size"], args["transform"], DATA_RANGES[args["data_range"]])
    if args["image_size"] % (2 ** model_config.downsamplings()):
        raise click.UsageError(
            f"--image-size {args['image_size']} must be divisible by {2 ** model_config.downsamplings()} "
            f"({model_config.downsamplings()} downsamplings)"
        )
    if args["schedule"] == "cosine":
        if args["beta_start_given"] or args["beta_end_given"]:
            raise click.UsageError("--beta-start/--beta-end set the linear schedule; the cosine schedule has no such settings")
        schedule = {"kind": "cosine", "timesteps": args["timesteps"], "offset": 0.008, "max_beta": 0.999}
    else:
        if not args["beta_start"] <= args["beta_end"]:
            raise click.UsageError("--beta-start must not exceed --beta-end")
        schedule = {"kind": "linear", "timesteps": args["timesteps"], "beta_start": args["beta_start"], "beta_end": args["beta_end"]}
    train_config = TrainConfig(
        preset=args["preset"],
        batch_size=chosen("batch_size"),
        lr=chosen("lr"),
        adam_betas=args["adam_betas"],
        weight_decay=args["weight_decay"],
        grad_clip=args["grad_clip"],
        lr_warmup_steps=chosen("lr_warmup_steps"),
        lr_schedule=chosen("lr_schedule"),
        loss_weighting=chosen("loss_weighting"),
        min_snr_gamma=args["min_snr_gamma"],
        ema_decay=chosen("ema_decay"),
        ema_warmup=args["ema_warmup"],
        epochs=chosen("epochs"),
        max_steps=args["max_steps"],
        max_images=args["max_images"],
        seed=args["seed"],
        precision=args["precision"],
        label_dropout=args["label_dropout"],
    )
    return model_config, data_config, schedule, train_config


def settings_from_checkpoint(checkpoint: dict[str, Any], origin: Any):
    from .config import UNetConfig
    from .data import DataConfig
    from .trainer import TrainConfig

    try:
        return (
            UNetConfig.from_dict(checkpoint["model_config"]),
            DataConfig.from_dict(checkpoint["data"]),
            dict(checkpoint["schedule"]),
            TrainConfig.from_dict(checkpoint["train"]),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise DDPMError(f"{origin}: checkpoint settings are unreadable ({exc})") from None


def differing_settings(fresh, checkpoint: dict[str, Any], explicit: set[str]) -> list[str]:
    """Options given on the command line whose values differ from the checkpoint's."""
    def sections(settings) -> dict[str, dict[str, Any]]:
        model_config, data_config, schedule, train_config = settings
        return {"model_config": model_config.to_dict(), "data": data_config.to_dict(), "schedule": schedule,
                "train": train_config.to_dict()}

    given_sections, stored_sections = sections(fresh), sections(settings_from_checkpoint(checkpoint, "checkpoint"))
    differing = []
    for option in sorted(explicit & set(SETTING_KEYS)):
        section, key = SETTING_KEYS[option]
        given, stored = given_sections[section].get(key), stored_sections[section].get(key)
        if isinstance(given, tuple):
            given = list(given)
        if given != stored:
            differing.append(f"--{option.replace('_', '-')} {given} (checkpoint: {stored})")
    return differing


class FiniteFloatRange(click.FloatRange):
    """A FloatRange that also refuses nan and ±inf (click's comparisons let nan through)."""

    def convert(self, value: Any, param: Any, ctx: Any) -> float:
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return number


POSITIVE_INT = click.IntRange(min=1)
POSITIVE_FLOAT = FiniteFloatRange(min=0.0, min_open=True)


@click.command(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.option("--preset", type=click.Choice(PRESET_NAMES), default="small",
              help="Model preset: 'labml' is the seed's 169M network; 'small' a ~2M network for CPUs; 'tiny' for tests.")
@click.option("--data-dir", type=click.Path(path_type=Path), default=Path("data/mnist"), envvar="DDPM_DATA_DIR",
              help="Folder with the four MNIST IDX files (plain or .gz). Env: DDPM_DATA_DIR.")
@click.option("--download", is_flag=True, help="Fetch MNIST through torchvision into --data-dir if it is missing.")
@click.option("--out", "out_dir", type=OutputPath(folder=True), default=None,
              help="Output folder for model.pt (always the latest checkpoint), log.jsonl and sample grids. [default: runs/PRESET]")
@click.option("--overwrite", is_flag=True, help="Start a new run even if OUT/model.pt exists (it is replaced at the first save).")
@click.option("--resume", default=None, metavar="PATH|auto",
              help="Continue from this checkpoint with its model, data, schedule and optimizer; only --epochs/--max-steps "
                   "may change. 'auto': the newest readable checkpoint in --out (skipping corrupt ones), or a new run if none.")
@click.option("--keep", type=POSITIVE_INT, default=3, help="Step checkpoints (ckpt-STEP.pt) kept beside model.pt.")
@click.option("--max-bad-steps", type=click.IntRange(min=0), default=10, show_default=True,
              help="Batches with a non-finite loss or gradient to skip (no update, one warning each) before stopping; "
                   "0 stops at the first.")
@click.option("--epochs", type=POSITIVE_INT, default=None, help="Passes over the data. [default: small 20, labml 3, tiny 1]")
@click.option("--max-steps", type=POSITIVE_INT, default=None, help="Stop after this many optimizer steps in total (caps --epochs).")
@click.option("--max-images", type=POSITIVE_INT, default=None, help="Train on the first N images only (quick runs).")
@click.option("--batch-size", type=POSITIVE_INT, default=None, help="Images per step. [default: small 128, labml 64, tiny 32]")
@click.option("--lr", type=POSITIVE_FLOAT, default=None, help="AdamW peak learning rate. [default: small 1e-3, labml 2e-5, tiny 1e-3]")
@click.option("--adam-betas", type=Betas(), default="0.9,0.999", help="AdamW β1,β2.")
@click.option("--weight-decay", type=FiniteFloatRange(min=0.0), default=0.0, help="AdamW decoupled weight decay.")
@click.option("--grad-clip", type=FiniteFloatRange(min=0.0), default=1.0, help="Clip the gradient norm to this value (0 disables).")
@click.option("--lr-warmup-steps", type=click.IntRange(min=0), default=None,
              help="Ramp the learning rate linearly over this many steps. [default: small 200, others 0]")
@click.option("--lr-schedule", type=click.Choice(LR_SCHEDULES), default=None,
              help="After warm-up: constant, or cosine/linear decay to 0 at the run's last step (--epochs/--max-steps). "
                   "[default: small cosine, others constant]")
@click.option("--loss-weighting", type=click.Choice(LOSS_WEIGHTINGS), default=None,
              help="'min-snr': weight each timestep's loss by min(SNR, γ)/SNR (Min-SNR-γ); 'none': plain L_simple. "
                   "[default: small min-snr, others none]")
@click.option("--min-snr-gamma", type=POSITIVE_FLOAT, default=5.0, help="γ of --loss-weighting min-snr.")
@click.option("--ema-decay", type=FiniteFloatRange(min=0.0, max=1.0, max_open=True), default=None,
              help="EMA decay of the weights; keep 1/(1-decay) well below the run's step count. [default: small 0.9995, others 0.999]")
@click.option("--ema-warmup/--no-ema-warmup", default=True, help="Use decay min(d, (1+n)/(10+n)) for the first updates.")
@click.option("--base-channels", type=POSITIVE_INT, default=None, help="Channels after the input projection. [preset]")
@click.option("--channel-mults", type=IntList(), default=None, help="Channel multiplier per resolution level, e.g. 1,2,2,4. [preset]")
@click.option("--attention", type=BoolList(), default=None, help="Self-attention per level as 1/0, e.g. 0,0,1,1. [preset]")
@click.option("--blocks", type=POSITIVE_INT, default=None, help="Residual blocks per resolution level. [preset]")
@click.option("--norm-groups", type=POSITIVE_INT, default=None, help="GroupNorm groups in the blocks. [preset]")
@click.option("--final-norm-groups", type=POSITIVE_INT, default=None, help="GroupNorm groups before the output conv. [preset]")
@click.option("--dropout", type=FiniteFloatRange(min=0.0, max=1.0, max_open=True), default=None, help="Dropout in the residual blocks. [preset]")
@click.option("--width-rule", type=click.Choice(["compound", "base"]), default=None,
              help="'compound': width = previous·mult (labml); 'base': width = base·mult. [preset]")
@click.option("--conditional", is_flag=True,
              help="Class-conditional model: a digit embedding added to the time embedding, plus a 'no class' index "
                   "for classifier-free guidance (ddpm-run --digit, --guidance).")
@click.option("--label-dropout", type=FiniteFloatRange(min=0.0, max=1.0, max_open=True), default=0.1,
              help="--conditional: share of training labels replaced by 'no class', so one model learns both.")
@click.option("--schedule", type=click.Choice(["linear", "cosine"]), default="linear",
              help="Noise schedule: 'linear' β (Ho et al.) or 'cosine' ᾱ (Nichol & Dhariwal, s = 0.008, β ≤ 0.999).")
@click.option("--timesteps", type=POSITIVE_INT, default=1000, help="Diffusion steps T.")
@click.option("--beta-start", type=POSITIVE_FLOAT, default=1e-4, help="β_1 of the linear schedule.")
@click.option("--beta-end", type=FiniteFloatRange(min=0.0, max=1.0, min_open=True, max_open=True), default=0.02, help="β_T of the linear schedule.")
@click.option("--image-size", type=click.IntRange(min=8), default=32, help="Training image size (MNIST is 28).")
@click.option("--transform", type=click.Choice(["pad", "resize"]), default="pad", help="How 28x28 digits reach --image-size.")
@click.option("--data-range", type=click.Choice(["-1,1", "0,1"]), default="-1,1",
              help="Pixel value range; '0,1' is labml's. Write --data-range=0,1.")
@click.option("--seed", type=click.IntRange(0, 2**63 - 1), default=0, help="Seed for torch, NumPy and Python.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", help="Where to train.")
@click.option("--precision", type=click.Choice(["auto", "fp32", "bf16"]), default="auto",
              help="'auto': bf16 autocast on CUDA, fp32 on CPU; 'bf16' also speeds up CPUs with AVX-512 BF16.")
@click.option("--threads", type=click.IntRange(1, 1024), default=None, help="CPU threads for PyTorch. [default: PyTorch's choice]")
@click.option("--channels-last/--no-channels-last", default=None,
              help="Channels-last memory layout for convolutions. [default: on for CUDA, off for CPU]")
@click.option("--compile", "compile_model", is_flag=True, help="torch.compile the U-Net (slower start, faster steps on GPUs).")
@click.option("--save-every", type=click.IntRange(min=0), default=1000, help="Write OUT/model.pt every N steps (0: only at the end).")
@click.option("--log-every", type=POSITIVE_INT, default=20, help="Append the mean loss to OUT/log.jsonl every N steps.")
@click.option("--samples/--no-samples", default=True, help="Write an EMA sample grid PNG at the end of each epoch.")
@click.option("--sample-count", type=POSITIVE_INT, default=16, help="Images in each sample grid.")
@click.option("--sample-steps", type=POSITIVE_INT, default=100, help="Sampling steps for the grids (respaced ancestral).")
@click.option("--progress/--no-progress", default=True, help="Show a progress bar on stderr.")
@click.option("--dry-run", is_flag=True, help="Check the data and settings, print the model's size and cost, and exit.")
@click.pass_context
def train_command(ctx: click.Context, **args: Any) -> None:
    """Train a DDPM U-Net on MNIST (L_simple, AdamW, EMA) and write OUT/model.pt.

    \b
    CPU:  ddpm-train --preset small --data-dir ../shared/data/mnist --out runs/small
    GPU:  ddpm-train --preset labml --device cuda --out runs/labml
    """
    # torch is imported here so that --help and argument errors stay fast.
    import torch

    from .checkpoint import RunLock, find_resumable, load_checkpoint, run_files, step_checkpoints
    from .trainer import RunOptions, Trainer, resolve_device, shutdown_distributed
    from .unet import UNet, count_parameters, forward_flops

    explicit = {name for name in args if ctx.get_parameter_source(name) == click.core.ParameterSource.COMMANDLINE}
    args["beta_start_given"], args["beta_end_given"] = "beta_start" in explicit, "beta_end" in explicit
    out_dir = args["out_dir"] or Path("runs") / args["preset"]

    warn = lambda message: click.echo(f"ddpm-train: {message}", err=True)  # noqa: E731
    resume = args["resume"]
    checkpoint = None
    if resume is not None and resume != "auto":
        checkpoint = load_checkpoint(Path(resume))
        if explicit & set(SETTING_KEYS):  # settings may be repeated, not changed
            differing = differing_settings(settings_from_args(args), checkpoint, explicit)
            if differing:
                raise click.UsageError(f"{resume} was trained with other settings: {'; '.join(differing)}")
    elif resume == "auto":
        fresh = settings_from_args(args)
        found = find_resumable(out_dir, warn)
        if found is None:
            warn(f"no checkpoint in {out_dir}: starting a new run")
            model_config, data_config, schedule, train_config = fresh
        else:
            resume, checkpoint = found
            differing = differing_settings(fresh, checkpoint, explicit)
            if differing:
                raise click.UsageError(f"{resume} was trained with other settings: {'; '.join(differing)}")
            click.echo(f"resuming {resume} (step {checkpoint['progress']['step']})", err=True)
    else:
        model_config, data_config, schedule, train_config = settings_from_args(args)
    if checkpoint is not None:
        model_config, data_config, schedule, train_config = settings_from_checkpoint(checkpoint, resume)
        updates = {key: args[key] for key in ("epochs", "max_steps") if key in explicit}
        train_config = replace(train_config, **updates)

    device = resolve_device(args["device"])
    if train_config.precision == "bf16" and device.type == "cpu" and not torch.backends.mkldnn.is_available():
        raise DDPMError("--precision bf16 on CPU needs a PyTorch build with oneDNN")
    if args["threads"]:
        torch.set_num_threads(args["threads"])

    if not args["dry_run"]:
        check_writable_dir(out_dir)
        if int(os.environ.get("RANK", "0")) == 0:  # under torchrun, rank 0 writes for all
            ctx.call_on_close(RunLock(out_dir).release)
        resuming_in_place = checkpoint is not None and Path(resume).resolve().parent == out_dir.resolve()
        found = run_files(out_dir)
        if resume == "auto" and checkpoint is None:  # the same run starting over: only unreadable checkpoints stop it
            found = [path for path in found if path.name.startswith("ckpt-")]
        if found and not resuming_in_place and not args["overwrite"]:
            raise DDPMError(f"{out_dir} holds another run ({found[0].name}); continue it with --resume auto, "
                            "or pass --overwrite or another --out")

    options = RunOptions(
        out_dir=out_dir, device=args["device"], save_every=args["save_every"], log_every=args["log_every"],
        sample_grid=args["samples"], sample_count=args["sample_count"], sample_steps=min(args["sample_steps"], schedule["timesteps"]),
        progress=args["progress"], data_dir=args["data_dir"], download=args["download"],
        keep=args["keep"], max_bad_steps=args["max_bad_steps"],
        channels_last=args["channels_last"], compile=args["compile_model"],
        replace_old=checkpoint is None and bool(step_checkpoints(out_dir)),
    )
    trainer = Trainer(model_config, data_config, schedule, train_config, options, resume=checkpoint)
    try:
        if not args["dry_run"] and trainer.step >= trainer.total_steps:
            raise DDPMError(
                f"the checkpoint is already at step {trainer.step}, the end of this run; raise --epochs or --max-steps to go on"
            )

        if trainer.dist.is_main:
            parameters = count_parameters(trainer.model)
            gflops = forward_flops(trainer.model, data_config.image_size) / 1e9
            precision = "bf16 autocast" if trainer.use_bf16 else "fp32"
            processes = f", {trainer.dist.world} processes" if trainer.dist.world > 1 else ""
            click.echo(
                f"model: {train_config.preset}, {parameters:,} parameters, widths {model_config.widths()}, "
                f"{gflops:.2f} GFLOP per forward at {data_config.image_size}x{data_config.image_size}, "
                f"{schedule['kind']} schedule T={schedule['timesteps']}"
                + (f", conditional on {model_config.num_classes} classes (label dropout {train_config.label_dropout:g})"
                   if model_config.num_classes else ""),
                err=True,
            )
            click.echo(
                f"data: {len(trainer.images):,} images from {options.data_dir} ({data_config.transform} to "
                f"{data_config.image_size}, range {list(data_config.data_range)}); device {trainer.device.type} ({precision}, "
                f"{torch.get_num_threads()} threads{processes})",
                err=True,
            )
            click.echo(
                f"plan: steps {trainer.step} -> {trainer.total_steps} ({trainer.steps_per_epoch} per epoch, global batch "
                f"{train_config.batch_size}); checkpoints in {out_dir}/model.pt",
                err=True,
            )
            click.echo(
                f"recipe: lr {train_config.lr:g} ({train_config.lr_schedule}, {train_config.lr_warmup_steps} warm-up steps), "
                f"loss {'Min-SNR-' + format(train_config.min_snr_gamma, 'g') if train_config.loss_weighting == 'min-snr' else 'L_simple'}, "
                f"dropout {model_config.dropout:g}, EMA {train_config.ema_decay:g}",
                err=True,
            )
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
