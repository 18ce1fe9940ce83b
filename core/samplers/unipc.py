"""UniPC (Zhao et al. 2023): a multistep predictor (UniP) and a corrector (UniC) that reuses the
network call the next step makes anyway, in data prediction with B(h) = e^(−h) − 1 ("bh2")."""

from __future__ import annotations

from math import factorial
from typing import TYPE_CHECKING

import numpy as np

from ..schedule import Schedule
from .base import Multistep, solver_timesteps
from .spec import SamplerSpec, spacing

if TYPE_CHECKING:
    from ..metadata import ModelInfo


def _phi_targets(h: float, count: int) -> np.ndarray:
    """g_k = k!·(−h)·φ_{k+1}(−h) / B(h) for k = 1..count: the right-hand sides of UniPC's order
    conditions Σ_m a_m·r_m^(k−1) = g_k (paper, Theorem 3.1, with h → −h for data prediction).

    φ_1(x) = (e^x − 1)/x and φ_{k+1}(x) = (φ_k(x) − 1/k!)/x, so with x = −h the products
    x·φ_{k+1}(x) follow from x·φ_1(x) = e^x − 1 without dividing by x twice."""
    x = -h
    bh = np.expm1(x)  # B(h) = e^(−h) − 1 (bh2)
    x_phi = np.expm1(x) / x - 1.0  # x·φ_2(x) = φ_1(x) − 1/1!
    targets = np.empty(count)
    for k in range(1, count + 1):
        targets[k - 1] = factorial(k) * x_phi / bh  # g_k = k!·x·φ_{k+1}(x) / B(h)
        x_phi = x_phi / x - 1.0 / factorial(k + 1)  # x·φ_{k+2}(x) = φ_{k+1}(x) − 1/(k+1)!
    return targets


def _history_weights(ratios: list[float], coefficients: np.ndarray) -> np.ndarray:
    """The weights on (x̂_0,s, x̂_0,s_1, ..., x̂_0,s_m) of x̂_0,s + Σ_m a_m·D_m,
    D_m = (x̂_0,s_m − x̂_0,s)/r_m."""
    weights = np.zeros(len(ratios) + 1)
    weights[0] = 1.0
    for m, (r, a) in enumerate(zip(ratios, coefficients), start=1):
        weights[m] += a / r
        weights[0] -= a / r
    return weights


