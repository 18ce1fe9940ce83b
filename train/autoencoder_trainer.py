"""Training the autoencoder of a latent model: the U-Net trainer's loop, checkpoints, EMA, resume and
signals, with the autoencoder's network, loss and preview in place of the diffusion's."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..core.images import to_uint8
from ..core.outputs import write_png
from .autoencoder import Autoencoder, autoencoder_loss
from .ema import EMA
from .trainer import Trainer, seed_everything, step_seed


class AutoencoderTrainer(Trainer):
    """Σ|x − x̂| + kl_weight · KL per image, with z sampled from q(z|x) by noise keyed on (seed, step)."""

    labelled = False

    def _build_model(self) -> None:
        config = self.config
        seed_everything(config.seed)
        self.model = Autoencoder(self.model_config).to(self.device, memory_format=self.memory_format)
        self.ema = EMA(self.model, config.ema_decay, config.ema_warmup)
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(),
            lr=config.lr,
            betas=config.adam_betas,
            weight_decay=config.weight_decay,
            fused=self.device.type == "cuda",
        )

    @property
    def sample_size(self) -> int:
        return self.data_config.image_size // self.model_config.factor

    def batch_loss(self, batch_ids: torch.Tensor) -> torch.Tensor:
        share = batch_ids[self.dist.rank :: self.dist.world]
        generator = torch.Generator(self.device).manual_seed(step_seed(self.config.seed, self.step))
        shape = (len(batch_ids), self.model_config.latent_channels, self.sample_size, self.sample_size)
        noise = torch.randn(shape, device=self.device, generator=generator)[self.dist.rank :: self.dist.world]
        x = self.images[share].contiguous(memory_format=self.memory_format)
        return autoencoder_loss(self.train_module, x, noise, self.config.kl_weight)

    def checkpoint(self) -> dict[str, Any]:
        checkpoint = super().checkpoint()
        checkpoint["sampling"] = {}  # an autoencoder samples nothing by itself
        return checkpoint

    @torch.no_grad()
    def write_samples(self, epoch: int) -> Path:
        """The first training digits, then their EMA reconstructions (from the posterior means), in one grid."""
        originals = self.images[: self.options.sample_count]
        reconstructions = self.ema.model.decoder(self.ema.model.encoder(originals)[0]).float()
        pair = torch.cat([originals.float(), reconstructions]).cpu().numpy()
        path = self.options.out_dir / f"reconstructions-epoch{epoch:03d}.png"
        write_png(path, to_uint8(np.asarray(pair), self.data_config.data_range), scale=2)
        return path
