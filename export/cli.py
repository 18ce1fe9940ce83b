"""``ddpm-export``: a checkpoint to a verified, self-describing ONNX file and a traced TorchScript file.

Its options are in options.py, where it writes in output_paths.py, what it prints in report.py."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import click

from ..core.console import run_command
from ..core.download import require_mnist
from .options import ExportArgs, export_options
from .output_paths import planned_outputs, with_decoder
from .pipeline import ExportOutputs, Tolerances, export_and_verify, read_calibration
from .report import describe, show_report

if TYPE_CHECKING:
    from .load import ExportSource  # torch: imported when the command runs


@click.command(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@export_options
def export_command(**options: Any) -> None:
    """Export a U-Net checkpoint to ONNX (dynamic batch, sampling settings in its metadata) and TorchScript.

    A latent model (ddpm-train --autoencoder) also writes its decoder beside it (unet.decoder.onnx and
    unet.decoder.ts.pt), which the U-Net's metadata names with its SHA-256.

    Both exports are checked against eager PyTorch on ONNX Runtime's CPU provider for batches 1
    and 3 at t = 0, T/2 and T-1 before anything is written.

    \b
    ddpm-export --ckpt runs/small/model.pt
    ddpm-export --ckpt labml_model.pt --out-dir exported --fixed-batch 16
    ddpm-export --ckpt model.pt --fp16 --fused-step --fixed-batch 1     # the GPU variants
    ddpm-export --ckpt model.pt --int8 --data-dir data/mnist # a faster copy for CPUs
    ddpm-export --ckpt model.pt --overwrite                   # replace the last export
    """
    args = ExportArgs(**options)
    outputs = planned_outputs(args)
    if args.int8:  # said, or fetched, before the checkpoint is loaded
        require_mnist(
            args.data_dir,
            "train",
            args.download,
            args.mirrors,
            lambda line: click.echo(line, err=True),
            purpose="--int8 calibrates on MNIST training digits",
        )
    source, outputs = loaded_source(args, outputs)
    describe(args.ckpt, source, args.raw)
    calibration = read_calibration(source, args.data_dir) if args.int8 else None
    tolerances = Tolerances(args.atol, args.fp16_atol, args.int8_tol)
    report = export_and_verify(
        source, outputs, opset=args.opset, tolerances=tolerances, verify=not args.no_verify, calibration=calibration
    )
    show_report(report, tolerances, verified=not args.no_verify, fp16=args.fp16)


def loaded_source(args: ExportArgs, outputs: ExportOutputs) -> tuple[ExportSource, ExportOutputs]:
    """The checkpoint, loaded (torch from here on), and the outputs with a latent model's decoder added;
    the flags it cannot take are refused."""
    from .load import load_for_export

    source = load_for_export(args.ckpt, "raw" if args.raw else "ema", args.norm_groups, args.final_norm_groups)
    if source.kind == "ddpm-mnist" and (args.norm_groups or args.final_norm_groups):
        raise click.UsageError(
            "--norm-groups/--final-norm-groups apply to labml state dicts only; checkpoints record them"
        )
    if source.decoder is not None:
        outputs = with_decoder(outputs, args.ckpt, args.overwrite)
    return source, outputs


def main() -> None:
    run_command(export_command, "ddpm-export")
