import json

import pytest

from conftest import assert_one_line_error
from ddpm.benchmarks import bench, steps
from ddpm.benchmarks.bench import main as bench_main
from ddpm.benchmarks.models import BenchModel
from ddpm.benchmarks.report import fill_rates, target_lines
from ddpm.benchmarks.steps import Row
from ddpm.runtime.session import UNetSession

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning", "ignore::DeprecationWarning")


@pytest.fixture(autouse=True)
def no_settling(monkeypatch):
    monkeypatch.setattr(steps, "SETTLE_SECONDS", 0.0)


def test_per_sample_arithmetic_and_labels(tiny_export):
    info = UNetSession(tiny_export / "unet.onnx", provider="cpu").info
    model = BenchModel("small", tiny_export / "unet.onnx", info, "w", flops_per_image=2e9, weight_bytes=1e6)
    limits = {"cpu_sgemm_gflops": 100.0, "fp32_tflops": 50.0, "bandwidth_gbs": 2000.0}
    row = Row("small", "w", "ort", "cpu", 16, step_s_median=0.5, step_s_min=0.4, step_s_max=0.7)
    fill_rates(row, model, limits, 1000)
    assert row.per_sample_s == pytest.approx(0.5 * 1000 / 16)
    assert row.per_sample_method == "extrapolated"
    assert row.speedup_vs_seed == pytest.approx(50 / row.per_sample_s)
    assert row.achieved_gflops == pytest.approx(2e9 * 16 / 0.5 / 1e9)
    assert row.fraction_of_limit == pytest.approx(0.64)
    measured = Row("small", "w", "ort", "cpu", 1, step_s_median=0.004, step_s_min=0.004, step_s_max=0.005,
                   per_sample_s=4.2, per_sample_method="measured (1000-step loop)")
    fill_rates(measured, model, limits, 1000)
    assert measured.per_sample_s == 4.2 and measured.per_sample_method.startswith("measured")
    gpu = Row("small", "w", "ort", "cuda", 1, step_s_median=0.001, step_s_min=0.001, step_s_max=0.001)
    fill_rates(gpu, model, limits, 1000)
    # the bound is the larger of compute (2e9 / 50e12 = 4e-5 s) and weights (1e6 / 2e12 = 5e-7 s)
    assert gpu.fraction_of_limit == pytest.approx(4e-5 / 0.001)


def test_targets_are_judged():
    rows = [
        Row("small", "w", "eager", "cpu", 1, step_s_median=0.012),
        Row("small", "w", "ort", "cpu", 1, step_s_median=0.004, per_sample_s=4.4,
            per_sample_method="measured (1000-step loop)", note="loop/session.run = 1.031 (4.40 s / 4.27 s)"),
        Row("small", "w", "ort", "cpu", 16, step_s_median=0.06, fraction_of_limit=0.75),
    ]
    lines = target_lines(rows)
    assert any("3.00x" in line and line.endswith("met") for line in lines)
    assert any("1.031" in line and line.endswith("met") for line in lines)
    assert any("4.40 s" in line and line.endswith("met") for line in lines)
    assert any("75%" in line and line.endswith("missed") for line in lines)


def test_int8_targets_compare_each_at_its_best_batch():
    rows = [
        Row("small", "w", "ort", "cpu", 1, step_s_median=0.004, per_sample_s=4.4, per_sample_method="measured (loop)",
            note="loop/session.run = 1.031 (4.40 s / 4.27 s)"),
        Row("small", "w", "ort", "cpu", 16, step_s_median=0.048, per_sample_s=3.0, per_sample_method="extrapolated"),
        Row("small", "w", "ort", "cpu", 32, step_s_median=0.1, per_sample_s=3.2, per_sample_method="extrapolated"),
        Row("small", "w", "ort-int8", "cpu", 16, step_s_median=0.024, per_sample_s=1.5, per_sample_method="extrapolated"),
        Row("small", "w", "ort-int8", "cpu", 32, step_s_median=0.04, per_sample_s=1.25, per_sample_method="extrapolated"),
    ]
    lines = target_lines(rows)
    assert any("(fp32 16, int8 32): 2.40x" in line and line.endswith("met") for line in lines), lines
    assert any("(ort-int8, batch 32): 1.25 s" in line and line.endswith("met") for line in lines), lines
    rows[-1].per_sample_s = rows[-2].per_sample_s = 2.5  # int8 barely faster: both targets missed
    lines = target_lines(rows)
    assert any("int8 vs fp32" in line and "1.20x" in line and line.endswith("missed") for line in lines), lines
    assert any("(ort-int8, batch 16): 2.50 s" in line and line.endswith("missed") for line in lines), lines


