"""DDPM (ancestral) and DDIM sampling in NumPy, independent of how ε is computed.

The sampler holds the per-step coefficients; the caller owns the loop and the network::

    sampler = AncestralSampler(schedule)
    x = rng.standard_normal(shape, dtype=np.float32)
    for i, t in enumerate(sampler.model_timesteps):
        eps = model(x, np.full(batch, t))
        x = sampler.step(x, i, eps, rng.standard_normal(shape, dtype=np.float32))

``steps < T`` respaces the schedule (Nichol & Dhariwal 2021): it keeps ᾱ at ``steps`` evenly
spaced timesteps and recomputes β between them, so a short run follows the same marginals.
:class:`DDIMSampler` (Song et al. 2021) has the same interface.
"""

from __future__ import annotations

import numpy as np

from .schedule import Schedule

VARIANCES = ("beta", "posterior")
SPACINGS = ("uniform", "quadratic")


def spaced_timesteps(total: int, steps: int, spacing: str = "uniform") -> np.ndarray:
    """``steps`` distinct ascending model timesteps in [0, total), always 0 and total−1.

    "uniform" spaces them evenly; "quadratic" along (i/(S−1))² · (T−1), denser near t = 0
    where the image takes its final shape (nudged apart where rounding would merge them).
    """
    if spacing not in SPACINGS:
        raise ValueError(f"spacing must be one of {SPACINGS}, got {spacing!r}")
    if not 1 <= steps <= total:
        raise ValueError(f"steps must be between 1 and {total}, got {steps}")
    if steps == 1:
        return np.array([total - 1], dtype=np.int64)
    position = np.linspace(0.0, 1.0, steps)
    raw = np.round((position if spacing == "uniform" else position**2) * (total - 1)).astype(np.int64)
    index = np.arange(steps)
    return np.minimum(np.maximum.accumulate(raw - index) + index, total - 1)


class _Steps:
    """What both samplers share: the model timesteps in sampling order, σ per position, and σ·z."""

    model_timesteps: np.ndarray
    _sigmas: np.ndarray

    def __len__(self) -> int:
        return int(self.model_timesteps.size)

    def needs_noise(self, i: int) -> bool:
        return bool(self._sigmas[i] > 0.0)

    def _finish(self, result: np.ndarray, i: int, noise: np.ndarray | None) -> np.ndarray:
        """result + σ_i·z (z required where σ_i > 0), as float32."""
        sigma = self._sigmas[i]
        if sigma > 0.0:
            if noise is None:
                raise ValueError("this step adds noise; pass a standard normal array")
            result = result + sigma * noise
        return result.astype(np.float32, copy=False)


class AncestralSampler(_Steps):
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
        kept = spaced_timesteps(total, steps)
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

    def step(self, x: np.ndarray, i: int, eps: np.ndarray, noise: np.ndarray | None) -> np.ndarray:
        """One reverse step: position ``i`` in the loop (0 = noisiest), returns x_{t−1} as float32."""
        return self._finish(self._mean_scale[i] * (x - self._eps_scale[i] * eps), i, noise)

    def coefficients(self) -> dict[str, np.ndarray]:
        """The update's per-step factors in sampling order: x_{t−1} = mean_scale·(x_t − eps_scale·ε) + sigma·z."""
        return {
            "timesteps": self.model_timesteps.copy(),
            "mean_scale": self._mean_scale.copy(),
            "eps_scale": self._eps_scale.copy(),
            "sigma": self._sigmas.copy(),
        }


class DDIMSampler(_Steps):
    """DDIM (Song et al. 2021, eq. 12) on a subsequence τ of the model's timesteps:

        x̂_0 = (x_t − √(1−ᾱ_t)·ε) / √ᾱ_t
        x_prev = √ᾱ_prev·x̂_0 + √(1−ᾱ_prev−σ²)·ε + σ·z,
        σ = η·√((1−ᾱ_prev)/(1−ᾱ_t))·√(1−ᾱ_t/ᾱ_prev)

    with ᾱ_prev = 1 after the last step. η = 0 is deterministic; η = 1 with every timestep is the
    ancestral sampler with the posterior variance β̃. Same interface as :class:`AncestralSampler`.
    """

    def __init__(self, schedule: Schedule, steps: int | None = None, eta: float = 0.0, spacing: str = "uniform") -> None:
        if not (eta >= 0 and np.isfinite(eta)):
            raise ValueError(f"eta must be a finite number >= 0, got {eta}")
        total = schedule.timesteps
        steps = total if steps is None else int(steps)
        kept = spaced_timesteps(total, steps, spacing)
        alpha_bars = schedule.alpha_bars[kept]
        alpha_bars_prev = np.concatenate(([1.0], alpha_bars[:-1]))
        sigmas = eta * np.sqrt((1.0 - alpha_bars_prev) / (1.0 - alpha_bars) * (1.0 - alpha_bars / alpha_bars_prev))
        self.eta = float(eta)
        self.model_timesteps: np.ndarray = kept[::-1].copy()
        self._alpha_bars = alpha_bars[::-1].copy()
        self._alpha_bars_prev = alpha_bars_prev[::-1].copy()
        self._sigmas = sigmas[::-1].copy()
        # 1 − ᾱ_prev − σ² can round below 0 when η > 1; the direction term then vanishes.
        self._direction = np.sqrt(np.maximum(1.0 - self._alpha_bars_prev - self._sigmas**2, 0.0))

    def predict_x0(self, x: np.ndarray, i: int, eps: np.ndarray) -> np.ndarray:
        alpha_bar = self._alpha_bars[i]
        return (x - np.sqrt(1.0 - alpha_bar) * eps) / np.sqrt(alpha_bar)

    def step(self, x: np.ndarray, i: int, eps: np.ndarray, noise: np.ndarray | None) -> np.ndarray:
        """One step from position ``i`` (0 = noisiest) to the next kept timestep, as float32."""
        result = np.sqrt(self._alpha_bars_prev[i]) * self.predict_x0(x, i, eps) + self._direction[i] * eps
        return self._finish(result, i, noise)
