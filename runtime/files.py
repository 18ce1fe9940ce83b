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


def _temp_beside(path: Path) -> tuple[int, str]:
    """An open descriptor and name of a new hidden file in ``path``'s directory, with the usual permissions."""
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.chmod(tmp_name, 0o666 & ~_umask())  # mkstemp makes 0600
    return fd, tmp_name


@contextlib.contextmanager
def atomic_write(path: str | Path) -> Iterator[BinaryIO]:
    """Yield a binary file in ``path``'s directory; on success fsync it and rename it to ``path``.

    On any exception the temporary file is removed and ``path`` keeps its previous content.
    """
    fd, tmp_name = _temp_beside(Path(path))
    try:
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


class StagedFiles:
    """Several outputs that appear together or not at all.

    ``stage(path)`` returns a temporary path beside ``path`` to write to; ``commit()`` renames
    every staged file to its final name. Leaving the ``with`` block by an exception (or without
    commit) deletes the temporary files, so no half-written or unverified output remains.
    """

    def __init__(self) -> None:
        self._staged: list[tuple[Path, Path]] = []

    def stage(self, path: str | Path) -> Path:
        path = Path(path)
        fd, tmp_name = _temp_beside(path)
        os.close(fd)
        self._staged.append((Path(tmp_name), path))
        return Path(tmp_name)

    def commit(self) -> None:
        for tmp, final in self._staged:
            os.replace(tmp, final)
        self._staged.clear()

    def discard(self) -> None:
        for tmp, _ in self._staged:
            with contextlib.suppress(OSError):
                tmp.unlink()
        self._staged.clear()

    def __enter__(self) -> "StagedFiles":
        return self

    def __exit__(self, *exc: object) -> None:
        self.discard()
