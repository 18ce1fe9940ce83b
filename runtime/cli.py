"""``ddpm-run``: sample digits from an exported model with ONNX Runtime, no PyTorch needed."""

from __future__ import annotations

import functools
import json
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from ..core.console import FiniteFloatRange, OutputPath, run_command
from ..core.errors import DDPMError
from ..core.files import StagedFiles, check_distinct_paths, output_target
from ..core.outputs import VIDEO_CODECS, gif_bytes, npz_bytes, png_bytes, video_available, write_video
from ..core.plan import MAX_SEED, SHOW, SettingError
from ..core.progress import Progress
from . import cpu_batch
from .choice import PRECISIONS, PROVIDERS
from .cpu_batch import BatchChoice
from .installed import installed_inputs
from .memory import check_memory
from .pipeline import DDPM, SampleRun, open_model
from .sampling_cli import (
    PRECISION_HELP,
    PROVIDER_HELP,
    SamplingRequest,
    check_model_flags,
    chosen_model,
    flag_error,
    model_option,
    sampling_options,
    sampling_request,
)

ENGINE_CHOICES = (
    "auto",
    "plain",
    "iobinding",
    "cudagraph",
)  # cudagraph: IOBinding on a session that captured a CUDA graph


@click.command(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.option(
    "--onnx",
    "onnx_path",
    type=click.Path(path_type=Path),
    default=None,
    help="Exported model (ddpm-export). [default: the model shipped with the package, see --model]",
)
@model_option
@click.option("--gif", type=OutputPath(), default=None, help="Write the denoising as an animated GIF grid.")
@click.option(
    "--video",
    type=OutputPath(),
    default=None,
    help="Write the denoising as an MP4 (.mp4, H.264) or WebM (.webm, VP9) video; needs the video extra "
    '(pip install "ddpm-mnist[video]").',
)
@click.option(
    "--show",
    type=click.Choice(SHOW),
    default="xt",
    help="What the GIF and video show: the noisy image x_t, the predicted clean digit x̂_0, or both side by side.",
)
@click.option("--png", type=OutputPath(), default=None, help="Write the final samples as a PNG grid.")
@click.option(
    "--npz",
    type=OutputPath(),
    default=None,
    help="Write uint8 'images' [N,H,W], the seed and the settings (JSON) as a NumPy archive.",
)
@click.option(
    "-n",
    "--num-samples",
    type=click.IntRange(min=1),
    default=None,
    help="How many digits to draw. [default: 16; 2 per class with --digit all]",
)
@click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    default=None,
    help="Images per network call. [default: on a CPU the fastest per image, measured once per machine and model shape "
    "(seconds to a minute) and cached in ~/.cache/ddpm-mnist; up to 256 on a GPU; a fixed-batch model uses its own]",
)
@click.option(
    "--seed",
    type=click.IntRange(0, MAX_SEED),
    default=None,
    help="Seed of the noise; the same seed gives the same digits. [default: fresh, printed in the summary and "
    "stored in the PNG and npz outputs]",
)
@click.option(
    "--frames",
    type=click.IntRange(2, 10_000),
    default=40,
    help="GIF frames, spaced densely towards the end of the process.",
)
@click.option("--fps", type=FiniteFloatRange(min=0.1, max=100.0), default=12.0, help="GIF frames per second.")
@click.option(
    "--hold", type=FiniteFloatRange(min=0.0, max=60.0), default=2.0, help="Seconds the GIF shows the final frame."
)
@click.option("--scale", type=click.IntRange(1, 16), default=3, help="Pixel upscaling of the GIF and PNG grids.")
@sampling_options
@click.option("--precision", type=click.Choice(PRECISIONS), default="auto", help=PRECISION_HELP)
@click.option("--provider", type=click.Choice(PROVIDERS), default="auto", help=PROVIDER_HELP)
@click.option(
    "--engine",
    type=click.Choice(ENGINE_CHOICES),
    default="auto",
    help="How each step reaches the network: 'plain' session.run with NumPy arrays; 'iobinding' "
    "device buffers updated in place; 'cudagraph' IOBinding with a captured CUDA graph (CUDA "
    "provider, fixed-batch model); 'auto' is iobinding on a GPU, plain on the CPU.",
)
@click.option(
    "--threads", type=click.IntRange(1, 1024), default=None, help="CPU threads. [default: the backend's own choice]"
)
@click.option(
    "--device-id", type=click.IntRange(min=0), default=0, help="Which CUDA device, on a machine with several."
)
@click.option("--info", "show_info", is_flag=True, help="Print the model's metadata as JSON and exit.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar and no summary, only errors.")
def run_cli(
    onnx_path: Path | None,
    model_name: str | None,
    gif: Path | None,
    video: Path | None,
    show: str,
    png: Path | None,
    npz: Path | None,
    num_samples: int | None,
    batch_size: int | None,
    seed: int | None,
    frames: int,
    fps: float,
    hold: float,
    scale: int,
    digit: str | None,
    precision: str,
    provider: str,
    engine: str,
    threads: int | None,
    device_id: int,
    show_info: bool,
    quiet: bool,
    **sampling: Any,
) -> None:
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
    targets = output_targets(gif, video, png, npz, show, show_info, onnx_path)
    if engine == "cudagraph" and provider in ("cpu", "openvino"):
        raise click.BadParameter("cudagraph needs --provider cuda or auto on a GPU", param_hint="'--engine'")
    model = chosen_model(onnx_path, model_name, sampling.get("sampler"))
    check_model_flags(model, provider, precision, engine == "cudagraph")
    # Said once however many timings follow (both copies, the batch): a cached no-argument call runs once.
    announce = (
        None
        if quiet
        else functools.cache(
            lambda: click.echo("timing this CPU once (seconds to a minute; the result is cached)", err=True)
        )
    )
    animated = gif is not None or video is not None
    loop_engine, request = "", None

    def check(model: DDPM) -> None:
        """Before the CPU is timed, so that a request that cannot work fails at once: --info shows the
        model asked for and stops; otherwise the loop and the request are checked against the model."""
        nonlocal loop_engine, request
        if show_info:
            show_model_info(model)
            click.get_current_context().exit(0)
        check_distinct_paths({f"--{name}": path for name, path in targets.items()}, model.decoder_files())
        loop_engine, request = checked_request(
            model,
            engine,
            num_samples,
            digit,
            frames if animated else 0,
            show,
            scale if animated or png else 0,
            sampling,
        )

    ddpm = open_model(model, provider, precision, threads, device_id, engine == "cudagraph", announce, check)
    if not quiet:
        announce_model(ddpm, threads, engine, loop_engine)
    run, choice = sample(ddpm, request, seed, batch_size, loop_engine, quiet, announce)
    # the batch and, where auto chose it, the engine: both checked against this run's own time
    timing_note = cpu_batch.recheck(ddpm.session, choice, ddpm.path_timing) if choice is not None else None
    sizes = write_outputs(run, targets, request.columns, fps, hold, scale)
    if not quiet:
        summarize(ddpm, run, choice, sizes, targets)
        if timing_note:
            click.echo(f"ddpm-run: {timing_note}", err=True)


