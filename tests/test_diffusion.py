"""The training loss (train/diffusion.py): Min-SNR-γ weighting of L_simple by timestep."""

import numpy as np
import pytest
import torch

from ddpm.core.schedule import make_schedule
from ddpm.train.diffusion import Diffusion

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")
SCHEDULE = make_schedule(kind="linear", timesteps=1000, beta_start=1e-4, beta_end=0.02)


class Constant(torch.nn.Module):
    """ε_θ = 0, so the per-example loss is the mean of ε² and the weighting is all that differs."""

    def forward(self, x, t, y=None):
        return torch.zeros_like(x)


def test_min_snr_weights_follow_the_formula():
    gamma = 5.0
    diffusion = Diffusion(SCHEDULE, min_snr_gamma=gamma)
    alpha_bars = SCHEDULE.alpha_bars
    snr = alpha_bars / (1 - alpha_bars)
    for t in (0, 100, 300, 999):
        expected = min(snr[t], gamma) / snr[t]
        assert diffusion.loss_weights[t].item() == pytest.approx(expected, rel=1e-5)
    # Low noise (large SNR) is down-weighted; once SNR < γ the weight is exactly 1.
    assert diffusion.loss_weights[0] < 0.01
    assert diffusion.loss_weights[999] == 1.0
    assert torch.all(diffusion.loss_weights[1:] >= diffusion.loss_weights[:-1])


def test_min_snr_loss_weights_each_example_by_its_timestep():
    x0 = torch.zeros(2, 1, 4, 4)
    noise = torch.ones(2, 1, 4, 4)
    t = torch.tensor([0, 999])
    plain = Diffusion(SCHEDULE).loss(Constant(), x0, t, noise)
    weighted = Diffusion(SCHEDULE, min_snr_gamma=5.0)
    assert plain.item() == pytest.approx(1.0)
    expected = (weighted.loss_weights[0] + weighted.loss_weights[999]).item() / 2
    assert weighted.loss(Constant(), x0, t, noise).item() == pytest.approx(expected, rel=1e-6)


def test_min_snr_is_finite_for_the_cosine_schedule():
    cosine = make_schedule(kind="cosine", timesteps=1000, offset=0.008, max_beta=0.999)
    weights = Diffusion(cosine, min_snr_gamma=5.0).loss_weights.numpy()
    assert np.all(np.isfinite(weights)) and np.all((weights > 0) & (weights <= 1))
