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
    from ddpm.core.metadata import ModelInfo

    info = ModelInfo(schedule={"kind": "linear", "timesteps": 10**8}, image_size=32, image_channels=1, data_range=(-1.0, 1.0))
    problems = info.problems()  # refused by the bound, not after building 10^8 betas
    assert any("timesteps 100000000 is not an integer in 1..100000" in p for p in problems)
    assert any("timesteps True" in p for p in ModelInfo(schedule={"kind": "linear", "timesteps": True}, image_size=32,
                                                         image_channels=1, data_range=(-1.0, 1.0)).problems())


@pytest.mark.parametrize("change, fragment", [
    ({"schedule": {"kind": "linear", "timesteps": 1000, "beta_start": 1e-20, "beta_end": 0.02}}, "1 - alpha_bar round"),
    ({"data_range": (-1e308, 1e308)}, "within ±1e+06"),
    ({"data_range": (0.0, float("nan"))}, "data_range"),
])
def test_settings_that_can_only_end_in_nan_are_impossible(change, fragment):
    from ddpm.core.metadata import ModelInfo

    settings = {"schedule": {"kind": "linear", "timesteps": 1000}, "image_size": 32, "image_channels": 1,
                "data_range": (-1.0, 1.0)}
    assert ModelInfo(**settings).problems() == []
    problems = ModelInfo(**{**settings, **change}).problems()
    assert len(problems) == 1 and fragment in problems[0], problems


def test_metadata_with_nan_is_refused_as_not_json():
    from ddpm.core.errors import DDPMError
    from ddpm.core.metadata import ModelInfo

    props = ModelInfo(schedule={"kind": "linear", "timesteps": 1000}, image_size=32, image_channels=1,
                      data_range=(-1.0, 1.0), source={"step": 3}).to_metadata()
    assert ModelInfo.from_metadata(props).source == {"step": 3}
    props["ddpm.source"] = '{"step": NaN}'  # Python's json reads it; --info would print it, and it is not JSON
    with pytest.raises(DDPMError, match="ddpm.source is not valid JSON"):
        ModelInfo.from_metadata(props)


def test_n_that_cannot_fit_in_memory_is_refused_before_sampling(invoke, tmp_path, monkeypatch):
    import ddpm.runtime.memory as memory
    from ddpm.runtime.pipeline import DDPM

    monkeypatch.setattr(memory, "available_memory", lambda: 50_000_000)
    monkeypatch.setattr(DDPM, "generate", lambda *a, **k: pytest.fail("sampled although the outputs cannot fit"))
    result = invoke(run_main, "-n", 20_000, "--gif", tmp_path / "o.gif", "--seed", 0)
    assert_one_line_error(result, "-n 20000 needs about", "GB is free")
    assert list(tmp_path.iterdir()) == []


def test_memory_estimate_grows_with_what_is_kept():
    from ddpm.runtime.memory import memory_needed

    plain = memory_needed(1000, 32, 1, frames=0, scale=0)
    assert plain == 3 * 4 * 1000 * 32 * 32  # x, ε and the next x in float32
    assert memory_needed(2000, 32, 1, 0, 0) == 2 * plain
    assert memory_needed(1000, 32, 1, 40, 3) > 40 * 1000 * 32 * 32 * 9  # every frame as an upscaled grid


def test_memory_check_counts_both_pictures_of_each_frame(monkeypatch):
    """--show both keeps x_t and x̂_0 for every frame: twice the frames of --show xt."""
    from types import SimpleNamespace

    import ddpm.runtime.memory as memory
    from ddpm.core.errors import DDPMError

    info = SimpleNamespace(image_size=32, image_channels=1)
    one_picture = memory.memory_needed(100, 32, 1, frames=40, scale=3)
    monkeypatch.setattr(memory, "available_memory", lambda: one_picture)
    memory.check_memory(100, info, SimpleNamespace(frames=40, show="xt"), 3)  # fits exactly
    with pytest.raises(DDPMError, match="-n 100 needs about"):
        memory.check_memory(100, info, SimpleNamespace(frames=40, show="both"), 3)


@pytest.mark.parametrize("message", ["DefaultCPUAllocator: can't allocate memory: you tried to allocate 8 GB",
                                     "CUDA out of memory. Tried to allocate 2.00 GiB"])
def test_torch_allocation_failures_are_one_line(capsys, monkeypatch, message):
    import sys

    import click

    from ddpm.core.console import run_command

    @click.command()
    def command():
        raise RuntimeError(message + "\nmore lines of detail")

    monkeypatch.setattr(sys, "argv", ["ddpm-train"])
    with pytest.raises(SystemExit) as exit_info:
        run_command(command, "ddpm-train")
    err = capsys.readouterr().err
    assert exit_info.value.code == 1 and err.count("\n") == 1
    assert err.startswith("ddpm-train: error: out of memory (") and "more lines" not in err


def test_other_runtime_errors_are_not_disguised_as_memory(monkeypatch):
    import sys

    import click

    from ddpm.core.console import run_command

    @click.command()
    def command():
        raise RuntimeError("a bug")

    monkeypatch.setattr(sys, "argv", ["ddpm-train"])
    with pytest.raises(RuntimeError, match="a bug"):
        run_command(command, "ddpm-train")
