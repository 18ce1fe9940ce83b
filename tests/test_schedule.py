"""Noise schedules (core/schedule.py): the linear and cosine schedules against their closed forms, and
schedules that are refused."""

import numpy as np
import pytest

from ddpm.core.schedule import Schedule, cosine_alpha_bar, linear_betas, make_schedule


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


def test_cosine_schedule_closed_form():
    schedule = make_schedule("cosine", 1000)
    t = np.arange(1, 1001)
    expected = cosine_alpha_bar(t / 1000)  # ᾱ_t = f(t/T) / f(0)
    unclipped = schedule.betas < 0.999
    assert unclipped[:-1].all() and not unclipped[-1]  # only the very last β reaches the clip
    np.testing.assert_allclose(schedule.alpha_bars[:-1], expected[:-1], rtol=1e-10)
    # β_1 = 1 − f(1/T)/f(0), computed directly from the cosine.
    s = 0.008
    f = lambda u: np.cos((u + s) / (1 + s) * np.pi / 2) ** 2  # noqa: E731
    assert schedule.betas[0] == pytest.approx(1 - f(1 / 1000) / f(0), rel=1e-12)
    assert schedule.betas.max() == pytest.approx(0.999)
    assert np.all(np.diff(schedule.betas) > 0)
    # Half the signal variance is gone at about the middle, not in the first fifth as with linear β.
    middle = np.argmin(np.abs(schedule.alpha_bars - 0.5))
    assert 450 < middle < 550
    assert np.argmin(np.abs(make_schedule("linear").alpha_bars - 0.5)) < 300


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


def test_schedule_rejects_bad_betas():
    with pytest.raises(ValueError):
        Schedule(np.array([0.1, 1.5]))
