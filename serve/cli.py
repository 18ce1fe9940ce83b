"""``ddpm-serve``: the model behind an HTTP API and a page, one continuous-batching engine per process.

Its options are in options.py, who may call it in access.py, how it starts in launch.py."""

from __future__ import annotations

from typing import Any

import click

from ..core.console import run_command
from ..runtime.model_flags import check_model_flags, chosen_model
from .access import check_auth, check_origins, chosen_token, warn_typed_token
from .launch import serve_here, serve_ray, server_settings
from .options import ServeArgs, serve_options


@click.command(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@serve_options
@click.pass_context
def serve_cli(ctx: click.Context, **options: Any) -> None:
    """Serve digits over HTTP: POST /v1/samples, /v1/jobs with live events, /metrics, /docs, and a page at /.

    \b
    ddpm-serve                                   # the embedded model on http://127.0.0.1:8000
    ddpm-serve --onnx unet.onnx --port 9000
    DDPM_SERVE_TOKEN=... ddpm-serve --host 0.0.0.0
    curl -s localhost:8000/v1/samples -H 'content-type: application/json' -d '{"n": 8, "digits": [7]}' -o sevens.png
    """
    args = ServeArgs(**options)
    token = chosen_token(ctx, args.token, args.token_file)
    check_auth(args.host, token, args.no_auth)
    check_origins(args.cors_origins, token)
    warn_typed_token(ctx)
    model = chosen_model(args.onnx_path, args.model_name)
    check_model_flags(model, args.provider, args.precision)
    if not args.on_ray and args.address is not None:
        raise click.UsageError("--address names a Ray cluster; add --ray")
    settings = server_settings(args, token)
    if args.on_ray:
        serve_ray(args, settings)
    else:
        serve_here(args, model, settings)


def main() -> None:
    run_command(serve_cli, "ddpm-serve")
