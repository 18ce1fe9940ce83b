"""MNIST as one in-memory tensor, transformed to the model's size and value range."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import click
import numpy as np
import torch
import torch.nn.functional as F

from ..core.download import require_mnist
from ..core.errors import DDPMError
from ..core.mnist import load_mnist, missing_files
from .config import TRANSFORMS, DataConfig


def transform_images(images: np.ndarray, config: DataConfig) -> torch.Tensor:
    """uint8 [N, h, w] → float32 [N, 1, S, S] in ``config.data_range``."""
    pixels = torch.tensor(np.asarray(images), dtype=torch.float32).div_(255.0)[:, None]
    size, height, width = config.image_size, pixels.shape[-2], pixels.shape[-1]
    if config.transform == "pad":
        if size < max(height, width):
            raise DDPMError(f"cannot pad {height}x{width} images to {size}x{size}; use --transform resize")
        top, left = (size - height) // 2, (size - width) // 2
        pixels = F.pad(pixels, (left, size - width - left, top, size - height - top), value=0.0)
    elif config.transform == "resize":
        pixels = F.interpolate(pixels, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        pixels = pixels.clamp_(0.0, 1.0)
    else:
        raise ValueError(f"transform must be one of {TRANSFORMS}, got {config.transform!r}")
    low, high = config.data_range
    return pixels.mul_(high - low).add_(low)


def resolve_data_dir(data_dir: Path, download: bool) -> Path:
    """The folder with the training files: ``data_dir`` itself, torchvision's layout under it, or
    ``data_dir`` after fetching them (core/download.py; mirrors from DDPM_MNIST_MIRROR)."""
    for candidate in (data_dir, data_dir / "MNIST" / "raw"):
        if candidate.is_dir() and not missing_files(candidate, "train"):
            return candidate
    require_mnist(data_dir, "train", download, echo=lambda line: click.echo(line, err=True))
    return data_dir


def load_training_set(
    data_dir: Path, config: DataConfig, download: bool = False, max_images: int | None = None
) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
    """Transformed training images [N,C,H,W], their labels [N] (int64) and the set's fingerprint."""
    folder = resolve_data_dir(Path(data_dir), download)
    images, labels = load_mnist(folder, "train")
    if max_images is not None:
        images, labels = images[:max_images], labels[:max_images]
    return transform_images(images, config), torch.from_numpy(labels.astype(np.int64)), fingerprint(images, labels)


def load_training_images(
    data_dir: Path, config: DataConfig, download: bool = False, max_images: int | None = None
) -> torch.Tensor:
    return load_training_set(data_dir, config, download, max_images)[0]


def fingerprint(images: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
    """What a checkpoint records of the digits it was trained on: their count and a SHA-256 of the
    pixels and labels as read (a fraction of a second for MNIST), so that a resumed run can tell
    when --data-dir now holds other data, even data of the same size such as Fashion-MNIST."""
    digest = hashlib.sha256(np.ascontiguousarray(images, dtype=np.uint8).tobytes())
    digest.update(np.ascontiguousarray(labels, dtype=np.uint8).tobytes())
    return {"images": int(len(images)), "sha256": digest.hexdigest()}


def data_change(recorded: object, now: dict[str, Any]) -> str | None:
    """Why the training data differs from the data a checkpoint was trained on, None when it does
    not or the checkpoint predates fingerprints."""
    if not isinstance(recorded, dict) or "sha256" not in recorded:
        return None
    if recorded == now:
        return None
    count = recorded.get("images")
    if count != now["images"]:
        trained = f"{count:,}" if isinstance(count, int) else "another number"
        return f"{now['images']:,} training images, where the checkpoint was trained on {trained}"
    return (
        "other training digits than the checkpoint was trained on "
        f"(the same count, {now['images']:,}, but other content)"
    )
