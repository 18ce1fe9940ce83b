"""The ε-prediction U-Net.

Module names and shapes follow the labml.ai annotated DDPM U-Net, so that a state dict saved by
that code loads into ``UNet(preset("labml"))`` unchanged. Shapes: x [B, C, H, W], t int64 [B]
(the raw step index 0..T-1), output ε [B, C, H, W].
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .config import UNetConfig


class TimeEmbedding(nn.Module):
    """Sinusoidal embedding of the step, then Linear → SiLU → Linear, to ``channels`` features.

    With half = channels/8 frequencies ω_i = exp(−ln(10000)·i/(half−1)), the sinusoid is
    [sin(t·ω), cos(t·ω)] of size channels/4.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        half = channels // 8
        frequencies = torch.exp(torch.arange(half, dtype=torch.float32) * -(math.log(10_000) / (half - 1)))
        self.register_buffer("frequencies", frequencies, persistent=False)
        self.lin1 = nn.Linear(channels // 4, channels)
        self.act = nn.SiLU()
        self.lin2 = nn.Linear(channels, channels)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        angles = t.to(torch.float32)[:, None] * self.frequencies[None, :]
        sinusoid = torch.cat((angles.sin(), angles.cos()), dim=1)
        return self.lin2(self.act(self.lin1(sinusoid)))


class ResidualBlock(nn.Module):
    """GN → SiLU → conv3x3 → + Linear(SiLU(t_emb)) → GN → SiLU → Dropout → conv3x3, plus shortcut."""

    def __init__(self, in_channels: int, out_channels: int, time_channels: int, groups: int, dropout: float) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, in_channels)
        self.act1 = nn.SiLU()
        self.conv1 = nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1)
        self.norm2 = nn.GroupNorm(groups, out_channels)
        self.act2 = nn.SiLU()
        self.conv2 = nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1)
        self.shortcut = (
            nn.Conv2d(in_channels, out_channels, kernel_size=1) if in_channels != out_channels else nn.Identity()
        )
        self.time_emb = nn.Linear(time_channels, out_channels)
        self.time_act = nn.SiLU()
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, t_emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(self.act1(self.norm1(x)))
        h = h + self.time_emb(self.time_act(t_emb))[:, :, None, None]
        h = self.conv2(self.dropout(self.act2(self.norm2(h))))
        return h + self.shortcut(x)


