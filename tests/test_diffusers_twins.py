"""Every sampler against its diffusers twin, on identical timesteps and identical noise, with an exact
ε for Gaussian data: the two loops must end (and pass through) the same points.

Gaussian data x_0 ~ N(μ, s²) per pixel makes the ideal network known in closed form. With
x_t = α·x_0 + σ·ε (α = √ᾱ_t, σ = √(1−ᾱ_t)), ε and x_t are jointly Gaussian with Cov(ε, x_t) = σ and
Var(x_t) = α²s² + σ², so the posterior mean, the ε a perfect network predicts, is

    ε̂(x_t, t) = E[ε | x_t] = σ·(x_t − α·μ) / (α²·s² + σ²).

Both sides compute in float64 (diffusers' ᾱ replaced by the float64 cumulative product of the same
betas): in float32, x̂_0 = (x − σ·ε)/α at t = 999 (α ≈ 6.4e-3) magnifies each side's round-off about
160-fold, which would hide a wrong coefficient of that size. What is left is our float32 output:
half a float32 ulp of |x| < 4 is 2.4e-7 per step.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

diffusers = pytest.importorskip("diffusers")
torch = pytest.importorskip("torch")
# diffusers turns its float32 ᾱ into a NumPy array in set_timesteps the way NumPy 2 deprecates; not ours.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

from ddpm.core.samplers import AncestralSampler, DDIMSampler, DPMSolverSampler, Sampler  # noqa: E402
from ddpm.core.schedule import Schedule, linear_betas  # noqa: E402

TOLERANCE = 1e-6
SCHEDULE = Schedule(linear_betas(1000, 1e-4, 0.02))
SHAPE = (4, 1, 8, 8)
# The same betas as the constructor arguments every diffusers scheduler here gets (no download: no
# from_pretrained, only these).
DIFFUSERS_BETAS = dict(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear")


class GaussianData:
    """Per-pixel Gaussian data N(μ, s²) and its exact ε-prediction (module docstring)."""

    def __init__(self, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.mean = rng.uniform(-0.5, 0.5, SHAPE[1:])
        self.std = rng.uniform(0.1, 0.6, SHAPE[1:])

    def eps(self, x: np.ndarray, t: int) -> np.ndarray:
        """ε̂(x_t, t) = σ·(x_t − α·μ) / (α²·s² + σ²), float64."""
        alpha_bar = SCHEDULE.alpha_bars[t]
        alpha, sigma = np.sqrt(alpha_bar), np.sqrt(1.0 - alpha_bar)
        return sigma * (np.asarray(x, dtype=np.float64) - alpha * self.mean) / (alpha_bar * self.std**2 + sigma**2)


TheirStep = Callable[[torch.Tensor, int, int, torch.Tensor, torch.Tensor | None], torch.Tensor]


def max_difference(ours: Sampler, theirs: TheirStep, seed: int = 0) -> float:
    """Run both loops from the same x_T, each evaluating ε̂ on its own trajectory and given the same
    noise; the largest |x_ours − x_theirs| over every step."""
    data, rng = GaussianData(seed), np.random.default_rng(seed + 1)
    x = rng.standard_normal(SHAPE, dtype=np.float32)
    y = torch.from_numpy(x.astype(np.float64))
    worst = 0.0
    for i, t in enumerate(ours.model_timesteps):
        noise = rng.standard_normal(SHAPE, dtype=np.float32) if ours.needs_noise(i) else None
        x = ours.step(x, i, data.eps(x, t), noise)
        y = theirs(
            y,
            i,
            int(t),
            torch.from_numpy(data.eps(y.numpy(), t)),
            None if noise is None else torch.from_numpy(noise.astype(np.float64)),
        )
        assert x.dtype == np.float32 and np.all(np.isfinite(x))
        worst = max(worst, float(np.abs(x - y.numpy()).max()))
    return worst


def float64_schedule(scheduler) -> None:
    """Replace diffusers' float32 ᾱ by ours after checking that they hold the same betas."""
    np.testing.assert_allclose(scheduler.betas.numpy(), SCHEDULE.betas, rtol=1e-6)
    scheduler.alphas_cumprod = torch.from_numpy(SCHEDULE.alpha_bars.copy())


def solver_sigmas(timesteps: np.ndarray) -> torch.Tensor:
    """diffusers' σ = √((1−ᾱ)/ᾱ) at our timesteps (descending), then 0 for the last step to the data."""
    alpha_bars = SCHEDULE.alpha_bars[timesteps]
    return torch.from_numpy(np.append(np.sqrt((1.0 - alpha_bars) / alpha_bars), 0.0))


