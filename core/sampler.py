"""DDPM (ancestral) and DDIM sampling in NumPy, independent of how ε is computed.

The sampler holds the per-step coefficients; the caller owns the loop and the network::

    sampler = AncestralSampler(schedule)
    x = rng.standard_normal(shape, dtype=np.float32)
    for i, t in enumerate(sampler.model_timesteps):
        eps = model(x, np.full(batch, t))
        x = sampler.step(x, i, eps, rng.standard_normal(shape, dtype=np.float32))

``steps < T`` respaces the schedule (Nichol & Dhariwal 2021): it keeps ᾱ at ``steps`` evenly
spaced timesteps and recomputes β between them, so a short run follows the same marginals.
:class:`DDIMSampler` (Song et al. 2021) and :class:`DPMSolverSampler` (DPM-Solver++, Lu et al.
2022) have the same interface; the multistep solver remembers the previous step's x̂_0, so its
steps run in order, from 0, once per loop.
"""

from __future__ import annotations

import numpy as np

from .schedule import Schedule

VARIANCES = ("beta", "posterior")
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


def spaced_timesteps(total: int, steps: int, spacing: str = "uniform", alpha_bars: np.ndarray | None = None) -> np.ndarray:
    """``steps`` distinct ascending model timesteps in [0, total), always 0 and total−1.

    "uniform" spaces them evenly; "quadratic" along (i/(S−1))² · (T−1), denser near t = 0
    where the image takes its final shape; "logsnr" evenly in λ (needs the schedule's
    ``alpha_bars`` for the first ``total`` steps). Rounding collisions are nudged apart.
    """
    if spacing not in SPACINGS:
        raise ValueError(f"spacing must be one of {SPACINGS}, got {spacing!r}")
    if not 1 <= steps <= total:
        raise ValueError(f"steps must be between 1 and {total}, got {steps}")
    if steps == 1:
        return np.array([total - 1], dtype=np.int64)
    position = np.linspace(0.0, 1.0, steps)
    if spacing == "logsnr":
        if alpha_bars is None:
            raise ValueError("logsnr spacing needs the schedule's alpha_bars")
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
        # Ascending model timesteps that always include the last one, T-1.
        kept = spaced_timesteps(total, total if steps is None else int(steps))
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
        if not 0 <= eta <= 1:  # 1: as much noise as the ancestral sampler; beyond it no direction term is left
            raise ValueError(f"eta must be between 0 and 1, got {eta}")
        total = schedule.timesteps
        steps = total if steps is None else int(steps)
        kept = spaced_timesteps(total, steps, spacing, schedule.alpha_bars)
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
        return predict_x0(x, eps, self._alpha_bars[i])

    def step(self, x: np.ndarray, i: int, eps: np.ndarray, noise: np.ndarray | None) -> np.ndarray:
        """One step from position ``i`` (0 = noisiest) to the next kept timestep, as float32."""
        result = np.sqrt(self._alpha_bars_prev[i]) * self.predict_x0(x, i, eps) + self._direction[i] * eps
        return self._finish(result, i, noise)


class DPMSolverSampler(_Steps):
    """DPM-Solver++ (Lu et al. 2022), multistep, in data prediction: with α = √ᾱ, σ = √(1−ᾱ),
    λ = log(α/σ), h = λ_next − λ and x̂_0 = (x − σ·ε)/α at each model timestep,

        ODE:  x_next = σ_next/σ · x + α_next·(1 − e^(−h)) · D
        SDE:  x_next = σ_next/σ · e^(−h) · x + α_next·(1 − e^(−2h)) · D + σ_next·√(1 − e^(−2h)) · z

    with D = x̂_0 (first order) or, second order, D = x̂_0 + (x̂_0 − x̂_0,prev)/(2r), r = h_prev/h.
    The first step has no history and the last (to σ = 0, where x_next = D) is first order, so one
    step is plain first order. First order is DDIM: η = 0 for the ODE, η = 1 for the SDE.
    Timesteps come from :func:`solver_timesteps` ("uniform", "quadratic" or "logsnr").
    """

    def __init__(self, schedule: Schedule, steps: int | None = None, spacing: str = "uniform", order: int = 2,
                 stochastic: bool = False) -> None:
        if order not in (1, 2):
            raise ValueError(f"order must be 1 or 2, got {order}")
        kept = solver_timesteps(schedule, schedule.timesteps if steps is None else int(steps), spacing)
        self.order, self.stochastic = order, stochastic
        self.model_timesteps: np.ndarray = kept[::-1].copy()
        alpha_bars = schedule.alpha_bars[self.model_timesteps]
        self._alpha_bars = alpha_bars
        alphas, sigmas = np.sqrt(alpha_bars), np.sqrt(1.0 - alpha_bars)
        lambdas = np.log(alphas) - np.log(sigmas)
        # Each step goes to the next kept timestep; the last one to the data itself (α = 1, σ = 0, λ = ∞).
        alphas_next, sigmas_next = np.append(alphas[1:], 1.0), np.append(sigmas[1:], 0.0)
        with np.errstate(divide="ignore"):
            h = np.append(lambdas[1:], np.inf) - lambdas
        decay = np.exp(-h)  # e^(−h): 0 on the last step
        if stochastic:
            self._x_scale = sigmas_next / sigmas * decay
            self._d_scale = alphas_next * (1.0 - decay**2)
            self._sigmas = sigmas_next * np.sqrt(1.0 - decay**2)
        else:
            self._x_scale = sigmas_next / sigmas
            self._d_scale = alphas_next * -np.expm1(-h)
            self._sigmas = np.zeros_like(h)
        # Second-order correction weight 1/(2r) where a step has history and a finite h.
        self._correction = np.zeros_like(h)
        if order == 2 and len(h) > 2:
            self._correction[1:-1] = h[1:-1] / (2.0 * h[:-2])
        self._previous: tuple[int, np.ndarray] | None = None

    def predict_x0(self, x: np.ndarray, i: int, eps: np.ndarray) -> np.ndarray:
        return predict_x0(x, eps, self._alpha_bars[i])

    def step(self, x: np.ndarray, i: int, eps: np.ndarray, noise: np.ndarray | None) -> np.ndarray:
        """One solver step from position ``i`` (0 = noisiest); positions run in order from 0."""
        x0 = self.predict_x0(x, i, eps)
        d = x0
        if self._correction[i]:
            if self._previous is None or self._previous[0] != i - 1 or self._previous[1].shape != x0.shape:
                raise ValueError(f"a multistep solver runs its steps in order from 0; step {i} came without step {i - 1}")
            d = x0 + self._correction[i] * (x0 - self._previous[1])
        self._previous = (i, x0)
        return self._finish(self._x_scale[i] * x + self._d_scale[i] * d, i, noise)

    def coefficients(self) -> dict[str, np.ndarray]:
        """Per-step factors in sampling order: x_next = x_scale·x + d_scale·D + sigma·z, D = x̂_0 + correction·Δx̂_0."""
        return {"timesteps": self.model_timesteps.copy(), "x_scale": self._x_scale.copy(),
                "d_scale": self._d_scale.copy(), "sigma": self._sigmas.copy(), "correction": self._correction.copy()}
