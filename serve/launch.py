"""Starting ``ddpm-serve`` once its arguments are known to be good: the server's settings, then the model
behind it in this process or on Ray Serve. The serve (and ray) extras are imported here, when it starts."""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import TYPE_CHECKING

import click

from ..runtime.pipeline import open_model
from ..runtime.session import cores_shared
from .options import ServeArgs

if TYPE_CHECKING:
    from .app import Settings


def server_settings(args: ServeArgs, token: str | None) -> Settings:
    """The API's settings, from the flags and the token chosen."""
    from .app import Settings  # the serve extra, imported once the arguments are known to be good

    # A token guards the API by itself; without one, only requests that name this server are served.
    allowed_hosts = list(args.allow_hosts) if token is None or args.allow_hosts else None
    return Settings(
        queue_rows=args.queue_rows,
        token=token,
        grace=args.grace,
        keep_jobs=args.keep_jobs,
        cors_origins=list(args.cors_origins),
        max_rows=args.max_rows,
        allowed_hosts=allowed_hosts,
    )


def serve_ray(args: ServeArgs, settings: Settings) -> None:
    """One ingress over --replicas sampler replicas on Ray Serve, each opening the model itself."""
    from .ray_app import ModelOptions, serve_on_ray

    onnx = None if args.onnx_path is None else os.path.realpath(args.onnx_path)  # replicas may start elsewhere
    threads = args.threads or max(1, int(args.replica_cpus))
    options = ModelOptions(onnx, args.precision, args.provider, threads, args.device_id, args.model_name)
    serve_on_ray(
        options,
        settings,
        args.replicas,
        args.replica_cpus,
        args.host,
        args.port,
        args.address,
        lambda line: click.echo(line, err=True),
    )


def serve_here(args: ServeArgs, model: Path | str | None, settings: Settings) -> None:
    """The model opened in this process behind one server, until SIGTERM or Ctrl-C."""
    from .server import Server

    # Said once however many timings follow (both copies, the batch), as ddpm-run does.
    announce = (
        None
        if args.quiet
        else functools.cache(
            lambda: click.echo("timing this CPU once (seconds to a minute; the result is cached)", err=True)
        )
    )
    with cores_shared():  # the HTTP front and the PNG renders run on the engine's cores
        ddpm = open_model(model, args.provider, args.precision, args.threads, args.device_id, on_measure=announce)
    server = Server(ddpm, settings, args.host, args.port, args.quiet, on_measure=announce)
    if not args.quiet:
        click.echo(
            f"model {ddpm.session.path.name}{f' ({ddpm.note})' if ddpm.note else ''} on {ddpm.provider}", err=True
        )
    server.run()
    if not args.quiet:
        click.echo(f"ddpm-serve: stopped; {server.report()}", err=True)