def show_model_info(ddpm: DDPM) -> None:
    """--info: the model's file, provider and metadata as JSON."""
    info = {key: json.loads(value) for key, value in ddpm.info.to_metadata().items()}
    click.echo(json.dumps({"model": str(ddpm.session.path), "provider": ddpm.provider, **info}, indent=2))


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


def output_targets(
    gif: Path | None,
    video: Path | None,
    png: Path | None,
    npz: Path | None,
    show: str,
    show_info: bool,
    onnx_path: Path | None,
) -> dict[str, Path | None]:
    """The files to write, checked before any work: something to write, writable names, none a file this
    command reads, a known video format, and no extension of another format (--gif x.png)."""
    targets = {
        "gif": output_target(gif, "--gif"),
        "video": output_target(video, "--video"),
        "png": output_target(png, "--png"),
        "npz": output_target(npz, "--npz"),
    }
    if not show_info and not any(targets.values()):
        raise click.UsageError("nothing to write: give --gif, --video, --png and/or --npz")
    if video is not None:
        if video.suffix.lower() not in VIDEO_CODECS:
            raise click.BadParameter(f"{video.name}: give a .mp4 or .webm file name", param_hint="'--video'")
        if not video_available():
            raise DDPMError('--video needs ffmpeg through imageio-ffmpeg: pip install "ddpm-mnist[video]"')
    if show != "xt" and gif is None and video is None:
        raise click.BadParameter("chooses what the animation shows; add --gif or --video", param_hint="'--show'")
    check_distinct_paths(
        {"--gif": gif, "--video": video, "--png": png, "--npz": npz}, {"--onnx": onnx_path, **installed_inputs()}
    )
    for option, path, suffix in (("--gif", gif, ".gif"), ("--png", png, ".png"), ("--npz", npz, ".npz")):
        if path is not None and path.suffix and path.suffix.lower() != suffix:
            raise click.BadParameter(
                f"{path.name}: {option} writes {suffix[1:].upper()} data; give a {suffix} name",
                param_hint=f"'{option}'",
            )
    return targets


