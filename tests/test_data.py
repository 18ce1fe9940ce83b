"""Training images (train/data.py): MNIST digits padded or resized to the model's size in its data range,
and a data folder that lacks them named with --download."""

import pytest
import torch

from ddpm.core.errors import DDPMError
from ddpm.core.mnist import load_mnist
from ddpm.train.data import DataConfig, load_training_images, transform_images


def test_pad_and_range(data_dir):
    images, _ = load_mnist(data_dir, "train")
    padded = transform_images(images[:4], DataConfig(32, "pad", (-1.0, 1.0)))
    assert padded.shape == (4, 1, 32, 32)
    assert padded.min() == -1.0 and padded.max() == 1.0
    assert torch.all(padded[:, :, :2] == -1.0) and torch.all(padded[:, :, :, -2:] == -1.0)
    inner = (padded[:, 0, 2:30, 2:30] + 1) / 2 * 255
    assert torch.allclose(inner, torch.from_numpy(images[:4]).float(), atol=1e-3)
    unit = transform_images(images[:4], DataConfig(32, "pad", (0.0, 1.0)))
    assert unit.min() == 0.0 and unit.max() == 1.0


def test_resize(data_dir):
    images, _ = load_mnist(data_dir, "train")
    resized = transform_images(images[:2], DataConfig(32, "resize", (-1.0, 1.0)))
    assert resized.shape == (2, 1, 32, 32)
    assert -1.0 <= resized.min() and resized.max() <= 1.0
    # a resized digit fills the frame: the border is not all background as with padding
    assert (resized[:, :, 1:31, 1:31] > -0.9).sum() > (transform_images(images[:2], DataConfig()) > -0.9).sum()
    with pytest.raises(DDPMError, match="cannot pad"):
        transform_images(images[:1], DataConfig(16, "pad"))


def test_max_images(data_dir):
    assert load_training_images(data_dir, DataConfig(), max_images=10).shape == (10, 1, 32, 32)


def test_missing_data_dir_names_files_and_download(tmp_path):
    with pytest.raises(DDPMError, match=r"train-images-idx3-ubyte.*--download"):
        load_training_images(tmp_path / "nowhere", DataConfig())
