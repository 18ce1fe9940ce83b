"""Running a click command so that every failure is one line on stderr, never a traceback."""

from __future__ import annotations

import sys

import click

from .errors import DDPMError


def run_command(command: click.Command, prog_name: str) -> None:
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
        sys.exit(1)
    except (click.Abort, KeyboardInterrupt):
        click.echo(f"{prog_name}: interrupted", err=True)
        sys.exit(130)
    except MemoryError:
        click.echo(f"{prog_name}: error: out of memory", err=True)
        sys.exit(1)
    sys.exit(0)
