"""Sizes and names from options are bounded before any work (the low-severity hostile cases)."""

import pytest

from conftest import DATA_DIR, assert_one_line_error
from ddpm.benchmarks.bench import main as bench_main
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
    assert_one_line_error(result, "'--digit': lists at most 1000")
    assert result.code == 2  # a usage error, as every bad option is
    assert list(tmp_path.iterdir()) == []


def test_n_that_cannot_fit_in_memory_is_refused_before_sampling(invoke, tmp_path, monkeypatch):
    import ddpm.runtime.memory as memory
    from ddpm.runtime.pipeline import DDPM

    monkeypatch.setattr(memory, "available_memory", lambda: 50_000_000)
    monkeypatch.setattr(DDPM, "generate", lambda *a, **k: pytest.fail("sampled although the outputs cannot fit"))
    result = invoke(run_main, "-n", 20_000, "--gif", tmp_path / "o.gif", "--seed", 0)
    assert_one_line_error(result, "-n 20000 needs about", "GB is free")
    assert list(tmp_path.iterdir()) == []
