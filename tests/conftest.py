"""Fixtures shared by the test files, and how the tests are arranged.

- test_<module>.py holds one module's behaviour and is named after the module's file: test_schedule.py
  for core/schedule.py, test_session.py for runtime/session.py, test_samplers.py for the core/samplers
  package (UniPC, which needs diffusers, in test_unipc.py). Where packages share a module name, the
  package comes first: test_runtime_cli.py, test_train_cli.py, test_export_cli.py (the ddpm-run,
  ddpm-train and ddpm-export commands), test_runtime_pipeline.py, test_export_pipeline.py. A command's
  file holds what the command does with its options and the bad input only it meets; a behaviour one
  lower module implements lives with that module, even where a command is how the test reaches it.
- test_hostile_*.py are the cross-cutting hostile-input suites, each one kind of trouble run against
  every command or reader: test_hostile_matrix.py (missing, empty, truncated, random and foreign files
  and out-of-range numbers for every command), test_hostile_bounds.py, test_hostile_files.py (corrupt
  gzip, gzip and npz bombs), test_hostile_own_input.py, test_hostile_disk_and_names.py,
  test_hostile_faults.py (kills, signals, full disks, NaN losses), test_hostile_properties.py
  (hypothesis), test_hostile_runtime_failures.py (a model that misbehaves while sampling).
- test_gpu.py: every CUDA path, marked gpu (pytest -m gpu) and skipped without an NVIDIA GPU.
- test_diffusers_twins.py: every sampler against its diffusers scheduler (the test extra).
- test_layers.py: what each layer of the package may import.
- test_serve*.py: the serve package (ddpm-serve).
- Helpers shared between files are in tests_support.py; fixtures shared between files are here.
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

DATA_DIR = Path(__file__).parent / "data" / "mnist"
# The CPU batch measured by the runtime is cached per user; the tests keep theirs apart.
os.environ["XDG_CACHE_HOME"] = tempfile.mkdtemp(prefix="ddpm-test-cache-")


@dataclass
class Result:
    code: int
    out: str
    err: str


@pytest.fixture(scope="session")
def data_dir() -> Path:
    return DATA_DIR


@pytest.fixture
def invoke(capsys, monkeypatch) -> Callable[..., Result]:
    """Run a console-script ``main`` in this process with ``args``; return its exit code and output."""

    def run(main: Callable[[], None], *args: object) -> Result:
        monkeypatch.setattr(sys, "argv", ["prog", *map(str, args)])
        capsys.readouterr()
        with pytest.raises(SystemExit) as exit_info:
            main()
        captured = capsys.readouterr()
        code = exit_info.value.code
        return Result(code if isinstance(code, int) else 1, captured.out, captured.err)

    return run


def assert_one_line_error(result: Result, *fragments: str) -> None:
    """Exit code != 0, one line on stderr naming the problem, no traceback."""
    assert result.code != 0, result
    lines = [line for line in result.err.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one error line, got:\n{result.err}"
    assert "Traceback" not in result.err
    for fragment in fragments:
        assert fragment in lines[0], f"{fragment!r} not in {lines[0]!r}"


TINY_STEPS = 300


@pytest.fixture(scope="session")
def tiny_export(tmp_path_factory) -> Path:
    """A tiny model trained 300 steps on the MNIST slice (enough for stable sampling), exported.

    The folder holds model.pt, unet.onnx, unet.ts.pt and the fixed-batch copy unet.b3.onnx.
    """
    from ddpm.export.cli import main as export_main
    from ddpm.train.cli import main as train_main
    from tests_support import run_main

    root = tmp_path_factory.mktemp("tiny")
    assert (
        run_main(
            train_main,
            "--preset",
            "tiny",
            "--data-dir",
            DATA_DIR,
            "--out",
            root,
            "--max-steps",
            TINY_STEPS,
            "--epochs",
            20,
            "--ema-decay",
            0.99,
            "--no-progress",
            "--no-samples",
        )
        == 0
    )
    assert run_main(export_main, "--ckpt", root / "model.pt", "--fixed-batch", 3) == 0
    return root


@pytest.fixture(scope="session")
def variants(tiny_export, tmp_path_factory) -> Path:
    """The tiny model's GPU-oriented exports: fp16 and fused-step copies, dynamic and fixed batch 3
    (unet[.step][.fp16][.b3].onnx)."""
    from ddpm.export.cli import main as export_main
    from tests_support import run_main

    out = tmp_path_factory.mktemp("variants")
    assert (
        run_main(
            export_main,
            "--ckpt",
            tiny_export / "model.pt",
            "--out-dir",
            out,
            "--fp16",
            "--fused-step",
            "--fixed-batch",
            3,
            "--no-torchscript",
        )
        == 0
    )
    return out


@pytest.fixture
def tiny(tiny_export):
    """tiny_export, under the shorter name the runtime's tests use."""
    return tiny_export


