"""Learning-rate schedules (train/lr_schedule.py): a linear warm-up, then constant, cosine or linear decay."""

import math

import pytest

from ddpm.train.config import TrainConfig
from ddpm.train.lr_schedule import learning_rate

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.mark.parametrize("kind", ["constant", "cosine", "linear"])
def test_learning_rate_schedules(kind):
    config = TrainConfig(lr=1e-3, lr_warmup_steps=10, lr_schedule=kind)
    total = 110
    rates = [learning_rate(config, step, total) for step in range(total)]
    assert rates[0] == pytest.approx(1e-4) and rates[9] == pytest.approx(1e-3)  # linear warm-up
    assert max(rates) == pytest.approx(1e-3)
    if kind == "constant":
        assert rates[10:] == [1e-3] * 100
        return
    after = rates[10:]
    assert all(a >= b for a, b in zip(after, after[1:]))  # non-increasing once warm
    assert learning_rate(config, total, total) == pytest.approx(0.0, abs=1e-12)
    halfway = learning_rate(config, 60, total)
    assert halfway == pytest.approx(5e-4)  # both schedules pass lr/2 half way through the decay
    quarter = learning_rate(config, 35, total)
    expected = 1e-3 * (0.5 * (1 + math.cos(math.pi * 0.25)) if kind == "cosine" else 0.75)
    assert quarter == pytest.approx(expected)
