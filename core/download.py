"""MNIST from the network with the standard library alone (no torch, no torchvision).

Each file is streamed to a hidden temporary file beside its destination, checked against the
SHA-256 of its *uncompressed* content (so a mirror that re-wraps the gzip still passes, and a
truncated, corrupt or foreign file does not), and only then renamed into place. A file that fails
on one mirror is tried on the next; when all fail the error names each mirror's reason in one line,
and no partial file or folder made by the download is left behind.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import zlib
from collections.abc import Callable, Iterable
from pathlib import Path

import click

from .errors import DDPMError
from .files import current_umask
from .mnist import SPLIT_FILES, find_idx_file, missing_files, open_idx

# Where the four files are published (the path ends in the file name plus ".gz").
MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
)
MIRROR_ENV = "DDPM_MNIST_MIRROR"  # a space-separated list of mirrors that replaces MIRRORS
URL_SCHEMES = ("http", "https", "file")

# SHA-256 of each file's uncompressed IDX bytes (47,040,016 / 60,008 / 7,840,016 / 10,008 bytes).
CONTENT_SHA256 = {
    "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
}
MAX_DOWNLOAD_BYTES = 16 << 20  # the largest file, the training images, is under 10 MB gzipped
MAX_CONTENT_BYTES = 64 << 20  # and 47 MB inflated: more than this is a gzip bomb, not MNIST
TIMEOUT_S = 30.0  # per connection attempt and per read
_CHUNK = 1 << 16


def mirrors_from_env() -> tuple[str, ...]:
    """The mirrors to try: ``DDPM_MNIST_MIRROR`` (space-separated) when set, else :data:`MIRRORS`."""
    value = os.environ.get(MIRROR_ENV, "").split()
    return tuple(check_mirror(url, MIRROR_ENV) for url in value) if value else MIRRORS


MIRROR_EXPECTED = "expected an http://, https:// or file:// URL of a folder holding the MNIST .gz files"


def check_mirror(url: str, where: str = "--mirror") -> str:
    """``url`` as a mirror base ending in '/'; a DDPMError naming ``where`` for anything else."""
    if not _is_mirror(url):
        raise DDPMError(f"{where} {url!r}: {MIRROR_EXPECTED}")
    return _folder(url)


def _is_mirror(url: str) -> bool:
    parts = urllib.parse.urlsplit(url)
    return parts.scheme in URL_SCHEMES and bool(parts.netloc or parts.scheme == "file")


def _folder(url: str) -> str:
    return url if url.endswith("/") else url + "/"


def missing_names(data_dir: Path, splits: Iterable[str]) -> list[str]:
    return [name for split in splits for name in missing_files(data_dir, split)]


def download_targets(data_dir: str | Path, splits: Iterable[str]) -> dict[str, Path]:
    """The files a download into ``data_dir`` would create, by what they are (no output may take their place)."""
    return {
        f"the MNIST file {name}.gz that --download writes": Path(data_dir) / f"{name}.gz"
        for name in missing_names(Path(data_dir), splits)
    }


def require_mnist(
    data_dir: str | Path,
    split: str,
    download: bool,
    mirrors: Iterable[str] = (),
    echo: Callable[[str], None] | None = None,
    purpose: str = "",
) -> None:
    """Make sure ``data_dir`` holds ``split``'s files: fetched when ``download`` (from ``mirrors``,
    default :func:`mirrors_from_env`), else one line naming --data-dir, DDPM_DATA_DIR and --download,
    after ``purpose`` (why the command reads them) when given."""
    data_dir = Path(data_dir)
    missing = missing_names(data_dir, [split])
    if not missing:
        return
    if download:
        progress = (
            None if echo is None else (lambda name, url, size: echo(f"downloaded {url} ({size / 1e6:.1f} MB, checked)"))
        )
        fetch_mnist(data_dir, [split], tuple(mirrors) or None, progress)
        return
    what = "training" if split == "train" else split
    if not data_dir.is_dir():
        names = ", ".join(f"{name}[.gz]" for name in SPLIT_FILES[split])
        where = (
            f"{'does not exist' if not os.path.lexists(data_dir) else 'is not a directory'}: "
            f"it should hold the MNIST {what} files {names}"
        )
    else:
        where = f"lacks the MNIST {what} files {', '.join(f'{name}[.gz]' for name in missing)}"
    raise DDPMError(
        f"{purpose + ', and ' if purpose else ''}--data-dir {data_dir} {where}; give their folder with "
        "--data-dir or DDPM_DATA_DIR, or pass --download to fetch them"
    )


def unlike_mnist(data_dir: str | Path, split: str) -> list[str]:
    """The names of ``split``'s files in ``data_dir`` whose content is not MNIST's (another data set, a
    part of it, or a damaged copy), by :data:`CONTENT_SHA256`; a missing file is not judged."""
    foreign = []
    for name in SPLIT_FILES[split]:
        path = find_idx_file(Path(data_dir), name)
        if path is None:
            continue
        try:
            same = _content_sha256(path) == CONTENT_SHA256[name]
        except _Refused:  # unreadable, or larger than any MNIST file
            same = False
        if not same:
            foreign.append(path.name)
    return foreign


def _mirror_values(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> tuple[str, ...]:
    for value in values:
        if not _is_mirror(value):
            raise click.BadParameter(f"{value!r}: {MIRROR_EXPECTED}")
    return tuple(_folder(value) for value in values)


def download_options(command: Callable) -> Callable:
    """``--download`` and ``--mirror`` for a command that reads MNIST from ``--data-dir``."""
    command = click.option(
        "--mirror",
        "mirrors",
        multiple=True,
        metavar="URL",
        envvar=MIRROR_ENV,
        callback=_mirror_values,
        help="With --download: a folder URL (http, https or file) holding the MNIST .gz files, tried in the order "
        f"given; repeatable. Env: {MIRROR_ENV} (space-separated). [default: {' then '.join(MIRRORS)}]",
    )(command)
    return click.option(
        "--download",
        is_flag=True,
        help="Fetch the MNIST files this command needs into --data-dir when it lacks them (standard library only; "
        "each checked by the SHA-256 of its content, written only when whole).",
    )(command)


def fetch_mnist(
    data_dir: str | Path,
    splits: Iterable[str] = ("train", "test"),
    mirrors: Iterable[str] | None = None,
    on_file: Callable[[str, str], None] | None = None,
) -> list[Path]:
    """Download the files of ``splits`` that ``data_dir`` lacks; returns the paths written.

    ``on_file(name, url, size)`` is called after each file is in place (progress; nothing is said
    before a connection succeeds, so an offline run prints only its error). Verified files stay even if a
    later one fails, so that a retry fetches only the rest; folders this call made are removed when
    nothing was written into them.
    """
    data_dir = Path(data_dir)
    mirrors = tuple(mirrors) if mirrors is not None else mirrors_from_env()
    names = missing_names(data_dir, splits)
    if not names:
        return []
    if data_dir.exists() and not data_dir.is_dir():
        raise DDPMError(f"cannot download MNIST into {data_dir}: it is not a directory")
    created = _make_dirs(data_dir)
    written: list[Path] = []
    try:
        for name in names:
            written.append(_fetch_one(data_dir, name, mirrors, on_file))
    finally:
        if not written:
            for folder in reversed(created):
                with contextlib.suppress(OSError):
                    folder.rmdir()
    return written


def _make_dirs(data_dir: Path) -> list[Path]:
    """Create ``data_dir`` and its missing parents; the folders made, outermost first."""
    missing = [folder for folder in (data_dir, *data_dir.parents) if not folder.exists()][::-1]
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DDPMError(f"cannot download MNIST into {data_dir}: {exc.strerror or exc}") from None
    return missing


def _fetch_one(data_dir: Path, name: str, mirrors: tuple[str, ...], on_file) -> Path:
    target = data_dir / f"{name}.gz"
    reasons = []
    for mirror in mirrors:
        url = urllib.parse.urljoin(mirror, f"{name}.gz")
        try:
            _download_checked(url, target, CONTENT_SHA256[name])
        except _Refused as exc:
            reasons.append(f"{url}: {exc}")
            continue
        if on_file is not None:
            on_file(name, url, target.stat().st_size)
        return target
    raise DDPMError(f"cannot download {name}.gz: " + "; ".join(reasons))


class _Refused(Exception):
    """One mirror's copy of one file could not be had or failed its check."""


