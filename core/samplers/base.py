"""What every sampler shares: timestep spacing, λ, x̂_0, and the step interface.

A sampler holds the per-step coefficients of one loop; the caller owns the loop and the network::

    sampler = AncestralSampler(schedule)
    x = rng.standard_normal(shape, dtype=np.float32)
    for i, t in enumerate(sampler.model_timesteps):
        eps = model(x, np.full(batch, t))
        x = sampler.step(x, i, eps, rng.standard_normal(shape, dtype=np.float32) if sampler.needs_noise(i) else None)

Samplers are built from a checked :class:`~ddpm.core.plan.SamplingPlan` and trust their arguments:
the bounds of every setting live once, in the sampler's spec (:mod:`.spec`).
"""

from __future__ import annotations

import numpy as np

from ..schedule import Schedule

SPACINGS = ("uniform", "quadratic", "logsnr")
# λ = log(α/σ) = ½·log SNR. Below this a step is pure noise in practice; the linear schedule ends at
# −5.06, the cosine one far lower, where x̂_0 = (x − σ·ε)/α would magnify ε's error by up to 1/α.
LAMBDA_MIN = -5.1


def half_log_snr(alpha_bars: np.ndarray) -> np.ndarray:
    """λ_t = log(√ᾱ_t / √(1−ᾱ_t)), decreasing in t."""
    return 0.5 * (np.log(alpha_bars) - np.log1p(-alpha_bars))


def predict_x0(x: np.ndarray, eps: np.ndarray, alpha_bar: float) -> np.ndarray:
    """x̂_0 = (x_t − √(1−ᾱ_t)·ε) / √ᾱ_t: the clean image that x_t and ε imply."""
    return (x - np.sqrt(1.0 - alpha_bar) * eps) / np.sqrt(alpha_bar)


def spaced_timesteps(
    total: int, steps: int, spacing: str = "uniform", alpha_bars: np.ndarray | None = None
) -> np.ndarray:
    """``steps`` (1..total) distinct ascending model timesteps in [0, total), always 0 and total−1.

    "uniform" spaces them evenly; "quadratic" along (i/(S−1))² · (T−1), denser near t = 0
    where the image takes its final shape; "logsnr" evenly in λ (from the schedule's
    ``alpha_bars`` for the first ``total`` steps). Rounding collisions are nudged apart.
    """
    if steps == 1:
        return np.array([total - 1], dtype=np.int64)
    position = np.linspace(0.0, 1.0, steps)
    if spacing == "logsnr":
        lambdas = half_log_snr(np.asarray(alpha_bars, dtype=np.float64)[:total])
        targets = lambdas[0] + position * (lambdas[-1] - lambdas[0])
        exact = np.interp(-targets, -lambdas, np.arange(total, dtype=np.float64))  # -λ rises with t
    else:
        exact = (position if spacing == "uniform" else position**2) * (total - 1)
    raw = np.round(exact).astype(np.int64)
    index = np.arange(steps)
    # Each timestep at least one past the previous and leaving room for those after it.
    return np.minimum(np.maximum.accumulate(raw - index), total - steps) + index


def solver_step_limit(schedule: Schedule) -> int:
    """How many timesteps an ODE/SDE solver may use: those with λ ≥ LAMBDA_MIN (all T for the linear
    schedule; fewer for the cosine one)."""
    return int(np.count_nonzero(half_log_snr(schedule.alpha_bars) >= LAMBDA_MIN)) or 1


def solver_timesteps(schedule: Schedule, steps: int, spacing: str = "uniform") -> np.ndarray:
    """Ascending timesteps for an ODE/SDE solver: ``spaced_timesteps`` over the first
    :func:`solver_step_limit` steps."""
    return spaced_timesteps(solver_step_limit(schedule), steps, spacing, schedule.alpha_bars)


class Sampler:
    """The interface every sampler keeps: the model timesteps in sampling order, whether position
    ``i`` adds noise, and ``step``. Subclasses set ``model_timesteps`` and ``_sigmas`` (σ per
    position: the standard deviation of the noise the step adds)."""

    model_timesteps: np.ndarray
    _sigmas: np.ndarray
    _alpha_bars: np.ndarray  # ᾱ at each position, for x̂_0

    def __len__(self) -> int:
        return int(self.model_timesteps.size)

    def needs_noise(self, i: int) -> bool:
        return bool(self._sigmas[i] > 0.0)

    def predict_x0(self, x: np.ndarray, i: int, eps: np.ndarray) -> np.ndarray:
        return predict_x0(x, eps, self._alpha_bars[i])

    def step(self, x: np.ndarray, i: int, eps: np.ndarray, noise: np.ndarray | None) -> np.ndarray:
        """One update from position ``i`` (0 = noisiest) to the next, as float32; ``noise`` is a standard
        normal array of x's shape where :meth:`needs_noise` says so."""
        raise NotImplementedError

    def _finish(self, result: np.ndarray, i: int, noise: np.ndarray | None) -> np.ndarray:
        """result + σ_i·z (z required where σ_i > 0), as float32."""
        sigma = self._sigmas[i]
        if sigma > 0.0:
            if noise is None:
                raise ValueError("this step adds noise; pass a standard normal array")
            result = result + sigma * noise
        return result.astype(np.float32, copy=False)


class Multistep(Sampler):
    """A sampler that remembers earlier steps' x̂_0, so its positions run in order from 0, once per loop
    (a fresh sampler for each loop)."""

    def _history_check(self, previous: tuple[int, np.ndarray] | None, i: int, x0: np.ndarray) -> None:
        if previous is None or previous[0] != i - 1 or previous[1].shape != x0.shape:
            raise ValueError(f"a multistep solver runs its steps in order from 0; step {i} came without step {i - 1}")
