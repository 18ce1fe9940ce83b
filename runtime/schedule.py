"""The noise schedule: the single place where β, α, ᾱ and β̃ are computed.

Indexing is 0-based: index i is the paper's step t = i + 1, so ``betas[0]`` is β_1 and
``alpha_bars[T-1]`` is ᾱ_T. Trainer, exporter and sampler all call :func:`make_schedule`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

SCHEDULE_KINDS = ("linear",)


@dataclass(frozen=True)
class Schedule:
    """Per-step diffusion coefficients, float64 arrays of length T."""

    betas: np.ndarray

    def __post_init__(self) -> None:
        betas = np.asarray(self.betas, dtype=np.float64)
        if betas.ndim != 1 or betas.size < 1:
            raise ValueError("betas must be a non-empty 1-D array")
        if not np.all((betas > 0) & (betas < 1)):
            raise ValueError("every beta must lie in (0, 1)")
        object.__setattr__(self, "betas", betas)

    @property
    def timesteps(self) -> int:
        return int(self.betas.size)

    @property
    def alphas(self) -> np.ndarray:
        """α_t = 1 − β_t."""
        return 1.0 - self.betas

    @property
    def alpha_bars(self) -> np.ndarray:
        """ᾱ_t = Π_{s≤t} α_s."""
        return np.cumprod(self.alphas)

    @property
    def alpha_bars_prev(self) -> np.ndarray:
        """ᾱ_{t−1}, with ᾱ_0 = 1."""
        return np.concatenate(([1.0], self.alpha_bars[:-1]))

    @property
    def posterior_variance(self) -> np.ndarray:
        """β̃_t = (1 − ᾱ_{t−1}) / (1 − ᾱ_t) · β_t, the variance of q(x_{t−1} | x_t, x_0)."""
        return (1.0 - self.alpha_bars_prev) / (1.0 - self.alpha_bars) * self.betas


def linear_betas(timesteps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> np.ndarray:
    """β rising linearly from ``beta_start`` to ``beta_end`` (Ho et al. 2020)."""
    if timesteps < 1:
        raise ValueError(f"timesteps must be >= 1, got {timesteps}")
    if not 0 < beta_start <= beta_end < 1:
        raise ValueError(f"need 0 < beta_start <= beta_end < 1, got {beta_start}, {beta_end}")
    return np.linspace(beta_start, beta_end, timesteps, dtype=np.float64)


def make_schedule(kind: str = "linear", timesteps: int = 1000, **params: Any) -> Schedule:
    """Build a schedule from its description (as stored in checkpoints and ONNX metadata)."""
    if kind == "linear":
        return Schedule(linear_betas(timesteps, params.get("beta_start", 1e-4), params.get("beta_end", 0.02)))
    raise ValueError(f"unknown schedule kind {kind!r}; known: {', '.join(SCHEDULE_KINDS)}")
