"""Output files that are either complete or absent: write to a temporary name, then rename."""

from __future__ import annotations

import contextlib
import errno
import glob
import hashlib
import os
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from . import signals
from .errors import DDPMError

try:
    import fcntl
except ImportError:  # no flock on this platform: a killed writer's hidden temporary files stay (nothing reads them)
    fcntl = None


_committed: list[Path] = []  # outputs put in place by StagedFiles since forget_committed()


def committed_outputs() -> list[Path]:
    """The outputs this command has put in place so far (what a command stopped by a signal names)."""
    return list(_committed)


def forget_committed() -> None:
    _committed.clear()


def current_umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def write_target(path: str | Path) -> Path:
    """Where writing ``path`` by rename really goes: a link's target (the link itself stays), refused
    with one line when that is not a regular file (a device such as /dev/null, a FIFO, a socket),
    which a rename would replace."""
    path = Path(path)
    if path.is_symlink():
        try:
            path = path.resolve(strict=False)
        except (OSError, RuntimeError):
            raise DDPMError(f"{path} is a link that cannot be followed (a loop?); refusing to replace it") from None
    if path.exists() and not path.is_file() and not path.is_dir():
        raise DDPMError(f"{path} is not a regular file (a device, FIFO or socket); refusing to replace it")
    return path


def output_target(path: Path | None, option: str) -> Path | None:
    """Check an output path where it enters, before any work: not a directory, not a special file,
    in a folder that takes files (or could be created). None passes through."""
    if path is None:
        return None
    if path.is_dir():
        raise DDPMError(f"{option} {path} is a directory; give a file name")
    check_writable_dir(write_target(path).parent)
    return path


def _temp_beside(path: Path) -> tuple[int, str]:
    """An open descriptor and name of a new hidden file in ``path``'s directory, with the usual
    permissions, flock-ed for as long as the descriptor stays open: that is how the next writer of
    ``path`` tells a killed writer's leftovers (removed) from a live one's (kept)."""
    _remove_stale_temps(path)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.chmod(tmp_name, 0o666 & ~current_umask())  # mkstemp makes 0600
    if fcntl is not None:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    return fd, tmp_name


