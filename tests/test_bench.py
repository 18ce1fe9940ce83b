"""ddpm-bench (benchmarks/bench.py): the quick run end to end, where its files go and how it says so, rows
that need PyTorch and the chart that needs matplotlib skipped without them, and bad options and models refused
in one line."""

import json
import re
import sys
from pathlib import Path

import pytest
from conftest import assert_one_line_error

from ddpm.benchmarks import bench, steps
from ddpm.benchmarks.bench import main as bench_main
from ddpm.runtime.openvino_session import bf16_support, openvino_version

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning", "ignore::DeprecationWarning")


@pytest.fixture(autouse=True)
def no_settling(monkeypatch):
    monkeypatch.setattr(steps, "SETTLE_SECONDS", 0.0)


def test_quick_end_to_end(invoke, tiny_export, tmp_path):
    result = invoke(
        bench_main,
        "--quick",
        "--models",
        "small",
        "--onnx",
        tiny_export / "unet.onnx",
        "--out-dir",
        tmp_path,
        "--tag",
        "t",
    )
    assert result.code == 0, result.err
    assert result.out.splitlines()[0] == f"writing to {tmp_path}/"  # a chosen folder, named before the work starts
    report = json.loads((tmp_path / "bench-t.json").read_text())
    assert {"machine", "limits", "rows", "targets", "settings", "models"} <= set(report)
    assert report["limits"]["cpu_sgemm_gflops"] > 0
    assert report["settings"]["quick"] is True
    rows = report["rows"]
    implementations = {(r["implementation"], r["batch"]) for r in rows}
    assert implementations == {
        (i, b)
        for i in ("eager", "torchscript", "ort", "ort-int8", "ov", "ov-bf16", "ov-int8", "ort-iobinding", "ort-fused")
        for b in (1, 16)
    }
    openvino_rows = [r for r in rows if r["implementation"].startswith("ov")]
    if openvino_version() is None:
        assert all('pip install "ddpm-mnist[openvino]"' in r["note"] for r in openvino_rows)
    else:
        timed = {r["implementation"] for r in openvino_rows if r["step_s_median"] is not None}
        assert timed == ({"ov", "ov-int8"} | ({"ov-bf16"} if bf16_support() is None else set()))
        assert ("cpu_bf16_gflops" in report["limits"]) == (bf16_support() is None)
    assert report["targets"] == []  # set for the embedded model, not for --onnx tiny
    assert any(note.startswith("targets not judged: they are set for the embedded model") for note in report["notes"])
    assert all(r["provider"] == "cpu" for r in rows)  # no CUDA rows on a machine without a GPU
    measured = [r for r in rows if r["per_sample_method"].startswith("measured")]
    assert len(measured) == 1 and measured[0]["implementation"] == "ort" and measured[0]["batch"] == 1
    assert measured[0]["per_sample_method"] == "measured (1000-step loop, median of 1)"
    skipped = [r for r in rows if r["step_s_median"] is None]  # ov-bf16 on a CPU without native bf16
    assert all(r["steps_timed"] == 0 and r["note"].startswith("skipped: ") for r in skipped)
    assert {r["implementation"] for r in skipped} <= {"ov-bf16"}
    for row in (r for r in rows if r["step_s_median"] is not None):
        assert row["steps_timed"] == 10
        assert row["step_s_min"] <= row["step_s_median"] <= row["step_s_max"]
        assert row["speedup_vs_seed"] == pytest.approx(50 / row["per_sample_s"])
        if not row["per_sample_method"].startswith("measured"):
            assert row["per_sample_method"] == "extrapolated"
            assert row["per_sample_s"] == pytest.approx(row["step_s_median"] * 1000 / row["batch"])
    samplers = report["sampler_rows"]  # --quick leaves out the 1000-step ancestral run
    assert [(r["sampler"], r["steps"]) for r in samplers] == [
        ("ddim", 50),
        ("dpm++2m", 20),
        ("dpm++2m-sde", 20),
        ("unipc", 10),
    ]
    ort = [r for r in rows if r["implementation"] == "ort"]  # batch 1's row too: on a busy CPU it can be the fastest
    fastest = min(ort, key=lambda r: r["step_s_median"] / r["batch"])["batch"]
    for row in samplers:  # each model at its fastest batch
        assert row["runs"] == 5  # the tiny model's runs are short: each row is the median of five
        assert row["per_sample_s"] == pytest.approx(row["seconds"] / row["batch"]) and row["batch"] == fastest
        assert row["decoder_share"] == 0.0  # a pixel model decodes nothing
    markdown = (tmp_path / "bench-t.md").read_text()
    assert "CPU flags: " in markdown
    assert markdown.count("| small |") == len(rows) + len(samplers)
    assert f"| small | cpu | dpm++2m | 20 | {fastest} |" in markdown
    assert (tmp_path / "bench-t.png").stat().st_size > 1000


SMALL_RUN = (
    "--quick",
    "--models",
    "small",
    "--implementations",
    "ort",
    "--no-full-loop",
    "--no-samplers",
    "--cpu-batches",
    "2",
)


