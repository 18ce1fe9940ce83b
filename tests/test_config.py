"""Run settings (train/config.py): the U-Net's width rules and the configs it refuses, the config's round
trip, and the training settings of checkpoints written before the recipe settings existed."""

import pytest

from ddpm.train.config import LEGACY_TRAIN_SETTINGS, PRESET_TRAINING, TrainConfig, UNetConfig, preset
from ddpm.train.unet import UNet

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def test_width_rules():
    assert preset("labml").widths() == [64, 128, 256, 1024]
    assert preset("labml", width_rule="base").widths() == [64, 128, 128, 256]
    model = UNet(preset("labml", width_rule="base", channel_mults=(1, 2), attention=(False, True), base_channels=32))
    assert model.state_dict()["final.weight"].shape == (1, 32, 3, 3)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(attention=(True,)), "attention has 1 entries"),
        (dict(norm_groups=5), "not divisible by norm_groups"),
        (dict(channel_mults=()), "channel_mults"),
        (dict(width_rule="wide"), "width_rule"),
        (dict(dropout=1.0), "dropout"),
    ],
)
def test_invalid_configs(overrides, message):
    with pytest.raises(ValueError, match=message):
        UNet(preset("tiny", **overrides))


def test_config_round_trip():
    config = preset("small")
    assert UNetConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="unknown model config keys"):
        UNetConfig.from_dict({**config.to_dict(), "heads": 4})


def test_old_checkpoint_settings_resume_as_trained():
    old = TrainConfig(lr=2e-4).to_dict()
    for key in LEGACY_TRAIN_SETTINGS:
        del old[key]  # what a checkpoint written before these settings existed holds
    restored = TrainConfig.from_dict(old)
    assert restored.lr_schedule == "constant" and restored.loss_weighting == "none"
    # ... even though the small preset's defaults are now the new recipe
    assert PRESET_TRAINING["small"]["lr_schedule"] != "constant"
    assert PRESET_TRAINING["small"]["loss_weighting"] == "min-snr"
