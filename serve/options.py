"""``ddpm-serve``'s options: the flags, in the order ``--help`` lists them, and :class:`ServeArgs`, what
they give the command."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import click

from ..core.console import FiniteFloatRange, with_options
from ..runtime.choice import PRECISIONS, PROVIDERS
from ..runtime.model_flags import PRECISION_HELP, PROVIDER_HELP, model_option

OPTIONS = [
    click.option(
        "--onnx",
        "onnx_path",
        type=click.Path(path_type=Path),
        default=None,
        help="Exported model (ddpm-export). [default: the model shipped with the package, see --model]",
    ),
    model_option,
    click.option("--host", default="127.0.0.1", help="Address to bind. Any but loopback needs --token or --no-auth."),
    click.option("--port", type=click.IntRange(0, 65535), default=8000, help="TCP port (0: any free one, printed)."),
    click.option(
        "--token",
        envvar="DDPM_SERVE_TOKEN",
        default=None,
        show_envvar=True,
        help="Bearer token every route but /healthz and the page asks for (Authorization: Bearer <token>). "
        "Prefer the environment variable or --token-file: a command line is visible to every user (ps).",
    ),
    click.option(
        "--token-file",
        type=click.Path(dir_okay=False, path_type=Path),
        default=None,
        help="Read the bearer token from this file's first line.",
    ),
    click.option(
        "--allow-host",
        "allow_hosts",
        multiple=True,
        metavar="NAME",
        help="A host name the server answers to besides IP addresses and localhost (repeatable; '*': any). "
        "Without a token, a request naming another host gets 400, so a web page cannot drive the server "
        "by pointing its own domain at this address (DNS rebinding).",
    ),
    click.option("--no-auth", is_flag=True, help="Serve a non-loopback address without a token."),
    click.option(
        "--max-rows",
        type=click.IntRange(1, 4096),
        default=None,
        help="Rows per network call (a guided sample is 2). [default: the fastest batch on a CPU, measured once "
        "and cached; 256 on a GPU]",
    ),
    click.option(
        "--queue-rows",
        type=click.IntRange(1, 1_000_000),
        default=None,
        help="Rows in flight or waiting before a request is refused with 429 and Retry-After. [default: four "
        "calls' worth, at least one largest request (64 guided samples)]",
    ),
    click.option(
        "--keep-jobs",
        type=click.IntRange(1, 100_000),
        default=128,
        help="Finished jobs kept for /v1/jobs (for at most 10 minutes).",
    ),
    click.option(
        "--grace",
        type=FiniteFloatRange(0, 3600),
        default=30.0,
        help="Seconds in-flight requests get to finish after SIGTERM or Ctrl-C; the rest are cancelled.",
    ),
    click.option(
        "--cors-origin",
        "cors_origins",
        multiple=True,
        help="An origin whose pages may call the API (repeatable). [default: none, CORS off]",
    ),
    click.option("--precision", type=click.Choice(PRECISIONS), default="auto", help=PRECISION_HELP),
    click.option("--provider", type=click.Choice(PROVIDERS), default="auto", help=PROVIDER_HELP),
    click.option(
        "--threads", type=click.IntRange(1, 1024), default=None, help="CPU threads. [default: the backend's own choice]"
    ),
    click.option(
        "--device-id", type=click.IntRange(min=0), default=0, help="Which CUDA device, on a machine with several."
    ),
    click.option(
        "--ray",
        "on_ray",
        is_flag=True,
        help="Scale out on Ray Serve: one ingress over --replicas sampler replicas, each with its own engine "
        '(needs the ray extra: pip install "ddpm-mnist[ray]").',
    ),
    click.option("--replicas", type=click.IntRange(1, 1024), default=2, help="With --ray: sampler replicas."),
    click.option(
        "--replica-cpus",
        type=FiniteFloatRange(0.1, 256),
        default=1.0,
        help="With --ray: CPUs Ray reserves for each replica; its backend's threads unless --threads says.",
    ),
    click.option(
        "--address",
        default=None,
        help="With --ray: an existing cluster ('auto': the one `ray start` made here). [default: a local one]",
    ),
    click.option("-q", "--quiet", is_flag=True, help="Only errors; no access log."),
]


serve_options = with_options(OPTIONS)  # every option of ``ddpm-serve``, in ``--help`` order


@dataclass(frozen=True)
class ServeArgs:
    """What ``ddpm-serve``'s options give."""

    onnx_path: Path | None
    model_name: str | None
    host: str
    port: int
    token: str | None
    token_file: Path | None
    allow_hosts: tuple[str, ...]
    no_auth: bool
    max_rows: int | None
    queue_rows: int | None
    keep_jobs: int
    grace: float
    cors_origins: tuple[str, ...]
    precision: str
    provider: str
    threads: int | None
    device_id: int
    on_ray: bool
    replicas: int
    replica_cpus: float
    address: str | None
    quiet: bool
