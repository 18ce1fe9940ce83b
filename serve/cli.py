"""``ddpm-serve``: the model behind an HTTP API and a page, one continuous-batching engine per process."""

from __future__ import annotations

import functools
import ipaddress
import os
from pathlib import Path

import click

from ..core.console import FiniteFloatRange, run_command
from ..core.errors import DDPMError
from ..runtime.choice import PRECISIONS, PROVIDERS
from ..runtime.pipeline import open_model
from ..runtime.sampling_cli import PRECISION_HELP, PROVIDER_HELP, check_model_flags, chosen_model, model_option

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


@click.command(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.option(
    "--onnx",
    "onnx_path",
    type=click.Path(path_type=Path),
    default=None,
    help="Exported model (ddpm-export). [default: the model shipped with the package, see --model]",
)
@model_option
@click.option("--host", default="127.0.0.1", help="Address to bind. Any but loopback needs --token or --no-auth.")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, help="TCP port (0: any free one, printed).")
@click.option(
    "--token",
    envvar="DDPM_SERVE_TOKEN",
    default=None,
    show_envvar=True,
    help="Bearer token every route but /healthz and the page asks for (Authorization: Bearer <token>). "
    "Prefer the environment variable or --token-file: a command line is visible to every user (ps).",
)
@click.option(
    "--token-file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Read the bearer token from this file's first line.",
)
@click.option(
    "--allow-host",
    "allow_hosts",
    multiple=True,
    metavar="NAME",
    help="A host name the server answers to besides IP addresses and localhost (repeatable; '*': any). "
    "Without a token, a request naming another host gets 400, so a web page cannot drive the server "
    "by pointing its own domain at this address (DNS rebinding).",
)
@click.option("--no-auth", is_flag=True, help="Serve a non-loopback address without a token.")
@click.option(
    "--max-rows",
    type=click.IntRange(1, 4096),
    default=None,
    help="Rows per network call (a guided sample is 2). [default: the fastest batch on a CPU, measured once "
    "and cached; 256 on a GPU]",
)
@click.option(
    "--queue-rows",
    type=click.IntRange(1, 1_000_000),
    default=None,
    help="Rows in flight or waiting before a request is refused with 429 and Retry-After. [default: four calls' "
    "worth, at least one largest request (64 guided samples)]",
)
@click.option(
    "--keep-jobs",
    type=click.IntRange(1, 100_000),
    default=128,
    help="Finished jobs kept for /v1/jobs (for at most 10 minutes).",
)
@click.option(
    "--grace",
    type=FiniteFloatRange(0, 3600),
    default=30.0,
    help="Seconds in-flight requests get to finish after SIGTERM or Ctrl-C; the rest are cancelled.",
)
@click.option(
    "--cors-origin",
    "cors_origins",
    multiple=True,
    help="An origin whose pages may call the API (repeatable). [default: none, CORS off]",
)
@click.option("--precision", type=click.Choice(PRECISIONS), default="auto", help=PRECISION_HELP)
@click.option("--provider", type=click.Choice(PROVIDERS), default="auto", help=PROVIDER_HELP)
@click.option(
    "--threads", type=click.IntRange(1, 1024), default=None, help="CPU threads. [default: the backend's own choice]"
)
@click.option(
    "--device-id", type=click.IntRange(min=0), default=0, help="Which CUDA device, on a machine with several."
)
@click.option(
    "--ray",
    "on_ray",
    is_flag=True,
    help="Scale out on Ray Serve: one ingress over --replicas sampler replicas, each with its own engine "
    '(needs the ray extra: pip install "ddpm-mnist[ray]").',
)
@click.option("--replicas", type=click.IntRange(1, 1024), default=2, help="With --ray: sampler replicas.")
@click.option(
    "--replica-cpus",
    type=FiniteFloatRange(0.1, 256),
    default=1.0,
    help="With --ray: CPUs Ray reserves for each replica; its backend's threads unless --threads says.",
)
@click.option(
    "--address",
    default=None,
    help="With --ray: an existing cluster ('auto': the one `ray start` made here). [default: a local one]",
)
@click.option("-q", "--quiet", is_flag=True, help="Only errors; no access log.")
@click.pass_context
def serve_cli(
    ctx: click.Context,
    onnx_path: Path | None,
    model_name: str | None,
    host: str,
    port: int,
    token: str | None,
    token_file: Path | None,
    allow_hosts: tuple[str, ...],
    no_auth: bool,
    max_rows: int | None,
    queue_rows: int | None,
    keep_jobs: int,
    grace: float,
    cors_origins: tuple[str, ...],
    precision: str,
    provider: str,
    threads: int | None,
    device_id: int,
    on_ray: bool,
    replicas: int,
    replica_cpus: float,
    address: str | None,
    quiet: bool,
) -> None:
    """Serve digits over HTTP: POST /v1/samples, /v1/jobs with live events, /metrics, /docs, and a page at /.

    \b
    ddpm-serve                                   # the embedded model on http://127.0.0.1:8000
    ddpm-serve --onnx unet.onnx --port 9000
    DDPM_SERVE_TOKEN=... ddpm-serve --host 0.0.0.0
    curl -s localhost:8000/v1/samples -H 'content-type: application/json' -d '{"n": 8, "digits": [7]}' -o sevens.png
    """
    token = chosen_token(ctx, token, token_file)
    check_auth(host, token, no_auth)
    check_origins(cors_origins, token)
    warn_typed_token(ctx)
    model = chosen_model(onnx_path, model_name)
    check_model_flags(model, provider, precision)
    if not on_ray and address is not None:
        raise click.UsageError("--address names a Ray cluster; add --ray")
    from .app import Settings  # the serve extra, imported once the arguments are known to be good

    # A token guards the API by itself; without one, only requests that name this server are served.
    allowed_hosts = list(allow_hosts) if token is None or allow_hosts else None
    settings = Settings(
        queue_rows=queue_rows,
        token=token,
        grace=grace,
        keep_jobs=keep_jobs,
        cors_origins=list(cors_origins),
        max_rows=max_rows,
        allowed_hosts=allowed_hosts,
    )
    if on_ray:
        from .ray_app import ModelOptions, serve_on_ray

        onnx = None if onnx_path is None else os.path.realpath(onnx_path)  # replicas may start elsewhere
        options = ModelOptions(onnx, precision, provider, threads or max(1, int(replica_cpus)), device_id, model_name)
        serve_on_ray(
            options, settings, replicas, replica_cpus, host, port, address, lambda line: click.echo(line, err=True)
        )
        return
    from .server import Server

    # Said once however many timings follow (both copies, the batch), as ddpm-run does.
    announce = (
        None
        if quiet
        else functools.cache(
            lambda: click.echo("timing this CPU once (seconds to a minute; the result is cached)", err=True)
        )
    )
    ddpm = open_model(model, provider, precision, threads, device_id, on_measure=announce)
    server = Server(ddpm, settings, host, port, quiet, on_measure=announce)
    if not quiet:
        click.echo(
            f"model {ddpm.session.path.name}{f' ({ddpm.note})' if ddpm.note else ''} on {ddpm.provider}", err=True
        )
    server.run()
    if not quiet:
        click.echo(f"ddpm-serve: stopped; {server.report()}", err=True)


def main() -> None:
    run_command(serve_cli, "ddpm-serve")
