"""Step timing: one sampling step (a network call plus the DDPM update, in the implementation's own
arrays) per implementation, provider and batch size; median, min and max after warm-up."""

from __future__ import annotations

import copy
import statistics
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ..core.errors import DDPMError
from ..core.metadata import ModelInfo
from ..core.samplers import AncestralSampler
from ..runtime.openvino_session import OpenVINOSession
from ..runtime.session import BoundEps, BoundStep, UNetSession
from .models import BenchModel, SkipRow

IMPLEMENTATIONS = (
    "eager",
    "torchscript",
    "ort",
    "ort-int8",
    "ov",
    "ov-bf16",
    "ov-int8",
    "ort-iobinding",
    "ort-cudagraph",
    "ort-fused",
    "ort-fused-cudagraph",
    "ort-fp16",
    "ort-fp16-fused-cudagraph",
    "tensorrt",
)
# The ONNX variant each ONNX Runtime row runs: (graph, precision, fixed batch), and the engine
# (how each step reaches ONNX Runtime: "plain" or "iobinding", as ddpm-run --engine).
# "fused" graphs take (x, t, noise) and return x_{t-1}; x stays in device buffers between steps.
ORT_VARIANTS = {
    "ort": ("eps", "fp32", False, "plain"),
    "ort-int8": ("eps", "int8", False, "plain"),
    "ort-iobinding": ("eps", "fp32", False, "iobinding"),
    "ort-cudagraph": ("eps", "fp32", True, "iobinding"),
    "ort-fused": ("fused-step", "fp32", False, "iobinding"),
    "ort-fused-cudagraph": ("fused-step", "fp32", True, "iobinding"),
    "ort-fp16": ("eps", "fp16", False, "iobinding"),
    "ort-fp16-fused-cudagraph": ("fused-step", "fp16", True, "iobinding"),
    "tensorrt": ("eps", "fp32", False, "iobinding"),
}
# OpenVINO rows (CPU): the ONNX copy each runs, and the inference precision of its float layers.
OPENVINO_VARIANTS = {"ov": ("fp32", "fp32"), "ov-bf16": ("fp32", "bf16"), "ov-int8": ("int8", "fp32")}
CUDA_ONLY = {"ort-cudagraph", "ort-fused-cudagraph", "ort-fp16", "ort-fp16-fused-cudagraph", "tensorrt"}
CPU_ONLY = {"ort-int8", *OPENVINO_VARIANTS}  # QDQ int8 kernels are the CPU provider's; OpenVINO runs here on the CPU
TORCH_IMPLEMENTATIONS = ("eager", "torchscript")
SETTLE_SECONDS = 1.0


@dataclass
class Row:
    """One line of the table: the step timing here, the per-sample figures from loop.py and report.fill_rates."""

    model: str
    weights: str
    implementation: str
    provider: str
    batch: int
    step_s_median: float | None = None
    step_s_min: float | None = None
    step_s_max: float | None = None
    steps_timed: int = 0
    per_sample_s: float | None = None
    per_sample_method: str = ""
    speedup_vs_seed: float | None = None
    achieved_gflops: float | None = None
    fraction_of_limit: float | None = None
    note: str = ""


def settle() -> None:
    """Let the previous row's thread pools stop spinning (OpenMP and ONNX Runtime workers busy-wait
    for a while after each call; on a 2-core machine they would steal the next row's cores)."""
    time.sleep(SETTLE_SECONDS)


def time_steps(step: Callable[[int], None], warmup: int, repeats: int) -> list[float]:
    settle()
    for i in range(warmup):
        step(i)
    times = []
    for i in range(repeats):
        start = time.perf_counter()
        step(warmup + i)
        times.append(time.perf_counter() - start)
    return times


def ort_step(session: UNetSession | OpenVINOSession, batch: int, engine: str) -> Callable[[int], None]:
    """One sampling step through ONNX Runtime (or OpenVINO): ε from the session, then the NumPy update."""
    info = session.info
    sampler = AncestralSampler(info.make_schedule(), variance=info.variance, noise_at_last_step=info.noise_at_last_step)
    shape = (batch, info.image_channels, info.image_size, info.image_size)
    rng = np.random.default_rng(0)
    state = {"x": rng.standard_normal(shape, dtype=np.float32)}
    noise = rng.standard_normal(shape, dtype=np.float32)
    eps_fn = BoundEps(session, batch) if engine == "iobinding" else session.eps

    def step(i: int) -> None:
        position = i % len(sampler)
        t = np.full(batch, sampler.model_timesteps[position], dtype=np.int64)
        eps = eps_fn(state["x"], t)
        state["x"] = sampler.step(state["x"], position, eps, noise if sampler.needs_noise(position) else None)

    return step


