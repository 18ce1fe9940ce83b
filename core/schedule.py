"""The noise schedule: the single place where β, α, ᾱ and β̃ are computed.

Indexing is 0-based: index i is the paper's step t = i + 1, so ``betas[0]`` is β_1 and
``alpha_bars[T-1]`` is ᾱ_T. Trainer, exporter and sampler all call :func:`make_schedule`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

SCHEDULE_KINDS = ("linear", "cosine")
MIN_BETA = 1e-10  # far below any schedule in use (1e-4 is usual), far above float64's rounding at 1


@dataclass(frozen=True)
class Schedule:
    """Per-step diffusion coefficients, float64 arrays of length T."""

    betas: np.ndarray

    def __post_init__(self) -> None:
        betas = np.asarray(self.betas, dtype=np.float64)
        if betas.ndim != 1 or betas.size < 1:
            raise ValueError("betas must be a non-empty 1-D array")
        if not np.all((betas >= MIN_BETA) & (betas < 1)):
            raise ValueError(
                f"every beta must lie in [{MIN_BETA:g}, 1): a smaller beta makes 1 - alpha_bar round "
                "to 0, and the sampler divides by it"
            )
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


def cosine_alpha_bar(u: np.ndarray, offset: float = 0.008) -> np.ndarray:
    """ᾱ as a function of u = t/T ∈ [0, 1]: f(u)/f(0) with f(u) = cos²((u + s)/(1 + s) · π/2)
    (Nichol & Dhariwal 2021); the offset s keeps β_1 from vanishing."""
    f = np.cos((np.asarray(u, dtype=np.float64) + offset) / (1.0 + offset) * np.pi / 2) ** 2
    f0 = np.cos(offset / (1.0 + offset) * np.pi / 2) ** 2
    return f / f0


def cosine_betas(timesteps: int = 1000, offset: float = 0.008, max_beta: float = 0.999) -> np.ndarray:
    """β_t = 1 − ᾱ(t/T) / ᾱ((t−1)/T), clipped at ``max_beta`` (the last steps would reach 1)."""
    if timesteps < 1:
        raise ValueError(f"timesteps must be >= 1, got {timesteps}")
    if not offset >= 0:
        raise ValueError(f"the cosine offset must be >= 0, got {offset}")
    if not 0 < max_beta < 1:
        raise ValueError(f"max_beta must lie in (0, 1), got {max_beta}")
    u = np.arange(timesteps + 1, dtype=np.float64) / timesteps
    alpha_bar = cosine_alpha_bar(u, offset)
    return np.minimum(1.0 - alpha_bar[1:] / alpha_bar[:-1], max_beta)


def make_schedule(kind: str = "linear", timesteps: int = 1000, **params: Any) -> Schedule:
    """Build a schedule from its description (as stored in checkpoints and ONNX metadata)."""
    if kind == "linear":
        return Schedule(linear_betas(timesteps, params.get("beta_start", 1e-4), params.get("beta_end", 0.02)))
    if kind == "cosine":
        return Schedule(cosine_betas(timesteps, params.get("offset", 0.008), params.get("max_beta", 0.999)))
    raise ValueError(f"unknown schedule kind {kind!r}; known: {', '.join(SCHEDULE_KINDS)}")
