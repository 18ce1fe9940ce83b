"""torchrun with two CPU processes (gloo) against a single process with the same global batch."""

import json
import subprocess
import sys

import pytest
import torch

from ddpm.train.checkpoint import load_checkpoint

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "ddpm.train.cli"]
SINGLE = [sys.executable, "-m", "ddpm.train.cli"]


def args(data_dir, out, *extra):
    return [
        "--preset",
        "tiny",
        "--data-dir",
        str(data_dir),
        "--out",
        str(out),
        "--no-progress",
        "--no-samples",
        "--max-images",
        "64",
        "--batch-size",
        "16",
        "--epochs",
        "10",
        "--threads",
        "1",
        "--save-every",
        "3",
        *map(str, extra),
    ]


def run(command, *arguments):
    result = subprocess.run([*command, *arguments], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def assert_close(a, b):
    for key in ("model", "ema"):
        for name, tensor in a[key].items():
            assert torch.allclose(tensor, b[key][name], atol=2e-5, rtol=1e-4), (
                key,
                name,
                (tensor - b[key][name]).abs().max(),
            )


@pytest.fixture(scope="module")
def single_run(data_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("single")
    run(SINGLE, *args(data_dir, out, "--max-steps", 6))
    return load_checkpoint(out / "model.pt")


def test_two_processes_match_one(data_dir, tmp_path, single_run):
    out = tmp_path / "ddp"
    result = run(TORCHRUN, *args(data_dir, out, "--max-steps", 6))
    assert result.stdout.count("wrote ") == 1  # rank 0 alone reports and writes
    assert result.stderr.count("plan: steps") == 1
    checkpoint = load_checkpoint(out / "model.pt")
    assert checkpoint["progress"]["step"] == 6 and checkpoint["progress"]["processes"] == 2
    assert sorted(p.name for p in out.iterdir()) == ["ckpt-00000003.pt", "ckpt-00000006.pt", "log.jsonl", "model.pt"]
    steps = [json.loads(line)["step"] for line in (out / "log.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps))
    assert_close(checkpoint, single_run)
    assert not torch.equal(checkpoint["model"]["final.weight"], torch.zeros_like(checkpoint["model"]["final.weight"]))


def test_resume_under_two_processes(data_dir, tmp_path, single_run):
    out = tmp_path / "ddp"
    run(TORCHRUN, *args(data_dir, out, "--max-steps", 3))
    result = run(TORCHRUN, *args(data_dir, out, "--max-steps", 6, "--resume", "auto"))
    assert "resuming" in result.stderr
    assert_close(load_checkpoint(out / "model.pt"), single_run)


def test_global_batch_must_split_evenly(data_dir, tmp_path):
    result = subprocess.run(
        [*TORCHRUN, *args(data_dir, tmp_path / "o", "--max-steps", 2, "--batch-size", 15)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode != 0
    assert "must be divisible by the 2 processes" in result.stderr
    assert not (tmp_path / "o").exists()