def announce_model(ddpm: DDPM, threads: int | None, engine: str, loop_engine: str) -> None:
    """Which model runs where (and why, where the precision was chosen), and the provider notes not already
    warned about."""
    for note in ddpm.session.notes:
        if note not in ddpm.session.problems:  # those were warned about already
            click.echo(f"ddpm-run: {note}", err=True)
    threads_note = f", {threads} threads" if threads else ""
    click.echo(
        f"model {ddpm.session.path.name}{f' ({ddpm.note})' if ddpm.note else ''} on {ddpm.provider}{threads_note}, "
        f"engine {engine}{f' ({loop_engine})' if engine == 'auto' else ''}",
        err=True,
    )


def write_outputs(
    run: SampleRun, targets: dict[str, Path | None], columns: int | None, fps: float, hold: float, scale: int
) -> dict[str, int]:
    """Every requested file, written together under temporary names and renamed at the end; their sizes."""
    payloads = {}
    if targets["gif"]:
        payloads["gif"] = gif_bytes(run.frames, fps=fps, hold=hold, scale=scale, columns=columns)
    if targets["png"]:
        payloads["png"] = png_bytes(run.images, scale=scale, columns=columns, settings=run.settings)
    if targets["npz"]:
        payloads["npz"] = npz_bytes(run.images, run.settings)
    sizes = {name: len(data) for name, data in payloads.items()}
    with StagedFiles() as staged:
        for name, data in payloads.items():
            staged.stage(targets[name]).write_bytes(data)
        video = targets["video"]
        if video is not None:
            temporary = staged.stage(video)
            write_video(temporary, video.suffix.lower(), run.frames, fps=fps, hold=hold, scale=scale, columns=columns)
            sizes["video"] = temporary.stat().st_size
        staged.commit()
    return sizes


def summarize(
    ddpm: DDPM, run: SampleRun, choice: BatchChoice | None, sizes: dict[str, int], targets: dict[str, Path | None]
) -> None:
    """The measured CPU batch (when measured now), the run's speed and seed, and the files written."""
    if choice is not None and not choice.cached and choice.per_image_ms:
        tried = ", ".join(f"{batch}: {ms:.2f}" for batch, ms in choice.per_image_ms.items())
        kept = "remembered in" if choice.stored else "could not be remembered in"
        note = f" ({choice.note})" if choice.note else ""
        click.echo(
            f"CPU batch {choice.batch} (ms per image by batch: {tried}); {kept} {cpu_batch.cache_file()}{note}",
            err=True,
        )
    n, seed = run.settings.num_samples, run.settings.seed
    outside = 1.0 - run.run_seconds / run.seconds if run.seconds else 0.0
    precision = (
        "" if ddpm.session.precision == "fp32" or ddpm.session.backend == "openvino" else f"{ddpm.session.precision}, "
    )
    click.echo(
        f"{n} samples x {run.settings.steps} steps in {run.seconds:.1f} s on {ddpm.provider} "
        f"({precision}batch {run.settings.batch_size}): {run.seconds / n:.2f} s per sample, "
        f"{outside:.1%} of the time outside session.run; seed {seed} (--seed {seed} repeats it)",
        err=True,
    )
    for name, size in sizes.items():
        click.echo(f"wrote {targets[name]} ({size / 1e3:.0f} kB)")


def main() -> None:
    run_command(run_cli, "ddpm-run")
