"""DDIM (Song et al. 2021): deterministic at η = 0, the ancestral sampler's noise at η = 1."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ..schedule import Schedule
from .base import Sampler, spaced_timesteps
from .spec import Option, SamplerSpec, spacing

if TYPE_CHECKING:
    from ..metadata import ModelInfo


class DDIMSampler(Sampler):
    """DDIM (Song et al. 2021, eq. 12) on a subsequence τ of the model's timesteps:

        x̂_0 = (x_t − √(1−ᾱ_t)·ε) / √ᾱ_t
        x_prev = √ᾱ_prev·x̂_0 + √(1−ᾱ_prev−σ²)·ε + σ·z,
        σ = η·√((1−ᾱ_prev)/(1−ᾱ_t))·√(1−ᾱ_t/ᾱ_prev)

    with ᾱ_prev = 1 after the last step. η = 0 is deterministic; η = 1 with every timestep is the
    ancestral sampler with the posterior variance β̃.
    """

    def __init__(
        self, schedule: Schedule, steps: int | None = None, eta: float = 0.0, spacing: str = "uniform"
    ) -> None:
        total = schedule.timesteps
        kept = spaced_timesteps(total, total if steps is None else int(steps), spacing, schedule.alpha_bars)
        alpha_bars = schedule.alpha_bars[kept]
        alpha_bars_prev = np.concatenate(([1.0], alpha_bars[:-1]))
        sigmas = eta * np.sqrt((1.0 - alpha_bars_prev) / (1.0 - alpha_bars) * (1.0 - alpha_bars / alpha_bars_prev))
        self.eta = float(eta)
        self.model_timesteps: np.ndarray = kept[::-1].copy()
        self._alpha_bars = alpha_bars[::-1].copy()
        self._alpha_bars_prev = alpha_bars_prev[::-1].copy()
        self._sigmas = sigmas[::-1].copy()
        # 1 − ᾱ_prev − σ² rounds slightly below 0 at η = 1; the direction term then vanishes.
        self._direction = np.sqrt(np.maximum(1.0 - self._alpha_bars_prev - self._sigmas**2, 0.0))

    def step(self, x: np.ndarray, i: int, eps: np.ndarray, noise: np.ndarray | None) -> np.ndarray:
        result = np.sqrt(self._alpha_bars_prev[i]) * self.predict_x0(x, i, eps) + self._direction[i] * eps
        return self._finish(result, i, noise)


def _build(schedule: Schedule, info: ModelInfo, steps: int, eta: float, spacing: str) -> DDIMSampler:
    return DDIMSampler(schedule, steps, eta=eta, spacing=spacing)


SPEC = SamplerSpec(
    name="ddim",
    summary="DDIM, deterministic with --eta 0",
    build=_build,
    steps=50,
    options=(
        # Beyond 1 the noise would exceed the ancestral sampler's and no direction term is left.
        Option(
            "eta",
            "DDIM noise: 0 deterministic, 1 as much as the ancestral sampler (with β̃).",
            0.0,
            low=0.0,
            high=1.0,
            bounds="between 0 (deterministic) and 1 (as noisy as the ancestral sampler)",
            label="η",
        ),
        spacing("uniform"),
    ),
)
