"""UniPC against diffusers' UniPCMultistepScheduler (bh2, data prediction, the corrector on) on identical
timesteps with an exact ε for Gaussian data, and the order of accuracy its corrector buys."""

from __future__ import annotations

import numpy as np
import pytest

diffusers = pytest.importorskip("diffusers")
torch = pytest.importorskip("torch")
# diffusers turns its float32 ᾱ into a NumPy array in set_timesteps the way NumPy 2 deprecates; not ours.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

from test_diffusers_twins import (
    DIFFUSERS_BETAS,
    SCHEDULE,
    SHAPE,
    TOLERANCE,
    GaussianData,
    max_difference,  # noqa: E402
    solver_step,
    use_our_solver_timesteps,
)

from ddpm.core.samplers import DPMSolverSampler, UniPCSampler, find  # noqa: E402


def twin(order: int, **settings) -> diffusers.UniPCMultistepScheduler:
    return diffusers.UniPCMultistepScheduler(
        **DIFFUSERS_BETAS,
        solver_order=order,
        solver_type="bh2",
        predict_x0=True,
        prediction_type="epsilon",
        final_sigmas_type="zero",
        lower_order_final=True,
        **settings,
    )


@pytest.mark.parametrize("order", [1, 2, 3])
@pytest.mark.parametrize("steps", [1, 2, 3, 5, 10, 20])
def test_unipc_matches_diffusers(order, steps):
    """Every intermediate x agrees to float32 round-off (see test_diffusers_twins)."""
    ours = UniPCSampler(SCHEDULE, steps, order=order)
    scheduler = twin(order)
    use_our_solver_timesteps(scheduler, ours)
    assert max_difference(ours, solver_step(scheduler)) < TOLERANCE
    assert scheduler.step_index == steps  # it stepped through our timesteps to the end
    np.testing.assert_array_equal(scheduler.timesteps.numpy(), ours.model_timesteps)


@pytest.mark.parametrize("order", [1, 2])
def test_the_corrector_is_what_agrees(order):
    """Without its corrector diffusers' UniPC is far from ours: the agreement above includes UniC."""
    ours = UniPCSampler(SCHEDULE, 10, order=order)
    scheduler = twin(order, disable_corrector=list(range(10)))
    use_our_solver_timesteps(scheduler, ours)
    assert max_difference(ours, solver_step(scheduler)) > 1000 * TOLERANCE


def final_error(sampler, reference: np.ndarray | None = None) -> tuple[np.ndarray, float]:
    data = GaussianData(0)
    x = np.random.default_rng(1).standard_normal(SHAPE, dtype=np.float32)
    for i, t in enumerate(sampler.model_timesteps):
        x = sampler.step(x, i, data.eps(x, t), None)
    return x, (float(np.abs(x - reference).max()) if reference is not None else 0.0)


@pytest.mark.parametrize("order, low, high", [(1, 3.0, 6.0), (2, 6.0, 12.0), (3, 12.0, 48.0)])
def test_the_corrector_raises_the_order_by_one(order, low, high):
    """UniPC-p converges at order p + 1 (Zhao et al. 2023, Theorem 3.3): from 40 to 80 steps, even in
    log-SNR, the error against a 1000-step solution falls by about 2^(p+1); DPM-Solver++ (2M), the
    same predictor at p = 2 without the corrector, by about 4."""
    reference, _ = final_error(UniPCSampler(SCHEDULE, 1000, order=3))
    coarse, fine = (final_error(UniPCSampler(SCHEDULE, steps, order=order), reference)[1] for steps in (40, 80))
    assert low < coarse / fine < high
    coarse, fine = (
        final_error(DPMSolverSampler(SCHEDULE, steps, spacing="logsnr"), reference)[1] for steps in (40, 80)
    )
    assert 3.0 < coarse / fine < 6.0


def test_spec_defaults_and_the_step_interface():
    spec = find("unipc")
    sampler = spec.build(
        SCHEDULE, None, spec.check_steps(None, SCHEDULE, None), **{o.name: o.default for o in spec.options}
    )
    assert isinstance(sampler, UniPCSampler) and len(sampler) == spec.steps == 10 and spec.solver
    assert spec.option("spacing").default == "logsnr"
    assert np.all(np.diff(sampler.model_timesteps) < 0) and sampler.model_timesteps[0] == 999
    assert not any(sampler.needs_noise(i) for i in range(len(sampler)))  # deterministic
    orders = sampler.coefficients()["order"]
    # Warm-up (no history yet), then lower order towards the end.
    np.testing.assert_array_equal(orders, [min(sampler.order, i + 1, 10 - i) for i in range(10)])
    x = np.zeros(SHAPE, dtype=np.float32)
    out = sampler.step(x, 0, x, None)
    assert out.dtype == np.float32
    with pytest.raises(ValueError, match="in order"):
        sampler.step(out, 2, x, None)


def test_one_step_is_the_data_prediction():
    """One step goes from t = 999 straight to σ = 0: x̂_0 = (x − σ·ε)/α."""
    sampler = UniPCSampler(SCHEDULE, 1)
    rng = np.random.default_rng(0)
    x, eps = rng.standard_normal(SHAPE, dtype=np.float32), rng.standard_normal(SHAPE, dtype=np.float32)
    alpha_bar = SCHEDULE.alpha_bars[999]
    expected = (x - np.sqrt(1 - alpha_bar) * eps.astype(np.float64)) / np.sqrt(alpha_bar)
    np.testing.assert_allclose(sampler.step(x, 0, eps, None), expected, rtol=1e-6)
