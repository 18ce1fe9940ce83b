"""Output files that are either complete or absent: write to a temporary name, then rename."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import BinaryIO, Iterator

from .errors import DDPMError


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


@contextlib.contextmanager
def atomic_write(path: str | Path) -> Iterator[BinaryIO]:
    """Yield a binary file in ``path``'s directory; on success fsync it and rename it to ``path``.

    On any exception the temporary file is removed and ``path`` keeps its previous content.
    """
    path = Path(path)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp_name, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual permissions
        with os.fdopen(fd, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp_name)
        raise


def ensure_writable_dir(directory: str | Path) -> Path:
    """Create ``directory`` if needed and prove a file can be written there, or raise DDPMError."""
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise DDPMError(f"output directory {directory} exists and is not a directory")
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=directory):
            pass
    except OSError as exc:
        raise DDPMError(f"cannot write to output directory {directory}: {exc.strerror or exc}") from None
    return directory