def _download_checked(url: str, target: Path, sha256: str) -> None:
    """Stream ``url`` into a temporary file beside ``target``, check it, rename it into place."""
    handle, temporary = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
    try:
        with os.fdopen(handle, "wb") as out:
            _stream(url, out)
        digest = _content_sha256(Path(temporary))
        if digest != sha256:
            raise _Refused("its content does not match MNIST's checksum (a different or damaged file)")
        os.chmod(temporary, 0o666 & ~current_umask())  # mkstemp makes 0600; the data is for every reader
        os.replace(temporary, target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)


def _stream(url: str, out) -> None:
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response:
            total = 0
            while chunk := response.read(_CHUNK):
                total += len(chunk)
                if total > MAX_DOWNLOAD_BYTES:
                    raise _Refused(f"larger than {MAX_DOWNLOAD_BYTES >> 20} MiB, more than any MNIST file")
                out.write(chunk)
    except urllib.error.HTTPError as exc:
        raise _Refused(f"HTTP {exc.code} {exc.reason}") from None
    except urllib.error.URLError as exc:
        raise _Refused(str(getattr(exc.reason, "strerror", None) or exc.reason)) from None
    except (OSError, ValueError) as exc:  # timeouts, resets, a malformed URL
        raise _Refused(str(exc) or type(exc).__name__) from None


def _content_sha256(path: Path) -> str:
    """SHA-256 of the file's content, inflated first when it is gzipped."""
    digest = hashlib.sha256()
    try:
        with open_idx(path) as handle:
            read = 0
            while chunk := handle.read(1 << 20):
                read += len(chunk)
                if read > MAX_CONTENT_BYTES:
                    raise _Refused("inflates to more than any MNIST file")
                digest.update(chunk)
    except (OSError, EOFError, zlib.error) as exc:
        raise _Refused(f"not readable gzip data ({exc})") from None
    return digest.hexdigest()
