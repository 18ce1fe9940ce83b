"""The autoencoder a latent U-Net learns the latents of: read from its checkpoint once, carried inside
every checkpoint of the latent run, used to encode the training set and to decode preview samples.

The record a latent checkpoint carries (``Settings.autoencoder``)::

    {"config": AutoencoderConfig.to_dict(), "data": DataConfig.to_dict(), "weights": EMA state dict,
     "sha256": hash of the autoencoder checkpoint file, "step": its training step,
     "scale_factor": 1 / std of the encoded training set (None until the first run measures it)}
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..core.errors import DDPMError
from ..core.files import file_sha256
from .autoencoder import Autoencoder
from .config import AutoencoderConfig, DataConfig

ENCODE_BATCH = 500


def autoencoder_record(path: Path) -> dict[str, Any]:
    """The record of the ddpm-autoencoder checkpoint at ``path`` (its EMA weights), refused in one line
    when it is another kind of checkpoint."""
    from .checkpoint import load_checkpoint

    checkpoint = load_checkpoint(path)
    if checkpoint.get("kind") != "autoencoder":
        raise DDPMError(
            f"--autoencoder {path} is a U-Net checkpoint, not an autoencoder (train one with ddpm-autoencoder)"
        )
    return {
        "config": dict(checkpoint["model_config"]),
        "data": dict(checkpoint["data"]),
        "weights": checkpoint["ema"],
        "sha256": file_sha256(path),
        "step": int(checkpoint["progress"]["step"]),
        "scale_factor": None,
    }


def record_config(record: dict[str, Any]) -> AutoencoderConfig:
    return AutoencoderConfig.from_dict(record["config"])


def record_data(record: dict[str, Any]) -> DataConfig:
    return DataConfig.from_dict(record["data"])


def latent_size(record: dict[str, Any]) -> int:
    return record_data(record).image_size // record_config(record).factor


def build_autoencoder(record: dict[str, Any], device: torch.device | str = "cpu") -> Autoencoder:
    """The recorded autoencoder with its EMA weights, in eval mode, without gradients."""
    model = Autoencoder(record_config(record))
    model.load_state_dict(record["weights"])
    return model.to(device).eval().requires_grad_(False)


@torch.no_grad()
def encode(model: Autoencoder, images: torch.Tensor) -> torch.Tensor:
    """The posterior means of ``images`` [N, C, H, W], in batches: the deterministic latents the U-Net learns."""
    return torch.cat([model.encoder(images[i : i + ENCODE_BATCH])[0] for i in range(0, len(images), ENCODE_BATCH)])


def encoded_digits(record: dict[str, Any], images: np.ndarray) -> np.ndarray:
    """MNIST digits (uint8 [N, 28, 28]) as the recorded autoencoder's scaled latents [N, L, h, w]: the
    clean inputs the latent U-Net learned to denoise (its int8 copy calibrates on them)."""
    from .data import transform_images

    images = transform_images(images, record_data(record))
    return (encode(build_autoencoder(record), images) * float(record["scale_factor"])).numpy()


def scale_factor(latents: torch.Tensor) -> float:
    """1 / std of the latents, so that the diffusion sees unit variance (latent diffusion's ``scale_factor``)."""
    std = float(latents.float().std())
    if not std > 0.0:
        raise DDPMError("the autoencoder maps every training image to the same latent; it cannot carry a latent model")
    return 1.0 / std


class LatentDecoder(nn.Module):
    """The autoencoder's decoder as a latent model samples through it: images x = D(z / scale_factor)
    from the scaled latents z the U-Net draws (the trainer's previews, and the exported decoder)."""

    def __init__(self, decoder: nn.Module, scale_factor: float) -> None:
        super().__init__()
        self.decoder = decoder
        self.scale_factor = scale_factor

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z / self.scale_factor)


def latent_decoder(record: dict[str, Any], device: torch.device | str = "cpu") -> LatentDecoder:
    """The recorded autoencoder's decoder with its latent scale, in eval mode."""
    return LatentDecoder(build_autoencoder(record, device).decoder, float(record["scale_factor"])).eval()
