"""``ddpm-eval``: how good are a model's digits? Judge confidence, class balance and Fréchet distance,
beside the same figures for real held-out MNIST digits (the floor). No PyTorch needed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click
import numpy as np

from ..core.console import OutputPath, run_command
from ..core.download import download_options, download_targets, require_mnist, unlike_mnist
from ..core.files import StagedFiles, check_distinct_paths, output_target
from ..core.mnist import data_files, load_mnist
from ..core.progress import Progress
from .choice import PRECISIONS, PROVIDERS
from .installed import installed_inputs
from .pipeline import DDPM, open_model
from .quality import Judge, Scores, real_floor, score, table, targets, to_judge_size
from .samples_file import SETTINGS_KEPT, read_samples
from .sampling_cli import (
    EVAL_PRECISION_HELP,
    PROVIDER_HELP,
    SamplingRequest,
    chosen_model,
    model_option,
    sampling_options,
    sampling_request,
)

# The test set's second half is the reference; its first half supplies the real-data floor.


@click.command(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.option(
    "--npz", type=click.Path(path_type=Path), default=None, help="Score the images of a ddpm-run --npz archive."
)
@click.option(
    "--onnx",
    "onnx_path",
    type=click.Path(path_type=Path),
    default=None,
    help="Sample this exported model (without --npz). [default: the model shipped with the package, see --model]",
)
@model_option
@click.option(
    "-n",
    "--num-samples",
    type=click.IntRange(min=2),
    default=1000,
    help="Samples to draw when sampling (the floor uses as many real images; at most half the test set).",
)
@click.option(
    "--seed", type=click.IntRange(0, 2**63 - 1), default=0, help="Seed when sampling (fixed, so scores compare)."
)
@sampling_options
@click.option("--batch-size", type=click.IntRange(min=1), default=None, help="Images per network call when sampling.")
@click.option("--provider", type=click.Choice(PROVIDERS), default="auto", help=f"When sampling: {PROVIDER_HELP}")
@click.option("--precision", type=click.Choice(PRECISIONS), default="fp32", help=EVAL_PRECISION_HELP)
@click.option("--threads", type=click.IntRange(1, 1024), default=None, help="CPU threads.")
@click.option(
    "--device-id", type=click.IntRange(min=0), default=0, help="Which CUDA device, on a machine with several."
)
@click.option(
    "--data-dir",
    type=click.Path(path_type=Path),
    default=Path("data/mnist"),
    envvar="DDPM_DATA_DIR",
    help="Folder with the MNIST test files (t10k-*). Env: DDPM_DATA_DIR.",
)
@download_options
@click.option(
    "--transform",
    type=click.Choice(["auto", "pad", "resize"]),
    default="auto",
    help="How samples return to 28x28 for the judge: crop the padding or resize. "
    "'auto': what the model was trained with.",
)
@click.option("--json", "json_path", type=OutputPath(), default=None, help="Also write the report as JSON.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
def eval_command(
    npz: Path | None,
    onnx_path: Path | None,
    model_name: str | None,
    num_samples: int,
    seed: int,
    digit: str | None,
    batch_size: int | None,
    provider: str,
    precision: str,
    threads: int | None,
    device_id: int,
    data_dir: Path,
    download: bool,
    mirrors: tuple[str, ...],
    transform: str,
    json_path: Path | None,
    quiet: bool,
    **sampling: Any,
) -> None:
    """Score generated digits with the judge: confidence, class histogram, Fréchet distance to the MNIST
    test set, and the same figures for as many real held-out test digits (the floor).

    \b
    ddpm-eval -n 1000 --data-dir data/mnist              # the embedded model
    ddpm-eval --npz samples.npz --data-dir data/mnist    # what ddpm-run --npz wrote
    ddpm-eval -n 1000 --sampler ddim --steps 50 --data-dir data/mnist
    ddpm-eval --onnx cond.onnx --digit all --guidance 1 --data-dir data/mnist
    ddpm-eval -n 1000 --data-dir data/mnist --download  # fetch the test files first

    With --digit (class-conditional models) it also reports the share of samples the judge assigns
    to the requested digit, beside the judge's accuracy on the real digits.
    """
    model = chosen_model(onnx_path, model_name, sampling.get("sampler") if npz is None else None)
    check_arguments(
        npz,
        model,
        json_path,
        sampling_given=digit is not None or any(v is not None for v in sampling.values()),
        data_dir=data_dir,
        download=download,
    )
    require_mnist(data_dir, "test", download, mirrors, None if quiet else lambda line: click.echo(line, err=True))
    test_images, test_labels = load_mnist(data_dir, "test")
    foreign = unlike_mnist(data_dir, "test")  # other test images still score, but not as MNIST's
    half = len(test_images) // 2
    if npz is None and num_samples > half:
        raise click.BadParameter(
            f"{num_samples} is more than half the test set ({half}), which the floor draws from", param_hint="'-n'"
        )
    judge = Judge(threads=threads)

    if npz is not None:
        images, settings, source = read_samples(npz, half)
    else:
        # --json against the decoder too, before auto's CPU timing
        ddpm = open_model(
            model,
            provider,
            precision,
            threads,
            device_id,
            check=lambda opened: check_distinct_paths({"--json": json_path}, opened.decoder_files()),
        )
        request = sampling_request(ddpm, num_samples, digit, **sampling)
        images, settings, source = draw_samples(ddpm, request, seed, batch_size, quiet)
    chosen = settings.get("transform", "pad") if transform == "auto" else transform
    labels = settings.get("labels")

    sample_scores, floor_scores = judged(judge, images, chosen, labels, test_images, test_labels)
    checks = targets(
        sample_scores, floor_scores, requested=labels is not None and not settings.get("labels_drawn", False)
    )

    if foreign:
        click.echo(
            f"ddpm-eval: warning: {data_dir} does not hold MNIST's test set (the content of {' and '.join(foreign)} "
            "is not MNIST's); the scores below are measured against its images instead",
            err=True,
        )
    click.echo(table(sample_scores, floor_scores))
    click.echo("\n".join(checks))
    if json_path is not None:
        resized = f", resized to {images.shape[-1]} and back" if chosen == "resize" and images.shape[-1] != 28 else ""
        named, of = ("test images", f" of {data_dir}, not MNIST's") if foreign else ("MNIST test images", "")
        write_report(
            json_path,
            {
                "samples": sample_scores.to_dict(),
                "floor": floor_scores.to_dict(),
                "targets": checks,
                "source": source,
                "transform": chosen,
                "reference": f"{named} {half}..{len(test_images) - 1}{of}",
                "floor_images": f"{named} 0..{len(images) - 1}{of}{resized}",
                "reference_is_mnist": not foreign,
            },
        )


def judged(
    judge: Judge,
    images: np.ndarray,
    transform: str,
    labels: list[int] | None,
    test_images: np.ndarray,
    test_labels: np.ndarray,
) -> tuple[Scores, Scores]:
    """The judge's scores of the samples and of as many real test digits (the floor, brought through the
    samples' own transform), both against the test set's second half."""
    count, half = len(images), len(test_images) // 2
    reference = judge(test_images[half:])[1]
    samples = score(*judge(to_judge_size(images, transform)), reference, labels)
    real = real_floor(test_images[:count], images.shape[-1], transform)
    return samples, score(*judge(real), reference, test_labels[:count] if labels is not None else None)


def check_arguments(
    npz: Path | None,
    model: Path | str | None,
    json_path: Path | None,
    sampling_given: bool,
    data_dir: Path,
    download: bool = False,
) -> None:
    """What is refused before any work: two sources, a path given twice, an unwritable --json, and
    sampling options for images already drawn. ``model``: --onnx's file or --model's name."""
    if npz is not None and model is not None:
        raise click.UsageError("give --npz or --onnx (or --model), not both")
    reads = {
        "--npz": npz,
        "--onnx": model if isinstance(model, Path) else None,
        **installed_inputs(),
        **data_files(data_dir),
        **(download_targets(data_dir, ["test"]) if download else {}),
    }
    check_distinct_paths({"--json": json_path}, reads)
    output_target(json_path, "--json")
    if npz is not None and sampling_given:
        raise click.UsageError(
            "--npz scores finished images; sampling options (--sampler, --steps, --digit, ...) need --onnx"
        )


def write_report(json_path: Path, report: dict) -> None:
    """The report as JSON, written under a temporary name and renamed into place."""
    with StagedFiles() as staged:
        staged.stage(json_path).write_text(json.dumps(report, indent=2) + "\n")
        staged.commit()
    click.echo(f"wrote {json_path}")


def draw_samples(
    ddpm: DDPM, request: SamplingRequest, seed: int, batch_size: int | None, quiet: bool
) -> tuple[np.ndarray, dict, dict]:
    """Images drawn by the plan, with a progress bar; their settings (the model's transform among
    them); and the report's note of their source and speed."""
    progress = Progress(request.plan.steps, f"sample {request.n}", unit="step", enabled=not quiet)
    with progress:
        run = ddpm.generate(
            request.n, request.plan, seed=seed, batch_size=batch_size, on_step=lambda done, total: progress.update(1)
        )
    # The recorded form, as an --npz archive of this run would hold it: the rest of ddpm-eval reads
    # drawn and stored samples' settings alike.
    recorded = run.settings.to_dict()
    source = {
        "onnx": str(ddpm.session.path),
        **{k: recorded[k] for k in SETTINGS_KEPT if k in recorded},
        "sampling_seconds": run.seconds,
        "seconds_per_sample": run.seconds / request.n,
        "provider": ddpm.provider,
    }
    return run.images, recorded, source


def main() -> None:
    run_command(eval_command, "ddpm-eval")
