"""Export and verify in one call: every file is made under a temporary name, compared with eager
PyTorch, and given its own name only when all of them pass; on any failure nothing is written.

``ddpm-export`` and ``python -m ddpm.export.embed`` both go through :func:`export_and_verify`.
torch, onnx and the exporter are imported where they are used, so that ``ddpm-export --help``
stays fast.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from ..core.errors import DDPMError
from ..core.files import StagedFiles
from ..core.variant import DECODER_INT8_TOLERANCE, INT8_TOLERANCE, Variant

if TYPE_CHECKING:
    import numpy as np

    from .load import ExportSource

DEFAULT_OPSET = 18
DEFAULT_ATOL = 1e-4  # fp32 exports vs eager PyTorch: the ONNX contract's bound (measured ~2e-6)
DEFAULT_FP16_ATOL = 1e-2  # fp16 copies vs eager fp32 PyTorch
DEFAULT_INT8_TOL = INT8_TOLERANCE  # relative RMS of the int8 copy's ε to the fp32 export's, on held-out noisy digits
PLAIN, INT8 = Variant(), Variant("int8")


@dataclass(frozen=True)
class Tolerances:
    """The largest differences an export may show and still be written."""

    atol: float = DEFAULT_ATOL
    fp16_atol: float = DEFAULT_FP16_ATOL
    int8_tol: float = DEFAULT_INT8_TOL

    def limit(self, variant: Variant) -> float:
        return self.fp16_atol if variant.precision == "fp16" else self.atol


@dataclass(frozen=True)
class ExportOutputs:
    """Where each file goes, every path distinct: the ONNX copies in the order they are made (the
    plain copy first; an int8 copy is quantized from it), and the traced TorchScript file, if any."""

    onnx: dict[Variant, Path]
    torchscript: Path | None = None
    decoder: Path | None = None  # a latent model's decoder (ONNX), made first: the U-Net names it
    decoder_torchscript: Path | None = None
    decoder_int8: Path | None = None  # its int8 copy, beside it (with an int8 copy of the U-Net)

    def paths(self) -> list[Path]:
        decoders = (self.decoder, self.decoder_torchscript, self.decoder_int8)
        decoder = [path for path in decoders if path is not None]
        return [*decoder, *self.onnx.values(), *([self.torchscript] if self.torchscript is not None else [])]


@dataclass(frozen=True)
class Calibration:
    """Noisy training digits (or their latents) for the int8 copy: feeds for the quantizer, and other
    ones to judge it; a latent model's clean latents of both, for its decoder's copy."""

    feeds: list[dict]
    held_out: list[dict]
    latents: list[np.ndarray] = field(default_factory=list)
    held_out_latents: list[np.ndarray] = field(default_factory=list)


@dataclass(frozen=True)
class ExportReport:
    seconds: dict[Path, float]  # each file's final path → seconds it took to make, in the order made
    differences: dict[str, float] = field(default_factory=dict)  # max abs diff to eager fp32 by file name
    # ("torchscript" for the TorchScript file), in the order checked; empty when not verified
    int8_difference: float | None = None  # relative RMS of the int8 copy's ε to the fp32 export's
    decoder_int8_difference: float | None = None  # mean |image| difference of the int8 decoder, grey levels
    temporary: dict[Path, Path] = field(default_factory=dict)  # final path → temporary one, while a
    # caller's StagedFiles holds them (empty once export_and_verify has written them itself)


def requested_variants(fp16: bool, fused_step: bool, fixed_batch: int | None, int8: bool) -> list[Variant]:
    """Every ONNX copy these choices ask for, in the order made: the plain copy first, int8 last."""
    return [
        Variant("fp16" if half else "fp32", step, batch)
        for step in ([False, True] if fused_step else [False])
        for half in ([False, True] if fp16 else [False])
        for batch in ([None, fixed_batch] if fixed_batch is not None else [None])
    ] + ([INT8] if int8 else [])


def read_calibration(source: ExportSource, data_dir: Path) -> Calibration:
    """The int8 copy's calibration and check digits from the MNIST training files in ``data_dir``; for
    a latent model, encoded by its autoencoder."""
    from .quantize import calibration_data

    record = source.autoencoder
    if record is None:
        return Calibration(*calibration_data(source.info, data_dir))
    from ..train.latent import encoded_digits

    return Calibration(*calibration_data(source.info, data_dir, lambda images: encoded_digits(record, images)))


def export_and_verify(
    source: ExportSource,
    outputs: ExportOutputs,
    *,
    opset: int = DEFAULT_OPSET,
    tolerances: Tolerances = Tolerances(),
    verify: bool = True,
    calibration: Calibration | None = None,
    staged: StagedFiles | None = None,
) -> ExportReport:
    """Make every file of ``outputs`` and compare it with eager PyTorch (ONNX Runtime's CPU provider,
    batches 1 and 3 or the fixed batch, t = 0, T/2, T−1; the int8 copy against the fp32 export on
    held-out digits); past a tolerance, raise one DDPMError and write nothing.

    With ``staged`` the files join the caller's StagedFiles and appear when it commits, together
    with its own outputs; without it they are written here once all of them pass.
    """
    check_outputs(outputs, calibration)
    if staged is None:
        with StagedFiles() as own:
            report = export_and_verify(
                source, outputs, opset=opset, tolerances=tolerances, verify=verify, calibration=calibration, staged=own
            )
            own.commit()
        return replace(report, temporary={})
    temporary = {path: staged.stage(path) for path in outputs.paths()}
    staged_outputs = ExportOutputs(
        {variant: temporary[path] for variant, path in outputs.onnx.items()},
        *(temporary.get(path) for path in (outputs.torchscript, outputs.decoder, outputs.decoder_torchscript)),
        temporary.get(outputs.decoder_int8),
    )
    source, decoder_seconds = write_decoder(source, staged_outputs, outputs, opset, calibration)
    unet_seconds = write_files(source, staged_outputs, opset, calibration, tolerances)
    seconds = dict(zip(outputs.paths(), decoder_seconds + unet_seconds))
    if not verify:
        return ExportReport(seconds, temporary=temporary)
    names = {variant: path.name for variant, path in outputs.onnx.items()}
    int8_difference, failures = compare_int8(staged_outputs, names, calibration, tolerances.int8_tol)
    differences, more = compare_with_eager(source, staged_outputs, names, tolerances)
    decoder_int8 = None
    if source.decoder is not None:
        decoder_differences, decoder_failures = compare_decoder(source, staged_outputs, outputs, tolerances.atol)
        decoder_int8, int8_failures = compare_decoder_int8(source, staged_outputs, outputs, calibration)
        differences, more = {**decoder_differences, **differences}, decoder_failures + int8_failures + more
    if failures + more:
        raise DDPMError(f"verification failed against eager PyTorch: {', '.join(failures + more)}; nothing written")
    return ExportReport(seconds, differences, int8_difference, decoder_int8, temporary)


def write_decoder(
    source: ExportSource, staged: ExportOutputs, final: ExportOutputs, opset: int, calibration: Calibration | None
) -> tuple[ExportSource, list[float]]:
    """A latent model's decoder (ONNX, TorchScript and the int8 copy where asked), written before the
    U-Net, and the source whose metadata names the decoder by its final file name and SHA-256; the
    seconds each took."""
    if source.decoder is None:
        return source, []
    if final.decoder is None:
        raise DDPMError("a latent model exports with its decoder: name the decoder's output")
    from .exporter import decoder_onnx, save_decoder_torchscript

    start = time.perf_counter()
    data = decoder_onnx(source, opset).SerializeToString()
    staged.decoder.write_bytes(data)
    seconds = [time.perf_counter() - start]
    if staged.decoder_torchscript is not None:
        start = time.perf_counter()
        save_decoder_torchscript(source, staged.decoder_torchscript)
        seconds.append(time.perf_counter() - start)
    sha256 = hashlib.sha256(data).hexdigest()
    if staged.decoder_int8 is not None:
        import onnx

        from .quantize import quantize_decoder

        start = time.perf_counter()
        copy = quantize_decoder(onnx.load_from_string(data), sha256, calibration.latents)
        staged.decoder_int8.write_bytes(copy.SerializeToString())
        seconds.append(time.perf_counter() - start)
    latent = {**source.info.latent, "decoder_file": final.decoder.name, "decoder_sha256": sha256}
    return replace(source, info=replace(source.info, latent=latent)), seconds


def compare_decoder(
    source: ExportSource, staged: ExportOutputs, final: ExportOutputs, atol: float
) -> tuple[dict[str, float], list[str]]:
    """The decoder's ONNX (and TorchScript) file against eager PyTorch on random latents, batches 1 and 3."""
    from .exporter import verify_decoder

    differences, failures = {}, []
    found = verify_decoder(source, staged.decoder, staged.decoder_torchscript)
    for kind, value in found.items():
        label = final.decoder.name if kind == "onnx" else final.decoder_torchscript.name
        differences[label] = value
        if not value <= atol:
            failures.append(
                f"{label}: an output is NaN or infinite" if value != value else f"{label} {value:.2e} > {atol:g}"
            )
    return differences, failures


