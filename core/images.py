"""Turning model outputs into pictures: scaling to uint8 and tiling into grids."""

from __future__ import annotations

import math

import numpy as np


def to_uint8(images: np.ndarray, data_range: tuple[float, float]) -> np.ndarray:
    """Map values in ``data_range`` to 0..255 (clipping outside it); [N, C, H, W] → [N, H, W] or [N, H, W, C]."""
    low, high = data_range
    scaled = (np.asarray(images, dtype=np.float32) - low) / (high - low)
    pixels = np.round(np.clip(scaled, 0.0, 1.0) * 255.0).astype(np.uint8)
    if pixels.ndim == 4:
        pixels = pixels[:, 0] if pixels.shape[1] == 1 else pixels.transpose(0, 2, 3, 1)
    return pixels


def make_grid(images: np.ndarray, columns: int | None = None, padding: int = 2, scale: int = 1) -> np.ndarray:
    """Tile uint8 images [N, H, W] (or [N, H, W, C]) into one picture, nearest-neighbour upscaled by ``scale``."""
    count, height, width = images.shape[:3]
    columns = columns or math.ceil(math.sqrt(count))
    rows = math.ceil(count / columns)
    cell_h, cell_w = height + padding, width + padding
    grid = np.zeros((rows * cell_h + padding, columns * cell_w + padding) + images.shape[3:], dtype=np.uint8)
    for index, image in enumerate(images):
        top, left = padding + (index // columns) * cell_h, padding + (index % columns) * cell_w
        grid[top : top + height, left : left + width] = image
    if scale > 1:
        grid = grid.repeat(scale, axis=0).repeat(scale, axis=1)
    return grid
