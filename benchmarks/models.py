"""The networks a benchmark times: the embedded (or a given) model and the labml network, with the
ONNX variants a row needs (int8, fp16, fixed batch, fused step) made on first use."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..core.errors import DDPMError
from ..core.metadata import ModelInfo
from ..core.variant import Variant
from ..runtime.decoder import decoder_path, read_decoder_file
from ..runtime.pipeline import default_model_path, embedded_model_path
from ..runtime.session import UNetSession


class SkipRow(Exception):
    """This row cannot run here; the message says why."""


@dataclass
class BenchModel:
    name: str
    onnx_path: Path
    info: ModelInfo
    weights: str
    flops_per_image: float | None
    weight_bytes: float | None
    torch_module: Any = None
    workdir: Path | None = None
    variants: dict[Variant, Path] = field(default_factory=dict)
    shipped: str | None = None  # the embedded model's name (choice.EMBEDDED) where the row times the package's file

    @property
    def embedded(self) -> bool:
        """Whether this is the package's embedded model (the one the targets are set for)."""
        try:
            return self.onnx_path.resolve() == default_model_path().resolve()
        except (DDPMError, OSError, RuntimeError):
            return False

    def shipped_int8(self) -> Path | None:
        """The package's int8 copy, when this row times an embedded model and the package ships one."""
        try:
            return embedded_model_path(self.shipped, "int8") if self.shipped else None
        except DDPMError:
            return None

    def variant(self, graph: str, precision: str, fixed_batch: int | None, echo: Callable[[str], None]) -> Path:
        """The ONNX file for a row: the model itself, its int8 copy, or an export of the PyTorch module
        made on first use."""
        key = Variant(precision, graph == "fused-step", fixed_batch)
        if key == Variant():
            return self.onnx_path
        if key not in self.variants:
            path = self.workdir / key.file_name(f"{self.name}.onnx")
            if precision == "int8" and fixed_batch is None and not key.fused_step and self.shipped_int8() is not None:
                self.variants[key] = self.shipped_int8()
            elif precision == "int8":
                self.variants[key] = quantize_for_timing(self.onnx_path, self.info, path, echo)
            elif self.torch_module is None:
                raise SkipRow("skipped: this variant is exported on the spot, which needs PyTorch and onnx")
            else:
                self.variants[key] = export_random(
                    self.torch_module, path, fixed_batch, echo, graph, precision == "fp16"
                )
        return self.variants[key]


def quantize_for_timing(source: Path, info: ModelInfo, path: Path, echo: Callable[[str], None]) -> Path:
    """The model's int8 copy as ``ddpm-export --int8`` makes it, calibrated on random inputs: the
    latency of int8 kernels does not depend on the ranges, so no MNIST files are needed."""
    try:
        import onnx

        from ..export.quantize import quantize
    except ImportError:
        raise SkipRow('skipped: int8 quantization needs onnx (pip install "ddpm-mnist[train]")') from None
    rng = np.random.default_rng(0)
    shape = (16, info.image_channels, info.image_size, info.image_size)
    feeds = [
        {
            "x": rng.standard_normal(shape).astype(np.float32),
            "t": rng.integers(0, 1000, 16).astype(np.int64),
            **({"y": rng.integers(0, info.num_classes + 1, 16).astype(np.int64)} if info.num_classes else {}),
        }
        for _ in range(4)
    ]
    start = time.perf_counter()
    path.write_bytes(quantize(onnx.load(source), info, feeds).SerializeToString())
    echo(f"quantized {path.name} in {time.perf_counter() - start:.0f} s")
    return path


def embedded(name: str) -> Path | None:
    """The package's embedded model ``name``, None where it ships none."""
    try:
        return embedded_model_path(name)
    except (DDPMError, KeyError):
        return None


EMBEDDED_BY_ROW = {
    "small": "pixel",
    "latent": "latent",
    "latent64": "latent64",
    "student": "latent-student",
}  # the embedded model each row times


