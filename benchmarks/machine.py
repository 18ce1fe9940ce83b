"""The machine a benchmark runs on, and its limits measured in the same run: sgemm throughput on
the CPU, and bf16 matmul throughput through OpenVINO where the CPU runs bf16; fp32 matmul
throughput and copy bandwidth on the GPU."""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnxruntime as ort

from ..core.errors import DDPMError
from ..runtime.machine import cpu_name, kernel_flags
from ..runtime.openvino_session import bf16_support, openvino_module, openvino_version


@dataclass
class Machine:
    cpu: str
    logical_cpus: int
    threads: int
    gpu: str | None
    python: str
    versions: dict[str, str] = field(default_factory=dict)
    flags: list[str] = field(default_factory=list)  # those of runtime.machine.KERNEL_FLAGS the CPU has


def try_import_torch():
    """The torch module, or None: every row that needs PyTorch is then listed as skipped."""
    try:
        import torch
    except ImportError:
        return None
    return torch


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity mask, where the platform has one)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def describe_machine(threads: int, torch) -> Machine:
    versions = {"numpy": np.__version__, "onnxruntime": ort.__version__}
    if openvino_version():
        versions["openvino"] = openvino_version()
    gpu = None
    if torch is not None:
        versions["torch"] = str(torch.__version__)
        if torch.cuda.is_available():
            gpu = torch.cuda.get_device_name(0)
    return Machine(
        cpu_name(),
        os.cpu_count() or 1,
        threads,
        gpu,
        platform.python_version(),
        versions,
        kernel_flags(),
    )


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


def openvino_matmul_gflops(precision: str, threads: int, size: int = 2048, repeats: int = 7) -> tuple[float, str]:
    """Matrix-multiply throughput through OpenVINO's CPU plugin at ``precision`` ("bf16" or "f32"):
    a [size, size] input times a stored [size, size] weight, as the U-Net's convolutions and
    projections multiply activations by weights."""
    ov = openvino_module()
    import openvino.opset13 as ops

    rng = np.random.default_rng(0)
    x = ops.parameter([size, size], ov.Type.f32)
    weight = ops.constant(rng.standard_normal((size, size), dtype=np.float32))
    model = ov.Model([ops.matmul(x, weight, False, False)], [x])
    config = {"INFERENCE_PRECISION_HINT": precision, "PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": threads}
    request = ov.Core().compile_model(model, "CPU", config).create_infer_request()
    data = rng.standard_normal((size, size), dtype=np.float32)
    request.infer({0: data})
    seconds = median_seconds(lambda: request.infer({0: data}), repeats)
    return 2.0 * size**3 / seconds / 1e9, f"OpenVINO MatMul {size}x{size} {precision}"


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


def measure_limits(machine: Machine, providers: list[str], torch, echo: Callable[[str], None]) -> dict[str, Any]:
    """The limits the rows are measured against: the CPU's always, the GPU's when CUDA rows run."""
    limits: dict[str, Any] = {}
    limits["cpu_sgemm_gflops"], limits["cpu_sgemm_method"] = cpu_sgemm_gflops(torch)
    echo(
        f"{machine.cpu} ({', '.join(machine.flags) or 'no flags listed'}), {machine.threads} threads: "
        f"sgemm {limits['cpu_sgemm_gflops']:.1f} GFLOP/s ({limits['cpu_sgemm_method']})"
    )
    if "cpu" in providers and openvino_version() and bf16_support() is None:
        try:
            limits["cpu_bf16_gflops"], limits["cpu_bf16_method"] = openvino_matmul_gflops("bf16", machine.threads)
            echo(f"bf16 matmul {limits['cpu_bf16_gflops']:.1f} GFLOP/s ({limits['cpu_bf16_method']})")
        except (DDPMError, RuntimeError) as exc:
            echo(f"bf16 matmul limit not measured: {exc}")
    if "cuda" in providers and torch is not None and torch.cuda.is_available():
        limits.update(gpu_limits(torch))
        echo(f"{machine.gpu}: {limits['fp32_tflops']:.1f} TFLOP/s fp32 matmul, {limits['bandwidth_gbs']:.0f} GB/s copy")
    return limits
