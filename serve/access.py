"""Who may call ``ddpm-serve``: the bearer token (--token, --token-file or DDPM_SERVE_TOKEN), the address
it may open without one, and the CORS origins a browser may call from."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import click

from ..core.errors import DDPMError

LOOPBACK_NAMES = ("localhost",)


def is_loopback(host: str) -> bool:
    """Whether ``host`` binds only this machine's loopback interface."""
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def read_token(path: Path) -> str:
    """The token in the first line of ``path``."""
    try:
        token = path.read_text(encoding="utf-8").splitlines()[0].strip() if path.stat().st_size else ""
    except (OSError, UnicodeDecodeError) as exc:
        raise DDPMError(
            f"cannot read the token from {path}: {exc.strerror if isinstance(exc, OSError) else 'not UTF-8 text'}"
        ) from None
    if not token:
        raise click.BadParameter(f"{path} holds no token on its first line", param_hint="'--token-file'")
    return token


def chosen_token(ctx: click.Context, token: str | None, token_file: Path | None) -> str | None:
    """The token of --token-file, --token or DDPM_SERVE_TOKEN (the file wins over the environment)."""
    if token_file is None:
        return token
    if ctx.get_parameter_source("token") is click.core.ParameterSource.COMMANDLINE:
        raise click.UsageError("--token and --token-file contradict each other")
    return read_token(token_file)


def warn_typed_token(ctx: click.Context) -> None:
    """A token typed on the command line is visible to every user of the machine (ps, /proc/PID/cmdline)."""
    if ctx.get_parameter_source("token") is click.core.ParameterSource.COMMANDLINE:
        click.echo(
            "ddpm-serve: warning: a --token on the command line is visible to every user of this machine (ps); "
            "prefer DDPM_SERVE_TOKEN or --token-file",
            err=True,
        )


def check_origins(origins: tuple[str, ...], token: str | None) -> None:
    """CORS origins a browser may call from: 'null' never (sandboxed frames and file: pages all send
    it), '*' only behind a token (else any web page could read the results)."""
    if "null" in origins:
        raise click.BadParameter(
            "'null' is the origin of every sandboxed frame and file: page; name real origins (scheme://host:port)",
            param_hint="'--cors-origin'",
        )
    if "*" in origins and token is None:
        raise click.UsageError(
            "--cors-origin '*' lets every web page call this server and read its results: "
            "give --token (or DDPM_SERVE_TOKEN) too, or name the origins"
        )


def check_auth(host: str, token: str | None, no_auth: bool) -> None:
    """Any address but loopback needs a token or an explicit --no-auth."""
    if token is not None and no_auth:
        raise click.UsageError("--token and --no-auth contradict each other")
    if token is not None and len(token) < 16:
        raise click.BadParameter(
            "use at least 16 characters (e.g. python -c 'import secrets; print(secrets.token_urlsafe())')",
            param_hint="'--token'",
        )
    if not is_loopback(host) and token is None and not no_auth:
        raise DDPMError(
            f"--host {host} opens the server beyond this machine: give --token (or DDPM_SERVE_TOKEN), "
            "or --no-auth to serve without one"
        )
