"""``ddpm-eval``'s options: the flags, in the order ``--help`` lists them, and :class:`EvalArgs`, what they
give the command."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from ..core.console import OutputPath, with_options
from ..core.download import download_options
from .choice import PRECISIONS, PROVIDERS
from .model_flags import EVAL_PRECISION_HELP, PROVIDER_HELP, model_option
from .sampling_cli import sampling_options

OPTIONS = [
    click.option(
        "--npz", type=click.Path(path_type=Path), default=None, help="Score the images of a ddpm-run --npz archive."
    ),
    click.option(
        "--onnx",
        "onnx_path",
        type=click.Path(path_type=Path),
        default=None,
        help="Sample this exported model (without --npz). [default: the model shipped with the package, see --model]",
    ),
    model_option,
    click.option(
        "-n",
        "--num-samples",
        type=click.IntRange(min=2),
        default=1000,
        help="Samples to draw when sampling (the floor uses as many real images; at most half the test set).",
    ),
    click.option(
        "--seed", type=click.IntRange(0, 2**63 - 1), default=0, help="Seed when sampling (fixed, so scores compare)."
    ),
    sampling_options,
    click.option(
        "--batch-size", type=click.IntRange(min=1), default=None, help="Images per network call when sampling."
    ),
    click.option("--provider", type=click.Choice(PROVIDERS), default="auto", help=f"When sampling: {PROVIDER_HELP}"),
    click.option("--precision", type=click.Choice(PRECISIONS), default="fp32", help=EVAL_PRECISION_HELP),
    click.option("--threads", type=click.IntRange(1, 1024), default=None, help="CPU threads."),
    click.option(
        "--device-id", type=click.IntRange(min=0), default=0, help="Which CUDA device, on a machine with several."
    ),
    click.option(
        "--data-dir",
        type=click.Path(path_type=Path),
        default=Path("data/mnist"),
        envvar="DDPM_DATA_DIR",
        help="Folder with the MNIST test files (t10k-*). Env: DDPM_DATA_DIR.",
    ),
    download_options,
    click.option(
        "--transform",
        type=click.Choice(["auto", "pad", "resize"]),
        default="auto",
        help="How samples return to 28x28 for the judge: crop the padding or resize. "
        "'auto': what the model was trained with.",
    ),
    click.option("--json", "json_path", type=OutputPath(), default=None, help="Also write the report as JSON."),
    click.option("-q", "--quiet", is_flag=True, help="No progress bar."),
]


eval_options = with_options(OPTIONS)  # every option of ``ddpm-eval``, in ``--help`` order


@dataclass(frozen=True)
class EvalArgs:
    """What ``ddpm-eval``'s options give; ``sampling``: the sampler flags (sampling_options), by keyword."""

    npz: Path | None
    onnx_path: Path | None
    model_name: str | None
    num_samples: int
    seed: int
    digit: str | None
    batch_size: int | None
    provider: str
    precision: str
    threads: int | None
    device_id: int
    data_dir: Path
    download: bool
    mirrors: tuple[str, ...]
    transform: str
    json_path: Path | None
    quiet: bool
    sampling: dict[str, Any]
