"""What ``ddpm-eval`` reports: the scores table and the targets' verdicts on the console, and the same as
JSON (--json), with where the samples, the floor and the reference came from."""

from __future__ import annotations

import json
from pathlib import Path

import click
import numpy as np

from ..core.files import StagedFiles
from .quality import Scores, table


def show_scores(samples: Scores, floor: Scores, checks: list[str], data_dir: Path, foreign: list[str]) -> None:
    """The table and the verdicts, after a warning where ``data_dir``'s test set is not MNIST's."""
    if foreign:
        click.echo(
            f"ddpm-eval: warning: {data_dir} does not hold MNIST's test set (the content of {' and '.join(foreign)} "
            "is not MNIST's); the scores below are measured against its images instead",
            err=True,
        )
    click.echo(table(samples, floor))
    click.echo("\n".join(checks))


def json_report(
    samples: Scores,
    floor: Scores,
    checks: list[str],
    source: dict,
    transform: str,
    images: np.ndarray,
    test_count: int,
    data_dir: Path,
    foreign: list[str],
) -> dict:
    """--json's report: the scores, the verdicts, the samples' source and transform, and which test images
    were the reference (the second half of ``test_count``) and the floor (as many as ``images``)."""
    half = test_count // 2
    resized = f", resized to {images.shape[-1]} and back" if transform == "resize" and images.shape[-1] != 28 else ""
    named, of = ("test images", f" of {data_dir}, not MNIST's") if foreign else ("MNIST test images", "")
    return {
        "samples": samples.to_dict(),
        "floor": floor.to_dict(),
        "targets": checks,
        "source": source,
        "transform": transform,
        "reference": f"{named} {half}..{test_count - 1}{of}",
        "floor_images": f"{named} 0..{len(images) - 1}{of}{resized}",
        "reference_is_mnist": not foreign,
    }


def write_report(json_path: Path, report: dict) -> None:
    """The report as JSON, written under a temporary name and renamed into place."""
    with StagedFiles() as staged:
        staged.stage(json_path).write_text(json.dumps(report, indent=2) + "\n")
        staged.commit()
    click.echo(f"wrote {json_path}")