@pytest.fixture(scope="session")
def conditional(tmp_path_factory) -> Path:
    """A tiny class-conditional model on the cosine schedule, a few steps trained, exported."""
    from ddpm.export.cli import main as export_main
    from ddpm.train.cli import main as train_main
    from tests_support import run_main as call_main

    root = tmp_path_factory.mktemp("conditional")
    assert (
        call_main(
            train_main,
            "--preset",
            "tiny",
            "--data-dir",
            DATA_DIR,
            "--out",
            root,
            "--max-steps",
            30,
            "--conditional",
            "--schedule",
            "cosine",
            "--no-progress",
            "--no-samples",
        )
        == 0
    )
    assert call_main(export_main, "--ckpt", root / "model.pt", "--fixed-batch", 4) == 0
    return root


@pytest.fixture(scope="session")
def latent_export(tmp_path_factory) -> Path:
    """A tiny latent model: an autoencoder (ae-tiny, 32x32 -> 2x16x16) and a class-conditional tiny U-Net
    on its latents, each a few steps trained, exported. The folder holds ae/model.pt, model.pt,
    unet.onnx with unet.decoder.onnx, and their TorchScript files."""
    from ddpm.export.cli import main as export_main
    from ddpm.train.autoencoder_cli import main as autoencoder_main
    from ddpm.train.cli import main as train_main
    from tests_support import run_main

    root = tmp_path_factory.mktemp("latent")
    common = (
        "--data-dir",
        DATA_DIR,
        "--no-progress",
        "--no-samples",
        "--max-images",
        256,
        "--batch-size",
        32,
        "--threads",
        1,
    )
    assert (
        run_main(
            autoencoder_main, "--preset", "ae-tiny", "--out", root / "ae", "--max-steps", 30, "--lr", 3e-3, *common
        )
        == 0
    )
    assert (
        run_main(
            train_main,
            "--preset",
            "tiny",
            "--autoencoder",
            root / "ae" / "model.pt",
            "--conditional",
            "--out",
            root,
            "--max-steps",
            60,
            "--epochs",
            10,
            "--ema-decay",
            0.9,
            *common,
        )
        == 0
    )
    assert run_main(export_main, "--ckpt", root / "model.pt") == 0
    return root


@pytest.fixture(scope="session")
def int8_export(tiny_export, tmp_path_factory):
    from ddpm.export.cli import main as export_main
    from tests_support import run_main as run

    out = tmp_path_factory.mktemp("int8")
    assert (
        run(
            export_main,
            "--ckpt",
            tiny_export / "model.pt",
            "--out-dir",
            out,
            "--int8",
            "--data-dir",
            DATA_DIR,
            "--no-torchscript",
        )
        == 0
    )
    return out


def assert_error_line(result: Result, *fragments: str) -> None:
    """For failures after progress output: exit code != 0, exactly one 'error:' line naming the problem,
    no traceback."""
    assert result.code != 0, result
    assert "Traceback" not in result.err
    errors = [line for line in result.err.splitlines() if ": error: " in line]
    assert len(errors) == 1, result.err
    for fragment in fragments:
        assert fragment in errors[0], f"{fragment!r} not in {errors[0]!r}"


@pytest.fixture
def package_copy(tmp_path, monkeypatch):
    """A copy of the package's models folder standing in for the installed one (never the real one)."""
    import shutil

    from ddpm.runtime import eps_check, installed, pipeline, quality

    folder = tmp_path / "site-packages" / "ddpm" / "runtime" / "models"
    shutil.copytree(installed.models_dir(), folder)
    for module in (installed, pipeline, quality, eps_check):
        monkeypatch.setattr(module, "models_dir", lambda: folder)
    return folder