def test_quick_end_to_end(invoke, tiny_export, tmp_path):
    result = invoke(bench_main, "--quick", "--onnx", tiny_export / "unet.onnx", "--out-dir", tmp_path, "--tag", "t")
    assert result.code == 0, result.err
    report = json.loads((tmp_path / "bench-t.json").read_text())
    assert {"machine", "limits", "rows", "targets", "settings", "models"} <= set(report)
    assert report["limits"]["cpu_sgemm_gflops"] > 0
    assert report["settings"]["quick"] is True
    rows = report["rows"]
    implementations = {(r["implementation"], r["batch"]) for r in rows}
    assert implementations == {(i, b) for i in ("eager", "torchscript", "ort", "ort-int8", "ort-iobinding", "ort-fused")
                               for b in (1, 16)}
    assert all(r["provider"] == "cpu" for r in rows)  # no CUDA rows on a machine without a GPU
    measured = [r for r in rows if r["per_sample_method"].startswith("measured")]
    assert len(measured) == 1 and measured[0]["implementation"] == "ort" and measured[0]["batch"] == 1
    assert measured[0]["per_sample_method"] == "measured (1000-step loop, median of 1)"
    for row in rows:
        assert row["steps_timed"] == 10
        assert row["step_s_min"] <= row["step_s_median"] <= row["step_s_max"]
        assert row["speedup_vs_seed"] == pytest.approx(50 / row["per_sample_s"])
        if not row["per_sample_method"].startswith("measured"):
            assert row["per_sample_method"] == "extrapolated"
            assert row["per_sample_s"] == pytest.approx(row["step_s_median"] * 1000 / row["batch"])
    samplers = report["sampler_rows"]  # --quick leaves out the 1000-step ancestral run
    assert [(r["sampler"], r["steps"]) for r in samplers] == [("ddim", 50), ("dpm++2m", 20), ("dpm++2m-sde", 20)]
    for row in samplers:
        assert row["per_sample_s"] == pytest.approx(row["seconds"] / row["batch"]) and row["batch"] == 16
    markdown = (tmp_path / "bench-t.md").read_text()
    assert markdown.count("| small |") == len(rows) + len(samplers)
    assert "| small | cpu | dpm++2m | 20 | 16 |" in markdown
    assert (tmp_path / "bench-t.png").stat().st_size > 1000


def test_rows_needing_torch_are_skipped_without_it(invoke, tiny_export, tmp_path, monkeypatch):
    monkeypatch.setattr(bench, "try_import_torch", lambda: None)
    result = invoke(bench_main, "--quick", "--onnx", tiny_export / "unet.onnx", "--out-dir", tmp_path, "--tag", "nt",
                    "--no-full-loop", "--cpu-batches", "2")
    assert result.code == 0, result.err
    rows = json.loads((tmp_path / "bench-nt.json").read_text())["rows"]
    skipped = [r for r in rows if r["implementation"] in ("eager", "torchscript")]
    assert skipped and all(r["step_s_median"] is None and "PyTorch is not installed (pip install \"ddpm-mnist[train]\")" in r["note"] for r in skipped)
    exported = [r for r in rows if r["implementation"] == "ort-fused"]  # a variant exported on the spot
    assert exported and all(r["step_s_median"] is None and "needs PyTorch" in r["note"] for r in exported)
    timed = [r for r in rows if r["implementation"] in ("ort", "ort-iobinding")]
    assert timed and all(r["step_s_median"] is not None and r["achieved_gflops"] is None for r in timed)


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--providers", "metal"], "--providers"),
        (["--implementations", "ort,magic"], "--implementations"),
        (["--cpu-batches", "0"], "--cpu-batches"),
        (["--cpu-batches", "4,-1"], "--cpu-batches"),
        (["--gpu-batches", "x"], "--gpu-batches"),
        (["--models", "huge"], "--models"),
        (["--providers", "cuda"], "no NVIDIA GPU"),
        (["--onnx", "missing.onnx"], "does not exist"),
    ],
)
def test_bad_options(invoke, tmp_path, args, fragment):
    result = invoke(bench_main, "--quick", "--out-dir", tmp_path / "out", *args)
    assert_one_line_error(result, fragment)
    assert not (tmp_path / "out").exists()


def test_onnx_that_is_not_ours(invoke, tmp_path):
    (tmp_path / "foreign.onnx").write_bytes(b"\x08\x07" + b"junk" * 100)
    result = invoke(bench_main, "--quick", "--onnx", tmp_path / "foreign.onnx", "--out-dir", tmp_path / "out")
    assert_one_line_error(result, "is not an ONNX model")
    assert not (tmp_path / "out").exists()


def test_serving_benchmark_compares_the_three_ways_on_one_session():
    from ddpm.benchmarks import serving
    from ddpm.runtime.pipeline import DDPM

    ddpm = DDPM.load(provider="cpu", threads=1)
    plan = ddpm.plan("ddim", steps=3, digits=[1], guidance=0.0)
    requests = [serving.Request(1, plan, seed, 0.0, "ddim") for seed in range(3)]
    engine = serving.run_engine(ddpm, "t", requests, max_rows=8)
    threads = serving.run_threads(ddpm, "t", requests)
    sequential = serving.run_sequential(ddpm, "t", requests)
    assert [o.digits for o in (engine, threads, sequential)] == [3, 3, 3]
    assert 1 < engine.rows_per_call <= 3 and sequential.rows_per_call == 1  # calls shared (the first may start alone)
    assert all(latency > 0 for o in (engine, threads, sequential) for latency in o.latencies)
    waiting = serving.behind(ddpm, 2, max_rows=8, ancestral_steps=40, warm_ticks=2)
    assert waiting["ticks_taken"] == waiting["calls"] == 20  # room for all: it advanced at every tick
