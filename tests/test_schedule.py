import numpy as np
import pytest

from ddpm.core.samplers import AncestralSampler
from ddpm.core.schedule import Schedule, linear_betas, make_schedule


def test_linear_schedule_closed_form():
    schedule = make_schedule("linear", timesteps=1000, beta_start=1e-4, beta_end=0.02)
    betas = schedule.betas
    assert betas.shape == (1000,)
    assert betas[0] == pytest.approx(1e-4) and betas[-1] == pytest.approx(0.02)
    assert np.allclose(np.diff(betas), (0.02 - 1e-4) / 999)
    # ᾱ_T = Π (1 − β_t), computed here through logarithms.
    assert schedule.alpha_bars[-1] == pytest.approx(np.exp(np.sum(np.log1p(-betas))), rel=1e-12)
    assert 3e-5 < schedule.alpha_bars[-1] < 5e-5  # the well-known ≈ 4.04e-5 of this schedule
    # β̃_1 = 0 (nothing to undo before x_0); β̃_2 = β_1 β_2 / (β_1 + β_2 − β_1 β_2).
    b1, b2 = betas[0], betas[1]
    assert schedule.posterior_variance[0] == 0.0
    assert schedule.posterior_variance[1] == pytest.approx(b1 * b2 / (b1 + b2 - b1 * b2), rel=1e-12)
    assert np.all(schedule.posterior_variance[1:] < betas[1:])
    assert schedule.alpha_bars_prev[0] == 1.0
    assert np.allclose(schedule.alpha_bars_prev[1:], schedule.alpha_bars[:-1])


@pytest.mark.parametrize(
    "kwargs",
    [dict(timesteps=0), dict(beta_start=0.0), dict(beta_start=0.03, beta_end=0.02), dict(beta_end=1.0)],
)
def test_bad_schedules_raise(kwargs):
    with pytest.raises(ValueError):
        linear_betas(**kwargs)


def test_unknown_kind():
    with pytest.raises(ValueError, match="unknown schedule kind"):
        make_schedule("cosine-ish")


def test_step_with_true_noise_gives_posterior_mean():
    """With the true ε, eq. 11's mean equals the mean of q(x_{t−1} | x_t, x_0)."""
    schedule = make_schedule()
    sampler = AncestralSampler(schedule)
    rng = np.random.default_rng(1)
    x0 = rng.uniform(-1, 1, size=(2, 1, 4, 4))
    eps = rng.standard_normal(x0.shape)
    for i in (0, 500, 998, 999):
        t = int(sampler.model_timesteps[i])
        ab, ab_prev, beta = schedule.alpha_bars[t], schedule.alpha_bars_prev[t], schedule.betas[t]
        xt = np.sqrt(ab) * x0 + np.sqrt(1 - ab) * eps
        expected = np.sqrt(ab_prev) * beta / (1 - ab) * x0 + np.sqrt(1 - beta) * (1 - ab_prev) / (1 - ab) * xt
        zero_noise = np.zeros_like(x0)
        got = sampler.step(xt, i, eps, zero_noise)
        assert np.allclose(got, expected, atol=1e-5), i


def test_noise_scale_and_last_step():
    schedule = make_schedule()
    x = np.zeros((1, 1, 2, 2), np.float32)
    eps = np.zeros_like(x)
    noise = np.ones_like(x)
    for variance, sigma2 in (("beta", schedule.betas), ("posterior", schedule.posterior_variance)):
        sampler = AncestralSampler(schedule, variance=variance)
        assert sampler.step(x, 0, eps, noise)[0, 0, 0, 0] == pytest.approx(np.sqrt(sigma2[999]), rel=1e-6)
        assert sampler.step(x, 999, eps, None)[0, 0, 0, 0] == 0.0  # no noise on the last step
        assert not sampler.needs_noise(999)
    labml_like = AncestralSampler(schedule, variance="beta", noise_at_last_step=True)
    assert labml_like.step(x, 999, eps, noise)[0, 0, 0, 0] == pytest.approx(np.sqrt(schedule.betas[0]), rel=1e-6)


def test_respacing():
    schedule = make_schedule()
    full = AncestralSampler(schedule)
    assert list(full.model_timesteps) == list(range(999, -1, -1))
    short = AncestralSampler(schedule, steps=10)
    assert len(short) == 10 and short.model_timesteps[0] == 999 and short.model_timesteps[-1] == 0
    # Marginals are kept: the product of respaced α equals ᾱ at the kept steps.
    betas = 1 - 1 / short._mean_scale[::-1] ** 2
    assert np.allclose(np.cumprod(1 - betas), schedule.alpha_bars[short.model_timesteps[::-1]])


def test_schedule_rejects_bad_betas():
    with pytest.raises(ValueError):
        Schedule(np.array([0.1, 1.5]))
