"""``ddpm-run``: sample digits from an exported model with ONNX Runtime, no PyTorch needed.

Its options are in run_options.py, the files it writes in run_outputs.py, what it prints in run_report.py."""

from __future__ import annotations

import functools
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from ..core.console import run_command
from ..core.files import check_distinct_paths
from ..core.plan import SettingError
from ..core.progress import Progress
from . import cpu_batch
from .cpu_batch import BatchChoice
from .memory import check_memory
from .model_flags import check_model_flags, chosen_model
from .pipeline import DDPM, SampleRun, open_model
from .run_options import RunArgs, run_options
from .run_outputs import output_targets, write_outputs
from .run_report import announce_model, show_model_info, summarize
from .sampling_cli import SamplingRequest, flag_error, sampling_request, split_sampling


@click.command(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@run_options
def run_cli(**options: Any) -> None:
    """Draw MNIST digits with an exported DDPM: the ancestral loop (or DDIM, DPM-Solver++) in NumPy around ONNX Runtime.

    \b
    ddpm-run --gif out.gif                      # the embedded model, 16 digits
    ddpm-run --onnx unet.onnx -n 64 --png grid.png --npz samples.npz --seed 3
    ddpm-run --sampler unipc --png fast.png                        # 10 network calls, 100x faster
    ddpm-run --sampler consistency --png fastest.png               # the embedded few-step student, 2 calls
    ddpm-run --sampler ddim --steps 50 --png fast.png              # 20x fewer network calls
    ddpm-run --digit 7 --png sevens.png                            # 16 sevens: UniPC, 10 calls, guidance 1
    ddpm-run --onnx cond.onnx --digit all --guidance 2 --gif all.gif
    """
    args = split_sampling(RunArgs, options)
    targets = output_targets(args.gif, args.video, args.png, args.npz, args.show, args.show_info, args.onnx_path)
    if args.engine == "cudagraph" and args.provider in ("cpu", "openvino"):
        raise click.BadParameter("cudagraph needs --provider cuda or auto on a GPU", param_hint="'--engine'")
    model = chosen_model(args.onnx_path, args.model_name, args.sampling.get("sampler"))
    check_model_flags(model, args.provider, args.precision, args.engine == "cudagraph")
    # Said once however many timings follow (both copies, the batch): a cached no-argument call runs once.
    announce = (
        None
        if args.quiet
        else functools.cache(
            lambda: click.echo("timing this CPU once (seconds to a minute; the result is cached)", err=True)
        )
    )
    ddpm, loop_engine, request = open_checked(model, args, targets, announce)
    if not args.quiet:
        announce_model(ddpm, args.threads, args.engine, loop_engine)
    run, choice = sample(ddpm, request, args.seed, args.batch_size, loop_engine, args.quiet, announce)
    # the batch and, where auto chose it, the engine: both checked against this run's own time
    timing_note = cpu_batch.recheck(ddpm.session, choice, ddpm.path_timing) if choice is not None else None
    sizes = write_outputs(run, targets, request.columns, args.fps, args.hold, args.scale)
    if not args.quiet:
        summarize(ddpm, run, choice, sizes, targets)
        if timing_note:
            click.echo(f"ddpm-run: {timing_note}", err=True)


def open_checked(
    model: Path | str | None,
    args: RunArgs,
    targets: dict[str, Path | None],
    announce: Callable[[], None] | None,
) -> tuple[DDPM, str, SamplingRequest]:
    """The model opened, with its loop engine and the sampling request checked against it before the CPU
    is timed, so that a request that cannot work fails at once (--info shows the model asked for and stops)."""
    loop_engine, request = "", None

    def check(model: DDPM) -> None:
        nonlocal loop_engine, request
        if args.show_info:
            show_model_info(model)
            click.get_current_context().exit(0)
        check_distinct_paths({f"--{name}": path for name, path in targets.items()}, model.decoder_files())
        loop_engine, request = checked_request(
            model,
            args.engine,
            args.num_samples,
            args.digit,
            args.frames if args.animated else 0,
            args.show,
            args.scale if args.animated or args.png else 0,
            args.sampling,
        )

    cuda_graph = args.engine == "cudagraph"
    ddpm = open_model(model, args.provider, args.precision, args.threads, args.device_id, cuda_graph, announce, check)
    return ddpm, loop_engine, request


def checked_request(
    ddpm: DDPM,
    engine: str,
    n: int | None,
    digit: str | None,
    frames: int,
    show: str,
    scale: int,
    sampling: dict[str, Any],
) -> tuple[str, SamplingRequest]:
    """The loop engine and the sampling request for this model, checked, and the run's memory against the
    machine's (``scale`` 0: no picture drawn); errors about the flags."""
    try:
        loop_engine = ddpm.engine("auto" if engine == "cudagraph" else engine)
    except SettingError as exc:
        raise flag_error(exc) from None
    request = sampling_request(ddpm, n, digit, frames, show, **sampling)
    check_memory(request.n, ddpm.info, request.plan, scale)
    return loop_engine, request


def sample(
    ddpm: DDPM,
    request: SamplingRequest,
    seed: int | None,
    batch_size: int | None,
    loop_engine: str,
    quiet: bool,
    on_measure: Callable[[], None] | None,
) -> tuple[SampleRun, BatchChoice | None]:
    """The run, with a progress bar (a fresh seed when none is given), and the CPU batch where this
    run chose it."""
    choice = None
    if batch_size is None and ddpm.session.on_cpu and ddpm.session.fixed_batch is None:
        choice = ddpm.batch_choice(on_measure=on_measure)
    seed = secrets.randbits(63) if seed is None else seed
    progress = Progress(request.plan.steps, "sample", unit="step", enabled=not quiet)
    with progress:
        run = ddpm.generate(
            request.n,
            request.plan,
            seed=seed,
            batch_size=batch_size,
            on_step=lambda done, total: progress.update(1),
            engine=loop_engine,
        )
    return run, choice


def main() -> None:
    run_command(run_cli, "ddpm-run")