def compare_decoder_int8(
    source: ExportSource, staged: ExportOutputs, final: ExportOutputs, calibration: Calibration | None
) -> tuple[float | None, list[str]]:
    """The int8 decoder's images against the fp32 decoder's on held-out latents: the mean difference in
    grey levels (None without an int8 decoder) and any failure."""
    if staged.decoder_int8 is None:
        return None, []
    from .quantize import decoder_difference

    fp32, int8 = staged.decoder.read_bytes(), staged.decoder_int8.read_bytes()
    difference = decoder_difference(fp32, int8, calibration.held_out_latents, source.decoder_info.data_range)
    name = final.decoder_int8.name
    if difference != difference:
        return difference, [f"{name}: its images are NaN or infinite"]
    if not difference <= DECODER_INT8_TOLERANCE:
        limit = DECODER_INT8_TOLERANCE
        return difference, [f"{name}: images differ from fp32's by {difference:.2f} grey levels > {limit:g}"]
    return difference, []


def check_outputs(outputs: ExportOutputs, calibration: Calibration | None) -> None:
    """Refuse, before any work, what cannot be made: the plain copy must come first (the TorchScript
    file is checked beside it, the int8 copy quantized from it), and the only int8 copy is the plain one's."""
    variants = list(outputs.onnx)
    if variants[:1] != [PLAIN]:
        raise DDPMError("an export starts with the plain copy (fp32, ε graph, dynamic batch)")
    if any(variant.precision == "int8" and variant != INT8 for variant in variants):
        raise DDPMError("int8 copies are made of the plain fp32 ε graph with a dynamic batch")
    if (INT8 in outputs.onnx or outputs.decoder_int8 is not None) and calibration is None:
        raise DDPMError("an int8 copy needs calibration digits (read_calibration)")
    if outputs.decoder_int8 is not None and not calibration.latents:
        raise DDPMError("an int8 decoder needs calibration latents (read_calibration of a latent model)")


