"""The benchmark report (benchmarks/report.py): per-sample times, rates against the machine's limits, and the
targets judged met or missed."""

import pytest

from ddpm.benchmarks.models import BenchModel
from ddpm.benchmarks.report import fill_rates, target_lines
from ddpm.benchmarks.steps import Row
from ddpm.runtime.session import UNetSession

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning", "ignore::DeprecationWarning")


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
    measured = Row(
        "small",
        "w",
        "ort",
        "cpu",
        1,
        step_s_median=0.004,
        step_s_min=0.004,
        step_s_max=0.005,
        per_sample_s=4.2,
        per_sample_method="measured (1000-step loop)",
    )
    fill_rates(measured, model, limits, 1000)
    assert measured.per_sample_s == 4.2 and measured.per_sample_method.startswith("measured")
    gpu = Row("small", "w", "ort", "cuda", 1, step_s_median=0.001, step_s_min=0.001, step_s_max=0.001)
    fill_rates(gpu, model, limits, 1000)
    # the bound is the larger of compute (2e9 / 50e12 = 4e-5 s) and weights (1e6 / 2e12 = 5e-7 s)
    assert gpu.fraction_of_limit == pytest.approx(4e-5 / 0.001)


def test_targets_are_judged():
    rows = [
        Row("small", "w", "eager", "cpu", 1, step_s_median=0.012),
        Row(
            "small",
            "w",
            "ort",
            "cpu",
            1,
            step_s_median=0.004,
            per_sample_s=4.4,
            per_sample_method="measured (1000-step loop)",
            note="loop/session.run = 1.031 (4.40 s / 4.27 s)",
        ),
        Row("small", "w", "ort", "cpu", 16, step_s_median=0.06, fraction_of_limit=0.75),
    ]
    lines = target_lines(rows)
    assert any("3.00x" in line and line.endswith("met") for line in lines)
    assert any("1.031" in line and line.endswith("met") for line in lines)
    assert any("4.40 s" in line and line.endswith("met") for line in lines)
    assert any("75%" in line and line.endswith("missed") for line in lines)


def test_int8_targets_compare_each_at_its_best_batch():
    rows = [
        Row(
            "small",
            "w",
            "ort",
            "cpu",
            1,
            step_s_median=0.004,
            per_sample_s=4.4,
            per_sample_method="measured (loop)",
            note="loop/session.run = 1.031 (4.40 s / 4.27 s)",
        ),
        Row("small", "w", "ort", "cpu", 16, step_s_median=0.048, per_sample_s=3.0, per_sample_method="extrapolated"),
        Row("small", "w", "ort", "cpu", 32, step_s_median=0.1, per_sample_s=3.2, per_sample_method="extrapolated"),
        Row(
            "small", "w", "ort-int8", "cpu", 16, step_s_median=0.024, per_sample_s=1.5, per_sample_method="extrapolated"
        ),
        Row(
            "small", "w", "ort-int8", "cpu", 32, step_s_median=0.04, per_sample_s=1.25, per_sample_method="extrapolated"
        ),
    ]
    lines = target_lines(rows)
    assert any("(fp32 16, int8 32): 2.40x" in line and line.endswith("met") for line in lines), lines
    assert any("(ort-int8, batch 32): 1.25 s" in line and line.endswith("met") for line in lines), lines
    rows[-1].per_sample_s = rows[-2].per_sample_s = 2.5  # int8 barely faster: both targets missed
    lines = target_lines(rows)
    assert any("int8 vs fp32" in line and "1.20x" in line and line.endswith("missed") for line in lines), lines
    assert any("(ort-int8, batch 16): 2.50 s" in line and line.endswith("missed") for line in lines), lines


def test_the_fastest_cpu_path_is_compared_with_onnx_runtime_fp32():
    from ddpm.benchmarks.report import cpu_path_lines

    def row(name, batch, ms):
        return Row(
            "small",
            "w",
            name,
            "cpu",
            batch,
            step_s_median=ms * batch / 1e3,
            per_sample_s=ms,
            per_sample_method="extrapolated",
        )

    rows = [
        row("ort", 1, 3.2),
        row("ort", 16, 2.4),
        row("ov-bf16", 16, 1.3),
        row("ov-bf16", 32, 1.2),
        row("ort-int8", 16, 2.2),
    ]
    lines = cpu_path_lines(rows, ["avx2", "avx512_bf16", "amx_bf16"])
    assert "ort 2.40 ms (batch 16)" in lines[0] and "ov-bf16 1.20 ms (batch 32)" in lines[0]
    assert "(ov-bf16 batch 32, ort batch 16): 2.00x (target >= 2x with AMX): met" in lines[1]
    assert "1000-step loop per digit on the best path: 1.20 s (target <= 1.2 s with AMX, 2 cores): met" in lines[2]
    assert "20 DPM-Solver++ calls: 0.024 s (target <= 0.025 s): met" in lines[2]
    # The target follows the CPU's kind: 1.3x with AVX512-BF16 alone; with neither, nothing slower.
    assert cpu_path_lines(rows, ["avx512_bf16"])[1].endswith("(target >= 1.3x with AVX512-BF16 alone): met")
    slower = [row("ort", 16, 2.4), row("ov", 16, 2.6)]
    assert cpu_path_lines(slower, ["avx2"])[1].endswith(
        "1.00x (target >= 1x without AMX or AVX512-BF16: nothing slower): met"
    )
    assert "target" not in cpu_path_lines(slower, ["avx2"])[2]
    rows[2:4] = [row("ov-bf16", 16, 1.6), row("ov-bf16", 32, 1.4)]
    assert cpu_path_lines(rows, ["amx_bf16"])[1].endswith("1.71x (target >= 2x with AMX): missed")
    assert cpu_path_lines([row("ort", 16, 2.4)]) == []  # nothing to compare with