def use_our_solver_timesteps(scheduler, ours: Sampler) -> None:
    """Set a multistep diffusers solver (DPM-Solver++, UniPC) to our timesteps and σ: set_timesteps
    resets its state, then its own spacing is replaced. Its own spacing must differ, or this would
    prove nothing."""
    steps = len(ours)
    scheduler.set_timesteps(steps)
    if steps > 2:
        assert not np.array_equal(scheduler.timesteps.numpy(), ours.model_timesteps)
    scheduler.timesteps = torch.from_numpy(ours.model_timesteps.copy())
    scheduler.sigmas = solver_sigmas(ours.model_timesteps)


def solver_step(scheduler) -> TheirStep:
    def step(y, i, t, eps, noise):
        assert scheduler.step_index in (None, i)  # it found our timestep at our position
        kwargs = {} if noise is None else {"variance_noise": noise}
        if noise is None and getattr(scheduler.config, "algorithm_type", "").startswith("sde"):
            kwargs = {"variance_noise": torch.zeros_like(y)}  # the last step: multiplied by σ_next = 0
        return scheduler.step(eps, t, y, **kwargs).prev_sample

    return step


@pytest.mark.parametrize("steps", [10, 50])
@pytest.mark.parametrize("variance, variance_type", [("posterior", "fixed_small"), ("beta", "fixed_large")])
def test_ancestral_matches_ddpm_scheduler(monkeypatch, steps, variance, variance_type):
    from diffusers.schedulers import scheduling_ddpm

    ours = AncestralSampler(SCHEDULE, steps, variance=variance)
    scheduler = diffusers.DDPMScheduler(**DIFFUSERS_BETAS, variance_type=variance_type, clip_sample=False)
    float64_schedule(scheduler)
    scheduler.set_timesteps(timesteps=ours.model_timesteps.tolist())
    given: list[torch.Tensor] = []

    # DDPMScheduler draws its noise inside step(); hand it ours instead.
    def our_noise(shape, generator=None, device=None, dtype=None):
        return given.pop().to(dtype)

    monkeypatch.setattr(scheduling_ddpm, "randn_tensor", our_noise)

    def step(y, i, t, eps, noise):
        if noise is not None:
            given.append(noise)
        out = scheduler.step(eps, t, y).prev_sample
        assert not given  # it added noise exactly where ours does (not at t = 0)
        return out

    assert max_difference(ours, step) < TOLERANCE


@pytest.mark.parametrize("steps", [10, 28])
@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_ddim_matches_ddim_scheduler(steps, eta):
    ours = DDIMSampler(SCHEDULE, steps, eta=eta)
    scheduler = diffusers.DDIMScheduler(**DIFFUSERS_BETAS, clip_sample=False, set_alpha_to_one=True)
    float64_schedule(scheduler)
    scheduler.set_timesteps(steps)
    # DDIMScheduler steps from t to t − T // num_inference_steps. Ours, evenly spaced from 0 to 999,
    # have stride 999/(S−1), which that formula gives for num_inference_steps = S − 1 where S − 1 divides 999.
    scheduler.timesteps = torch.from_numpy(ours.model_timesteps.copy())
    scheduler.num_inference_steps = steps - 1
    stride = scheduler.config.num_train_timesteps // scheduler.num_inference_steps
    np.testing.assert_array_equal(ours.model_timesteps[:-1] - stride, ours.model_timesteps[1:])

    def step(y, i, t, eps, noise):
        return scheduler.step(eps, t, y, eta=eta, variance_noise=noise).prev_sample

    assert max_difference(ours, step) < TOLERANCE


@pytest.mark.parametrize("steps", [1, 2, 5, 20])
@pytest.mark.parametrize("stochastic, algorithm", [(False, "dpmsolver++"), (True, "sde-dpmsolver++")])
def test_dpm_solver_matches_dpm_solver_multistep(steps, stochastic, algorithm):
    ours = DPMSolverSampler(SCHEDULE, steps, spacing="logsnr", stochastic=stochastic)
    scheduler = diffusers.DPMSolverMultistepScheduler(
        **DIFFUSERS_BETAS,
        algorithm_type=algorithm,
        solver_order=2,
        solver_type="midpoint",
        prediction_type="epsilon",
        final_sigmas_type="zero",
        lower_order_final=True,
    )
    use_our_solver_timesteps(scheduler, ours)
    assert max_difference(ours, solver_step(scheduler)) < TOLERANCE
    assert scheduler.step_index == steps  # every step ran on our schedule


def test_the_comparison_resolves_the_second_order_term():
    """Against first-order DPM-Solver++ (DDIM) our second-order solver differs far beyond the tolerance,
    so the agreement above is not that of any two reasonable solvers."""
    ours = DPMSolverSampler(SCHEDULE, 10, spacing="logsnr")
    scheduler = diffusers.DPMSolverMultistepScheduler(
        **DIFFUSERS_BETAS, algorithm_type="dpmsolver++", solver_order=1, final_sigmas_type="zero"
    )
    use_our_solver_timesteps(scheduler, ours)
    assert max_difference(ours, solver_step(scheduler)) > 1000 * TOLERANCE
