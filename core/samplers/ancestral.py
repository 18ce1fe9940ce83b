"""The DDPM ancestral sampler (Ho et al. 2020), the reference loop, respaced to fewer steps as
Nichol & Dhariwal (2021) do: keep ᾱ at evenly spaced timesteps and recompute β between them."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ..schedule import Schedule
from .base import Sampler, spaced_timesteps
from .spec import SamplerSpec

if TYPE_CHECKING:
    from ..metadata import ModelInfo


class AncestralSampler(Sampler):
    """x_{t−1} = 1/√α_t · (x_t − β_t/√(1−ᾱ_t) · ε) + σ_t z   (Ho et al. 2020, eq. 11).

    ``variance`` chooses σ²_t = β_t ("beta") or β̃_t ("posterior"). ``noise_at_last_step``
    adds σ z on the final step as well (the labml code does; the paper returns the mean).
    """

    def __init__(
        self, schedule: Schedule, steps: int | None = None, variance: str = "beta", noise_at_last_step: bool = False
    ) -> None:
        total = schedule.timesteps
        # Ascending model timesteps that always include the last one, T-1.
        kept = spaced_timesteps(total, total if steps is None else int(steps))
        alpha_bars = schedule.alpha_bars[kept]
        alpha_bars_prev = np.concatenate(([1.0], alpha_bars[:-1]))
        betas = 1.0 - alpha_bars / alpha_bars_prev
        posterior = (1.0 - alpha_bars_prev) / (1.0 - alpha_bars) * betas
        sigmas = np.sqrt(betas if variance == "beta" else posterior)
        if not noise_at_last_step:
            sigmas[0] = 0.0
        # Stored in sampling order: entry i belongs to the i-th call of step().
        self.model_timesteps: np.ndarray = kept[::-1].copy()
        self._alpha_bars = alpha_bars[::-1].copy()
        self._mean_scale = (1.0 / np.sqrt(1.0 - betas))[::-1].copy()
        self._eps_scale = (betas / np.sqrt(1.0 - alpha_bars))[::-1].copy()
        self._sigmas = sigmas[::-1].copy()

    def step(self, x: np.ndarray, i: int, eps: np.ndarray, noise: np.ndarray | None) -> np.ndarray:
        return self._finish(self._mean_scale[i] * (x - self._eps_scale[i] * eps), i, noise)

    def coefficients(self) -> dict[str, np.ndarray]:
        """The update's per-step factors in sampling order: x_{t−1} = mean_scale·(x_t − eps_scale·ε) + sigma·z."""
        return {
            "timesteps": self.model_timesteps.copy(),
            "mean_scale": self._mean_scale.copy(),
            "eps_scale": self._eps_scale.copy(),
            "sigma": self._sigmas.copy(),
        }


def _build(schedule: Schedule, info: ModelInfo, steps: int) -> AncestralSampler:
    """The model decides the variance and the last step's noise (labml checkpoints add it)."""
    return AncestralSampler(schedule, steps, variance=info.variance, noise_at_last_step=info.noise_at_last_step)


SPEC = SamplerSpec(
    name="ancestral",
    summary="the DDPM loop, T steps (the reference; respaced uniformly with --steps)",
    build=_build,
    aliases=("ddpm",),
    fused=True,
)