class AttentionBlock(nn.Module):
    """Single-head self-attention over the H·W positions, d_k = C, with a residual connection.

    ``norm`` exists only so that labml state dicts load: the labml block creates it but never
    applies it, and neither does this one.
    """

    def __init__(self, channels: int, groups: int) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(groups, channels)
        self.norm.requires_grad_(False)  # never used: no gradient, so DDP need not look for unused parameters
        self.projection = nn.Linear(channels, channels * 3)
        self.output = nn.Linear(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, channels, height, width = x.shape
        sequence = x.reshape(batch, channels, height * width).transpose(1, 2)  # [B, N, C]
        q, k, v = self.projection(sequence).chunk(3, dim=-1)
        # softmax(q kᵀ / √C) v; 4-D [B, heads=1, N, C] operands keep the ONNX export simple.
        attended = F.scaled_dot_product_attention(q[:, None], k[:, None], v[:, None])[:, 0]
        out = self.output(attended) + sequence
        return out.transpose(1, 2).reshape(batch, channels, height, width)


class ResAttnBlock(nn.Module):
    """A residual block optionally followed by attention (labml's DownBlock / UpBlock)."""

    takes_skip = False

    def __init__(self, in_channels: int, out_channels: int, config: UNetConfig, attention: bool) -> None:
        super().__init__()
        self.res = ResidualBlock(in_channels, out_channels, config.time_channels, config.norm_groups, config.dropout)
        self.attn = AttentionBlock(out_channels, config.norm_groups) if attention else nn.Identity()

    def forward(self, x: torch.Tensor, t_emb: torch.Tensor) -> torch.Tensor:
        return self.attn(self.res(x, t_emb))


class DownBlock(ResAttnBlock):
    pass


class UpBlock(ResAttnBlock):
    takes_skip = True


class Downsample(nn.Module):
    takes_skip = False

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, kernel_size=3, stride=2, padding=1)

    def forward(self, x: torch.Tensor, t_emb: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    takes_skip = False

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.ConvTranspose2d(channels, channels, kernel_size=4, stride=2, padding=1)

    def forward(self, x: torch.Tensor, t_emb: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class MiddleBlock(nn.Module):
    def __init__(self, channels: int, config: UNetConfig) -> None:
        super().__init__()
        self.res1 = ResidualBlock(channels, channels, config.time_channels, config.norm_groups, config.dropout)
        self.attn = AttentionBlock(channels, config.norm_groups)
        self.res2 = ResidualBlock(channels, channels, config.time_channels, config.norm_groups, config.dropout)

    def forward(self, x: torch.Tensor, t_emb: torch.Tensor) -> torch.Tensor:
        return self.res2(self.attn(self.res1(x, t_emb)), t_emb)


class UNet(nn.Module):
    """Down path (blocks + stride-2 convs), middle (res-attn-res), up path with skip concatenation."""

    def __init__(self, config: UNetConfig) -> None:
        super().__init__()
        problems = config.problems()
        if problems:
            raise ValueError("invalid U-Net config: " + "; ".join(problems))
        self.config = config
        widths = config.widths()
        levels = len(widths)

        self.image_proj = nn.Conv2d(config.image_channels, config.base_channels, kernel_size=3, padding=1)
        self.time_emb = TimeEmbedding(config.time_channels)
        # Class-conditional: a learned vector per class, added to the time embedding; index
        # num_classes means "no class" (trained by label dropout, used by classifier-free guidance).
        self.class_emb = nn.Embedding(config.num_classes + 1, config.time_channels) if config.num_classes else None

        down: list[nn.Module] = []
        channels = config.base_channels
        for level, width in enumerate(widths):
            for _ in range(config.blocks_per_resolution):
                down.append(DownBlock(channels, width, config, config.attention[level]))
                channels = width
            if level < levels - 1:
                down.append(Downsample(channels))
        self.down = nn.ModuleList(down)

        self.middle = MiddleBlock(channels, config)

        # Each up block concatenates one skip. At a level the first blocks meet skips of the
        # level's own width; the last meets the skip from before the level (previous width).
        up: list[nn.Module] = []
        for level in reversed(range(levels)):
            width = widths[level]
            previous = widths[level - 1] if level > 0 else config.base_channels
            for _ in range(config.blocks_per_resolution):
                up.append(UpBlock(width + width, width, config, config.attention[level]))
            up.append(UpBlock(width + previous, previous, config, config.attention[level]))
            if level > 0:
                up.append(Upsample(previous))
        self.up = nn.ModuleList(up)

        self.norm = nn.GroupNorm(config.final_norm_groups, config.base_channels)
        self.act = nn.SiLU()
        self.final = nn.Conv2d(config.base_channels, config.image_channels, kernel_size=3, padding=1)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """ε for images x [B,C,H,W] at timesteps t [B]; y [B] class labels of a conditional model
        (None: the "no class" index); an unconditional model ignores y."""
        x = self.image_proj(x)
        # The time embedding may run in higher precision than the body (fp16 export keeps it fp32).
        t_emb = self.time_emb(t)
        if self.class_emb is not None:
            if y is None:
                y = torch.full_like(t, self.config.num_classes)
            t_emb = t_emb + self.class_emb(y).to(t_emb.dtype)
        t_emb = t_emb.to(x.dtype)
        skips = [x]
        for block in self.down:
            x = block(x, t_emb)
            skips.append(x)
        x = self.middle(x, t_emb)
        for block in self.up:
            if block.takes_skip:
                x = torch.cat((x, skips.pop()), dim=1)
            x = block(x, t_emb)
        return self.final(self.act(self.norm(x)))


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def forward_flops(model: UNet, image_size: int, batch: int = 1) -> int:
    """FLOPs (2 per multiply-add) of one forward pass at ``image_size``, counted by PyTorch."""
    from torch.utils.flop_counter import FlopCounterMode

    device = next(model.parameters()).device
    x = torch.zeros(batch, model.config.image_channels, image_size, image_size, device=device)
    t = torch.zeros(batch, dtype=torch.long, device=device)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(x, t)
    return int(counter.get_total_flops())