def prepare_models(
    names: list[str],
    small_onnx: Path | None,
    labml_onnx: Path | None,
    workdir: Path,
    torch,
    echo: Callable[[str], None],
    latent_onnx: Path | None = None,
    student_onnx: Path | None = None,
    latent64_onnx: Path | None = None,
) -> tuple[list[BenchModel], list[str]]:
    """The networks named, in order: 'small' (the embedded pixel model or --onnx), 'latent' (the embedded
    latent model or --latent-onnx; its rows time the U-Net on the latent, its sampler rows the decoder too),
    'latent64' (the embedded latent model of 64x64 digits or --latent64-onnx, timed as 'latent' is),
    'student' (the embedded few-step student or --student-onnx; its sampler rows are consistency sampling)
    and 'labml'."""
    models, notes = [], []
    given_files = {"small": small_onnx, "latent": latent_onnx, "latent64": latent64_onnx, "student": student_onnx}
    for name in names:
        if name in given_files:
            given = given_files[name]
            path = given or embedded(EMBEDDED_BY_ROW[name])
            if path is None:
                notes.append(f"{name} skipped: the package ships no such model; give --{name}-onnx")
                continue
            info = UNetSession(path, provider="cpu").info
            if info.latent is not None:  # its decoder is checked now, not after the step rows are timed
                read_decoder_file(decoder_path(path, info), info, path)
            weights = "embedded (trained)" if given is None else f"{path.name}"
        else:
            path = labml_onnx
            info = None
            weights = "random (latency does not depend on the weights)"
        module = None if torch is None else random_module(torch, name, info)
        if path is None:
            if torch is None:
                notes.append("labml skipped: it needs --labml-onnx or PyTorch to export one")
                continue
            path = export_random(module, workdir / "labml.onnx", None, echo)
        if info is None:
            info = UNetSession(path, provider="cpu").info
        flops = weight_bytes = None
        if torch is not None:
            from ..train.unet import count_parameters, forward_flops

            flops = float(forward_flops(module, info.image_size))
            weight_bytes = 4.0 * count_parameters(module)
            if name != "labml" and given_files[name] is None:
                weights = "embedded (trained) in ONNX rows; random in PyTorch rows"
        shipped = EMBEDDED_BY_ROW[name] if name in given_files and given_files[name] is None else None
        models.append(BenchModel(name, path, info, weights, flops, weight_bytes, module, workdir, shipped=shipped))
    return models, notes


def random_module(torch, name: str, info: ModelInfo | None):
    """The PyTorch U-Net of a model, seeded random weights: latency does not depend on them."""
    from ..train.config import UNetConfig, preset
    from ..train.unet import UNet

    config = preset("labml") if name == "labml" else UNetConfig.from_dict(info.model_config)
    torch.manual_seed(0)
    return UNet(config).eval()


def export_random(
    module, path: Path, fixed_batch: int | None, echo: Callable[[str], None], graph: str = "eps", fp16: bool = False
) -> Path:
    """Export a PyTorch U-Net (with whatever weights it has) for timing."""
    from ..export.exporter import onnx_model
    from ..export.load import ExportSource
    from ..train.checkpoint import versions

    config = module.config
    info = ModelInfo(
        schedule={"kind": "linear", "timesteps": 1000, "beta_start": 1e-4, "beta_end": 0.02},
        image_size=32,
        image_channels=config.image_channels,
        data_range=(-1.0, 1.0),
        model_config=config.to_dict(),
        source={"kind": "benchmark", "weights": "random"},
        versions={"export": versions()},
    )
    start = time.perf_counter()
    model = onnx_model(ExportSource(module, info, "benchmark"), fixed_batch=fixed_batch, graph=graph, fp16=fp16)
    path.write_bytes(model.SerializeToString())
    echo(f"exported {path.name} in {time.perf_counter() - start:.0f} s")
    return path
