"""A NumPy reader for the MNIST IDX files (gzipped or not)."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

from .errors import DDPMError

SPLIT_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_UBYTE = 0x08
_GZIP_MAGIC = b"\x1f\x8b"


def read_idx(path: str | Path, ndim: int) -> np.ndarray:
    """Read an unsigned-byte IDX file with ``ndim`` dimensions into a uint8 array.

    Layout: 2 zero bytes, type code (0x08 = ubyte), number of dimensions, then one big-endian
    uint32 per dimension, then the data in C order.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
        if raw[:2] == _GZIP_MAGIC:
            raw = gzip.decompress(raw)
    except (OSError, EOFError) as exc:
        raise DDPMError(f"{path}: cannot read ({exc})") from None
    header = 4 + 4 * ndim
    if len(raw) < header or raw[0] != 0 or raw[1] != 0 or raw[2] != _UBYTE or raw[3] != ndim:
        found = raw[:4].hex() if len(raw) >= 4 else f"{len(raw)} bytes"
        raise DDPMError(
            f"{path}: not an IDX file of {ndim}-D unsigned bytes "
            f"(expected magic 000008{ndim:02x}, found {found})"
        )
    dims = tuple(int.from_bytes(raw[4 + 4 * k : 8 + 4 * k], "big") for k in range(ndim))
    expected = header + int(np.prod(dims, dtype=np.int64))
    if len(raw) != expected:
        raise DDPMError(
            f"{path}: wrong size for an IDX file of shape {dims} "
            f"(expected {expected} bytes, found {len(raw)}; truncated?)"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims).copy()


def find_idx_file(data_dir: Path, name: str) -> Path | None:
    for candidate in (data_dir / name, data_dir / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def missing_files(data_dir: str | Path, split: str) -> list[str]:
    data_dir = Path(data_dir)
    return [name for name in SPLIT_FILES[split] if find_idx_file(data_dir, name) is None]


def load_mnist(data_dir: str | Path, split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """Images uint8 [N, 28, 28] and labels uint8 [N] of one split ("train" or "test")."""
    if split not in SPLIT_FILES:
        raise ValueError(f"split must be one of {sorted(SPLIT_FILES)}, got {split!r}")
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise DDPMError(f"data directory {data_dir} does not exist or is not a directory")
    missing = missing_files(data_dir, split)
    if missing:
        raise DDPMError(
            f"{data_dir} lacks the MNIST {split} files {', '.join(missing)} (plain or .gz)"
        )
    image_name, label_name = SPLIT_FILES[split]
    images = read_idx(find_idx_file(data_dir, image_name), ndim=3)
    labels = read_idx(find_idx_file(data_dir, label_name), ndim=1)
    if images.shape[0] != labels.shape[0]:
        raise DDPMError(
            f"{data_dir}: {images.shape[0]} {split} images but {labels.shape[0]} labels"
        )
    if images.shape[1:] != (28, 28):  # trainer and judge alike expect MNIST's size
        raise DDPMError(f"{data_dir}: the {split} images are {images.shape[1]}x{images.shape[2]}; MNIST digits are 28x28")
    if labels.size and labels.max() > 9:
        raise DDPMError(f"{data_dir}: a {split} label is {int(labels.max())}; MNIST labels are 0-9")
    return images, labels
