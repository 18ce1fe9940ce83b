"""``ddpm-bench``: per-sample latency of the sampling loop across implementations, providers and batch sizes.

One process measures every row side by side, with the machine's own limit beside them:

- implementations: PyTorch eager, TorchScript (traced), ONNX Runtime ``run``, ONNX Runtime with
  IOBinding, IOBinding + CUDA graph (fixed-batch model, CUDA only), the fused-step graph (U-Net
  and update in one graph, x kept on the device; with and without a CUDA graph), fp16 (CUDA
  only; alone and fused with a CUDA graph), TensorRT (when it starts), int8 (CPU only: the
  model's QDQ copy as ``ddpm-export --int8`` makes it); variants other than the model file itself
  are exported on the spot from the PyTorch module;
- a *step* is one network call plus the DDPM update, in the implementation's own arrays;
- per row: median, min and max step time after warm-up; per-sample latency = step time x T / B
  ("extrapolated"), or the wall time of a whole T-step ``ddpm-run`` loop ÷ B ("measured");
- the limit: FLOPs per image per step (PyTorch's counter) against the sgemm throughput measured in
  the same run (CPU), or against measured fp32 matmul throughput and copy bandwidth (GPU).
"""

from __future__ import annotations

import copy
import json
import os
import platform
import re
import statistics
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import click
import numpy as np

from ..core.console import OutputPath, run_command
from ..runtime.cpu_batch import cpu_name
from ..core.errors import DDPMError
from ..core.files import StagedFiles, check_writable_dir
from ..core.metadata import ModelInfo
from ..runtime.pipeline import DDPM, default_model_path
from ..core.sampler import AncestralSampler
from ..runtime.session import BoundEps, BoundStep, UNetSession, gpu_present

SEED_SECONDS_PER_SAMPLE = 50.0  # the seed's figure: 1000 steps, batch 1, eager PyTorch on a V100
IMPLEMENTATIONS = ("eager", "torchscript", "ort", "ort-int8", "ort-iobinding", "ort-cudagraph", "ort-fused", "ort-fused-cudagraph",
                   "ort-fp16", "ort-fp16-fused-cudagraph", "tensorrt")
# The ONNX variant each ONNX Runtime row runs: (graph, precision, fixed batch), and the engine.
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
CUDA_ONLY = {"ort-cudagraph", "ort-fused-cudagraph", "ort-fp16", "ort-fp16-fused-cudagraph", "tensorrt"}
CPU_ONLY = {"ort-int8"}  # QDQ int8 kernels are the CPU provider's
TORCH_IMPLEMENTATIONS = ("eager", "torchscript")
PROVIDERS = ("cpu", "cuda")
MODELS = ("small", "labml")
RESULTS_DIR = Path("bench-results")  # in the current directory: never inside the installed package


@dataclass
class Row:
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


@dataclass
class Machine:
    cpu: str
    logical_cpus: int
    threads: int
    gpu: str | None
    python: str
    versions: dict[str, str] = field(default_factory=dict)


# -- machine and limits ----------------------------------------------------------------------------


def try_import_torch():
    try:
        import torch
    except ImportError:
        return None
    return torch


def describe_machine(threads: int, torch) -> Machine:
    import onnxruntime as ort

    versions = {"numpy": np.__version__, "onnxruntime": ort.__version__}
    gpu = None
    if torch is not None:
        versions["torch"] = str(torch.__version__)
        if torch.cuda.is_available():
            gpu = torch.cuda.get_device_name(0)
    return Machine(cpu_name(), os.cpu_count() or 1, threads, gpu, platform.python_version(), versions)


