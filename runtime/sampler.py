"""Ancestral DDPM sampling in NumPy, independent of how ε is computed.

The sampler holds the per-step coefficients; the caller owns the loop and the network::

    sampler = AncestralSampler(schedule)
    x = rng.standard_normal(shape, dtype=np.float32)
    for i, t in enumerate(sampler.model_timesteps):
        eps = model(x, np.full(batch, t))
        x = sampler.step(x, i, eps, rng.standard_normal(shape, dtype=np.float32))

``steps < T`` respaces the schedule (Nichol & Dhariwal 2021): it keeps ᾱ at ``steps`` evenly
spaced timesteps and recomputes β between them, so a short run follows the same marginals.
"""

from __future__ import annotations

import numpy as np

from .schedule import Schedule

VARIANCES = ("beta", "posterior")


class AncestralSampler:
    """x_{t−1} = 1/√α_t · (x_t − β_t/√(1−ᾱ_t) · ε) + σ_t z   (Ho et al. 2020, eq. 11).

    ``variance`` chooses σ²_t = β_t ("beta") or β̃_t ("posterior"). ``noise_at_last_step``
    adds σ z on the final step as well (the labml code does; the paper returns the mean).
    """

    def __init__(
        self,
        schedule: Schedule,
        steps: int | None = None,
        variance: str = "beta",
        noise_at_last_step: bool = False,
    ) -> None:
        if variance not in VARIANCES:
            raise ValueError(f"variance must be one of {VARIANCES}, got {variance!r}")
        total = schedule.timesteps
        steps = total if steps is None else int(steps)
        if not 1 <= steps <= total:
            raise ValueError(f"steps must be between 1 and {total}, got {steps}")
        # Ascending model timesteps that always include the last one, T-1.
        kept = np.unique(np.round(np.linspace(0, total - 1, steps)).astype(np.int64))
        alpha_bars = schedule.alpha_bars[kept]
        alpha_bars_prev = np.concatenate(([1.0], alpha_bars[:-1]))
        betas = 1.0 - alpha_bars / alpha_bars_prev
        posterior = (1.0 - alpha_bars_prev) / (1.0 - alpha_bars) * betas
        sigma2 = betas if variance == "beta" else posterior
        sigmas = np.sqrt(sigma2)
        if not noise_at_last_step:
            sigmas[0] = 0.0
        # Stored in sampling order: entry i belongs to the i-th call of step().
        self.model_timesteps: np.ndarray = kept[::-1].copy()
        self._mean_scale = (1.0 / np.sqrt(1.0 - betas))[::-1].copy()
        self._eps_scale = (betas / np.sqrt(1.0 - alpha_bars))[::-1].copy()
        self._sigmas = sigmas[::-1].copy()

    def __len__(self) -> int:
        return int(self.model_timesteps.size)

    def step(self, x: np.ndarray, i: int, eps: np.ndarray, noise: np.ndarray | None) -> np.ndarray:
        """One reverse step: position ``i`` in the loop (0 = noisiest), returns x_{t−1} as float32."""
        mean = self._mean_scale[i] * (x - self._eps_scale[i] * eps)
        sigma = self._sigmas[i]
        if sigma > 0.0:
            if noise is None:
                raise ValueError("this step adds noise; pass a standard normal array")
            mean = mean + sigma * noise
        return mean.astype(np.float32, copy=False)

    def needs_noise(self, i: int) -> bool:
        return bool(self._sigmas[i] > 0.0)
