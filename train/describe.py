"""What a training run is about to do, said on stderr before its first step: the model, the data, the
plan and the recipe (``ddpm-train``), or the autoencoder's (``ddpm-autoencoder``)."""

from __future__ import annotations

from typing import Any

import click


def describe(trainer: Any) -> None:
    """What is about to be trained, on what and how: four lines on stderr."""
    import torch

    from .unet import count_parameters, forward_flops

    model_config, data_config, config = trainer.model_config, trainer.data_config, trainer.config
    schedule, size = trainer.settings.schedule, trainer.sample_size
    gflops = forward_flops(trainer.model, size) / 1e9
    precision = "bf16 autocast" if trainer.use_bf16 else "fp32"
    processes = f", {trainer.dist.world} processes" if trainer.dist.world > 1 else ""
    conditional = (
        f", conditional on {model_config.num_classes} classes (label dropout {config.label_dropout:g})"
        if model_config.num_classes
        else ""
    )
    loss = f"Min-SNR-{config.min_snr_gamma:g}" if config.loss_weighting == "min-snr" else "L_simple"
    latent = ""
    if trainer.settings.latent:
        record = trainer.settings.autoencoder
        latent = (
            f", latents {model_config.image_channels}x{size}x{size} of autoencoder {record['sha256'][:12]} "
            f"(scale {record['scale_factor']:.4g})"
        )
    for line in (
        f"model: {config.preset}, {count_parameters(trainer.model):,} parameters, widths {model_config.widths()}, "
        f"{gflops:.3f} GFLOP per forward at {size}x{size}, "
        f"{schedule['kind']} schedule T={schedule['timesteps']}{conditional}",
        f"data: {len(trainer.images):,} images from {trainer.options.data_dir} ({data_config.transform} to "
        f"{data_config.image_size}, range {list(data_config.data_range)}{latent}); device {trainer.device.type} "
        f"({precision}, {torch.get_num_threads()} threads{processes})",
        f"plan: steps {trainer.step} -> {trainer.total_steps} ({trainer.steps_per_epoch} per epoch, global batch "
        f"{config.batch_size}); checkpoints in {trainer.options.out_dir}/model.pt",
        f"recipe: lr {config.lr:g} ({config.lr_schedule}, {config.lr_warmup_steps} warm-up steps), loss {loss}, "
        f"dropout {model_config.dropout:g}, EMA {config.ema_decay:g}",
    ):
        click.echo(line, err=True)


def describe_autoencoder(trainer: Any) -> None:
    """What autoencoder is about to be trained: three lines on stderr."""
    from .unet import count_parameters

    config, data, train = trainer.model_config, trainer.data_config, trainer.config
    side, latent = data.image_size, trainer.sample_size
    for line in (
        f"autoencoder: {train.preset}, {count_parameters(trainer.model):,} parameters, widths {list(config.widths)}, "
        f"{side}x{side}x{config.image_channels} -> {latent}x{latent}x{config.latent_channels} (f = {config.factor})",
        f"data: {len(trainer.images):,} images from {trainer.options.data_dir} ({data.transform} to {side}); "
        f"device {trainer.device.type} ({'bf16 autocast' if trainer.use_bf16 else 'fp32'})",
        f"plan: steps {trainer.step} -> {trainer.total_steps} "
        f"({trainer.steps_per_epoch} per epoch, batch {train.batch_size}), "
        f"lr {train.lr:g} ({train.lr_schedule}), L1 + {train.kl_weight:g} KL, EMA {train.ema_decay:g}; "
        f"checkpoints in {trainer.options.out_dir}/model.pt",
    ):
        click.echo(line, err=True)
