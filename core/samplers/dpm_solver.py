"""DPM-Solver++ (Lu et al. 2022), multistep 2M, as an ODE solver and as its SDE variant."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ..schedule import Schedule
from .base import Multistep, solver_timesteps
from .spec import SamplerSpec, spacing

if TYPE_CHECKING:
    from ..metadata import ModelInfo


class DPMSolverSampler(Multistep):
    """DPM-Solver++ in data prediction: with α = √ᾱ, σ = √(1−ᾱ), λ = log(α/σ), h = λ_next − λ and
    x̂_0 = (x − σ·ε)/α at each model timestep,

        ODE:  x_next = σ_next/σ · x + α_next·(1 − e^(−h)) · D
        SDE:  x_next = σ_next/σ · e^(−h) · x + α_next·(1 − e^(−2h)) · D + σ_next·√(1 − e^(−2h)) · z

    with D = x̂_0 (first order) or, second order, D = x̂_0 + (x̂_0 − x̂_0,prev)/(2r), r = h_prev/h.
    The first step has no history and the last (to σ = 0, where x_next = D) is first order, so one
    step is plain first order. First order is DDIM: η = 0 for the ODE, η = 1 for the SDE.
    Timesteps come from :func:`solver_timesteps` ("uniform", "quadratic" or "logsnr").
    """

    def __init__(
        self,
        schedule: Schedule,
        steps: int | None = None,
        spacing: str = "uniform",
        order: int = 2,
        stochastic: bool = False,
    ) -> None:
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

    def step(self, x: np.ndarray, i: int, eps: np.ndarray, noise: np.ndarray | None) -> np.ndarray:
        """One solver step from position ``i`` (0 = noisiest); positions run in order from 0."""
        x0 = self.predict_x0(x, i, eps)
        d = x0
        if self._correction[i]:
            self._history_check(self._previous, i, x0)
            d = x0 + self._correction[i] * (x0 - self._previous[1])
        self._previous = (i, x0)
        return self._finish(self._x_scale[i] * x + self._d_scale[i] * d, i, noise)

    def coefficients(self) -> dict[str, np.ndarray]:
        """Per-step factors in sampling order: x_next = x_scale·x + d_scale·D + sigma·z, D = x̂_0 + correction·Δx̂_0."""
        return {
            "timesteps": self.model_timesteps.copy(),
            "x_scale": self._x_scale.copy(),
            "d_scale": self._d_scale.copy(),
            "sigma": self._sigmas.copy(),
            "correction": self._correction.copy(),
        }


def _ode(schedule: Schedule, info: ModelInfo, steps: int, spacing: str) -> DPMSolverSampler:
    return DPMSolverSampler(schedule, steps, spacing=spacing)


def _sde(schedule: Schedule, info: ModelInfo, steps: int, spacing: str) -> DPMSolverSampler:
    return DPMSolverSampler(schedule, steps, spacing=spacing, stochastic=True)


# Second order in λ, so they step evenly in it: uniform-in-t steps leave a last step 5x longer in λ
# than the one before.
SPECS = (
    SamplerSpec(
        name="dpm++2m",
        summary="DPM-Solver++ (2M), a second-order ODE solver",
        build=_ode,
        steps=20,
        options=(spacing("logsnr"),),
        solver=True,
    ),
    SamplerSpec(
        name="dpm++2m-sde",
        summary="its stochastic variant, the more forgiving of an imperfect model",
        build=_sde,
        steps=20,
        options=(spacing("logsnr"),),
        solver=True,
    ),
)
