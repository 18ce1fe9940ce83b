"""``ddpm-run``'s options: the flags, in the order ``--help`` lists them, and :class:`RunArgs`, what they
give the command."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from ..core.console import FiniteFloatRange, OutputPath, with_options
from ..core.plan import MAX_SEED, SHOW
from .choice import PRECISIONS, PROVIDERS
from .model_flags import PRECISION_HELP, PROVIDER_HELP, model_option
from .sampling_cli import sampling_options

ENGINE_CHOICES = (
    "auto",
    "plain",
    "iobinding",
    "cudagraph",
)  # cudagraph: IOBinding on a session that captured a CUDA graph

OPTIONS = [
    click.option(
        "--onnx",
        "onnx_path",
        type=click.Path(path_type=Path),
        default=None,
        help="Exported model (ddpm-export). [default: the model shipped with the package, see --model]",
    ),
    model_option,
    click.option("--gif", type=OutputPath(), default=None, help="Write the denoising as an animated GIF grid."),
    click.option(
        "--video",
        type=OutputPath(),
        default=None,
        help="Write the denoising as an MP4 (.mp4, H.264) or WebM (.webm, VP9) video; needs the video extra "
        '(pip install "ddpm-mnist[video]").',
    ),
    click.option(
        "--show",
        type=click.Choice(SHOW),
        default="xt",
        help="What the GIF and video show: the noisy image x_t, the predicted clean digit x̂_0, or both side by side.",
    ),
    click.option("--png", type=OutputPath(), default=None, help="Write the final samples as a PNG grid."),
    click.option(
        "--npz",
        type=OutputPath(),
        default=None,
        help="Write uint8 'images' [N,H,W], the seed and the settings (JSON) as a NumPy archive.",
    ),
    click.option(
        "-n",
        "--num-samples",
        type=click.IntRange(min=1),
        default=None,
        help="How many digits to draw. [default: 16; 2 per class with --digit all]",
    ),
    click.option(
        "--batch-size",
        type=click.IntRange(min=1),
        default=None,
        help="Images per network call. [default: on a CPU the fastest per image, measured once per machine and "
        "model shape (seconds to a minute) and cached in ~/.cache/ddpm-mnist; up to 256 on a GPU; a fixed-batch "
        "model uses its own]",
    ),
    click.option(
        "--seed",
        type=click.IntRange(0, MAX_SEED),
        default=None,
        help="Seed of the noise; the same seed gives the same digits. [default: fresh, printed in the summary and "
        "stored in the PNG and npz outputs]",
    ),
    click.option(
        "--frames",
        type=click.IntRange(2, 10_000),
        default=40,
        help="GIF frames, spaced densely towards the end of the process.",
    ),
    click.option("--fps", type=FiniteFloatRange(min=0.1, max=100.0), default=12.0, help="GIF frames per second."),
    click.option(
        "--hold", type=FiniteFloatRange(min=0.0, max=60.0), default=2.0, help="Seconds the GIF shows the final frame."
    ),
    click.option("--scale", type=click.IntRange(1, 16), default=3, help="Pixel upscaling of the GIF and PNG grids."),
    sampling_options,
    click.option("--precision", type=click.Choice(PRECISIONS), default="auto", help=PRECISION_HELP),
    click.option("--provider", type=click.Choice(PROVIDERS), default="auto", help=PROVIDER_HELP),
    click.option(
        "--engine",
        type=click.Choice(ENGINE_CHOICES),
        default="auto",
        help="How each step reaches the network: 'plain' session.run with NumPy arrays; 'iobinding' "
        "device buffers updated in place; 'cudagraph' IOBinding with a captured CUDA graph (CUDA "
        "provider, fixed-batch model); 'auto' is iobinding on a GPU, plain on the CPU.",
    ),
    click.option(
        "--threads", type=click.IntRange(1, 1024), default=None, help="CPU threads. [default: the backend's own choice]"
    ),
    click.option(
        "--device-id", type=click.IntRange(min=0), default=0, help="Which CUDA device, on a machine with several."
    ),
    click.option("--info", "show_info", is_flag=True, help="Print the model's metadata as JSON and exit."),
    click.option("-q", "--quiet", is_flag=True, help="No progress bar and no summary, only errors."),
]


run_options = with_options(OPTIONS)  # every option of ``ddpm-run``, in ``--help`` order


@dataclass(frozen=True)
class RunArgs:
    """What ``ddpm-run``'s options give; ``sampling``: the sampler flags (sampling_options), by keyword."""

    onnx_path: Path | None
    model_name: str | None
    gif: Path | None
    video: Path | None
    show: str
    png: Path | None
    npz: Path | None
    num_samples: int | None
    batch_size: int | None
    seed: int | None
    frames: int
    fps: float
    hold: float
    scale: int
    digit: str | None
    precision: str
    provider: str
    engine: str
    threads: int | None
    device_id: int
    show_info: bool
    quiet: bool
    sampling: dict[str, Any]

    @property
    def animated(self) -> bool:
        """Whether a GIF or a video is asked for."""
        return self.gif is not None or self.video is not None
