"""Every CUDA path end to end, on a machine with an NVIDIA GPU and onnxruntime-gpu: ``pytest -m gpu``.

Skipped elsewhere. Each test compares a CUDA run with the same run on the CPU provider (same
seed, so the same noise) and records the measured differences as junit properties
(``--junitxml``). The tolerances: ε of one network call within 1e-2 (TF32 convolutions and
matrix products round to 10 bits of mantissa), final uint8 images within 2 grey levels on
average (fp16: 4), and at most 1% of their pixels more than 32 grey levels apart.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from conftest import DATA_DIR

from ddpm.runtime.cli import main as run_main
from ddpm.runtime.pipeline import DDPM
from ddpm.runtime.session import UNetSession, gpu_present

CUDA_READY = gpu_present() and "CUDAExecutionProvider" in ort.get_available_providers()
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not CUDA_READY, reason="needs an NVIDIA GPU and onnxruntime-gpu")]


def image_difference(got: np.ndarray, expected: np.ndarray, record, mean_limit: float = 2.0) -> None:
    """Same digits: uint8 images within ``mean_limit`` grey levels on average, ≤1% of pixels > 32 apart."""
    difference = np.abs(got.astype(int) - expected.astype(int))
    record("mean_grey_levels", round(float(difference.mean()), 4))
    record("share_over_32", round(float((difference > 32).mean()), 5))
    record("max_grey_levels", int(difference.max()))
    assert difference.mean() <= mean_limit
    assert (difference > 32).mean() <= 0.01


@pytest.fixture(scope="module")
def cpu_reference(variants) -> np.ndarray:
    return DDPM.load(variants / "unet.onnx", provider="cpu").generate(6, seed=5).images


def test_cuda_session_matches_the_cpu(variants, record_property):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 1, 32, 32), dtype=np.float32)
    t = np.array([0, 500, 999], dtype=np.int64)
    gpu = UNetSession(variants / "unet.onnx", provider="cuda")
    assert gpu.provider == "CUDAExecutionProvider"
    difference = float(np.abs(gpu.eps(x, t) - UNetSession(variants / "unet.onnx", provider="cpu").eps(x, t)).max())
    record_property("eps_max_abs", difference)
    assert difference < 1e-2


@pytest.mark.parametrize(
    "name, engine, graph",
    [
        ("unet.onnx", "plain", False),
        ("unet.onnx", "iobinding", False),
        ("unet.b3.onnx", "iobinding", True),  # CUDA graph, two sub-batches of the fixed batch
        ("unet.step.onnx", "plain", False),  # fused step
        ("unet.step.onnx", "iobinding", False),  # fused step, x kept on the device
        ("unet.step.b3.onnx", "iobinding", True),  # fused step under CUDA graphs
    ],
)
def test_every_engine_draws_the_cpu_digits(variants, cpu_reference, record_property, name, engine, graph):
    ddpm = DDPM.load(variants / name, provider="cuda", cuda_graph=graph)
    assert ddpm.provider == "CUDAExecutionProvider"
    run = ddpm.generate(6, seed=5, engine=engine, batch_size=3 if graph else None)
    image_difference(run.images, cpu_reference, record_property)


@pytest.mark.parametrize("name, graph", [("unet.fp16.onnx", False), ("unet.step.fp16.b3.onnx", True)])
def test_fp16_draws_the_fp32_digits(variants, cpu_reference, record_property, name, graph):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3, 1, 32, 32), dtype=np.float32)
    t = np.array([0, 500, 999], dtype=np.int64)
    if "step" not in name:
        half = UNetSession(variants / name, provider="cuda").eps(x, t)
        full = UNetSession(variants / "unet.onnx", provider="cuda").eps(x, t)
        record_property("eps_max_abs_vs_fp32", float(np.abs(half - full).max()))
        assert np.abs(half - full).max() < 2e-2
    run = DDPM.load(variants / name, provider="cuda", cuda_graph=graph).generate(
        6, seed=5, engine="iobinding", batch_size=3 if graph else None
    )
    image_difference(run.images, cpu_reference, record_property, mean_limit=4.0)


@pytest.mark.parametrize(
    "sampler, steps, eta", [("ddim", 50, 0.0), ("ddim", 50, 1.0), ("dpm++2m", 20, 0.0), ("dpm++2m-sde", 20, 0.0)]
)
def test_fast_samplers_on_the_embedded_model(record_property, sampler, steps, eta):
    runs = []
    for provider, engine in (("cpu", "plain"), ("cuda", "iobinding")):
        ddpm = DDPM.load(provider=provider)
        runs.append(
            ddpm.generate(8, ddpm.plan(sampler, steps, eta=eta if sampler == "ddim" else None), seed=3, engine=engine)
        )
    image_difference(runs[1].images, runs[0].images, record_property)


@pytest.mark.parametrize("sampler, steps", [("ancestral", None), ("ddim", 50)])
def test_guidance_on_the_embedded_conditional_model(record_property, sampler, steps):
    labels = np.array([0, 1, 3, 7, 8, 9], dtype=np.int64)
    runs = []
    for provider, engine in (("cpu", "plain"), ("cuda", "iobinding")):
        ddpm = DDPM.load(provider=provider)
        runs.append(ddpm.generate(6, ddpm.plan(sampler, steps, digits=labels, guidance=3.0), seed=4, engine=engine))
    image_difference(runs[1].images, runs[0].images, record_property)


def test_cli_cuda_graph_run(invoke, variants, tmp_path):
    target = tmp_path / "out.npz"
    result = invoke(
        run_main,
        "--onnx",
        variants / "unet.step.b3.onnx",
        "--provider",
        "cuda",
        "--engine",
        "cudagraph",
        "-n",
        5,
        "--seed",
        2,
        "--npz",
        target,
    )
    assert result.code == 0, result.err
    assert "CUDAExecutionProvider" in result.err
    assert np.load(target)["images"].shape == (5, 32, 32)


def test_cuda_training_step_and_eval(invoke, tiny_export, tmp_path, record_property):
    """The tiny model was trained by the fixture on this machine (``--device auto`` picks CUDA); its
    samples drawn on the GPU are scored by ddpm-eval like any other."""
    import json

    from ddpm.runtime.eval_cli import main as eval_main

    report = tmp_path / "eval.json"
    result = invoke(
        eval_main,
        "--onnx",
        tiny_export / "unet.onnx",
        "-n",
        64,
        "--steps",
        50,
        "--sampler",
        "ddim",
        "--provider",
        "cuda",
        "--data-dir",
        DATA_DIR,
        "--json",
        report,
    )
    assert result.code == 0, result.err
    scores = json.loads(report.read_text())
    assert scores["source"]["provider"] == "CUDAExecutionProvider"
    record_property("tiny_scores", json.dumps(scores["samples"])[:400])


def test_bench_exports_after_the_pytorch_rows(invoke, tmp_path):
    """The PyTorch rows run a copy of the module on the GPU; the ONNX rows still export the CPU
    original (when the rows moved the shared module, every on-the-spot export failed)."""
    import json

    from ddpm.benchmarks.bench import main as bench_main

    result = invoke(
        bench_main,
        "--providers",
        "cuda",
        "--models",
        "small",
        "--implementations",
        "eager,ort-cudagraph,ort-fused",
        "--gpu-batches",
        1,
        "--warmup",
        1,
        "--repeats",
        2,
        "--no-full-loop",
        "--no-samplers",
        "--out-dir",
        tmp_path,
        "--tag",
        "smoke",
    )
    assert result.code == 0, result.err
    rows = json.loads((tmp_path / "bench-smoke.json").read_text())["rows"]
    assert [row["implementation"] for row in rows] == ["eager", "ort-cudagraph", "ort-fused"]
    assert all(row["step_s_median"] is not None for row in rows), [row["note"] for row in rows]
