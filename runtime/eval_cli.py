"""``ddpm-eval``: how good are a model's digits? Judge confidence, class balance and Fréchet distance,
beside the same figures for real held-out MNIST digits (the floor). No PyTorch needed.

Its options are in eval_options.py, the images it scores in eval_samples.py, its report in eval_report.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
import numpy as np

from ..core.console import run_command
from ..core.download import download_targets, require_mnist, unlike_mnist
from ..core.files import check_distinct_paths, output_target
from ..core.mnist import data_files, load_mnist
from .eval_options import EvalArgs, eval_options
from .eval_report import json_report, show_scores, write_report
from .eval_samples import samples_to_score
from .installed import installed_inputs
from .model_flags import chosen_model
from .quality import Judge, Scores, real_floor, score, targets, to_judge_size
from .sampling_cli import split_sampling

# The test set's second half is the reference; its first half supplies the real-data floor.


@click.command(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@eval_options
def eval_command(**options: Any) -> None:
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
    args = split_sampling(EvalArgs, options)
    model = chosen_model(args.onnx_path, args.model_name, args.sampling.get("sampler") if args.npz is None else None)
    check_arguments(
        args.npz,
        model,
        args.json_path,
        sampling_given=args.digit is not None or any(v is not None for v in args.sampling.values()),
        data_dir=args.data_dir,
        download=args.download,
    )
    test_images, test_labels, foreign = mnist_test_set(args)
    half = len(test_images) // 2
    if args.npz is None and args.num_samples > half:
        raise click.BadParameter(
            f"{args.num_samples} is more than half the test set ({half}), which the floor draws from",
            param_hint="'-n'",
        )
    judge = Judge(threads=args.threads)
    images, settings, source = samples_to_score(args, model, half)
    transform = settings.get("transform", "pad") if args.transform == "auto" else args.transform
    labels = settings.get("labels")
    sample_scores, floor_scores = judged(judge, images, transform, labels, test_images, test_labels)
    requested = labels is not None and not settings.get("labels_drawn", False)
    checks = targets(sample_scores, floor_scores, requested=requested)
    show_scores(sample_scores, floor_scores, checks, args.data_dir, foreign)
    if args.json_path is not None:
        report = json_report(
            sample_scores, floor_scores, checks, source, transform, images, len(test_images), args.data_dir, foreign
        )
        write_report(args.json_path, report)


def mnist_test_set(args: EvalArgs) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """The test images and labels of --data-dir (fetched first with --download), and the names of its files
    whose content is not MNIST's (other test images still score, but not as MNIST's)."""
    echo = None if args.quiet else lambda line: click.echo(line, err=True)
    require_mnist(args.data_dir, "test", args.download, args.mirrors, echo)
    test_images, test_labels = load_mnist(args.data_dir, "test")
    return test_images, test_labels, unlike_mnist(args.data_dir, "test")


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


def main() -> None:
    run_command(eval_command, "ddpm-eval")
