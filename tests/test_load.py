"""Reading a checkpoint for export (export/load.py): the U-Net config of a labml state dict, inferred from its
weights."""

import pytest
import torch

from ddpm.export.load import infer_labml_config
from ddpm.train.config import preset
from ddpm.train.unet import UNet
from tests_support import LABML_SMALL

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning", "ignore::DeprecationWarning")


def test_labml_config_inference():
    for config in (
        preset("labml"),
        preset("labml", **LABML_SMALL),
        preset("labml", blocks_per_resolution=1, attention=(False, True, False, True)),
    ):
        with torch.device("meta"):
            state = UNet(config).state_dict()
        inferred = infer_labml_config(state)
        assert inferred.widths() == config.widths()
        assert inferred.attention == config.attention
        assert inferred.blocks_per_resolution == config.blocks_per_resolution
        assert inferred.image_channels == 1 and inferred.base_channels == config.base_channels
