"""Running a click command so that every failure is one line on stderr, never a traceback."""

from __future__ import annotations

import contextlib
import io
import math
import os
import sys
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import click

from . import signals
from .errors import DDPMError, summary
from .files import committed_outputs, forget_committed
from .signals import Terminated

# Packages of the optional extras: a command that needs one says which extra installs it.
EXTRAS = {
    "torch": "train",
    "torchvision": "train",
    "onnx": "train",
    "onnxscript": "train",
    "matplotlib": "bench",
    "fastapi": "serve",
    "uvicorn": "serve",
    "starlette": "serve",
    "pydantic": "serve",
    "prometheus_client": "serve",
    "ray": "ray",
    "openvino": "openvino",
}


def with_options(options: Sequence[Callable]) -> Callable[[Callable], Callable]:
    """A decorator that puts ``options`` (``click.option`` decorators) on a command, the first listed
    first in its ``--help``."""

    def decorate(function: Callable) -> Callable:
        for option in reversed(options):
            function = option(function)
        return function

    return decorate


def missing_extra(exc: ModuleNotFoundError) -> str | None:
    """The one-line message for a missing optional package, or None when the module is not one of them."""
    package = (exc.name or "").split(".")[0]
    if package not in EXTRAS:
        return None
    extra = EXTRAS[package]
    return f'this command needs {package}, which the base install leaves out: pip install "ddpm-mnist[{extra}]"'


def short_name(name: object, limit: int = 80) -> str:
    """A file name cut to ``limit`` characters for an error line (an over-long name is the error itself)."""
    text = os.fsdecode(name) if isinstance(name, (str, bytes, os.PathLike)) else str(name)
    return text if len(text) <= limit else f"{text[: limit - 21]}...{text[-18:]}"


def os_error_line(exc: OSError) -> str:
    """An OSError as one line: what went wrong and on which file."""
    reason = exc.strerror or str(exc) or type(exc).__name__
    return f"{reason}: {short_name(exc.filename)}" if exc.filename is not None else reason


def is_out_of_memory(exc: RuntimeError) -> bool:
    """PyTorch reports a failed allocation as a RuntimeError (torch.OutOfMemoryError on a GPU), not MemoryError."""
    text = str(exc).lower()
    return type(exc).__name__ == "OutOfMemoryError" or "out of memory" in text or "can't allocate memory" in text


class OutputPath(click.Path):
    """An output path, checked as typed before any work, with the option named: a name longer than
    file systems allow is refused, and so is a file name with a trailing slash (that names a folder)."""

    name_max = 255  # bytes per name on ext4, XFS, btrfs, APFS and NTFS alike

    def __init__(self, folder: bool = False) -> None:
        super().__init__(path_type=Path)  # what exists there is judged where the path is used
        self.folder = folder

    def convert(self, value, param, ctx):
        text = os.fspath(value)
        if not self.folder and text.endswith(("/", os.sep)):
            self.fail(f"{short_name(text)} ends in a slash, which names a folder; give a file name", param, ctx)
        for part in Path(text).parts:
            if len(os.fsencode(part)) > self.name_max:
                self.fail(
                    f"the name {short_name(part)} is {len(os.fsencode(part))} bytes long; file systems allow "
                    f"{self.name_max}",
                    param,
                    ctx,
                )
        return super().convert(value, param, ctx)


class FiniteFloatRange(click.FloatRange):
    """A FloatRange that also refuses nan and ±inf (click's comparisons let nan through); every float
    option takes one, so that a non-number is a usage error at parse, before any work."""

    def convert(self, value, param, ctx):
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return number

    def _describe_range(self) -> str:
        # click would show "x<=None" for a range without bounds; a merely finite number has none to show
        return "" if self.min is None and self.max is None else super()._describe_range()


def _one_line_warnings(prog_name: str):
    """Warnings from this project's code as one line each (``prog: message``); others as usual."""
    default = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        if getattr(category, "__module__", "").startswith("ddpm."):
            click.echo(f"{prog_name}: {message}", err=True)
        else:
            default(message, category, filename, lineno, file, line)

    return show


