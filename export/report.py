"""What ``ddpm-export`` says: the checkpoint it read, and the files it wrote with their check against eager
PyTorch."""

from __future__ import annotations

from pathlib import Path

import click

from ..core.variant import DECODER_INT8_TOLERANCE
from .pipeline import ExportReport, Tolerances


def _size(path: Path) -> str:
    return f"{path.stat().st_size / 1e6:.1f} MB"


def describe(ckpt: Path, source, raw: bool) -> None:
    parameters = sum(p.numel() for p in source.model.parameters())
    what = (
        f"ddpm-mnist checkpoint, step {source.info.source['step']}, {'raw' if raw else 'EMA'} weights"
        if source.kind == "ddpm-mnist"
        else "labml state dict, data range [0,1], noise at every step"
    )
    if source.decoder is not None:
        latent, side = source.info.latent, source.info.image_size
        what += (
            f"; latent {source.info.image_channels}x{side}x{side} decoded to {latent['image_size']}x"
            f"{latent['image_size']} (scale {latent['scale_factor']:.4g})"
        )
    click.echo(f"read {ckpt} ({what}): {parameters:,} parameters, widths {source.model.config.widths()}")


def show_report(report: ExportReport, tolerances: Tolerances, verified: bool, fp16: bool) -> None:
    for path, seconds in report.seconds.items():
        click.echo(f"wrote {path} ({_size(path)}, {seconds:.1f} s)")
    if not verified:
        click.echo("verification skipped (--no-verify)")
        return
    if report.int8_difference is not None:
        click.echo(
            f"int8 vs fp32 ε: relative RMS difference {report.int8_difference:.3f} (tolerance {tolerances.int8_tol:g})"
        )
    if report.decoder_int8_difference is not None:
        click.echo(
            f"int8 vs fp32 decoder: images differ by {report.decoder_int8_difference:.2f} grey levels on average "
            f"(tolerance {DECODER_INT8_TOLERANCE:g})"
        )
    differences = ", ".join(f"{label} {value:.2e}" for label, value in report.differences.items())
    click.echo(
        f"verified against eager PyTorch fp32 (batches 1 and 3, t = 0, T/2, T-1): max abs diff {differences} "
        f"(atol {tolerances.atol:g}{f', fp16 {tolerances.fp16_atol:g}' if fp16 else ''})"
    )
