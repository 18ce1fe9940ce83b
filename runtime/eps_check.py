"""Whether a faster path computes the same ε: the relative RMS difference from the fp32 reference
on noisy digits, the check the int8 export passes, made at load for bf16 and int8 paths.

The digits are 64 MNIST test images shipped with the package (``models/check-digits.npz``), never
seen in training (a latent model, whose runtime has no encoder, gets as many unit-variance Gaussian
latents in their place); x_t = √ᾱ_t·x_0 + √(1−ᾱ_t)·ε at timesteps spread over the whole schedule, with a
fixed seed, so every machine checks the same inputs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..core.errors import DDPMError
from ..core.metadata import ModelInfo
from ..core.variant import INT8_TOLERANCE
from .installed import models_dir

CHECK_DIGITS = "check-digits.npz"
CHECK_SEED = 20_261_201
TOLERANCE = INT8_TOLERANCE  # the same bound as the int8 export's


def check_digits_path() -> Path:
    return models_dir() / CHECK_DIGITS


def read_check_digits(path: Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The shipped uint8 digits [N, 28, 28] and their labels [N]."""
    path = path or check_digits_path()
    try:
        with np.load(path, allow_pickle=False) as archive:
            images, labels = archive["images"], archive["labels"]
    except (OSError, KeyError, ValueError) as exc:
        raise DDPMError(f"the ε check's digits {path} cannot be read: {exc}") from None
    if images.dtype != np.uint8 or images.ndim != 3 or labels.shape != images.shape[:1]:
        raise DDPMError(f"the ε check's digits {path} are not uint8 [N, H, W] images with N labels")
    return images, labels.astype(np.int64)


def fit_images(images: np.ndarray, info: ModelInfo) -> np.ndarray:
    """uint8 [N, h, w] digits as the model's x_0: float32 [N, C, S, S] in its data range; padded
    with background where the model's transform pads, else resampled to its size."""
    size, (height, width) = info.image_size, images.shape[1:]
    pixels = images.astype(np.float32) / 255.0
    if info.source.get("transform", "pad") == "pad" and size >= max(height, width):
        top, left = (size - height) // 2, (size - width) // 2
        pixels = np.pad(pixels, ((0, 0), (top, size - height - top), (left, size - width - left)))
    else:  # nearest-neighbour resampling: close enough for comparing two paths on the same inputs
        rows, cols = (np.arange(size) * height) // size, (np.arange(size) * width) // size
        pixels = pixels[:, rows][:, :, cols]
    low, high = info.data_range
    x0 = pixels * (high - low) + low
    return np.repeat(x0[:, None], info.image_channels, axis=1).astype(np.float32)


def check_feeds(info: ModelInfo, batch: int = 16) -> list[dict[str, np.ndarray]]:
    """Noisy check digits for ``info``'s model, in batches: x, t and, for a class-conditional model,
    the digit's label (one in ten the "no class" index, which guidance feeds)."""
    images, labels = read_check_digits()
    rng = np.random.default_rng(CHECK_SEED)
    if info.latent is not None:  # a latent model's x_0 has unit variance by construction: Gaussian latents stand in
        x0 = rng.standard_normal((len(images), info.image_channels, info.image_size, info.image_size), dtype=np.float32)
    else:
        x0 = fit_images(images, info)
    schedule = info.make_schedule()
    count, steps = len(x0), schedule.timesteps
    t = rng.permutation(np.arange(count) * steps // count)
    alpha_bar = schedule.alpha_bars[t].astype(np.float32)[:, None, None, None]
    x = np.sqrt(alpha_bar) * x0 + np.sqrt(1.0 - alpha_bar) * rng.standard_normal(x0.shape, dtype=np.float32)
    feeds = []
    for start in range(0, count, batch):
        part = slice(start, start + batch)
        feed = {"x": np.ascontiguousarray(x[part], dtype=np.float32), "t": t[part].astype(np.int64)}
        if info.num_classes:
            y = labels[part] % info.num_classes
            feed["y"] = np.where(rng.random(len(y)) < 0.1, info.num_classes, y).astype(np.int64)
        feeds.append(feed)
    return feeds


def eps_difference(reference, candidate) -> float:
    """‖ε_candidate − ε_reference‖ / ‖ε_reference‖ over the check digits (NaN when not finite);
    ``reference`` and ``candidate`` are sessions of the same network."""
    squared_diff = squared_ref = 0.0
    for feed in check_feeds(reference.info, batch=reference.fixed_batch or 16):
        ours = reference.run(reference.output_name, feed).astype(np.float64)
        theirs = candidate.run(candidate.output_name, feed).astype(np.float64)
        squared_diff += float(np.sum((theirs - ours) ** 2))
        squared_ref += float(np.sum(ours**2))
    for session in (reference, candidate):
        session.run_seconds, session.run_calls, session.run_rows = 0.0, 0, 0
    ratio = np.sqrt(squared_diff / squared_ref) if squared_ref > 0 else float("nan")
    return float(ratio) if np.isfinite(ratio) else float("nan")