class BestEffort(io.TextIOBase):
    """A standard stream whose writes cannot fail the command: progress, summaries and "wrote" lines
    are best-effort, so a closed pipe (``| head``), a full device or a closed stderr leaves the exit
    status to the work. After the first failure the stream's descriptor is pointed at the null
    device, so that the interpreter's last flush fails no more. A character the stream's encoding
    lacks is written as "?", so that the rest of the text still gets through."""

    def __init__(self, stream) -> None:
        self.stream = stream
        self.broken = stream is None

    def _guard(self, action) -> None:
        if self.broken:
            return
        try:
            action()
        except (OSError, ValueError):  # EPIPE, ENOSPC, EBADF; ValueError: the stream was closed
            self.broken = True
            with contextlib.suppress(OSError, ValueError, AttributeError):
                null = os.open(os.devnull, os.O_WRONLY)
                os.dup2(null, self.stream.fileno())
                os.close(null)

    def write(self, text: str) -> int:
        self._guard(lambda: self._write(text))
        return len(text)

    def _write(self, text: str) -> None:
        try:
            self.stream.write(text)
        except UnicodeEncodeError:  # ε, −, → on an ASCII-only stream; a file name's undecodable byte
            self.stream.write(text.encode(self.encoding, "replace").decode(self.encoding))

    def flush(self) -> None:
        self._guard(lambda: self.stream.flush())

    def isatty(self) -> bool:
        try:
            return not self.broken and self.stream.isatty()
        except (OSError, ValueError):
            return False

    def writable(self) -> bool:
        return True

    @property
    def encoding(self) -> str:
        return getattr(self.stream, "encoding", None) or "utf-8"

    @property
    def errors(self) -> str:
        return getattr(self.stream, "errors", None) or "replace"


def run_command(command: click.Command, prog_name: str) -> None:
    """Run ``command`` as the program ``prog_name``; always ends in SystemExit with its status."""
    shown, warnings.showwarning = warnings.showwarning, _one_line_warnings(prog_name)
    streams = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = BestEffort(sys.stdout), BestEffort(sys.stderr)
    forget_committed()
    status = 1
    try:
        with signals.raised_as_exceptions():
            _run(command, prog_name)
    except SystemExit as exc:
        status = exc.code if isinstance(exc.code, int) else 1
        raise
    finally:
        _flush_streams()
        sys.stdout, sys.stderr = streams
        warnings.showwarning = shown
        signals.exiting(prog_name, status, _flush_streams)


def _flush_streams() -> None:
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()


def _stopped_line(prog_name: str, how: str) -> str:
    """What a command stopped by a signal says: which outputs it had put in place, if any."""
    written = committed_outputs()
    if not written:
        return f"{prog_name}: {how}; no output written"
    listed = ", ".join(str(path) for path in written[:4]) + (
        f" and {len(written) - 4} more" if len(written) > 4 else ""
    )
    return f"{prog_name}: {how} after writing {listed}"


def _run(command: click.Command, prog_name: str) -> None:
    try:
        command.main(prog_name=prog_name, standalone_mode=False)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        hint = f" (see {prog_name} --help)" if isinstance(exc, click.UsageError) else ""
        click.echo(f"{prog_name}: error: {exc.format_message()}{hint}", err=True)
        sys.exit(exc.exit_code)
    except DDPMError as exc:
        click.echo(f"{prog_name}: error: {exc}", err=True)
        sys.exit(getattr(exc, "exit_code", 1))
    except (click.Abort, KeyboardInterrupt):
        click.echo(_stopped_line(prog_name, "interrupted"), err=True)
        sys.exit(130)
    except Terminated:
        click.echo(_stopped_line(prog_name, "terminated"), err=True)
        sys.exit(143)
    except MemoryError:
        click.echo(f"{prog_name}: error: out of memory", err=True)
        sys.exit(1)
    except OSError as exc:  # a full disk, an over-long name, a vanished folder: whatever the call was
        click.echo(f"{prog_name}: error: {os_error_line(exc)}", err=True)
        sys.exit(1)
    except RuntimeError as exc:
        if not is_out_of_memory(exc):
            raise
        click.echo(f"{prog_name}: error: out of memory ({summary(exc, 120)})", err=True)
        sys.exit(1)
    except ModuleNotFoundError as exc:
        message = missing_extra(exc)
        if message is None:
            raise
        click.echo(f"{prog_name}: error: {message}", err=True)
        sys.exit(1)
    sys.exit(0)
