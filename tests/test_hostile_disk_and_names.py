"""Full disks, over-long names and a killed writer's leftovers, on every command that writes."""

import errno
import fcntl
import os

import pytest
from conftest import DATA_DIR, assert_error_line, assert_one_line_error

from ddpm.benchmarks.bench import main as bench_main
from ddpm.core import files
from ddpm.export.cli import main as export_main
from ddpm.runtime.cli import main as run_main
from ddpm.runtime.eval_cli import main as eval_main
from ddpm.train.cli import main as train_main
from ddpm.train.judge import main as judge_main

LONG = "a" * 300
FAST = ("--sampler", "ddim", "--steps", "3")


def _disk_full(monkeypatch, after: int = 0):
    """The disk is full once ``after`` files have been flushed to it."""
    flushed = []

    def fsync(fd):
        if len(flushed) == after:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        flushed.append(fd)

    monkeypatch.setattr(files.os, "fsync", fsync)


def _writers(export):
    onnx = export / "unet.onnx"
    return {
        "run-png": (run_main, ["--onnx", onnx, "-n", 2, *FAST, "--png"]),
        "run-gif": (run_main, ["--onnx", onnx, "-n", 2, *FAST, "--frames", 2, "--gif"]),
        "eval-json": (eval_main, ["--onnx", onnx, "-n", 20, *FAST, "--data-dir", DATA_DIR, "--json"]),
        # --no-verify: the disk fills when the verified files are put in place, which verifying only delays
        "export-onnx": (
            export_main,
            ["--ckpt", export / "model.pt", "--no-torchscript", "--no-verify", "--overwrite", "--onnx"],
        ),
    }


# A latent model's sampling writes the same outputs; its export writes two files, the decoder (old.decoder.out
# beside --onnx old.out) then the U-Net, and the disk fills at the second: neither old file may change.
@pytest.mark.parametrize(
    "model, writer",
    [
        *[("pixel", writer) for writer in ("run-png", "run-gif", "eval-json", "export-onnx")],
        *[("latent", writer) for writer in ("run-png", "run-gif", "eval-json", "export-onnx")],
    ],
)
def test_a_full_disk_keeps_the_old_file(invoke, request, tmp_path, monkeypatch, model, writer):
    main, args = _writers(request.getfixturevalue("tiny_export" if model == "pixel" else "latent_export"))[writer]
    target = tmp_path / {"run-png": "old.png", "run-gif": "old.gif"}.get(
        writer, "old.out"
    )  # its own format's extension
    old = {target: b"the previous result"}
    if model == "latent" and writer == "export-onnx":
        old[tmp_path / "old.decoder.out"] = b"the previous decoder"
    for path, content in old.items():
        path.write_bytes(content)
    _disk_full(monkeypatch, after=len(old) - 1)
    result = invoke(main, *args, target)
    assert_error_line(result, "No space left on device")
    assert {path: path.read_bytes() for path in old} == old
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(path.name for path in old)  # no temporary file left


def test_bench_results_on_a_full_disk(invoke, tiny_export, tmp_path, monkeypatch):
    _disk_full(monkeypatch)
    out = tmp_path / "results"
    result = invoke(
        bench_main,
        "--quick",
        "--models",
        "small",
        "--implementations",
        "ort",
        "--cpu-batches",
        1,
        "--no-full-loop",
        "--no-samplers",
        "--onnx",
        tiny_export / "unet.onnx",
        "--out-dir",
        out,
        "--tag",
        "t",
    )
    assert_error_line(result, "No space left on device")
    assert not out.exists()  # the folder made for the results is gone with them


def test_a_failed_epoch_grid_warns_and_training_goes_on(invoke, data_dir, tmp_path, monkeypatch):
    import ddpm.train.trainer as trainer

    def write_png(path, images, scale=3):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(trainer, "write_png", write_png)
    out = tmp_path / "run"
    result = invoke(
        train_main,
        "--preset",
        "tiny",
        "--data-dir",
        data_dir,
        "--out",
        out,
        "--no-progress",
        "--max-images",
        64,
        "--batch-size",
        32,
        "--epochs",
        2,
        "--sample-steps",
        2,
        "--sample-count",
        2,
        "--threads",
        1,
    )
    assert result.code == 0, result.err
    assert result.err.count("could not write the epoch") == 2 and "No space left on device" in result.err
    assert (out / "ckpt-00000004.pt").exists() and not list(out.glob("samples-*"))


@pytest.mark.parametrize(
    "main, args",
    [
        (run_main, ["--png", f"{LONG}.png"]),
        (run_main, ["--gif", f"new/{LONG}/x.gif"]),
        (run_main, ["--npz", "out.npz/"]),
        (run_main, ["--png", "out/"]),
        (eval_main, ["--json", f"{LONG}.json"]),
        (eval_main, ["--json", "report.json/"]),
        (export_main, ["--ckpt", "missing.pt", "--onnx", f"new/{LONG}.onnx"]),
        (export_main, ["--ckpt", "missing.pt", "--out-dir", f"new/{LONG}"]),
        (export_main, ["--ckpt", "missing.pt", "--torchscript", "unet.pt/"]),
        (train_main, ["--out", f"runs/{LONG}", "--dry-run"]),
        (judge_main, ["--out", f"{LONG}.pt"]),
        (bench_main, ["--quick", "--out-dir", f"new/{LONG}"]),
    ],
)
def test_bad_output_names_are_refused_before_any_work(invoke, tmp_path, monkeypatch, main, args):
    monkeypatch.chdir(tmp_path)
    option = next(
        arg
        for arg in args
        if str(arg) in ("--png", "--gif", "--npz", "--json", "--onnx", "--out-dir", "--torchscript", "--out")
    )
    fragment = (
        "ends in a slash" if str(args[args.index(option) + 1]).endswith("/") else "bytes long; file systems allow 255"
    )
    assert_one_line_error(invoke(main, *args), option, fragment)
    assert list(tmp_path.iterdir()) == []


def test_a_failed_export_leaves_no_folder(invoke, tiny_export, tmp_path):
    out = tmp_path / "new" / "deeper"
    result = invoke(export_main, "--ckpt", tiny_export / "model.pt", "--out-dir", out, "--atol", "1e-30")
    assert_one_line_error(result, "verification failed")
    assert list(tmp_path.iterdir()) == []


def test_a_killed_exports_temporaries_are_removed_and_a_live_ones_kept(invoke, tiny_export, tmp_path):
    dead = tmp_path / ".unet.onnx.k1ll3d.tmp"  # what a SIGKILL during an export leaves: nobody holds its lock
    dead.write_bytes(b"half an onnx file")
    live = tmp_path / ".unet.onnx.w0rk1n.tmp"  # another export still writing it
    live.write_bytes(b"being written")
    with open(live, "rb") as holder:
        fcntl.flock(holder, fcntl.LOCK_EX | fcntl.LOCK_NB)
        result = invoke(export_main, "--ckpt", tiny_export / "model.pt", "--out-dir", tmp_path, "--no-torchscript")
        assert result.code == 0, result.err
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == [".unet.onnx.w0rk1n.tmp", "unet.onnx"]
