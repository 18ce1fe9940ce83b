"""Where ``ddpm-export`` writes: every output path decided and checked before any work (writable, none
another output or a file the export reads, none already there unless --overwrite)."""

from __future__ import annotations

import os
from pathlib import Path

from ..core.download import download_targets
from ..core.errors import DDPMError
from ..core.files import check_distinct_paths, output_target
from ..core.mnist import data_files
from ..core.variant import Variant
from ..runtime.decoder import int8_decoder_path
from ..runtime.installed import installed_inputs
from .options import ExportArgs
from .pipeline import INT8, PLAIN, ExportOutputs, requested_variants


def _output_path(explicit: Path | None, out_dir: Path, name: str) -> Path:
    return output_target(explicit if explicit is not None else out_dir / name, "output path")


def planned_outputs(args: ExportArgs) -> ExportOutputs:
    """The outputs the flags ask for, in --out-dir (by default the checkpoint's folder), checked; a file
    already there is refused unless --overwrite."""
    out_dir = args.out_dir if args.out_dir is not None else args.ckpt.parent
    if out_dir.exists() and not out_dir.is_dir():
        raise DDPMError(f"--out-dir {out_dir} is not a directory")
    variants = requested_variants(args.fp16, args.fused_step, args.fixed_batch, args.int8)
    outputs = output_paths(
        args.ckpt,
        out_dir,
        args.onnx_path,
        args.torchscript_path,
        args.no_torchscript,
        variants,
        args.data_dir if args.int8 else None,
        args.download,
    )
    if not args.overwrite and (existing := [path for path in outputs.paths() if os.path.lexists(path)]):
        raise DDPMError(
            f"{existing[0]} exists{f' (and {len(existing) - 1} more outputs)' if len(existing) > 1 else ''}; "
            "pass --overwrite to replace it, or choose another --out-dir or --onnx"
        )
    return outputs


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
    unet.decoder.ts.pt, and with an int8 U-Net unet.decoder.int8.onnx), checked as the other outputs are."""
    plain = outputs.onnx[PLAIN]
    decoder = plain.with_name(f"{plain.stem}.decoder{plain.suffix}")
    decoder_int8 = int8_decoder_path(decoder) if INT8 in outputs.onnx else None
    scripted = outputs.torchscript
    decoder_script = (
        None if scripted is None else scripted.with_name(scripted.name.replace(".ts.pt", "") + ".decoder.ts.pt")
    )
    named = {"decoder": decoder, "decoder TorchScript": decoder_script, "int8 decoder": decoder_int8}
    check_distinct_paths(
        {**named, **{path.name: path for path in outputs.paths()}}, {"--ckpt": ckpt, **installed_inputs()}
    )
    if not overwrite and (existing := [path for path in named.values() if path is not None and os.path.lexists(path)]):
        raise DDPMError(f"{existing[0]} exists; pass --overwrite to replace it, or choose another --out-dir or --onnx")
    return ExportOutputs(outputs.onnx, outputs.torchscript, decoder, decoder_script, decoder_int8)
