"""U-Net → ONNX (dynamo exporter, metadata attached) and → TorchScript (tracing), and their verification."""

from __future__ import annotations

import contextlib
import io
import json
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch

from ddpm.runtime.errors import DDPMError
from ddpm.runtime.metadata import ModelInfo

from .load import ExportSource

OPSETS = (18, 19, 20)
TORCHSCRIPT_METADATA = "ddpm_metadata.json"


@contextlib.contextmanager
def _quiet():
    """The exporters print progress and warn about deprecations; keep the command's output clean."""
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        yield


def example_inputs(info: ModelInfo, batch: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, info.image_channels, info.image_size, info.image_size, generator=generator)
    t = torch.randint(0, info.make_schedule().timesteps, (batch,), generator=generator)
    return x, t


def onnx_model(source: ExportSource, opset: int = 18, fixed_batch: int | None = None) -> onnx.ModelProto:
    """The U-Net as an ONNX graph: x float32 [B,C,H,W], t int64 [B] → eps [B,C,H,W], B dynamic unless fixed."""
    if opset not in OPSETS:
        raise DDPMError(f"opset {opset} is not supported; use one of {OPSETS}")
    info = replace(source.info, fixed_batch=fixed_batch)
    # A batch of 1 would be specialised to a constant, so the dynamic export traces with 2.
    x, t = example_inputs(info, fixed_batch or 2)
    dynamic_shapes = None
    if fixed_batch is None:
        batch = torch.export.Dim("batch", min=1)
        dynamic_shapes = {"x": {0: batch}, "t": {0: batch}}
    try:
        with _quiet(), torch.no_grad():
            program = torch.onnx.export(
                source.model, (x, t), None, dynamo=True, external_data=False, opset_version=opset,
                input_names=["x", "t"], output_names=["eps"], dynamic_shapes=dynamic_shapes, verbose=False,
            )
    except Exception as exc:
        raise DDPMError(f"ONNX export failed: {str(exc).strip().splitlines()[0][:200]}") from None
    model = program.model_proto
    model.producer_name = "ddpm-mnist"
    model.doc_string = "DDPM epsilon-prediction U-Net; sampling settings in metadata_props (ddpm.*)"
    del model.metadata_props[:]
    for key, value in info.to_metadata().items():
        model.metadata_props.add(key=key, value=value)
    onnx.checker.check_model(model)
    return model


def torchscript_module(source: ExportSource) -> torch.jit.ScriptModule:
    """The U-Net traced at batch 2; sizes are traced symbolically, so other batches work."""
    with _quiet(), torch.no_grad():
        return torch.jit.trace(source.model, example_inputs(source.info, 2))


def save_torchscript(module: torch.jit.ScriptModule, info: ModelInfo, path: Path) -> None:
    with _quiet():
        torch.jit.save(module, str(path), _extra_files={TORCHSCRIPT_METADATA: json.dumps(info.to_metadata())})


def verify(
    source: ExportSource,
    onnx_path: Path | None,
    torchscript_path: Path | None,
    batches: tuple[int, ...] = (1, 3),
) -> dict[str, float]:
    """Max abs difference of ONNX Runtime (CPU) and TorchScript against eager PyTorch.

    Fixed random inputs for each batch size and for t = 0, T/2 and T−1.
    """
    timesteps = source.info.make_schedule().timesteps
    session = None
    if onnx_path is not None:
        options = ort.SessionOptions()
        options.log_severity_level = 3
        session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    scripted = None
    if torchscript_path is not None:
        with _quiet():
            scripted = torch.jit.load(str(torchscript_path), map_location="cpu")
    diffs = {"onnx": 0.0, "torchscript": 0.0}
    for batch in batches:
        x, _ = example_inputs(source.info, batch, seed=batch)
        for step in (0, timesteps // 2, timesteps - 1):
            t = torch.full((batch,), step, dtype=torch.long)
            with torch.no_grad():
                reference = source.model(x, t).numpy()
                if scripted is not None:
                    diffs["torchscript"] = max(diffs["torchscript"], float(np.abs(scripted(x, t).numpy() - reference).max()))
            if session is not None:
                eps = session.run(["eps"], {"x": x.numpy(), "t": t.numpy()})[0]
                diffs["onnx"] = max(diffs["onnx"], float(np.abs(eps - reference).max()))
    return {name: value for name, value in diffs.items() if (onnx_path if name == "onnx" else torchscript_path) is not None}
