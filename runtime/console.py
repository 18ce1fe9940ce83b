"""Running a click command so that every failure is one line on stderr, never a traceback."""

from __future__ import annotations

import signal
import sys
import threading

import click

from .errors import DDPMError


class Terminated(Exception):
    """SIGTERM, raised in the main thread so that temporary outputs are cleaned up on the way out."""


def _terminate(signum: int, frame: object) -> None:
    raise Terminated()


def run_command(command: click.Command, prog_name: str) -> None:
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        _run(command, prog_name)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


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
        click.echo(f"{prog_name}: interrupted; no output written", err=True)
        sys.exit(130)
    except Terminated:
        click.echo(f"{prog_name}: terminated; no output written", err=True)
        sys.exit(143)
    except MemoryError:
        click.echo(f"{prog_name}: error: out of memory", err=True)
        sys.exit(1)
    sys.exit(0)
