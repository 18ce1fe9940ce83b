"""How well an autoencoder reconstructs held-out digits, before a latent U-Net is trained on its latents.

    python -m ddpm.benchmarks.autoencoder_quality --ckpt runs/ae32/model.pt --data-dir data/mnist -n 1000

Encodes MNIST test digits 0..n−1 (the posterior means, as the latent U-Net learns them), decodes
them, and reports the mean and largest absolute error in grey levels (0..255, at the training size),
and the judge's figures for the reconstructions beside those of the same real digits (the floor),
against the test set's second half as ddpm-eval scores samples. Writes a Markdown and a JSON report.
"""

from __future__ import annotations

import json
from pathlib import Path

import click
import numpy as np
import torch

from ..core.files import atomic_write
from ..core.images import to_uint8
from ..core.mnist import load_mnist
from ..runtime.quality import Judge, score, table, to_judge_size
from ..train.checkpoint import load_checkpoint
from ..train.config import DataConfig
from ..train.data import transform_images
from ..train.latent import build_autoencoder, encode


def reconstruct(checkpoint: dict, images: np.ndarray) -> tuple[np.ndarray, np.ndarray, DataConfig]:
    """uint8 [N, 28, 28] digits → (the digits at the training size, their reconstructions), both uint8."""
    data = DataConfig.from_dict(checkpoint["data"])
    record = {"config": checkpoint["model_config"], "weights": checkpoint["ema"]}
    model = build_autoencoder(record)
    x = transform_images(images, data)
    with torch.no_grad():
        reconstruction = model.decoder(encode(model, x)).numpy()
    return to_uint8(x.numpy(), data.data_range), to_uint8(reconstruction, data.data_range), data


@click.command()
@click.option(
    "--ckpt",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    required=True,
    help="A ddpm-autoencoder checkpoint (its EMA weights are scored).",
)
@click.option(
    "--data-dir",
    type=click.Path(path_type=Path),
    default=Path("data/mnist"),
    envvar="DDPM_DATA_DIR",
    help="Folder with the MNIST test files.",
)
@click.option("-n", "--count", type=click.IntRange(50, 5000), default=1000, help="Test digits to reconstruct.")
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    default=Path("benchmarks/results/autoencoder-quality"),
    help="Report path without extension (.md and .json are written).",
)
def main(ckpt: Path, data_dir: Path, count: int, out: Path) -> None:
    checkpoint = load_checkpoint(ckpt)
    test_images, test_labels = load_mnist(data_dir, "test")
    real, reconstructed, data = reconstruct(checkpoint, test_images[:count])
    error = np.abs(real.astype(np.int16) - reconstructed.astype(np.int16))
    judge = Judge()
    reference = judge(test_images[len(test_images) // 2 :])[1]
    labels = test_labels[:count]
    samples = score(*judge(to_judge_size(reconstructed, data.transform)), reference, labels)
    floor = score(*judge(to_judge_size(real, data.transform)), reference, labels)
    report = {
        "checkpoint": str(ckpt),
        "step": checkpoint["progress"]["step"],
        "config": checkpoint["model_config"],
        "kl_weight": checkpoint["train"]["kl_weight"],
        "count": count,
        "mean_abs_error_grey": float(error.mean()),
        "max_abs_error_grey": int(error.max()),
        "share_of_pixels_within_8_grey": float((error <= 8).mean()),
        "reconstructions": samples.to_dict(),
        "floor": floor.to_dict(),
    }
    text = "\n".join(
        [
            f"# Autoencoder reconstructions: {ckpt} (step {report['step']})",
            "",
            f"MNIST test digits 0..{count - 1} at {data.image_size}x{data.image_size} ({data.transform}), "
            "encoded to the posterior means and decoded; the judge scores them against test digits 5000..9999, "
            "beside the same real digits at that size (both brought back to 28x28 as ddpm-eval brings samples).",
            "",
            f"- mean absolute error: {report['mean_abs_error_grey']:.2f} grey levels (of 255); "
            f"largest {report['max_abs_error_grey']}",
            f"- pixels within 8 grey levels: {100 * report['share_of_pixels_within_8_grey']:.2f}%",
            "",
            "```",
            table(samples, floor).replace("samples", "reconstructed", 1),
            "```",
            "",
        ]
    )
    for path, content in (
        (out.with_suffix(".md"), text),
        (out.with_suffix(".json"), json.dumps(report, indent=2) + "\n"),
    ):
        with atomic_write(path) as handle:
            handle.write(content.encode())
    click.echo(text)


if __name__ == "__main__":
    main()