def median_seconds(fn: Callable[[], Any], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def cpu_sgemm_gflops(torch, size: int = 1024, repeats: int = 7) -> tuple[float, str]:
    """fp32 matrix-multiply throughput with the benchmark's thread count."""
    flops = 2.0 * size**3
    if torch is not None:
        a, b = torch.randn(size, size), torch.randn(size, size)
        torch.mm(a, b)
        return flops / median_seconds(lambda: torch.mm(a, b), repeats) / 1e9, f"torch.mm {size}x{size} fp32"
    a = np.random.default_rng(0).standard_normal((size, size), dtype=np.float32)
    a @ a
    return flops / median_seconds(lambda: a @ a, repeats) / 1e9, f"numpy matmul {size}x{size} fp32"


def gpu_limits(torch) -> dict[str, float]:
    """Measured fp32 matmul throughput (TF32 off) and device copy bandwidth of GPU 0."""
    torch.backends.cuda.matmul.allow_tf32 = False
    size = 8192
    a, b = torch.randn(size, size, device="cuda"), torch.randn(size, size, device="cuda")

    def matmul():
        torch.mm(a, b)
        torch.cuda.synchronize()

    matmul()
    tflops = 2.0 * size**3 / median_seconds(matmul, 5) / 1e12
    buffer = torch.empty(1 << 28, dtype=torch.float32, device="cuda")  # 1 GiB
    target = torch.empty_like(buffer)

    def copy():
        target.copy_(buffer)
        torch.cuda.synchronize()

    copy()
    bandwidth = 2 * buffer.numel() * 4 / median_seconds(copy, 5) / 1e9  # read + write
    return {"fp32_tflops": tflops, "bandwidth_gbs": bandwidth}


# -- models ------------------------------------------------------------------------------------------


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
    variants: dict[tuple, Path] = field(default_factory=dict)

    def variant(self, graph: str, precision: str, fixed_batch: int | None, echo: Callable[[str], None]) -> Path:
        """The ONNX file for a row: the model itself, its int8 copy, or an export of the PyTorch module
        made on first use."""
        key = (graph, precision, fixed_batch)
        if key == ("eps", "fp32", None):
            return self.onnx_path
        if key not in self.variants:
            name = f"{self.name}{'.step' if graph != 'eps' else ''}{'' if precision == 'fp32' else f'.{precision}'}" + (
                f".b{fixed_batch}" if fixed_batch else "")
            if precision == "int8":
                self.variants[key] = quantize_for_timing(self.onnx_path, self.info, self.workdir / f"{name}.onnx", echo)
            elif self.torch_module is None:
                raise SkipRow("skipped: this variant is exported on the spot, which needs PyTorch and onnx")
            else:
                self.variants[key] = export_random(self.torch_module, self.workdir / f"{name}.onnx", fixed_batch, echo, graph,
                                                   precision == "fp16")
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
    feeds = [{"x": rng.standard_normal(shape).astype(np.float32), "t": rng.integers(0, 1000, 16).astype(np.int64),
              **({"y": rng.integers(0, info.num_classes + 1, 16).astype(np.int64)} if info.num_classes else {})}
             for _ in range(4)]
    start = time.perf_counter()
    path.write_bytes(quantize(onnx.load(source), info, feeds).SerializeToString())
    echo(f"quantized {path.name} in {time.perf_counter() - start:.0f} s")
    return path


def prepare_models(names: list[str], small_onnx: Path | None, labml_onnx: Path | None, workdir: Path, torch,
                   echo: Callable[[str], None]) -> tuple[list[BenchModel], list[str]]:
    models, notes = [], []
    for name in names:
        if name == "small":
            path = small_onnx or default_model_path()
            info = UNetSession(path, provider="cpu").info
            weights = "embedded (trained)" if small_onnx is None else f"{path.name}"
        else:
            path = labml_onnx
            info = None
            weights = "random (latency does not depend on the weights)"
        config = module = None
        if torch is not None:
            from ..train.config import UNetConfig, preset
            from ..train.unet import UNet

            config = preset("labml") if name == "labml" else UNetConfig.from_dict(info.model_config)
            torch.manual_seed(0)
            module = UNet(config).eval()
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
            if name == "small" and small_onnx is None:
                weights = "embedded (trained) in ONNX rows; random in PyTorch rows"
        models.append(BenchModel(name, path, info, weights, flops, weight_bytes, module, workdir))
    return models, notes


def export_random(module, path: Path, fixed_batch: int | None, echo: Callable[[str], None], graph: str = "eps",
                  fp16: bool = False) -> Path:
    """Export a PyTorch U-Net (with whatever weights it has) for timing."""
    from ..export.exporter import onnx_model
    from ..export.load import ExportSource
    from ..train.checkpoint import versions

    config = module.config
    info = ModelInfo(
        schedule={"kind": "linear", "timesteps": 1000, "beta_start": 1e-4, "beta_end": 0.02}, image_size=32,
        image_channels=config.image_channels, data_range=(-1.0, 1.0), model_config=config.to_dict(),
        source={"kind": "benchmark", "weights": "random"}, versions={"export": versions()},
    )
    start = time.perf_counter()
    model = onnx_model(ExportSource(module, info, "benchmark"), fixed_batch=fixed_batch, graph=graph, fp16=fp16)
    path.write_bytes(model.SerializeToString())
    echo(f"exported {path.name} in {time.perf_counter() - start:.0f} s")
    return path


# -- steps ---------------------------------------------------------------------------------------------


def ort_step(session: UNetSession, batch: int, engine: str) -> Callable[[int], None]:
    """One sampling step through ONNX Runtime: ε from the session, then the NumPy update."""
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
    """One sampling step in PyTorch: ε from the module, then the update with torch tensors on ``device``."""
    schedule = info.make_schedule()
    betas = torch.tensor(schedule.betas, dtype=torch.float32, device=device)
    alpha_bars = torch.tensor(schedule.alpha_bars, dtype=torch.float32, device=device)
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
    timesteps = schedule.timesteps

    def step(i: int) -> None:
        t = timesteps - 1 - i % timesteps
        with torch.no_grad():
            eps = model(state["x"], torch.full((batch,), t, dtype=torch.long, device=device))
            mean = (state["x"] - betas[t] / torch.sqrt(1 - alpha_bars[t]) * eps) / torch.sqrt(1 - betas[t])
            state["x"] = mean + torch.sqrt(betas[t]) * noise if t > 0 else mean
        if device == "cuda":
            torch.cuda.synchronize()

    return step


SETTLE_SECONDS = 1.0
LOOP_BUDGET_SECONDS = 60.0  # stop repeating a model's full loop once this much time went into it


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


# -- the run -----------------------------------------------------------------------------------------


def fill_rates(row: Row, model: BenchModel, limits: dict[str, float], timesteps: int) -> None:
    if row.step_s_median is None:
        return
    if row.per_sample_s is None:
        row.per_sample_s = row.step_s_median * timesteps / row.batch
        row.per_sample_method = "extrapolated"
    row.speedup_vs_seed = SEED_SECONDS_PER_SAMPLE / row.per_sample_s
    if model.flops_per_image is None:
        return
    row.achieved_gflops = model.flops_per_image * row.batch / row.step_s_median / 1e9
    if row.provider == "cpu" and limits.get("cpu_sgemm_gflops"):
        row.fraction_of_limit = row.achieved_gflops / limits["cpu_sgemm_gflops"]
    elif row.provider == "cuda" and limits.get("fp32_tflops"):
        compute = model.flops_per_image * row.batch / (limits["fp32_tflops"] * 1e12)
        memory = (model.weight_bytes or 0.0) / (limits["bandwidth_gbs"] * 1e9)
        row.fraction_of_limit = max(compute, memory) / row.step_s_median


def run_benchmark(
    models: list[BenchModel], implementations: list[str], providers: list[str], batches: dict[str, list[int]],
    warmup: int, repeats: int, threads: int, full_loop: bool, torch, echo: Callable[[str], None], loop_repeats: int = 3,
) -> tuple[list[Row], list[str]]:
    rows, notes = [], []
    for model in models:
        timesteps = model.info.make_schedule().timesteps
        for provider in providers:
            for implementation in implementations:
                if (implementation in CUDA_ONLY and provider != "cuda") or (implementation in CPU_ONLY and provider != "cpu"):
                    continue
                for batch in batches[provider]:
                    row = Row(model.name, model.weights, implementation, provider, batch)
                    try:
                        step = make_step(model, implementation, provider, batch, threads, torch, echo)
                    except SkipRow as skip:
                        row.note = str(skip)
                        rows.append(row)
                        notes.append(f"{model.name} {implementation} {provider} b{batch}: {skip}")
                        continue
                    times = time_steps(step, warmup, repeats)
                    row.step_s_median, row.step_s_min, row.step_s_max = statistics.median(times), min(times), max(times)
                    row.steps_timed = repeats
                    rows.append(row)
                    echo(f"{model.name:6s} {implementation:14s} {provider:4s} batch {batch:4d}: "
                         f"{row.step_s_median * 1e3:9.2f} ms per step")
        if full_loop:
            provider = providers[0]
            row = next((r for r in rows if (r.model, r.implementation, r.provider, r.batch) == (model.name, "ort", provider, 1)
                        and r.step_s_median is not None), None)
            if row is None:
                notes.append(f"{model.name}: full loop not timed (it runs in the 'ort' row at batch 1, which is not selected)")
                continue
            ddpm = DDPM.load(model.onnx_path, provider=provider, threads=threads if provider == "cpu" else None)
            runs = []
            while len(runs) < loop_repeats and sum(r.seconds for r in runs) < LOOP_BUDGET_SECONDS:
                settle()
                runs.append(ddpm.generate(1, seed=0, batch_size=1))
            runs.sort(key=lambda r: r.seconds)
            run = runs[len(runs) // 2]
            row.per_sample_s = run.seconds
            row.per_sample_method = f"measured ({run.settings['steps']}-step loop, median of {len(runs)})"
            row.note = (f"loop/session.run = {run.seconds / run.run_seconds:.3f}"
                        f" ({run.seconds:.2f} s / {run.run_seconds:.2f} s); loops {runs[0].seconds:.2f}-{runs[-1].seconds:.2f} s")
            echo(f"{model.name:6s} full {timesteps}-step loop, batch 1, {provider}: {run.seconds:.2f} s per sample "
                 f"(median of {len(runs)}, {runs[0].seconds:.2f}-{runs[-1].seconds:.2f} s)")
    return rows, notes


def check_tag(tag: str | None) -> str | None:
    """A tag names files inside --out-dir: no path separators, no leading dot, a sane length."""
    if tag is not None and not re.fullmatch(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,63}", tag):
        raise click.BadParameter(f"{tag!r}: use up to 64 letters, digits, '.', '_' or '-', not starting with '.'")
    return tag


class SkipRow(Exception):
    """This row cannot run here; the message says why."""


def make_step(model: BenchModel, implementation: str, provider: str, batch: int, threads: int, torch,
              echo: Callable[[str], None] = lambda message: None) -> Callable[[int], None]:
    if implementation in TORCH_IMPLEMENTATIONS:
        if torch is None:
            raise SkipRow('skipped: PyTorch is not installed (pip install "ddpm-mnist[train]")')
        if provider == "cuda" and not torch.cuda.is_available():
            raise SkipRow("skipped: PyTorch sees no CUDA device")
        return torch_step(torch, model.torch_module, model.info, batch, provider, implementation == "torchscript")
    graph, precision, graphed, engine = ORT_VARIANTS[implementation]
    if provider == "cpu":
        name = "cpu"
    else:
        name = "tensorrt" if implementation == "tensorrt" else "cuda"
    try:
        path = model.variant(graph, precision, batch if graphed else None, echo)
        session = UNetSession(path, provider=name, threads=threads if provider == "cpu" else None, cuda_graph=graphed)
    except DDPMError as exc:
        raise SkipRow(f"skipped: {exc}") from None
    if graph == "fused-step":
        return ort_fused_step(session, batch)
    return ort_step(session, batch, engine)


# -- reporting -----------------------------------------------------------------------------------------


def fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def markdown(rows: list[Row], machine: Machine, limits: dict[str, Any], targets: list[str], notes: list[str],
             sampler_rows: list[dict] = ()) -> str:
    lines = [
        f"# ddpm-bench results ({machine.cpu}{', ' + machine.gpu if machine.gpu else ''})",
        "",
        f"{machine.threads} threads; versions: {', '.join(f'{k} {v}' for k, v in machine.versions.items())}.",
        "Limits measured in the same run: " + ", ".join(f"{k} {v:.1f}" if isinstance(v, float) else f"{k} {v}" for k, v in limits.items()) + ".",
        f"Speedup = the seed's {SEED_SECONDS_PER_SAMPLE:.0f} s per sample ÷ the row's per-sample latency.",
        "",
        "| model | implementation | provider | batch | step median (min-max) ms | per-sample s | how | x seed | GFLOP/s | of limit | note |",
        "|---|---|---|---:|---:|---:|---|---:|---:|---:|---|",
    ]
    for r in rows:
        step = "-" if r.step_s_median is None else f"{r.step_s_median * 1e3:.2f} ({r.step_s_min * 1e3:.2f}-{r.step_s_max * 1e3:.2f})"
        lines.append(
            f"| {r.model} | {r.implementation} | {r.provider} | {r.batch} | {step} | {fmt(r.per_sample_s, '.3f')} | "
            f"{r.per_sample_method} | {fmt(r.speedup_vs_seed, '.1f')} | {fmt(r.achieved_gflops, '.1f')} | "
            f"{fmt(r.fraction_of_limit and r.fraction_of_limit * 100, '.0f')}{'%' if r.fraction_of_limit else ''} | {r.note} |"
        )
    lines += ["", "Weights: " + "; ".join(sorted({f"{r.model}: {r.weights}" for r in rows})) + "."]
    lines += sampler_markdown(list(sampler_rows))
    if targets:
        lines += ["", "## Targets", ""] + [f"- {t}" for t in targets]
    if notes:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"


# Each sampler at the step count the README recommends for it: time to a finished digit.
SAMPLER_SETTINGS = (("ancestral", 1000), ("ddim", 50), ("dpm++2m", 20), ("dpm++2m-sde", 20))
SAMPLER_BATCH = 16


def time_samplers(model: "BenchModel", provider: str, threads: int, quick: bool, echo: Callable[[str], None]) -> list[dict]:
    """Whole sampling runs of one batch per sampler (the same seed), seconds per finished sample.

    --quick leaves out the 1000-step ancestral run (its time is the full-loop row's, times the batch gain)."""
    ddpm = DDPM.load(model.onnx_path, provider=provider, threads=threads if provider == "cpu" else None)
    batch = SAMPLER_BATCH if provider == "cpu" else 256
    rows = []
    for sampler, steps in SAMPLER_SETTINGS:
        steps = min(steps, ddpm.timesteps)
        if quick and steps > 100:
            continue
        settle()
        run = ddpm.generate(batch, seed=0, batch_size=batch, sampler=sampler, steps=steps)
        rows.append({"model": model.name, "provider": provider, "sampler": sampler, "steps": steps, "batch": batch,
                     "seconds": run.seconds, "per_sample_s": run.seconds / batch,
                     "speedup_vs_seed": SEED_SECONDS_PER_SAMPLE * batch / run.seconds})
        echo(f"{model.name:6s} {sampler:12s} {steps:4d} steps, {provider}, batch {batch}: {run.seconds / batch:.3f} s per sample")
    return rows


def sampler_markdown(rows: list[dict]) -> list[str]:
    if not rows:
        return []
    lines = ["", "## Samplers: time to a finished digit", "",
             "One run of a whole batch per sampler at its recommended step count (quality per step count: the README).", "",
             "| model | provider | sampler | network calls | batch | s per sample | x seed |", "|---|---|---|---:|---:|---:|---:|"]
    lines += [f"| {r['model']} | {r['provider']} | {r['sampler']} | {r['steps']} | {r['batch']} | {r['per_sample_s']:.3f} | "
              f"{r['speedup_vs_seed']:.0f} |" for r in rows]
    return lines


def target_lines(rows: list[Row]) -> list[str]:
    def find(model, implementation, provider, batch):
        return next((r for r in rows if (r.model, r.implementation, r.provider, r.batch) == (model, implementation, provider, batch)
                     and r.step_s_median is not None), None)

    lines = []
    ort1, eager1 = find("small", "ort", "cpu", 1), find("small", "eager", "cpu", 1)
    if ort1 and eager1:
        ratio = eager1.step_s_median / ort1.step_s_median
        lines.append(f"ONNX Runtime vs eager PyTorch per step, small, CPU, batch 1: {ratio:.2f}x (target >= 2.0x): "
                     f"{'met' if ratio >= 2.0 else 'missed'}")
    if ort1 and ort1.per_sample_method.startswith("measured"):
        overhead = float(ort1.note.split("=")[1].split()[0])
        lines.append(f"Loop wall time / sum of session.run, small, CPU, batch 1: {overhead:.3f} (target <= 1.05): "
                     f"{'met' if overhead <= 1.05 else 'missed'}")
        lines.append(f"Per-sample latency, small, CPU, batch 1, full loop: {ort1.per_sample_s:.2f} s (target <= 5 s): "
                     f"{'met' if ort1.per_sample_s <= 5.0 else 'missed'}")
    ort16 = find("small", "ort", "cpu", 16)
    if ort16 and ort16.fraction_of_limit is not None:
        lines.append(f"Batch 16, small, CPU: {ort16.fraction_of_limit:.0%} of the measured sgemm throughput (target >= 80%): "
                     f"{'met' if ort16.fraction_of_limit >= 0.8 else 'missed'}")
    best = {implementation: best_batch(rows, "small", implementation, "cpu") for implementation in ("ort", "ort-int8")}
    fp32, int8 = best["ort"], best["ort-int8"]
    if fp32 and int8:
        ratio = fp32.per_sample_s / int8.per_sample_s
        lines.append(f"int8 vs fp32 per sample, small, CPU, each at its best batch (fp32 {fp32.batch}, int8 {int8.batch}): "
                     f"{ratio:.2f}x (target >= 1.5x): {'met' if ratio >= 1.5 else 'missed'}")
    fastest = min((row for row in best.values() if row), key=lambda row: row.per_sample_s, default=None)
    if fastest:
        lines.append(f"Whole sampling loop per sample, small, CPU, best batch ({fastest.implementation}, batch {fastest.batch}): "
                     f"{fastest.per_sample_s:.2f} s (target <= 2 s on a 2-core machine): "
                     f"{'met' if fastest.per_sample_s <= 2.0 else 'missed'}")
    return lines


def best_batch(rows: list[Row], model: str, implementation: str, provider: str) -> Row | None:
    """The row of the batch size with the lowest time per sample (step time x T / B, not a full-loop row)."""
    timed = [row for row in rows if (row.model, row.implementation, row.provider) == (model, implementation, provider)
             and row.per_sample_s is not None and not row.per_sample_method.startswith("measured")]
    return min(timed, key=lambda row: row.per_sample_s, default=None)


def write_chart(rows: list[Row], staged: StagedFiles, path: Path) -> str | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "chart skipped: matplotlib is not installed (pip install \"ddpm-mnist[bench]\")"
    shown = [r for r in rows if r.per_sample_s is not None]
    if not shown:
        return "chart skipped: no timed rows"
    labels = [f"{r.model} {r.implementation} {r.provider} b{r.batch}" for r in shown]
    values = [r.per_sample_s for r in shown]
    figure, axis = plt.subplots(figsize=(9, 0.32 * len(shown) + 1.5))
    colours = ["tab:blue" if "measured" in r.per_sample_method else "tab:gray" for r in shown]
    axis.barh(range(len(shown)), values, color=colours)
    axis.axvline(SEED_SECONDS_PER_SAMPLE, color="tab:red", linestyle="--", label="seed: 50 s per sample (V100, eager)")
    axis.set_yticks(range(len(shown)), labels, fontsize=8)
    axis.invert_yaxis()
    axis.set_xscale("log")
    axis.set_xlabel("seconds per sample, 1000 steps (log scale; blue: measured loop, grey: extrapolated)")
    axis.legend(loc="lower right", fontsize=8)
    figure.tight_layout()
    figure.savefig(staged.stage(path), dpi=110, format="png")
    plt.close(figure)
    return None


# -- command line ----------------------------------------------------------------------------------------


class CommaList(click.ParamType):
    def __init__(self, choices: tuple[str, ...] | None = None, integers: bool = False) -> None:
        self.choices, self.integers = choices, integers
        self.name = "LIST"

    def convert(self, value: Any, param: Any, ctx: Any) -> list:
        if isinstance(value, list):
            return value
        items = [item.strip() for item in str(value).split(",") if item.strip()]
        if not items:
            self.fail("give at least one entry", param, ctx)
        if self.integers:
            try:
                numbers = [int(item) for item in items]
            except ValueError:
                self.fail(f"{value!r} is not a comma-separated list of integers", param, ctx)
            if any(n < 1 for n in numbers):
                self.fail(f"{value!r}: batch sizes must be >= 1", param, ctx)
            return numbers
        unknown = [item for item in items if item not in self.choices]
        if unknown:
            self.fail(f"unknown {', '.join(unknown)}; choose from {', '.join(self.choices)}", param, ctx)
        return items


@click.command(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.option("--models", type=CommaList(MODELS), default=None, help="Which networks to time. [default: small,labml; small with --quick]")
@click.option("--implementations", type=CommaList(IMPLEMENTATIONS), default=",".join(IMPLEMENTATIONS),
              help="Which implementations; those a provider cannot run are left out, those missing a package get a note.")
@click.option("--providers", type=CommaList(PROVIDERS), default=None, help="[default: cpu, plus cuda when a GPU is present]")
@click.option("--cpu-batches", type=CommaList(integers=True), default="1,16", help="Batch sizes on the CPU.")
@click.option("--gpu-batches", type=CommaList(integers=True), default="1,16,64,256", help="Batch sizes on the GPU.")
@click.option("--warmup", type=click.IntRange(min=1), default=3, help="Untimed steps before each row.")
@click.option("--repeats", type=click.IntRange(min=1), default=20, help="Timed steps per row.")
@click.option("--threads", type=click.IntRange(1, 1024), default=None,
              help="CPU threads for PyTorch and ONNX Runtime. [default: the CPUs this process may use]")
@click.option("--full-loop/--no-full-loop", default=True, help="Also time the whole T-step loop at batch 1 per model.")
@click.option("--samplers/--no-samplers", default=True,
              help="Also time a whole batch per sampler at its recommended step count (small model; ancestral not with --quick).")
@click.option("--onnx", "small_onnx", type=click.Path(path_type=Path), default=None,
              help="ONNX file for the 'small' rows. [default: the embedded model]")
@click.option("--labml-onnx", type=click.Path(path_type=Path), default=None,
              help="An exported labml network; without it one with random weights is exported first (needs PyTorch).")
@click.option("--quick", is_flag=True, help="A short run (under a minute on a CPU): small model, 2 warm-up and 10 timed steps.")
@click.option("--out-dir", type=OutputPath(folder=True), default=RESULTS_DIR,
              help="Where the JSON, Markdown and PNG go (the repository's committed results: benchmarks/results).")
@click.option("--tag", default=None, callback=lambda ctx, param, value: check_tag(value),
              help="Name of the result files (bench-TAG.*): letters, digits, '.', '_', '-'. [default: cpu, or gpu]")
def bench_command(models, implementations, providers, cpu_batches, gpu_batches, warmup, repeats, threads, full_loop, samplers,
                  small_onnx, labml_onnx, quick, out_dir, tag) -> None:
    """Time the sampling loop per implementation, provider, batch size and model; write JSON, Markdown and a chart.

    \b
    ddpm-bench --quick                       # small model, CPU, under a minute
    ddpm-bench                               # small and labml, every implementation, CPU (+ CUDA)
    ddpm-bench --providers cuda --labml-onnx labml.onnx
    """
    torch = try_import_torch()
    if threads is None:
        threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    if torch is not None:
        torch.set_num_threads(threads)
    if providers is None:
        providers = ["cpu", "cuda"] if gpu_present() else ["cpu"]
    if "cuda" in providers and not gpu_present():
        raise DDPMError("--providers cuda: no NVIDIA GPU driver found on this machine")
    if models is None:
        models = ["small"] if quick else list(MODELS)
    if labml_onnx is not None and "labml" not in models:
        raise click.UsageError("--labml-onnx is given but labml is not among --models")
    if quick:
        warmup, repeats = 2, 10
    check_writable_dir(out_dir)
    tag = tag or ("gpu" if "cuda" in providers else "cpu") + ("-quick" if quick else "")

    def echo(message: str) -> None:
        click.echo(message, err=True)

    machine = describe_machine(threads, torch)
    with tempfile.TemporaryDirectory(prefix="ddpm-bench-") as workdir:
        bench_models, notes = prepare_models(models, small_onnx, labml_onnx, Path(workdir), torch, echo)
        limits: dict[str, Any] = {}
        limits["cpu_sgemm_gflops"], limits["cpu_sgemm_method"] = cpu_sgemm_gflops(torch)
        echo(f"{machine.cpu}, {threads} threads: sgemm {limits['cpu_sgemm_gflops']:.1f} GFLOP/s ({limits['cpu_sgemm_method']})")
        if "cuda" in providers and torch is not None and torch.cuda.is_available():
            limits.update(gpu_limits(torch))
            echo(f"{machine.gpu}: {limits['fp32_tflops']:.1f} TFLOP/s fp32 matmul, {limits['bandwidth_gbs']:.0f} GB/s copy")
        batches = {"cpu": cpu_batches, "cuda": gpu_batches}
        rows, row_notes = run_benchmark(bench_models, implementations, providers, batches, warmup, repeats, threads,
                                        full_loop, torch, echo, loop_repeats=1 if quick else 3)
        sampler_rows = []
        if samplers:
            for model in (m for m in bench_models if m.name == "small"):
                for provider in providers:
                    sampler_rows += time_samplers(model, provider, threads, quick, echo)
    notes += row_notes
    for model in bench_models:
        for row in rows:
            if row.model == model.name:
                fill_rates(row, model, limits, model.info.make_schedule().timesteps)
    targets = target_lines(rows)
    for line in targets:
        echo(line)

    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    report = {
        "created": stamp, "machine": asdict(machine), "limits": limits, "seed_seconds_per_sample": SEED_SECONDS_PER_SAMPLE,
        "settings": {"warmup": warmup, "repeats": repeats, "quick": quick, "full_loop": full_loop,
                     "loop_repeats": 1 if quick else 3, "settle_seconds": SETTLE_SECONDS},
        "models": {m.name: {"onnx": str(m.onnx_path), "weights": m.weights, "flops_per_image_step": m.flops_per_image}
                   for m in bench_models},
        "rows": [asdict(r) for r in rows], "sampler_rows": sampler_rows, "targets": targets, "notes": notes,
    }
    with StagedFiles() as staged:
        staged.stage(out_dir / f"bench-{tag}.json").write_text(json.dumps(report, indent=2) + "\n")
        staged.stage(out_dir / f"bench-{tag}.md").write_text(markdown(rows, machine, limits, targets, notes, sampler_rows))
        chart_note = write_chart(rows, staged, out_dir / f"bench-{tag}.png")
        staged.commit()
    if chart_note:
        echo(chart_note)
    click.echo(f"wrote {out_dir / f'bench-{tag}.json'}, .md{'' if chart_note else ', .png'}")


def main() -> None:
    run_command(bench_command, "ddpm-bench")


if __name__ == "__main__":
    main()