class UniPCSampler(Multistep):
    """UniPC-p in data prediction (bh2). With α = √ᾱ, σ = √(1−ᾱ), λ = log(α/σ), a step from s to t,
    h = λ_t − λ_s, earlier points s_m with r_m = (λ_{s_m} − λ_s)/h and D_m = (x̂_0,s_m − x̂_0,s)/r_m:

        UniP:  x̃_t = σ_t/σ_s · x_s + α_t·(1 − e^(−h)) · (x̂_0,s + Σ_{m<p} ρ_m·D_m)
        UniC:  x_t = σ_t/σ_s · x_s + α_t·(1 − e^(−h)) · (x̂_0,s + Σ_{m<p} a_m·D_m + a_p·(x̂_0,t − x̂_0,s))

    where x̂_0,t is the network's x̂_0 at the predicted x̃_t: the call the next step needs, so the
    corrector costs no extra call (the network never sees the corrected x_t). α_t·(1 − e^(−h)) is
    −α_t·B(h) for bh2. ρ solves Σ_m ρ_m·r_m^(k−1) = g_k for k < p, a the same for k ≤ p with r_p = 1
    (:func:`_phi_targets`); for p = 2, ρ_1 = ½ and for p = 1, a_1 = ½, g_1 to first order in h, as
    the authors' code does. UniP-2 alone is DPM-Solver++ (2M); the corrector raises the order of
    accuracy from p to p + 1 (paper, Theorem 3.3). ``order`` p is 1, 2 or 3; the spec builds 2.

    The order p of step i is min(order, i + 1, steps − i): the first steps lack history and the last
    steps are lower order; the last step goes to σ = 0, where x_next = x̂_0. Timesteps come from
    :func:`solver_timesteps`, as for DPM-Solver++.
    """

    def __init__(self, schedule: Schedule, steps: int | None = None, spacing: str = "logsnr", order: int = 2) -> None:
        kept = solver_timesteps(schedule, schedule.timesteps if steps is None else int(steps), spacing)
        self.order = int(order)
        self.model_timesteps: np.ndarray = kept[::-1].copy()
        alpha_bars = schedule.alpha_bars[self.model_timesteps]
        self._alpha_bars = alpha_bars
        alphas, sigmas = np.sqrt(alpha_bars), np.sqrt(1.0 - alpha_bars)
        # Position n (after the last step) is the data: α = 1, σ = 0, λ = ∞.
        lambdas = np.append(np.log(alphas) - np.log(sigmas), np.inf)
        n = len(self.model_timesteps)
        with np.errstate(divide="ignore"):
            h = lambdas[1:] - lambdas[:-1]
        self._x_scale = np.append(sigmas[1:], 0.0) / sigmas  # σ_t/σ_s
        self._d_scale = np.append(alphas[1:], 1.0) * -np.expm1(-h)  # α_t·(1 − e^(−h))
        self._sigmas = np.zeros(n)  # deterministic
        position = np.arange(n)
        self._orders = np.minimum(self.order, np.minimum(position + 1, n - position))
        # Weights on x̂_0 at positions i, i−1, ... for the predictor of step i, and on x̂_0 at i, i−1, ...
        # for the corrector that finishes step i−1 at position i.
        self._predictor: list[np.ndarray] = []
        self._corrector: list[np.ndarray] = [np.zeros(0)]
        for i in range(n):
            p = int(self._orders[i])
            ratios = [(lambdas[i - m] - lambdas[i]) / h[i] for m in range(1, p)]  # r_m < 0: earlier points
            self._predictor.append(_history_weights(ratios, self._predictor_coefficients(ratios, h[i])))
            if i + 1 < n:
                # UniC for step i, applied at position i + 1: the same points plus r_p = 1 at t.
                a = self._corrector_coefficients(ratios, h[i])
                weights = _history_weights(ratios, a[:-1])
                weights[0] -= a[-1]  # a_p·(x̂_0,t − x̂_0,s)
                self._corrector.append(np.concatenate(([a[-1]], weights)))
        self._previous: tuple[int, np.ndarray] | None = None
        self._history: list[np.ndarray] = []  # x̂_0 at positions i−1, i−2, ... (most recent first)
        self._last_x: np.ndarray | None = None  # the corrected x the previous step started from

    @staticmethod
    def _predictor_coefficients(ratios: list[float], h: float) -> np.ndarray:
        """ρ_1..ρ_{p−1}: Σ_m ρ_m·r_m^(k−1) = g_k for k = 1..p−1 (ρ_1 = ½ for p = 2)."""
        if len(ratios) < 2:
            return np.full(len(ratios), 0.5)
        powers = np.vander(np.asarray(ratios), increasing=True).T  # row k−1: r_m^(k−1)
        return np.linalg.solve(powers, _phi_targets(h, len(ratios)))

    @staticmethod
    def _corrector_coefficients(ratios: list[float], h: float) -> np.ndarray:
        """a_1..a_p: Σ_m a_m·r_m^(k−1) = g_k for k = 1..p with r_p = 1 (a_1 = ½ for p = 1)."""
        if not ratios:
            return np.array([0.5])
        points = np.append(ratios, 1.0)
        return np.linalg.solve(np.vander(points, increasing=True).T, _phi_targets(h, len(points)))

    def step(self, x: np.ndarray, i: int, eps: np.ndarray, noise: np.ndarray | None) -> np.ndarray:
        """Correct x at position ``i`` with this call's x̂_0 (UniC), then predict the next x (UniP);
        positions run in order from 0."""
        x0 = self.predict_x0(x, i, eps)
        if i > 0:
            self._history_check(self._previous, i, x0)
            # The last step's x_scale is 0 (σ_next = 0): the corrected x would be multiplied away.
            if self._x_scale[i]:
                weights = self._corrector[i]
                x = self._x_scale[i - 1] * self._last_x + self._d_scale[i - 1] * self._combine(weights, x0)
        else:
            self._history = []  # a loop starts afresh at 0
        self._previous = (i, x0)
        weights = self._predictor[i]
        result = self._x_scale[i] * x + self._d_scale[i] * self._combine(weights, x0)
        self._history = [x0, *self._history][: self.order]
        self._last_x = x
        return self._finish(result, i, noise)

    def _combine(self, weights: np.ndarray, x0: np.ndarray) -> np.ndarray:
        """Σ_k weights[k]·x̂_0 at position i − k, where x̂_0 at i is ``x0`` and earlier ones are remembered."""
        total = weights[0] * x0
        for weight, earlier in zip(weights[1:], self._history):
            total = total + weight * earlier
        return total

    def coefficients(self) -> dict[str, np.ndarray]:
        """Per-step factors in sampling order: the next x = x_scale·x + d_scale·Σ_k predictor[k]·x̂_0 at
        position i − k (after the corrector of position i, weights ``corrector`` on the same x̂_0)."""
        width = self.order + 1
        pad = lambda rows: np.array([np.pad(row, (0, width - len(row))) for row in rows])  # noqa: E731
        return {
            "timesteps": self.model_timesteps.copy(),
            "x_scale": self._x_scale.copy(),
            "d_scale": self._d_scale.copy(),
            "order": self._orders.copy(),
            "predictor": pad(self._predictor),
            "corrector": pad(self._corrector),
        }


def _build(schedule: Schedule, info: ModelInfo, steps: int, spacing: str) -> UniPCSampler:
    """Order 2: on the shipped model order 3 draws worse digits at 10 calls
    (benchmarks/results/sampler-quality-unipc.md), so it is no setting."""
    return UniPCSampler(schedule, steps, spacing=spacing, order=2)


SPEC = SamplerSpec(
    name="unipc",
    summary="UniPC (bh2), a predictor-corrector ODE solver: DPM-Solver++ with a free corrector",
    build=_build,
    steps=10,
    options=(spacing("logsnr"),),
    solver=True,
)