def _remove_stale_temps(path: Path) -> None:
    """Delete the temporary files of ``path`` whose writer is gone (no process holds their lock)."""
    if fcntl is None:
        return
    for stale in glob.glob(os.path.join(glob.escape(str(path.parent)), f".{glob.escape(path.name)}.*.tmp")):
        try:
            fd = os.open(stale, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            continue  # a running command is writing it
        else:
            with contextlib.suppress(OSError):
                os.unlink(stale)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_write(path: str | Path) -> Iterator[BinaryIO]:
    """Yield a binary file in ``path``'s directory; on success fsync it and rename it to ``path``.

    On any exception the temporary file is removed and ``path`` keeps its previous content. A link
    is written through to its target; a special file is refused (see :func:`write_target`).
    """
    path = write_target(path)
    fd, tmp_name = _temp_beside(path)
    try:
        with os.fdopen(fd, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
            os.replace(tmp_name, path)  # while the lock is held, so no other writer takes it for stale
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp_name)
        raise


def check_writable_dir(directory: str | Path) -> Path:
    """Raise DDPMError unless ``directory`` exists and takes files, or could be created: nothing is made here.

    A missing directory is judged by its nearest existing ancestor, which must be a writable directory.
    """
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise DDPMError(f"output directory {directory} exists and is not a directory")
    existing = directory
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise DDPMError(f"cannot write to output directory {directory}: {existing} is not a directory")
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as exc:
        raise DDPMError(f"cannot write to output directory {directory}: {exc.strerror or exc}") from None
    return directory


def make_dir(directory: str | Path) -> Path:
    directory = Path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DDPMError(f"cannot create output directory {directory}: {exc.strerror or exc}") from None
    return directory


class StagedFiles:
    """Several outputs that appear together or not at all.

    ``stage(path)`` returns a temporary path beside ``path`` to write to; ``commit()`` flushes every
    staged file to disk, then renames each to its final name. Leaving the ``with`` block by an exception (or without
    commit) deletes the temporary files, so no half-written or unverified output remains.
    """

    def __init__(self) -> None:
        self._staged: list[tuple[Path, Path, int]] = []  # temporary name, final name, locked descriptor
        self._made: list[Path] = []  # folders created for the outputs

    def stage(self, path: str | Path) -> Path:
        path = write_target(path)
        missing = [folder for folder in (path.parent, *path.parent.parents) if not folder.exists()]
        make_dir(path.parent)
        self._made += missing  # removed again if nothing is committed
        fd, tmp_name = _temp_beside(path)
        self._staged.append((Path(tmp_name), path, fd))
        return Path(tmp_name)

    def commit(self) -> None:
        """Put every staged file in place. SIGINT and SIGTERM wait until the last rename is done, so
        a signal replaces all of the set or none of it."""
        for _, _, fd in self._staged:
            os.fsync(fd)  # all on disk before any is renamed: a full disk shows here, with nothing replaced
        with signals.held():
            while self._staged:
                tmp, final, fd = self._staged[0]
                os.replace(tmp, final)
                _committed.append(final)
                self._staged.pop(0)
                os.close(fd)
            self._made.clear()

    def discard(self) -> None:
        for tmp, _, fd in self._staged:
            with contextlib.suppress(OSError):
                tmp.unlink()
            with contextlib.suppress(OSError):
                os.close(fd)
        self._staged.clear()
        for folder in sorted(self._made, key=lambda folder: len(folder.parts), reverse=True):  # only empty ones
            with contextlib.suppress(OSError):
                folder.rmdir()
        self._made.clear()

    def __enter__(self) -> StagedFiles:
        return self

    def __exit__(self, *exc: object) -> None:
        self.discard()


SPECIAL_KINDS = (
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISSOCK, "a socket"),
)


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file's bytes, read in blocks (checkpoints and models, recorded with what is made of them)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def input_problem(path: str | Path) -> str | None:
    """Why ``path`` cannot be read as an input file, in words that finish "PATH ..."; None for a
    regular file with something in it. Told apart: missing, a dangling link, a link loop, a
    folder, a device, FIFO or socket, a kernel file of /proc or /sys (size 0, endless or changing),
    an empty file."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        return "is a link to nothing" if os.path.islink(path) else "does not exist"
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "is a loop of symbolic links"
        return f"cannot be read: {exc.strerror or exc}"
    if stat.S_ISDIR(info.st_mode):
        return "is a directory, not a file"
    for test, kind in SPECIAL_KINDS:
        if test(info.st_mode):
            return f"is {kind}, not a file"
    if info.st_size == 0:
        if os.path.realpath(path).startswith(("/proc/", "/sys/")):
            return "is a kernel file of /proc or /sys, not a file on disk"
        return "is empty"
    return None


def _resolved(path: Path) -> Path:
    """``path`` made absolute with its links followed as far as they go (a loop stops there)."""
    try:
        return path.resolve()
    except (OSError, RuntimeError):  # RuntimeError: Python 3.11's "Symlink loop"
        return Path(os.path.abspath(path))


def _same_file(a: Path, b: Path) -> bool:
    if _resolved(a) == _resolved(b):
        return True
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def check_distinct_paths(outputs: dict[str, Path | None], inputs: dict[str, Path | None] | None = None) -> None:
    """Refuse outputs that are one of the inputs (a command must not write over what it reads, named
    or not: an option's file, or "the installed judge.onnx") or each other (one would silently
    replace the other). Keys are the names shown in the error."""
    named_outputs = [(name, Path(path)) for name, path in outputs.items() if path is not None]
    named_inputs = [(name, Path(path)) for name, path in (inputs or {}).items() if path is not None]
    for index, (name, path) in enumerate(named_outputs):
        for input_name, input_path in named_inputs:
            if _same_file(path, input_path):
                what = input_name if input_name.startswith("the ") else f"the input {input_name}"
                raise DDPMError(f"{name} {path} is {what}; writing it would destroy what is read")
        for other_name, other in named_outputs[index + 1 :]:
            if _same_file(path, other):
                raise DDPMError(f"{name} and {other_name} are the same file {path}; give each output its own path")
