"""Sizes and names from options are bounded before any work (the low-severity hostile cases)."""

import pytest
from conftest import DATA_DIR, assert_one_line_error

from ddpm.benchmarks.bench import main as bench_main
from ddpm.runtime.cli import main as run_main
from ddpm.runtime.eval_cli import main as eval_main
from ddpm.train.cli import main as train_main


@pytest.mark.parametrize(
    "main, args, fragment",
    [
        (run_main, ["--frames", "100001", "--gif", "o.gif"], "--frames"),
        (run_main, ["--threads", "100000", "--png", "o.png"], "--threads"),
        (eval_main, ["--seed", str(2**63), "--data-dir", str(DATA_DIR)], "--seed"),
        (train_main, ["--seed", str(2**63), "--dry-run", "--data-dir", str(DATA_DIR)], "--seed"),
        (bench_main, ["--tag", "../x", "--quick"], "--tag"),
        (bench_main, ["--tag", ".hidden", "--quick"], "--tag"),
    ],
)
def test_bounded_options(invoke, tmp_path, monkeypatch, main, args, fragment):
    monkeypatch.chdir(tmp_path)
    assert_one_line_error(invoke(main, *args), fragment)
    assert list(tmp_path.iterdir()) == []


def test_digit_lists_are_bounded(invoke, tmp_path):
    result = invoke(run_main, "--digit", ",".join(["3"] * 1001), "--png", tmp_path / "o.png")
    assert_one_line_error(result, "'--digit': lists at most 1000")
    assert result.code == 2  # a usage error, as every bad option is
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("model", [[], ["--model", "latent"]], ids=["pixel", "latent"])
def test_n_that_cannot_fit_in_memory_is_refused_before_sampling(invoke, tmp_path, monkeypatch, model):
    """2000 digits with a GIF need about 1.8 GB: 1.2 GB free is too little. The embedded latent model samples
    4x8x8 latents, which would need 0.6 GB: its outputs are the decoded 32x32 images, and they must fit."""
    import ddpm.runtime.memory as memory
    from ddpm.runtime.pipeline import DDPM

    monkeypatch.setattr(memory, "available_memory", lambda: 1_200_000_000)
    monkeypatch.setattr(DDPM, "generate", lambda *a, **k: pytest.fail("sampled although the outputs cannot fit"))
    result = invoke(run_main, *model, "-n", 2000, "--gif", tmp_path / "o.gif", "--seed", 0)
    assert_one_line_error(result, "-n 2000 needs about 1.8 GB", "1.2 GB is free")
    assert list(tmp_path.iterdir()) == []
