"""Sizes and names from options are bounded before any work (the low-severity hostile cases)."""

import pytest

from conftest import DATA_DIR, assert_one_line_error
from ddpm.benchmarks.bench import main as bench_main
from ddpm.export.cli import main as export_main
from ddpm.runtime.cli import main as run_main
from ddpm.runtime.eval_cli import main as eval_main
from ddpm.train.cli import main as train_main


@pytest.mark.parametrize("main, args, fragment", [
    (run_main, ["--frames", "100001", "--gif", "o.gif"], "--frames"),
    (run_main, ["--threads", "100000", "--png", "o.png"], "--threads"),
    (eval_main, ["--seed", str(2**63), "--data-dir", str(DATA_DIR)], "--seed"),
    (train_main, ["--seed", str(2**63), "--dry-run", "--data-dir", str(DATA_DIR)], "--seed"),
    (bench_main, ["--tag", "../x", "--quick"], "--tag"),
    (bench_main, ["--tag", ".hidden", "--quick"], "--tag"),
])
def test_bounded_options(invoke, tmp_path, monkeypatch, main, args, fragment):
    monkeypatch.chdir(tmp_path)
    assert_one_line_error(invoke(main, *args), fragment)
    assert list(tmp_path.iterdir()) == []


def test_digit_lists_are_bounded(invoke, tmp_path):
    result = invoke(run_main, "--digit", ",".join(["3"] * 1001), "--png", tmp_path / "o.png")
    assert_one_line_error(result, "--digit lists at most 1000")
    assert list(tmp_path.iterdir()) == []


def test_export_writes_the_onnx_path_as_given(invoke, tiny_export, tmp_path):
    target = tmp_path / "model.bin"
    result = invoke(export_main, "--ckpt", tiny_export / "model.pt", "--onnx", target, "--no-torchscript", "--fixed-batch", 2)
    assert result.code == 0, result.err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.b2.bin", "model.bin"]


def test_metadata_timesteps_are_bounded_before_allocating():
    from ddpm.runtime.metadata import ModelInfo

    info = ModelInfo(schedule={"kind": "linear", "timesteps": 10**8}, image_size=32, image_channels=1, data_range=(-1.0, 1.0))
    problems = info.problems()  # refused by the bound, not after building 10^8 betas
    assert any("timesteps 100000000 is not an integer in 1..100000" in p for p in problems)
    assert any("timesteps True" in p for p in ModelInfo(schedule={"kind": "linear", "timesteps": True}, image_size=32,
                                                         image_channels=1, data_range=(-1.0, 1.0)).problems())
