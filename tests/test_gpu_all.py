"""benchmarks/gpu_all.sh, the prepared GPU job, in its dry run on the CPU: each step under its own budget, its
results packed into $OUT after it, and steps.txt saying what became of every step (ok, failed rc N, timed out,
skipped and why). Only a few steps are selected, so the module takes about half a minute."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_all.sh"
pytestmark = pytest.mark.skipif(
    shutil.which("bash") is None or shutil.which("timeout") is None, reason="needs bash and timeout"
)


def run_script(tmp_path: Path, *args: str, **env: str) -> dict[str, str]:
    """Run the script; return each step's status column from $OUT/steps.txt."""
    environment = {
        **os.environ,
        "OUT": str(tmp_path / "out"),
        "GPU_ALL_WORK": str(tmp_path / "work"),
        "PYTHON": sys.executable,
        **env,
    }
    environment.pop("DRY_RUN", None)
    result = subprocess.run(["bash", str(SCRIPT), *args], env=environment, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    lines = (tmp_path / "out" / "steps.txt").read_text().splitlines()
    assert lines[0].startswith("# gpu_all.sh") and lines[1].split()[:3] == ["step", "name", "status"]
    rows = [re.fullmatch(r"(\S+) +\S+ +(.*?) +(\d+) +(\d+)", line) for line in lines[2:]]
    assert all(rows), lines
    return {row[1]: row[2] for row in rows}


def test_dry_run_runs_the_selected_steps_and_packs_their_results(tmp_path):
    status = run_script(tmp_path, "--dry-run", "--only", "1,3")
    assert list(status) == ["0", "1", "2a", "2b", "2c", "3", "4", "5"]
    assert status["0"] == status["1"] == status["3"] == "ok"
    assert all(status[s] == "skipped: not selected" for s in ("2a", "2b", "2c", "4", "5"))
    out = tmp_path / "out"
    assert "onnxruntime" in (out / "machine.txt").read_text()
    assert "1 at once" in (out / "summary.md").read_text()
    with tarfile.open(out / "results.tar.gz") as archive:
        names = set(archive.getnames())
    assert {"steps/1/gpu-tests.xml", "steps/3/serving-concurrency-cpu.json", "steps/3/log.txt"} <= names
    assert len(list(out.iterdir())) <= 8  # what the device tool brings back: at most 8 files


def test_a_step_past_its_budget_is_timed_out_and_a_failed_one_does_not_stop_the_next(tmp_path):
    status = run_script(tmp_path, "--dry-run", "--from", "3", BUDGET_3="2", DDPM_DATA_DIR=str(tmp_path / "missing"))
    assert status["0"] == "ok" and status["2c"] == "skipped: not selected"
    assert status["3"] == "timed out"
    assert status["4"].startswith("failed rc 1")  # no MNIST there: it ran after the step that timed out
    assert status["5"] == "failed rc 1 (--compile skipped in a dry run)"  # and this one after a failed step


@pytest.mark.skipif(shutil.which("nvidia-smi") is not None, reason="this machine has a GPU")
def test_without_a_gpu_the_real_steps_say_why_they_are_skipped(tmp_path):
    status = run_script(tmp_path, "--only", "1,5", DEADLINE="60")
    assert status["1"] == "skipped: no CUDA provider in onnxruntime"
    assert status["5"] == "skipped: no CUDA in PyTorch"
