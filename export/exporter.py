"""U-Net → ONNX (dynamo exporter, metadata attached) and → TorchScript (tracing), and their verification."""

from __future__ import annotations

import contextlib
import copy
import io
import json
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from ..core.errors import DDPMError, summary
from ..core.metadata import ModelInfo
from ..core.samplers import AncestralSampler
from ..runtime.session import cpu_session
from .load import ExportSource

OPSETS = (18, 19, 20)
TORCHSCRIPT_METADATA = "ddpm_metadata.json"


@contextlib.contextmanager
def _quiet():
    """The exporters print progress and warn about deprecations; keep the command's output clean."""
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        yield


def example_inputs(info: ModelInfo, batch: int, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """(x, t) for the network, and y (classes and the "no class" index) for a conditional one."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, info.image_channels, info.image_size, info.image_size, generator=generator)
    t = torch.randint(0, info.make_schedule().timesteps, (batch,), generator=generator)
    if not info.num_classes:
        return x, t
    return x, t, torch.randint(0, info.num_classes + 1, (batch,), generator=generator)


class HalfPrecisionUNet(nn.Module):
    """The U-Net in fp16 with fp32 inputs and output; the timestep embedding (Sin/Cos of t up to
    T−1, and its MLP) and the class embedding stay fp32, where fp16 would lose the phase of the
    high frequencies."""

    FP32_CHILDREN = ("time_emb", "class_emb")

    def __init__(self, unet: nn.Module) -> None:
        super().__init__()
        self.unet = copy.deepcopy(unet)
        for name, child in self.unet.named_children():
            if name not in self.FP32_CHILDREN:
                child.half()
        self.config = unet.config

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        return self.unet(x.half(), t, y).float()


class FusedStep(nn.Module):
    """One whole ancestral step in one graph: x_{t−1} = a_t·(x_t − b_t·ε_θ(x_t, t)) + σ_t·z.

    a, b and σ are T-long tables indexed by t, built by the runtime's sampler from the model's
    schedule and variance rule, so the graph and the NumPy loop apply the same update.
    """

    def __init__(self, eps_model: nn.Module, info: ModelInfo) -> None:
        super().__init__()
        self.eps_model = eps_model
        sampler = AncestralSampler(
            info.make_schedule(), variance=info.variance, noise_at_last_step=info.noise_at_last_step
        )
        factors = sampler.coefficients()
        for name in ("mean_scale", "eps_scale", "sigma"):
            table = np.zeros(len(factors["timesteps"]), dtype=np.float32)
            table[factors["timesteps"]] = factors[name]
            self.register_buffer(name, torch.from_numpy(table))

    def forward(self, x: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        eps = self.eps_model(x, t)
        a, b, sigma = (table[t][:, None, None, None] for table in (self.mean_scale, self.eps_scale, self.sigma))
        return a * (x - b * eps) + sigma * noise


def export_module(source: ExportSource, graph: str = "eps", fp16: bool = False) -> nn.Module:
    module: nn.Module = HalfPrecisionUNet(source.model) if fp16 else source.model
    if graph == "fused-step":
        module = FusedStep(module, source.info)
    return module.eval()


def onnx_model(
    source: ExportSource, opset: int = 18, fixed_batch: int | None = None, graph: str = "eps", fp16: bool = False
) -> onnx.ModelProto:
    """The U-Net as an ONNX graph, B dynamic unless fixed.

    graph "eps": x float32 [B,C,H,W], t int64 [B] → eps; "fused-step": x, t, noise → x_prev.
    """
    if opset not in OPSETS:
        raise DDPMError(f"opset {opset} is not supported; use one of {OPSETS}")
    if graph == "fused-step" and source.info.num_classes:
        raise DDPMError("a fused-step graph is for unconditional models: guidance combines two network calls per step")
    info = replace(source.info, fixed_batch=fixed_batch, graph=graph, precision="fp16" if fp16 else "fp32")
    inputs, outputs = info.io_contract()
    # A batch of 1 would be specialised to a constant, so the dynamic export traces with 2.
    args = example_inputs(info, fixed_batch or 2)
    if graph == "fused-step":
        args = (*args, torch.randn_like(args[0]))
    dynamic_shapes = None
    if fixed_batch is None:
        batch = torch.export.Dim("batch", min=1)
        dynamic_shapes = {name: {0: batch} for name in inputs}
    try:
        with _quiet(), torch.no_grad():
            program = torch.onnx.export(
                export_module(source, graph, fp16),
                args,
                None,
                dynamo=True,
                external_data=False,
                opset_version=opset,
                input_names=list(inputs),
                output_names=list(outputs),
                dynamic_shapes=dynamic_shapes,
                verbose=False,
            )
    except Exception as exc:
        raise DDPMError(f"ONNX export failed: {summary(exc)}") from None
    model = program.model_proto
    model.producer_name = "ddpm-mnist"
    model.doc_string = f"DDPM U-Net ({graph} graph, {info.precision}); sampling settings in metadata_props (ddpm.*)"
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


def load_torchscript(path: Path | None) -> torch.jit.ScriptModule | None:
    """A TorchScript file loaded for comparison (None for no file)."""
    if path is None:
        return None
    with _quiet():
        return torch.jit.load(str(path), map_location="cpu")


def worst_difference(current: float, got: np.ndarray, expected: np.ndarray) -> float:
    """The larger of ``current`` and max |got − expected|; nan once anything is non-finite (a plain
    max() would drop a nan and pass all-NaN weights as "difference 0")."""
    if not (np.isfinite(current) and np.isfinite(got).all() and np.isfinite(expected).all()):
        return float("nan")
    return max(current, float(np.abs(got - expected).max()))


def verify(
    source: ExportSource,
    onnx_path: Path | None,
    torchscript_path: Path | None,
    batches: tuple[int, ...] = (1, 3),
    graph: str = "eps",
) -> dict[str, float]:
    """Max abs difference of ONNX Runtime (CPU) and TorchScript against eager PyTorch in fp32
    (nan where any output, eager ones included, is not finite).

    Fixed random inputs for each batch size and for t = 0, T/2 and T−1. A fused-step graph is
    compared with eager ε followed by the runtime's NumPy update.
    """
    schedule = source.info.make_schedule()
    timesteps = schedule.timesteps
    sampler = AncestralSampler(
        schedule, variance=source.info.variance, noise_at_last_step=source.info.noise_at_last_step
    )
    session = None
    if onnx_path is not None:
        session = cpu_session(onnx_path)
    scripted = load_torchscript(torchscript_path)
    diffs = {"onnx": 0.0, "torchscript": 0.0}
    for batch in batches:
        x, _, *labels = example_inputs(source.info, batch, seed=batch)
        noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(100 + batch))
        for step in (0, timesteps // 2, timesteps - 1):
            t = torch.full((batch,), step, dtype=torch.long)
            feeds = {"x": x.numpy(), "t": t.numpy(), **({"y": labels[0].numpy()} if labels else {})}
            with torch.no_grad():
                reference = source.model(x, t, *labels).numpy()
                if scripted is not None:
                    traced = scripted(x, t, *labels).numpy()
                    diffs["torchscript"] = worst_difference(diffs["torchscript"], traced, reference)
            if session is None:
                continue
            if graph == "fused-step":
                position = timesteps - 1 - step
                expected = sampler.step(x.numpy(), position, reference, noise.numpy())
                got = session.run(["x_prev"], {**feeds, "noise": noise.numpy()})[0]
            else:
                expected = reference
                got = session.run(["eps"], feeds)[0]
            diffs["onnx"] = worst_difference(diffs["onnx"], got, expected)
    return {
        name: value for name, value in diffs.items() if (onnx_path if name == "onnx" else torchscript_path) is not None
    }


# -- a latent model's decoder ------------------------------------------------------------------------


def example_latents(source: ExportSource, batch: int, seed: int = 0) -> torch.Tensor:
    """Scaled latents of unit variance, as the U-Net samples them: z [B, L, h, w]."""
    info = source.decoder_info
    shape = (batch, info.latent_channels, info.latent_size, info.latent_size)
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def decoder_onnx(source: ExportSource, opset: int = 18) -> onnx.ModelProto:
    """The decoder as an ONNX graph: z float32 [B, L, h, w] (scaled) → image float32 [B, C, H, W], B dynamic."""
    if opset not in OPSETS:
        raise DDPMError(f"opset {opset} is not supported; use one of {OPSETS}")
    batch = torch.export.Dim("batch", min=1)
    try:
        with _quiet(), torch.no_grad():
            program = torch.onnx.export(
                source.decoder,
                (example_latents(source, 2),),
                None,
                dynamo=True,
                external_data=False,
                opset_version=opset,
                input_names=["z"],
                output_names=["image"],
                dynamic_shapes={"z": {0: batch}},
                verbose=False,
            )
    except Exception as exc:
        raise DDPMError(f"ONNX export of the decoder failed: {summary(exc)}") from None
    model = program.model_proto
    model.producer_name = "ddpm-mnist"
    model.doc_string = "a latent DDPM's decoder: scaled latents to images; settings in metadata_props (ddpm.*)"
    del model.metadata_props[:]
    for key, value in source.decoder_info.to_metadata().items():
        model.metadata_props.add(key=key, value=value)
    onnx.checker.check_model(model)
    return model


def save_decoder_torchscript(source: ExportSource, path: Path) -> None:
    with _quiet(), torch.no_grad():
        module = torch.jit.trace(source.decoder, (example_latents(source, 2),))
        torch.jit.save(
            module, str(path), _extra_files={TORCHSCRIPT_METADATA: json.dumps(source.decoder_info.to_metadata())}
        )


def verify_decoder(source: ExportSource, onnx_path: Path, torchscript_path: Path | None) -> dict[str, float]:
    """Max abs difference of the decoder's ONNX Runtime (CPU) and TorchScript outputs against eager PyTorch
    on random latents, batches 1 and 3 (nan where an output is not finite)."""
    session = cpu_session(onnx_path)
    scripted = load_torchscript(torchscript_path)
    diffs = {"onnx": 0.0, "torchscript": 0.0}
    for batch in (1, 3):
        z = example_latents(source, batch, seed=batch)
        with torch.no_grad():
            reference = source.decoder(z).numpy()
            if scripted is not None:
                diffs["torchscript"] = worst_difference(diffs["torchscript"], scripted(z).numpy(), reference)
        diffs["onnx"] = worst_difference(diffs["onnx"], session.run(["image"], {"z": z.numpy()})[0], reference)
    return diffs if scripted is not None else {"onnx": diffs["onnx"]}
