"""``ddpm-export``: a checkpoint to a verified, self-describing ONNX file and a traced TorchScript file."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import click

from ..core.console import OutputPath, run_command
from ..core.errors import DDPMError
from ..core.files import StagedFiles, check_distinct_paths, output_target


def _size(path: Path) -> str:
    return f"{path.stat().st_size / 1e6:.1f} MB"


def _output_path(explicit: Path | None, out_dir: Path, name: str) -> Path:
    return output_target(explicit if explicit is not None else out_dir / name, "output path")


@click.command(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.option("--ckpt", type=click.Path(path_type=Path), required=True,
              help="A ddpm-train checkpoint, or a labml.ai U-Net state dict (torch.save(unet.state_dict())).")
@click.option("--out-dir", type=OutputPath(folder=True), default=None,
              help="Folder for unet.onnx and unet.ts.pt. [default: the checkpoint's folder]")
@click.option("--onnx", "onnx_path", type=OutputPath(), default=None, help="ONNX output path. [default: OUT_DIR/unet.onnx]")
@click.option("--torchscript", "torchscript_path", type=OutputPath(), default=None,
              help="TorchScript output path. [default: OUT_DIR/unet.ts.pt]")
@click.option("--no-torchscript", is_flag=True, help="Write the ONNX file only.")
@click.option("--opset", type=click.IntRange(18, 20), default=18, help="ONNX opset (18-20; 21+ lacks GroupNormalization in ONNX Runtime).")
@click.option("--raw", is_flag=True, help="Export the raw training weights instead of the EMA weights.")
@click.option("--fixed-batch", type=click.IntRange(min=1), default=None,
              help="Also write a static-shape copy with this batch size (OUT_DIR/unet.bN.onnx), e.g. for CUDA graphs.")
@click.option("--atol", type=click.FloatRange(min=0.0, min_open=True), default=1e-4,
              help="Largest allowed abs difference to eager PyTorch; above it nothing is written.")
@click.option("--no-verify", is_flag=True, help="Skip comparing the exports with eager PyTorch.")
@click.option("--fp16", is_flag=True,
              help="Also write fp16 copies (unet.fp16.onnx ...): fp32 inputs and outputs, the timestep embedding kept fp32.")
@click.option("--fp16-atol", type=click.FloatRange(min=0.0, min_open=True), default=1e-2,
              help="Largest allowed abs difference of the fp16 copies to eager fp32 PyTorch.")
@click.option("--int8", is_flag=True,
              help="Also write unet.int8.onnx: convolutions and weight products in int8 (static QDQ, per-channel weights), "
                   "calibrated on noisy MNIST training digits from --data-dir; for CPUs with fast int8 (AVX-512 VNNI, AVX-VNNI).")
@click.option("--int8-tol", type=click.FloatRange(min=0.0, min_open=True), default=0.05,
              help="Largest allowed relative RMS difference of the int8 copy's ε to the fp32 export's, on held-out noisy digits.")
@click.option("--data-dir", type=click.Path(path_type=Path), default=Path("data/mnist"), envvar="DDPM_DATA_DIR",
              help="Folder with the MNIST training files, for --int8 calibration. Env: DDPM_DATA_DIR.")
@click.option("--fused-step", is_flag=True,
              help="Also write unet.step.onnx: the U-Net plus the DDPM update (x, t, noise -> x_prev), so x can stay on the GPU.")
@click.option("--norm-groups", type=click.IntRange(min=1), default=None,
              help="labml state dicts only: GroupNorm groups in the blocks (not stored in a state dict). [default: 32]")
@click.option("--final-norm-groups", type=click.IntRange(min=1), default=None,
              help="labml state dicts only: GroupNorm groups before the output conv. [default: 8]")
def export_command(
    ckpt: Path, out_dir: Path | None, onnx_path: Path | None, torchscript_path: Path | None, no_torchscript: bool,
    opset: int, raw: bool, fixed_batch: int | None, atol: float, no_verify: bool, fp16: bool, fp16_atol: float,
    int8: bool, int8_tol: float, data_dir: Path, fused_step: bool, norm_groups: int | None, final_norm_groups: int | None,
) -> None:
    """Export a U-Net checkpoint to ONNX (dynamic batch, sampling settings in its metadata) and TorchScript.

    Both exports are checked against eager PyTorch on ONNX Runtime's CPU provider for batches 1
    and 3 at t = 0, T/2 and T-1 before anything is written.

    \b
    ddpm-export --ckpt runs/small/model.pt
    ddpm-export --ckpt labml_model.pt --out-dir exported --fixed-batch 16
    ddpm-export --ckpt model.pt --fp16 --fused-step --fixed-batch 1     # the GPU variants
    ddpm-export --ckpt model.pt --int8 --data-dir ../shared/data/mnist # a faster copy for CPUs
    """
    from .load import load_for_export

    out_dir = out_dir if out_dir is not None else ckpt.parent
    if out_dir.exists() and not out_dir.is_dir():
        raise DDPMError(f"--out-dir {out_dir} is not a directory")
    source = load_for_export(ckpt, "raw" if raw else "ema", norm_groups, final_norm_groups)
    if source.kind == "ddpm-mnist" and (norm_groups or final_norm_groups):
        raise click.UsageError("--norm-groups/--final-norm-groups apply to labml state dicts only; checkpoints record them")
    describe(ckpt, source, raw)
    calibration = held_out = None
    if int8:
        from .quantize import calibration_data

        calibration, held_out = calibration_data(source.info, data_dir)  # before any work: the data may be missing
    variants = [  # every ONNX variant asked for; the first is the plain dynamic ε graph
        Variant(graph, half, batch)
        for graph in (["eps", "fused-step"] if fused_step else ["eps"])
        for half in ([False, True] if fp16 else [False])
        for batch in ([None, fixed_batch] if fixed_batch is not None else [None])
    ]
    base = _output_path(onnx_path, out_dir, "unet.onnx")
    targets = {variant.name: variant.path(base) for variant in variants}
    targets.update({"onnx.int8": base.with_name(f"{base.stem}.int8{base.suffix}")} if int8 else {})
    targets.update({} if no_torchscript else {"torchscript": _output_path(torchscript_path, out_dir, "unet.ts.pt")})
    check_distinct_paths({f"--{name}" if name in ("onnx", "torchscript") else name: path for name, path in targets.items()},
                         {"--ckpt": ckpt})

    with StagedFiles() as staged:
        temp = {name: staged.stage(path) for name, path in targets.items()}
        timings = write_exports(source, variants, temp, opset, calibration)
        if not no_verify:
            int8_line, failures = check_int8(temp, targets, held_out, int8_tol) if int8 else ("", [])
            summary, more = verify_exports(source, variants, temp, targets, atol, fp16_atol)
            if failures + more:
                raise DDPMError(f"verification failed against eager PyTorch: {', '.join(failures + more)}; nothing written")
        staged.commit()

    for name, path in targets.items():
        click.echo(f"wrote {path} ({_size(path)}, {timings[name]:.1f} s)")
    if no_verify:
        click.echo("verification skipped (--no-verify)")
        return
    if int8:
        click.echo(int8_line)
    click.echo(f"verified against eager PyTorch fp32 (batches 1 and 3, t = 0, T/2, T-1): max abs diff {', '.join(summary)} "
               f"(atol {atol:g}{f', fp16 {fp16_atol:g}' if fp16 else ''})")


@dataclass(frozen=True)
class Variant:
    """One ONNX file: the ε graph or the fused step, fp32 or fp16, a dynamic or fixed batch."""

    graph: str
    fp16: bool
    batch: int | None

    @property
    def name(self) -> str:
        return "onnx" + f"{'.step' if self.graph == 'fused-step' else ''}{'.fp16' if self.fp16 else ''}{f'.b{self.batch}' if self.batch else ''}"

    def path(self, base: Path) -> Path:
        """--onnx PATH is written as given; the variants take their tags before its extension."""
        tags = self.name[len("onnx"):]
        return base.with_name(f"{base.stem}{tags}{base.suffix}") if tags else base


def describe(ckpt: Path, source, raw: bool) -> None:
    parameters = sum(p.numel() for p in source.model.parameters())
    what = (
        f"ddpm-mnist checkpoint, step {source.info.source['step']}, {'raw' if raw else 'EMA'} weights"
        if source.kind == "ddpm-mnist"
        else "labml state dict, data range [0,1], noise at every step"
    )
    click.echo(f"read {ckpt} ({what}): {parameters:,} parameters, widths {source.model.config.widths()}")


def write_exports(source, variants: list[Variant], temp: dict[str, Path], opset: int, calibration) -> dict[str, float]:
    """Every file into its temporary path (the int8 copy quantized from the plain ε graph); seconds per file."""
    from .exporter import onnx_model, save_torchscript, torchscript_module

    timings: dict[str, float] = {}
    for variant in variants:
        start = time.perf_counter()
        model = onnx_model(source, opset, fixed_batch=variant.batch, graph=variant.graph, fp16=variant.fp16)
        if variant.name == "onnx":
            plain = model
        temp[variant.name].write_bytes(model.SerializeToString())
        timings[variant.name] = time.perf_counter() - start
    if "onnx.int8" in temp:
        from .quantize import quantize

        start = time.perf_counter()
        temp["onnx.int8"].write_bytes(quantize(plain, source.info, calibration).SerializeToString())
        timings["onnx.int8"] = time.perf_counter() - start
    if "torchscript" in temp:
        start = time.perf_counter()
        save_torchscript(torchscript_module(source), source.info, temp["torchscript"])
        timings["torchscript"] = time.perf_counter() - start
    return timings


def check_int8(temp: dict[str, Path], targets: dict[str, Path], held_out, tolerance: float) -> tuple[str, list[str]]:
    """The int8 copy's ε against the fp32 export's on held-out noisy digits: the report line and any failure."""
    from .quantize import relative_error

    difference = relative_error(temp["onnx"].read_bytes(), temp["onnx.int8"].read_bytes(), held_out)
    line = f"int8 vs fp32 ε: relative RMS difference {difference:.3f} (tolerance {tolerance:g})"
    name = targets["onnx.int8"].name
    if difference != difference:
        return line, [f"{name}: its ε is NaN or infinite"]
    if not difference <= tolerance:
        return line, [f"{name}: ε differs from fp32 by {difference:.3f} (relative RMS) > --int8-tol {tolerance:g}"]
    return line, []


def verify_exports(source, variants: list[Variant], temp: dict[str, Path], targets: dict[str, Path], atol: float,
                   fp16_atol: float) -> tuple[list[str], list[str]]:
    """Each ONNX file (and the TorchScript file beside the plain one) against eager PyTorch: the
    largest differences, and the ones over their tolerance."""
    from .exporter import verify

    summary, failures = [], []
    for variant in variants:
        torchscript = temp.get("torchscript") if variant.name == "onnx" else None
        diffs = verify(source, temp[variant.name], torchscript, batches=(variant.batch,) if variant.batch else (1, 3),
                       graph=variant.graph)
        limit = fp16_atol if variant.fp16 else atol
        for kind, value in diffs.items():
            label = "torchscript" if kind == "torchscript" else targets[variant.name].name
            summary.append(f"{label} {value:.2e}")
            if value != value:  # nan: some output was not finite
                failures.append(f"{label}: an output (eager PyTorch's or the export's) is NaN or infinite")
            elif not value <= limit:
                failures.append(f"{label} {value:.2e} > {limit:g}")
    return summary, failures


def main() -> None:
    run_command(export_command, "ddpm-export")
