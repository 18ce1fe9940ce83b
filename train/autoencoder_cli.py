"""``ddpm-autoencoder``: train the autoencoder of a latent model on MNIST and write OUT/model.pt.

The first of a latent model's two stages; ``ddpm-train --preset latent --autoencoder OUT/model.pt`` is
the second. Checkpoints, --resume, EMA, signals and progress are ddpm-train's own (train/cli.py).
"""

from __future__ import annotations

from typing import Any

import click

from ..core.console import run_command
from .cli import train
from .config import AUTOENCODER_PRESETS, AUTOENCODER_TRAINING, AutoencoderConfig, DataConfig, RunOptions, TrainConfig
from .options import click_options, run_options

DIFFUSION_ONLY = frozenset({"preset", "loss_weighting", "min_snr_gamma", "label_dropout", "sample_steps"})
PRESET_DEFAULTS = {name: f"[default: {value}]" for name, value in AUTOENCODER_TRAINING.items()}
HELPS = {
    "epochs": f"Passes over the data. {PRESET_DEFAULTS['epochs']}",
    "batch_size": f"Images per step. {PRESET_DEFAULTS['batch_size']}",
    "lr": f"AdamW peak learning rate. {PRESET_DEFAULTS['lr']}",
    "lr_warmup_steps": f"Ramp the learning rate linearly over this many steps. {PRESET_DEFAULTS['lr_warmup_steps']}",
    "lr_schedule": "After warm-up: constant, or cosine/linear decay to 0 at the run's last step. [default: cosine]",
    "ema_decay": f"EMA decay of the weights. {PRESET_DEFAULTS['ema_decay']}",
    "image_size": "Training image size (MNIST is 28). [default: ae32 32, ae64 64]",
    "transform": "How 28x28 digits reach --image-size. [default: ae32 pad, ae64 resize]",
    "out_dir": "Output folder for model.pt (always the latest checkpoint), log.jsonl and reconstruction grids. "
    "[default: runs/PRESET]",
    "sample_grid": "Write a grid of training digits and their reconstructions at the end of each epoch.",
    "sample_count": "Digits in each reconstruction grid.",
}


@click.command(
    context_settings={"help_option_names": ["-h", "--help"], "show_default": True},
    params=click_options(
        TrainConfig,
        AutoencoderConfig,
        DataConfig,
        RunOptions,
        skip=DIFFUSION_ONLY,
        helps=HELPS,
        from_preset=frozenset({"image_size", "transform"}),
    ),
)
@click.option(
    "--preset",
    type=click.Choice(tuple(AUTOENCODER_PRESETS)),
    default="ae32",
    help="'ae32': 32x32 digits to 8x8x4 latents; 'ae64': 64x64 digits (MNIST resized) to 8x8x4; 'ae-tiny' for tests.",
)
@run_options(dry_run="Check the data and settings, print the model's size, and exit.")
@click.pass_context
def autoencoder_command(ctx: click.Context, **args: Any) -> None:
    """Train the autoencoder of a latent model (L1 reconstruction + a light KL, AdamW, EMA) and write OUT/model.pt.

    \b
    ddpm-autoencoder --preset ae32 --data-dir data/mnist --out runs/ae32
    ddpm-train --preset latent --autoencoder runs/ae32/model.pt --out runs/latent
    """
    train(ctx, args, "autoencoder")


def main() -> None:
    run_command(autoencoder_command, "ddpm-autoencoder")


if __name__ == "__main__":
    main()
