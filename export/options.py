"""``ddpm-export``'s options: the flags, in the order ``--help`` lists them, and :class:`ExportArgs`, what
they give the command."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import click

from ..core.console import FiniteFloatRange, OutputPath, with_options
from ..core.download import download_options
from .pipeline import DEFAULT_ATOL, DEFAULT_FP16_ATOL, DEFAULT_INT8_TOL, DEFAULT_OPSET

OPTIONS = [
    click.option(
        "--ckpt",
        type=click.Path(path_type=Path),
        required=True,
        help="A ddpm-train checkpoint, or a labml.ai U-Net state dict (torch.save(unet.state_dict())).",
    ),
    click.option(
        "--out-dir",
        type=OutputPath(folder=True),
        default=None,
        help="Folder for unet.onnx and unet.ts.pt. [default: the checkpoint's folder]",
    ),
    click.option(
        "--onnx", "onnx_path", type=OutputPath(), default=None, help="ONNX output path. [default: OUT_DIR/unet.onnx]"
    ),
    click.option(
        "--torchscript",
        "torchscript_path",
        type=OutputPath(),
        default=None,
        help="TorchScript output path. [default: OUT_DIR/unet.ts.pt]",
    ),
    click.option("--no-torchscript", is_flag=True, help="Write the ONNX file only."),
    click.option(
        "--opset",
        type=click.IntRange(18, 20),
        default=DEFAULT_OPSET,
        help="ONNX opset (18-20; 21+ lacks GroupNormalization in ONNX Runtime).",
    ),
    click.option("--raw", is_flag=True, help="Export the raw training weights instead of the EMA weights."),
    click.option(
        "--fixed-batch",
        type=click.IntRange(min=1),
        default=None,
        help="Also write a static-shape copy with this batch size (OUT_DIR/unet.bN.onnx), e.g. for CUDA graphs.",
    ),
    click.option(
        "--atol",
        type=FiniteFloatRange(min=0.0, min_open=True),
        default=DEFAULT_ATOL,
        help="Largest allowed abs difference to eager PyTorch; above it nothing is written.",
    ),
    click.option("--no-verify", is_flag=True, help="Skip comparing the exports with eager PyTorch."),
    click.option(
        "--fp16",
        is_flag=True,
        help="Also write fp16 copies (unet.fp16.onnx ...): fp32 inputs and outputs, the timestep embedding kept fp32.",
    ),
    click.option(
        "--fp16-atol",
        type=FiniteFloatRange(min=0.0, min_open=True),
        default=DEFAULT_FP16_ATOL,
        help="Largest allowed abs difference of the fp16 copies to eager fp32 PyTorch.",
    ),
    click.option(
        "--int8",
        is_flag=True,
        help="Also write unet.int8.onnx: convolutions and weight products in int8 (static QDQ, per-channel "
        "weights), calibrated on noisy MNIST training digits from --data-dir (a latent model: on their latents, "
        "and unet.decoder.int8.onnx too, within 2 grey levels of the fp32 decoder on average); for CPUs with "
        "fast int8 (AVX-512 VNNI, AVX-VNNI), where the runtime times it against fp32.",
    ),
    click.option(
        "--int8-tol",
        type=FiniteFloatRange(min=0.0, min_open=True),
        default=DEFAULT_INT8_TOL,
        help="Largest allowed relative RMS difference of the int8 copy's ε to the fp32 export's, on held-out "
        "noisy digits.",
    ),
    click.option(
        "--data-dir",
        type=click.Path(path_type=Path),
        default=Path("data/mnist"),
        envvar="DDPM_DATA_DIR",
        help="Folder with the MNIST training files, for --int8 calibration. Env: DDPM_DATA_DIR.",
    ),
    download_options,
    click.option(
        "--overwrite",
        is_flag=True,
        help="Replace output files that exist already (otherwise they are refused, as ddpm-train does).",
    ),
    click.option(
        "--fused-step",
        is_flag=True,
        help="Also write unet.step.onnx: the U-Net plus the DDPM update (x, t, noise -> x_prev), so x can stay on "
        "the GPU.",
    ),
    click.option(
        "--norm-groups",
        type=click.IntRange(min=1),
        default=None,
        help="labml state dicts only: GroupNorm groups in the blocks (not stored in a state dict). [default: 32]",
    ),
    click.option(
        "--final-norm-groups",
        type=click.IntRange(min=1),
        default=None,
        help="labml state dicts only: GroupNorm groups before the output conv. [default: 8]",
    ),
]


export_options = with_options(OPTIONS)  # every option of ``ddpm-export``, in ``--help`` order


@dataclass(frozen=True)
class ExportArgs:
    """What ``ddpm-export``'s options give."""

    ckpt: Path
    out_dir: Path | None
    onnx_path: Path | None
    torchscript_path: Path | None
    no_torchscript: bool
    opset: int
    raw: bool
    fixed_batch: int | None
    atol: float
    no_verify: bool
    fp16: bool
    fp16_atol: float
    int8: bool
    int8_tol: float
    data_dir: Path
    download: bool
    mirrors: tuple[str, ...]
    overwrite: bool
    fused_step: bool
    norm_groups: int | None
    final_norm_groups: int | None
