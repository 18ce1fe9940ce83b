"""A NumPy reader for the MNIST IDX files (gzipped or not)."""

from __future__ import annotations

import gzip
import math
import zlib
from pathlib import Path
from typing import BinaryIO

import numpy as np

from .errors import DDPMError

SPLIT_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_UBYTE = 0x08
_GZIP_MAGIC = b"\x1f\x8b"
# The most payload an IDX file may declare. MNIST's largest file (the training images) holds
# 47 MB; the cap only stops a header (or a gzip bomb behind it) from claiming gigabytes.
MAX_IDX_BYTES = 1 << 30
_CHUNK = 1 << 20  # bytes per read while streaming the payload


def read_idx(path: str | Path, ndim: int) -> np.ndarray:
    """Read an unsigned-byte IDX file with ``ndim`` dimensions into a uint8 array.

    Layout: 2 zero bytes, type code (0x08 = ubyte), number of dimensions, then one big-endian
    uint32 per dimension, then the data in C order.

    The file is streamed (inflated on the fly when gzipped), and the payload its header declares is
    checked against ``MAX_IDX_BYTES`` before it is read, so neither a gzip bomb nor a header claiming
    a huge shape makes this allocate more than the cap.
    """
    path = Path(path)
    header = 4 + 4 * ndim
    try:
        with open_idx(path) as handle:
            head = handle.read(header)
            if len(head) < header or head[0] != 0 or head[1] != 0 or head[2] != _UBYTE or head[3] != ndim:
                found = head[:4].hex() if len(head) >= 4 else f"{len(head)} bytes"
                raise DDPMError(
                    f"{path}: not an IDX file of {ndim}-D unsigned bytes "
                    f"(expected magic 000008{ndim:02x}, found {found})"
                )
            dims = tuple(int.from_bytes(head[4 + 4 * k : 8 + 4 * k], "big") for k in range(ndim))
            payload = math.prod(dims)  # Python ints: three uint32 dims can overflow int64
            if payload > MAX_IDX_BYTES:
                raise DDPMError(
                    f"{path}: its header declares shape {dims} ({payload} bytes), "
                    f"which exceeds the {MAX_IDX_BYTES}-byte limit for an IDX file"
                )
            # One byte more than declared, so that a file longer than its header says is caught too.
            data = _read_at_most(handle, payload + 1)
    except (OSError, EOFError, zlib.error) as exc:
        # zlib.error (a corrupt deflate stream) is no OSError; EOFError: the stream stops early.
        corrupt = isinstance(exc, (zlib.error, EOFError, gzip.BadGzipFile))
        raise DDPMError(f"{path}: cannot read ({exc}{'; corrupt gzip data?' if corrupt else ''})") from None
    if len(data) != payload:
        found = f"{header + len(data)}" if len(data) < payload else "more"
        raise DDPMError(
            f"{path}: wrong size for an IDX file of shape {dims} "
            f"(expected {header + payload} bytes, found {found}; "
            f"{'truncated?' if len(data) < payload else 'trailing data?'})"
        )
    return np.frombuffer(data, dtype=np.uint8).reshape(dims)


def open_idx(path: Path) -> BinaryIO:
    """``path`` opened for binary reading, inflated on the fly when it starts with the gzip magic."""
    with path.open("rb") as probe:
        gzipped = probe.read(2) == _GZIP_MAGIC
    return gzip.open(path, "rb") if gzipped else path.open("rb")


def _read_at_most(handle: BinaryIO, limit: int) -> bytearray:
    """Up to ``limit`` bytes of ``handle``, read in chunks: memory grows with what the file
    actually holds, not with ``limit`` (a single ``read(limit)`` may allocate ``limit`` up front)."""
    data = bytearray()
    while len(data) < limit:
        chunk = handle.read(min(_CHUNK, limit - len(data)))
        if not chunk:
            break
        data += chunk
    return data


def find_idx_file(data_dir: Path, name: str) -> Path | None:
    for candidate in (data_dir / name, data_dir / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def data_files(data_dir: str | Path) -> dict[str, Path]:
    """The MNIST files present in ``data_dir`` (plain or .gz), by what they are: the files a command
    reading that folder must never write over."""
    found = {}
    for split, names in SPLIT_FILES.items():
        for name in names:
            path = find_idx_file(Path(data_dir), name)
            if path is not None:
                found[f"the MNIST {split} file {path.name} in --data-dir"] = path
    return found


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
        raise DDPMError(f"{data_dir} lacks the MNIST {split} files {', '.join(missing)} (plain or .gz)")
    image_name, label_name = SPLIT_FILES[split]
    images = read_idx(find_idx_file(data_dir, image_name), ndim=3)
    labels = read_idx(find_idx_file(data_dir, label_name), ndim=1)
    if images.shape[0] != labels.shape[0]:
        raise DDPMError(f"{data_dir}: {images.shape[0]} {split} images but {labels.shape[0]} labels")
    if images.shape[1:] != (28, 28):  # trainer and judge alike expect MNIST's size
        raise DDPMError(
            f"{data_dir}: the {split} images are {images.shape[1]}x{images.shape[2]}; MNIST digits are 28x28"
        )
    if labels.size and labels.max() > 9:
        raise DDPMError(f"{data_dir}: a {split} label is {int(labels.max())}; MNIST labels are 0-9")
    return images, labels