def test_the_default_folder_is_named_in_the_first_line_and_in_help(invoke, tiny_export, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = invoke(bench_main, *SMALL_RUN, "--onnx", tiny_export / "unet.onnx", "--tag", "d")
    assert result.code == 0, result.err
    lines = result.out.splitlines()
    assert lines[0] == "writing to ./bench-results/ (--out-dir to change)"
    assert lines[-1].startswith(f"wrote {Path('bench-results') / 'bench-d.json'}")
    assert json.loads((tmp_path / "bench-results" / "bench-d.json").read_text())["rows"]
    help_text = " ".join(invoke(bench_main, "--help").out.split())
    assert "[default: ./bench-results/ in the current folder]" in help_text
    assert "a few minutes on 2 cores" in help_text and "under a minute" not in help_text


def test_without_matplotlib_one_line_names_the_bench_extra(invoke, tiny_export, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now raises ImportError
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)
    result = invoke(bench_main, *SMALL_RUN, "--onnx", tiny_export / "unet.onnx", "--out-dir", tmp_path, "--tag", "nm")
    assert result.code == 0, result.err
    named = [line for line in result.err.splitlines() if "matplotlib" in line or "[bench]" in line]
    assert named == ['chart skipped: matplotlib is not installed (pip install "ddpm-mnist[bench]")']
    assert (tmp_path / "bench-nm.json").exists() and (tmp_path / "bench-nm.md").exists()
    assert not (tmp_path / "bench-nm.png").exists()
    assert result.out.splitlines()[-1] == f"wrote {tmp_path / 'bench-nm.json'}, .md"


def test_rows_needing_torch_are_skipped_without_it(invoke, tiny_export, tmp_path, monkeypatch):
    monkeypatch.setattr(bench, "try_import_torch", lambda: None)
    result = invoke(
        bench_main,
        "--quick",
        "--onnx",
        tiny_export / "unet.onnx",
        "--out-dir",
        tmp_path,
        "--tag",
        "nt",
        "--no-full-loop",
        "--cpu-batches",
        "2",
    )
    assert result.code == 0, result.err
    rows = json.loads((tmp_path / "bench-nt.json").read_text())["rows"]
    skipped = [r for r in rows if r["implementation"] in ("eager", "torchscript")]
    assert skipped and all(
        r["step_s_median"] is None and 'PyTorch is not installed (pip install "ddpm-mnist[train]")' in r["note"]
        for r in skipped
    )
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


def test_the_openvino_hints_table(capsys, monkeypatch):
    pytest.importorskip("openvino")
    from ddpm.benchmarks import openvino_hints

    monkeypatch.setattr("sys.argv", ["hints", "--batches", "2", "--repeats", "1"])
    openvino_hints.main()
    rows = [
        line for line in capsys.readouterr().out.splitlines() if line.startswith("| fp32") or line.startswith("| int8")
    ]
    assert [row.split("|")[1].split()[:2] for row in rows] == [
        ["fp32", "LATENCY"],
        ["fp32", "THROUGHPUT"],
        ["int8", "LATENCY"],
        ["int8", "THROUGHPUT"],
    ]
    assert all(float(row.split("|")[2]) > 0 for row in rows)


def test_latent_rows_time_the_unet_on_latents_and_the_decoder_in_the_sampler_rows(
    invoke, tiny_export, latent_export, tmp_path
):
    result = invoke(
        bench_main,
        "--quick",
        "--models",
        "small,latent",
        "--onnx",
        tiny_export / "unet.onnx",
        "--latent-onnx",
        latent_export / "unet.onnx",
        "--implementations",
        "ort",
        "--no-full-loop",
        "--out-dir",
        tmp_path,
        "--tag",
        "t",
    )
    assert result.code == 0, result.err
    report = json.loads((tmp_path / "bench-t.json").read_text())
    assert {r["model"] for r in report["rows"]} == {"small", "latent"}
    latent = [r for r in report["sampler_rows"] if r["model"] == "latent"]
    fp32 = [r for r in latent if r["provider"] == "cpu"]
    assert [r["sampler"] for r in fp32] == ["ddim", "dpm++2m", "dpm++2m-sde", "unipc"]
    fastest = [r for r in latent if r["provider"] != "cpu"]  # again with each graph on its fastest path
    assert [r["sampler"] for r in fastest] == ["ddim", "dpm++2m", "dpm++2m-sde", "unipc"]
    assert all(re.fullmatch(r"cpu auto \(U-Net .+ \w+, decoder .+ \w+\)", r["provider"]) for r in fastest)
    assert all(0.0 < r["decoder_share"] < 1.0 for r in latent)
    assert report["models"]["latent"]["flops_per_image_step"] < report["models"]["small"]["flops_per_image_step"]
    assert not any(line.startswith("Latent vs pixel") for line in report["targets"])  # set for the embedded pair only
    assert "decoder share" in (tmp_path / "bench-t.md").read_text()


def test_rows_of_embedded_models_know_their_names_and_int8_copies(tmp_path, latent_export):
    from ddpm.benchmarks.models import prepare_models
    from ddpm.runtime.pipeline import embedded_model_path

    shipped, _ = prepare_models(["student"], None, None, tmp_path, None, lambda line: None)
    assert shipped[0].shipped == "latent-student"  # auto rows open it by name, its int8 copy among the paths
    assert shipped[0].shipped_int8() == embedded_model_path("latent-student", "int8")
    given, _ = prepare_models(["student"], None, None, tmp_path, None, print, student_onnx=latent_export / "unet.onnx")
    assert given[0].shipped is None and given[0].shipped_int8() is None
