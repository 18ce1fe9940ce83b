"""The training recipe: Min-SNR-γ loss weighting, learning-rate schedules, preset defaults, and old
checkpoints resuming with the settings they were trained with."""

import math

import numpy as np
import pytest
import torch

from ddpm.core.schedule import make_schedule
from ddpm.train.cli import main as train_main
from ddpm.train.config import LEGACY_TRAIN_SETTINGS, PRESET_TRAINING, TrainConfig
from ddpm.train.diffusion import Diffusion
from ddpm.train.lr_schedule import learning_rate

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


def test_old_checkpoint_settings_resume_as_trained():
    old = TrainConfig(lr=2e-4).to_dict()
    for key in LEGACY_TRAIN_SETTINGS:
        del old[key]  # what a checkpoint written before these settings existed holds
    restored = TrainConfig.from_dict(old)
    assert restored.lr_schedule == "constant" and restored.loss_weighting == "none"
    # ... even though the small preset's defaults are now the new recipe
    assert PRESET_TRAINING["small"]["lr_schedule"] != "constant"
    assert PRESET_TRAINING["small"]["loss_weighting"] == "min-snr"


def tiny_args(data_dir, out, *extra):
    return ("--preset", "tiny", "--data-dir", data_dir, "--out", out, "--no-progress", "--no-samples", *extra)


def test_recipe_settings_reach_the_checkpoint_and_resume(invoke, data_dir, tmp_path):
    out = tmp_path / "run"
    recipe = ("--loss-weighting", "min-snr", "--min-snr-gamma", "3", "--lr-schedule", "cosine", "--lr-warmup-steps", "2")
    result = invoke(train_main, *tiny_args(data_dir, out, "--max-steps", "4", "--epochs", "1", *recipe))
    assert result.code == 0, result.err
    assert "Min-SNR-3" in result.err and "cosine" in result.err
    checkpoint = torch.load(out / "model.pt", weights_only=True)
    train = checkpoint["train"]
    assert (train["loss_weighting"], train["min_snr_gamma"], train["lr_schedule"], train["lr_warmup_steps"]) == ("min-snr", 3.0, "cosine", 2)
    # The same command resumes; a different weighting is refused naming both values.
    more = tiny_args(data_dir, out, "--max-steps", "6", "--epochs", "1", "--resume", "auto")
    assert invoke(train_main, *more, *recipe).code == 0
    refused = invoke(train_main, *more, "--loss-weighting", "none")
    assert refused.code != 0 and "--loss-weighting none (checkpoint: min-snr)" in refused.err


def test_old_checkpoint_resumes_without_the_new_settings(invoke, data_dir, tmp_path):
    """A checkpoint without the recipe keys resumes with a constant rate and plain L_simple."""
    out = tmp_path / "run"
    assert invoke(train_main, *tiny_args(data_dir, out, "--max-steps", "2", "--epochs", "1")).code == 0
    path = out / "model.pt"
    checkpoint = torch.load(path, weights_only=True)
    for key in LEGACY_TRAIN_SETTINGS:
        checkpoint["train"].pop(key)
    target = out / "old.pt"
    torch.save(checkpoint, target)
    result = invoke(train_main, "--data-dir", data_dir, "--out", out, "--no-progress", "--no-samples",
                    "--max-steps", "3", "--resume", str(target))
    assert result.code == 0, result.err
    assert "loss L_simple" in result.err and "constant" in result.err
    assert torch.load(out / "model.pt", weights_only=True)["train"]["lr_schedule"] == "constant"


def test_small_preset_defaults_are_the_measured_recipe(invoke, data_dir, tmp_path):
    result = invoke(train_main, "--preset", "small", "--data-dir", data_dir, "--dry-run")
    assert result.code == 0, result.err
    recipe = PRESET_TRAINING["small"]
    assert f"lr {recipe['lr']:g} (cosine, {recipe['lr_warmup_steps']} warm-up steps)" in result.err
    assert "Min-SNR-5" in result.err and "dropout 0," in result.err and f"EMA {recipe['ema_decay']:g}" in result.err


@pytest.mark.parametrize("option,value", [("--lr-schedule", "step"), ("--loss-weighting", "p2"), ("--min-snr-gamma", "0"),
                                          ("--min-snr-gamma", "nan"), ("--lr", "nan"),
                                          ("--lr-warmup-steps", "-1")])
def test_bad_recipe_options(invoke, data_dir, tmp_path, option, value):
    result = invoke(train_main, *tiny_args(data_dir, tmp_path / "run", option, value))
    assert result.code == 2
    assert "Traceback" not in result.err and option in result.err
    assert not (tmp_path / "run").exists()


def test_min_snr_is_finite_for_the_cosine_schedule():
    cosine = make_schedule(kind="cosine", timesteps=1000, offset=0.008, max_beta=0.999)
    weights = Diffusion(cosine, min_snr_gamma=5.0).loss_weights.numpy()
    assert np.all(np.isfinite(weights)) and np.all((weights > 0) & (weights <= 1))
