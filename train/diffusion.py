"""The forward process q(x_t | x_0), the L_simple loss, and sampling a torch model.

The coefficients come from the one NumPy schedule (core/schedule.py); this module only moves
them to torch. Sampling reuses the runtime's NumPy sampler, so the trainer's preview grids
follow exactly the update the ONNX runtime uses.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..core.samplers import AncestralSampler, Sampler
from ..core.schedule import Schedule


class Diffusion:
    """``min_snr_gamma``: weight each example's ε-loss by min(SNR_t, γ)/SNR_t, SNR_t = ᾱ_t/(1−ᾱ_t)
    (Min-SNR-γ, Hang et al. 2023); None: plain L_simple."""

    def __init__(
        self, schedule: Schedule, device: torch.device | str = "cpu", min_snr_gamma: float | None = None
    ) -> None:
        self.schedule = schedule
        self.timesteps = schedule.timesteps
        alpha_bars = schedule.alpha_bars
        self.sqrt_alpha_bars = torch.tensor(np.sqrt(alpha_bars), dtype=torch.float32, device=device)
        self.sqrt_one_minus_alpha_bars = torch.tensor(np.sqrt(1.0 - alpha_bars), dtype=torch.float32, device=device)
        self.loss_weights = None
        if min_snr_gamma is not None:
            snr = alpha_bars / (1.0 - alpha_bars)
            self.loss_weights = torch.tensor(np.minimum(snr, min_snr_gamma) / snr, dtype=torch.float32, device=device)

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x_t = √ᾱ_t · x_0 + √(1−ᾱ_t) · ε."""
        return (
            self.sqrt_alpha_bars[t][:, None, None, None] * x0
            + self.sqrt_one_minus_alpha_bars[t][:, None, None, None] * noise
        )

    def loss(
        self, model: nn.Module, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor, y: torch.Tensor | None = None
    ) -> torch.Tensor:
        """L_simple = ‖ε − ε_θ(x_t, t[, y])‖² averaged over the batch, for the given t (uniform over 0..T−1) and ε;
        with Min-SNR-γ each example's term is weighted by w_t first."""
        x_t = self.q_sample(x0, t, noise.to(x0.dtype))
        eps = model(x_t, t) if y is None else model(x_t, t, y)
        if self.loss_weights is None:
            return F.mse_loss(eps.float(), noise.float())
        per_example = (eps.float() - noise.float()).pow(2).flatten(1).mean(1)
        return (self.loss_weights[t] * per_example).mean()

    def random_loss(self, model: nn.Module, x0: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """L_simple with t and ε drawn here."""
        t = torch.randint(0, self.timesteps, (x0.shape[0],), device=x0.device, generator=generator)
        noise = torch.randn(x0.shape, device=x0.device, dtype=x0.dtype, generator=generator)
        return self.loss(model, x0, t, noise)


@torch.no_grad()
def sample(
    model: nn.Module,
    schedule: Schedule,
    count: int,
    image_size: int,
    seed: int = 0,
    steps: int | None = None,
    variance: str = "beta",
    labels: np.ndarray | None = None,
    sampler: Sampler | None = None,
) -> np.ndarray:
    """Ancestral samples [count, C, H, W] float32 from ``model`` with a NumPy noise stream
    (a class-conditional model draws ``labels``, or without them the "no class" index); another
    ``sampler`` (a fresh one) in place of the ancestral one."""
    device = next(model.parameters()).device
    channels = model.config.image_channels
    sampler = sampler or AncestralSampler(schedule, steps=steps, variance=variance)
    rng = np.random.default_rng(seed)
    shape = (count, channels, image_size, image_size)
    x = rng.standard_normal(shape, dtype=np.float32)
    was_training = model.training
    model.eval()
    try:
        for i, t in enumerate(sampler.model_timesteps):
            t_batch = torch.full((count,), int(t), dtype=torch.long, device=device)
            y = None if labels is None else torch.as_tensor(labels, dtype=torch.long, device=device)
            eps = model(torch.from_numpy(x).to(device), t_batch, y).float().cpu().numpy()
            noise = rng.standard_normal(shape, dtype=np.float32) if sampler.needs_noise(i) else None
            x = sampler.step(x, i, eps, noise)
    finally:
        model.train(was_training)
    return x