def write_files(
    source: ExportSource,
    outputs: ExportOutputs,
    opset: int,
    calibration: Calibration | None,
    tolerances: Tolerances = Tolerances(),
) -> list[float]:
    """Every file of ``outputs`` written; the seconds each took, in the order of ExportOutputs.paths()."""
    from .exporter import onnx_model, save_torchscript, torchscript_module

    seconds, plain = [], None  # plain: the plain copy's graph, which the int8 copy is quantized from
    for variant, path in outputs.onnx.items():
        start = time.perf_counter()
        if variant == INT8:
            from .quantize import quantize_within

            model = quantize_within(plain, source.info, calibration.feeds, calibration.held_out, tolerances.int8_tol)
        else:
            model = onnx_model(
                source, opset, fixed_batch=variant.fixed_batch, graph=variant.graph, fp16=variant.precision == "fp16"
            )
        plain = model if variant == PLAIN else plain
        path.write_bytes(model.SerializeToString())
        seconds.append(time.perf_counter() - start)
    if outputs.torchscript is not None:
        start = time.perf_counter()
        save_torchscript(torchscript_module(source), source.info, outputs.torchscript)
        seconds.append(time.perf_counter() - start)
    return seconds


def compare_int8(
    outputs: ExportOutputs, names: dict[Variant, str], calibration: Calibration | None, tolerance: float
) -> tuple[float | None, list[str]]:
    """The int8 copy's ε against the fp32 export's on held-out noisy digits: the relative RMS
    difference (None without an int8 copy) and any failure."""
    if INT8 not in outputs.onnx:
        return None, []
    from .quantize import relative_error

    difference = relative_error(outputs.onnx[PLAIN].read_bytes(), outputs.onnx[INT8].read_bytes(), calibration.held_out)
    if difference != difference:
        return difference, [f"{names[INT8]}: its ε is NaN or infinite"]
    if not difference <= tolerance:
        return difference, [
            f"{names[INT8]}: ε differs from fp32 by {difference:.3f} (relative RMS) > --int8-tol {tolerance:g}"
        ]
    return difference, []


def compare_with_eager(
    source: ExportSource, outputs: ExportOutputs, names: dict[Variant, str], tolerances: Tolerances
) -> tuple[dict[str, float], list[str]]:
    """Each float ONNX copy (and the TorchScript file, beside the plain copy) against eager PyTorch:
    the largest differences by file name, and the ones past their tolerance."""
    from .exporter import verify

    differences, failures = {}, []
    for variant, path in outputs.onnx.items():
        if variant.precision == "int8":
            continue  # judged against the fp32 export by compare_int8
        torchscript = outputs.torchscript if variant == PLAIN else None
        batches = (variant.fixed_batch,) if variant.fixed_batch else (1, 3)
        for kind, value in verify(source, path, torchscript, batches=batches, graph=variant.graph).items():
            label = "torchscript" if kind == "torchscript" else names[variant]
            differences[label] = value
            if value != value:  # nan: some output was not finite
                failures.append(f"{label}: an output (eager PyTorch's or the export's) is NaN or infinite")
            elif not value <= tolerances.limit(variant):
                failures.append(f"{label} {value:.2e} > {tolerances.limit(variant):g}")
    return differences, failures