def ort_fused_step(session: UNetSession, batch: int) -> Callable[[int], None]:
    """One sampling step through a fused-step graph: t and the noise go in, x stays in device buffers."""
    info = session.info
    shape = (batch, info.image_channels, info.image_size, info.image_size)
    rng = np.random.default_rng(0)
    stepper = BoundStep(session, rng.standard_normal(shape, dtype=np.float32))
    noise = rng.standard_normal(shape, dtype=np.float32)
    timesteps = info.make_schedule().timesteps

    def step(i: int) -> None:
        stepper(np.full(batch, timesteps - 1 - i % timesteps, dtype=np.int64), noise)

    return step


def torch_step(torch, module, info: ModelInfo, batch: int, device: str, scripted: bool) -> Callable[[int], None]:
    """One sampling step in PyTorch: ε from the module, then the sampler's update (its factors) on torch
    tensors on ``device``."""
    sampler = AncestralSampler(info.make_schedule(), variance=info.variance, noise_at_last_step=info.noise_at_last_step)
    factors = sampler.coefficients()
    timesteps, mean_scale, eps_scale, sigma = (
        factors[k].tolist() for k in ("timesteps", "mean_scale", "eps_scale", "sigma")
    )
    # Module.to moves in place, and the ONNX rows export the CPU original: a GPU row runs a copy.
    model = module if device == "cpu" else copy.deepcopy(module).to(device)
    shape = (batch, info.image_channels, info.image_size, info.image_size)
    x = torch.randn(shape, device=device)
    if scripted:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = torch.jit.trace(model, (x, torch.zeros(batch, dtype=torch.long, device=device)))
    state = {"x": x}
    noise = torch.randn(shape, device=device)

    def step(i: int) -> None:
        p = i % len(timesteps)
        with torch.no_grad():
            eps = model(state["x"], torch.full((batch,), timesteps[p], dtype=torch.long, device=device))
            mean = mean_scale[p] * (state["x"] - eps_scale[p] * eps)  # x_{t−1} = mean_scale·(x_t − eps_scale·ε) + σ·z
            state["x"] = mean + sigma[p] * noise if sigma[p] > 0.0 else mean
        if device == "cuda":
            torch.cuda.synchronize()

    return step


def make_step(
    model: BenchModel,
    implementation: str,
    provider: str,
    batch: int,
    threads: int,
    torch,
    echo: Callable[[str], None] = lambda message: None,
) -> Callable[[int], None]:
    if implementation in TORCH_IMPLEMENTATIONS:
        if torch is None:
            raise SkipRow('skipped: PyTorch is not installed (pip install "ddpm-mnist[train]")')
        if provider == "cuda" and not torch.cuda.is_available():
            raise SkipRow("skipped: PyTorch sees no CUDA device")
        return torch_step(torch, model.torch_module, model.info, batch, provider, implementation == "torchscript")
    if implementation in OPENVINO_VARIANTS:
        copy_precision, inference = OPENVINO_VARIANTS[implementation]
        try:
            session = OpenVINOSession(
                model.variant("eps", copy_precision, None, echo), precision=inference, threads=threads
            )
        except DDPMError as exc:
            raise SkipRow(f"skipped: {exc}") from None
        return ort_step(session, batch, "plain")
    graph, precision, graphed, engine = ORT_VARIANTS[implementation]
    session_provider = (
        "tensorrt" if implementation == "tensorrt" else provider
    )  # TensorRT rows run on the "cuda" device
    try:
        path = model.variant(graph, precision, batch if graphed else None, echo)
        session = UNetSession(
            path, provider=session_provider, threads=threads if provider == "cpu" else None, cuda_graph=graphed
        )
    except DDPMError as exc:
        raise SkipRow(f"skipped: {exc}") from None
    if graph == "fused-step":
        return ort_fused_step(session, batch)
    return ort_step(session, batch, engine)


def time_model(
    model: BenchModel,
    implementations: list[str],
    providers: list[str],
    batches: dict[str, list[int]],
    warmup: int,
    repeats: int,
    threads: int,
    torch,
    echo: Callable[[str], None],
) -> tuple[list[Row], list[str]]:
    """A row per provider, implementation (those the provider runs) and batch; one that cannot run
    here stays in the table untimed, its reason in the row and in the notes."""
    rows, notes = [], []
    for provider in providers:
        for implementation in implementations:
            if (implementation in CUDA_ONLY and provider != "cuda") or (
                implementation in CPU_ONLY and provider != "cpu"
            ):
                continue
            for batch in batches[provider]:
                row = Row(model.name, model.weights, implementation, provider, batch)
                rows.append(row)
                try:
                    step = make_step(model, implementation, provider, batch, threads, torch, echo)
                except SkipRow as skip:
                    row.note = str(skip)
                    notes.append(f"{model.name} {implementation} {provider} b{batch}: {skip}")
                    continue
                times = time_steps(step, warmup, repeats)
                row.step_s_median, row.step_s_min, row.step_s_max = statistics.median(times), min(times), max(times)
                row.steps_timed = repeats
                echo(
                    f"{model.name:6s} {implementation:14s} {provider:4s} batch {batch:4d}: "
                    f"{row.step_s_median * 1e3:9.2f} ms per step"
                )
    return rows, notes
