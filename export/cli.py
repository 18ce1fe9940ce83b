"""``ddpm-export``: a checkpoint to a verified, self-describing ONNX file and a traced TorchScript file."""

from __future__ import annotations

import os
from pathlib import Path

import click

from ..core.console import FiniteFloatRange, OutputPath, run_command
from ..core.download import download_options, download_targets, require_mnist
from ..core.errors import DDPMError
from ..core.files import check_distinct_paths, output_target
from ..core.mnist import data_files
from ..core.variant import Variant
from ..runtime.installed import installed_inputs
from .pipeline import (
    DEFAULT_ATOL,
    DEFAULT_FP16_ATOL,
    DEFAULT_INT8_TOL,
    DEFAULT_OPSET,
    PLAIN,
    ExportOutputs,
    ExportReport,
    Tolerances,
    export_and_verify,
    read_calibration,
    requested_variants,
)


def _size(path: Path) -> str:
    return f"{path.stat().st_size / 1e6:.1f} MB"


def _output_path(explicit: Path | None, out_dir: Path, name: str) -> Path:
    return output_target(explicit if explicit is not None else out_dir / name, "output path")


@click.command(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.option(
    "--ckpt",
    type=click.Path(path_type=Path),
    required=True,
    help="A ddpm-train checkpoint, or a labml.ai U-Net state dict (torch.save(unet.state_dict())).",
)
@click.option(
    "--out-dir",
    type=OutputPath(folder=True),
    default=None,
    help="Folder for unet.onnx and unet.ts.pt. [default: the checkpoint's folder]",
)
@click.option(
    "--onnx", "onnx_path", type=OutputPath(), default=None, help="ONNX output path. [default: OUT_DIR/unet.onnx]"
)
@click.option(
    "--torchscript",
    "torchscript_path",
    type=OutputPath(),
    default=None,
    help="TorchScript output path. [default: OUT_DIR/unet.ts.pt]",
)
@click.option("--no-torchscript", is_flag=True, help="Write the ONNX file only.")
@click.option(
    "--opset",
    type=click.IntRange(18, 20),
    default=DEFAULT_OPSET,
    help="ONNX opset (18-20; 21+ lacks GroupNormalization in ONNX Runtime).",
)
@click.option("--raw", is_flag=True, help="Export the raw training weights instead of the EMA weights.")
@click.option(
    "--fixed-batch",
    type=click.IntRange(min=1),
    default=None,
    help="Also write a static-shape copy with this batch size (OUT_DIR/unet.bN.onnx), e.g. for CUDA graphs.",
)
@click.option(
    "--atol",
    type=FiniteFloatRange(min=0.0, min_open=True),
    default=DEFAULT_ATOL,
    help="Largest allowed abs difference to eager PyTorch; above it nothing is written.",
)
@click.option("--no-verify", is_flag=True, help="Skip comparing the exports with eager PyTorch.")
@click.option(
    "--fp16",
    is_flag=True,
    help="Also write fp16 copies (unet.fp16.onnx ...): fp32 inputs and outputs, the timestep embedding kept fp32.",
)
@click.option(
    "--fp16-atol",
    type=FiniteFloatRange(min=0.0, min_open=True),
    default=DEFAULT_FP16_ATOL,
    help="Largest allowed abs difference of the fp16 copies to eager fp32 PyTorch.",
)
@click.option(
    "--int8",
    is_flag=True,
    help="Also write unet.int8.onnx: convolutions and weight products in int8 (static QDQ, per-channel weights), "
    "calibrated on noisy MNIST training digits from --data-dir; for CPUs with fast int8 (AVX-512 VNNI, AVX-VNNI).",
)
@click.option(
    "--int8-tol",
    type=FiniteFloatRange(min=0.0, min_open=True),
    default=DEFAULT_INT8_TOL,
    help="Largest allowed relative RMS difference of the int8 copy's ε to the fp32 export's, on held-out noisy digits.",
)
@click.option(
    "--data-dir",
    type=click.Path(path_type=Path),
    default=Path("data/mnist"),
    envvar="DDPM_DATA_DIR",
    help="Folder with the MNIST training files, for --int8 calibration. Env: DDPM_DATA_DIR.",
)
@download_options
@click.option(
    "--overwrite",
    is_flag=True,
    help="Replace output files that exist already (otherwise they are refused, as ddpm-train does).",
)
@click.option(
    "--fused-step",
    is_flag=True,
    help="Also write unet.step.onnx: the U-Net plus the DDPM update (x, t, noise -> x_prev), so x can stay on the GPU.",
)
@click.option(
    "--norm-groups",
    type=click.IntRange(min=1),
    default=None,
    help="labml state dicts only: GroupNorm groups in the blocks (not stored in a state dict). [default: 32]",
)
@click.option(
    "--final-norm-groups",
    type=click.IntRange(min=1),
    default=None,
    help="labml state dicts only: GroupNorm groups before the output conv. [default: 8]",
)
def export_command(
    ckpt: Path,
    out_dir: Path | None,
    onnx_path: Path | None,
    torchscript_path: Path | None,
    no_torchscript: bool,
    opset: int,
    raw: bool,
    fixed_batch: int | None,
    atol: float,
    no_verify: bool,
    fp16: bool,
    fp16_atol: float,
    int8: bool,
    int8_tol: float,
    data_dir: Path,
    download: bool,
    mirrors: tuple[str, ...],
    overwrite: bool,
    fused_step: bool,
    norm_groups: int | None,
    final_norm_groups: int | None,
) -> None:
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
    from .load import load_for_export

    out_dir = out_dir if out_dir is not None else ckpt.parent
    if out_dir.exists() and not out_dir.is_dir():
        raise DDPMError(f"--out-dir {out_dir} is not a directory")
    variants = requested_variants(fp16, fused_step, fixed_batch, int8)
    outputs = output_paths(
        ckpt, out_dir, onnx_path, torchscript_path, no_torchscript, variants, data_dir if int8 else None, download
    )
    if not overwrite and (existing := [path for path in outputs.paths() if os.path.lexists(path)]):
        raise DDPMError(
            f"{existing[0]} exists{f' (and {len(existing) - 1} more outputs)' if len(existing) > 1 else ''}; "
            "pass --overwrite to replace it, or choose another --out-dir or --onnx"
        )
    if int8:  # said, or fetched, before the checkpoint is loaded
        require_mnist(
            data_dir,
            "train",
            download,
            mirrors,
            lambda line: click.echo(line, err=True),
            purpose="--int8 calibrates on MNIST training digits",
        )
    source = load_for_export(ckpt, "raw" if raw else "ema", norm_groups, final_norm_groups)
    if source.kind == "ddpm-mnist" and (norm_groups or final_norm_groups):
        raise click.UsageError(
            "--norm-groups/--final-norm-groups apply to labml state dicts only; checkpoints record them"
        )
    if source.decoder is not None:
        outputs = with_decoder(outputs, ckpt, overwrite)
        if int8:
            raise DDPMError("--int8 copies of latent models are not made yet; export without --int8")
    describe(ckpt, source, raw)
    calibration = read_calibration(source.info, data_dir) if int8 else None
    tolerances = Tolerances(atol, fp16_atol, int8_tol)
    report = export_and_verify(
        source, outputs, opset=opset, tolerances=tolerances, verify=not no_verify, calibration=calibration
    )
    show_report(report, tolerances, verified=not no_verify, fp16=fp16)


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


def output_paths(
    ckpt: Path,
    out_dir: Path,
    onnx_path: Path | None,
    torchscript_path: Path | None,
    no_torchscript: bool,
    variants: list[Variant],
    data_dir: Path | None = None,
    download: bool = False,
) -> ExportOutputs:
    """--onnx PATH is written as given, the other copies beside it with their tags before its extension;
    each path checked, before any work, to be writable and to be neither another output nor a file the
    export reads: the checkpoint, the installed models, the MNIST files of ``data_dir`` (for --int8)."""
    base = _output_path(onnx_path, out_dir, "unet.onnx")
    outputs = ExportOutputs(
        {variant: base.with_name(variant.file_name(base.name)) for variant in variants},
        None if no_torchscript else _output_path(torchscript_path, out_dir, "unet.ts.pt"),
    )
    named = {"--onnx" if variant == PLAIN else path.name: path for variant, path in outputs.onnx.items()}
    reads = {
        "--ckpt": ckpt,
        **installed_inputs(),
        **(data_files(data_dir) if data_dir is not None else {}),
        **(download_targets(data_dir, ["train"]) if data_dir is not None and download else {}),
    }
    check_distinct_paths({**named, "--torchscript": outputs.torchscript}, reads)
    return outputs


def with_decoder(outputs: ExportOutputs, ckpt: Path, overwrite: bool) -> ExportOutputs:
    """A latent model's outputs: its decoder beside the U-Net (unet.onnx → unet.decoder.onnx, unet.ts.pt →
    unet.decoder.ts.pt), checked as the other outputs are."""
    plain = outputs.onnx[PLAIN]
    decoder = plain.with_name(f"{plain.stem}.decoder{plain.suffix}")
    scripted = outputs.torchscript
    decoder_script = (
        None if scripted is None else scripted.with_name(scripted.name.replace(".ts.pt", "") + ".decoder.ts.pt")
    )
    named = {"decoder": decoder, "decoder TorchScript": decoder_script}
    check_distinct_paths(
        {**named, **{path.name: path for path in outputs.paths()}}, {"--ckpt": ckpt, **installed_inputs()}
    )
    if not overwrite and (existing := [path for path in named.values() if path is not None and os.path.lexists(path)]):
        raise DDPMError(f"{existing[0]} exists; pass --overwrite to replace it, or choose another --out-dir or --onnx")
    return ExportOutputs(outputs.onnx, outputs.torchscript, decoder, decoder_script)


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
    differences = ", ".join(f"{label} {value:.2e}" for label, value in report.differences.items())
    click.echo(
        f"verified against eager PyTorch fp32 (batches 1 and 3, t = 0, T/2, T-1): max abs diff {differences} "
        f"(atol {tolerances.atol:g}{f', fp16 {tolerances.fp16_atol:g}' if fp16 else ''})"
    )


def main() -> None:
    run_command(export_command, "ddpm-export")
