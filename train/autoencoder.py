"""The autoencoder of a latent model: images [B, C, H, W] ↔ latents [B, L, H/f, W/f].

A KL-regularised autoencoder as in latent diffusion (Rombach et al. 2022): the encoder gives the
mean and log-variance of a diagonal Gaussian q(z|x), the decoder maps z back to the image. A light KL
term keeps the latent space smooth and bounded; the diffusion model then learns the encoded training
set scaled by ``scale_factor`` = 1 / std(z), so that it sees unit variance, as the pixel model sees
images in [-1, 1]. Each level halves the resolution, so f = 2^(levels−1) where ``widths`` lists the
levels' channels from the image's resolution down.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import AutoencoderConfig


class Block(nn.Module):
    """GN → SiLU → conv3x3 → GN → SiLU → conv3x3, plus a 1x1 shortcut when the width changes."""

    def __init__(self, in_channels: int, out_channels: int, groups: int) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = nn.GroupNorm(groups, out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.shortcut = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return h + self.shortcut(x)


def _level(in_channels: int, out_channels: int, config: AutoencoderConfig) -> list[nn.Module]:
    return [
        Block(in_channels if i == 0 else out_channels, out_channels, config.norm_groups) for i in range(config.blocks)
    ]


class Encoder(nn.Module):
    """x [B, C, H, W] → (mean, log-variance), each [B, L, H/f, W/f]."""

    def __init__(self, config: AutoencoderConfig) -> None:
        super().__init__()
        widths = config.widths
        layers: list[nn.Module] = [nn.Conv2d(config.image_channels, widths[0], 3, padding=1)]
        for level, width in enumerate(widths):
            layers += _level(widths[max(level - 1, 0)], width, config)
            if level < len(widths) - 1:
                layers.append(nn.Conv2d(width, width, 3, stride=2, padding=1))
        layers += [
            nn.GroupNorm(config.norm_groups, widths[-1]),
            nn.SiLU(),
            nn.Conv2d(widths[-1], 2 * config.latent_channels, 3, padding=1),
        ]
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, log_variance = self.layers(x).chunk(2, dim=1)
        return mean, log_variance.clamp(-30.0, 20.0)


class Decoder(nn.Module):
    """z [B, L, H/f, W/f] → x̂ [B, C, H, W].

    The decoder is the one network a latent sample runs at the image's resolution, so it is kept
    cheap: each upsampling is a 2x2 stride-2 transposed convolution (4 taps, no overlap) straight to
    the next level's narrower width, and the widest level works at the lowest resolution.
    """

    def __init__(self, config: AutoencoderConfig) -> None:
        super().__init__()
        widths = config.widths[::-1]
        layers: list[nn.Module] = [nn.Conv2d(config.latent_channels, widths[0], 3, padding=1)]
        for level, width in enumerate(widths):
            layers += _level(width, width, config)
            if level < len(widths) - 1:
                layers.append(nn.ConvTranspose2d(width, widths[level + 1], 2, stride=2))
        layers += [
            nn.GroupNorm(config.norm_groups, widths[-1]),
            nn.SiLU(),
            nn.Conv2d(widths[-1], config.image_channels, 3, padding=1),
        ]
        self.layers = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.layers(z)


class Autoencoder(nn.Module):
    def __init__(self, config: AutoencoderConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)
        self.decoder = Decoder(config)

    def forward(self, x: torch.Tensor, noise: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The reconstruction from z = μ + σ·noise, and KL(q(z|x) ‖ N(0, I)) per image."""
        mean, log_variance = self.encoder(x)
        z = mean + torch.exp(0.5 * log_variance) * noise
        kl = 0.5 * (mean.square() + log_variance.exp() - 1.0 - log_variance).flatten(1).sum(1)
        return self.decoder(z), kl


def autoencoder_loss(model: nn.Module, x: torch.Tensor, noise: torch.Tensor, kl_weight: float) -> torch.Tensor:
    """Per image: Σ|x − x̂| over pixels + kl_weight · KL, averaged over the batch (the latent-diffusion
    weighting: at kl_weight 1e-6 the KL only keeps the latents from drifting, it does not blur)."""
    reconstruction, kl = model(x, noise)
    return ((x - reconstruction).abs().flatten(1).sum(1) + kl_weight * kl).mean()
