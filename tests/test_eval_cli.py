"""ddpm-eval (runtime/eval_cli.py): reports for an npz or for a model it samples itself, the per-digit targets
of a conditional run, running without torch, and bad archives and options refused in one line."""

import json
import subprocess
import sys

import numpy as np
import pytest
from conftest import DATA_DIR, assert_one_line_error

from ddpm.core.plan import DEFAULT_GUIDANCE
from ddpm.runtime.cli import main as run_main
from ddpm.runtime.eval_cli import main as eval_main
from tests_support import idx_bytes

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning", "ignore::DeprecationWarning")


@pytest.fixture(scope="module")
def samples_npz(tiny_export, tmp_path_factory):
    from ddpm.runtime.cli import main as run_main
    from tests_support import run_main as call

    path = tmp_path_factory.mktemp("npz") / "samples.npz"
    assert call(run_main, "--onnx", tiny_export / "unet.onnx", "-n", "40", "--steps", "20", "--npz", path, "-q") == 0
    return path


def test_eval_of_an_npz(invoke, samples_npz, data_dir, tmp_path):
    result = invoke(eval_main, "--npz", samples_npz, "--data-dir", data_dir, "--json", tmp_path / "report.json")
    assert result.code == 0, result.err
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["samples"]["count"] == report["floor"]["count"] == 40
    assert len(report["targets"]) == 3 and report["transform"] == "pad"
    assert abs(sum(report["samples"]["histogram"]) - 1) < 1e-9
    assert "Fréchet distance" in result.out and "real (floor)" in result.out


def test_eval_samples_a_model_itself(invoke, tiny_export, data_dir):
    result = invoke(
        eval_main, "--onnx", tiny_export / "unet.onnx", "-n", "20", "--steps", "5", "--data-dir", data_dir, "-q"
    )
    assert result.code == 0, result.err
    assert "images" in result.out and "20" in result.out


def test_run_and_eval_with_digits(invoke, conditional, tmp_path):
    out = tmp_path / "all.npz"
    result = invoke(
        run_main,
        "--onnx",
        conditional / "unet.onnx",
        "--digit",
        "all",
        "--sampler",
        "ddim",
        "--steps",
        5,
        "--npz",
        out,
        "--png",
        tmp_path / "all.png",
        "-q",
    )
    assert result.code == 0, result.err
    archive = np.load(out)
    settings = json.loads(str(archive["settings"]))
    assert archive["images"].shape[0] == 20 and settings["labels"] == list(range(10)) * 2
    assert settings["guidance"] == DEFAULT_GUIDANCE and settings["sampler"] == "ddim"
    result = invoke(eval_main, "--npz", out, "--data-dir", DATA_DIR, "--json", tmp_path / "r.json")
    assert result.code == 0, result.err
    report = json.loads((tmp_path / "r.json").read_text())
    assert 0.0 <= report["samples"]["accuracy"] <= 1.0
    assert report["floor"]["accuracy"] >= 0.9  # the judge on real digits
    assert any(line.startswith("judged as requested >= 0.98") for line in report["targets"])
    assert any(line.startswith("worst digit judged as requested >= 0.95") for line in report["targets"])
    assert any(line.startswith("Fréchet distance <= 1.5 x floor") for line in report["targets"])


def test_eval_runs_without_torch(samples_npz, data_dir):
    script = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('torch', 'torchvision', 'onnx') "
        "or name.startswith(('ddpm.train', 'ddpm.export')):\n"
        "            raise ImportError(name + ' is blocked here')\n"
        "sys.meta_path.insert(0, Block())\n"
        "from ddpm.runtime.eval_cli import main\n"
        "main()\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script, "--npz", str(samples_npz), "--data-dir", str(data_dir)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert "Fréchet distance" in result.stdout


@pytest.mark.parametrize(
    "kind, fragment",
    [
        ("no_images", "has no 'images' array"),
        ("float", "expected uint8"),
        ("shape", "expected [N, H, W]"),
        ("one_image", "at least 2"),
        ("empty_file", "is empty"),
        ("truncated", "not a readable .npz"),
        ("missing", "does not exist"),
        ("too_many", "half the test set"),
    ],
)
def test_bad_npz(invoke, data_dir, tmp_path, kind, fragment):
    path = tmp_path / "bad.npz"
    if kind == "no_images":
        np.savez(path, pictures=np.zeros((3, 32, 32), np.uint8))
    elif kind == "float":
        np.savez(path, images=np.zeros((3, 32, 32), np.float32))
    elif kind == "shape":
        np.savez(path, images=np.zeros((3, 32, 30), np.uint8))
    elif kind == "one_image":
        np.savez(path, images=np.zeros((1, 32, 32), np.uint8))
    elif kind == "empty_file":
        path.write_bytes(b"")
    elif kind == "truncated":
        np.savez(path, images=np.zeros((3, 32, 32), np.uint8))
        path.write_bytes(path.read_bytes()[:100])
    elif kind == "too_many":
        np.savez(path, images=np.zeros((101, 32, 32), np.uint8))
    before = sorted(tmp_path.iterdir())
    result = invoke(eval_main, "--npz", path, "--data-dir", data_dir, "--json", tmp_path / "r.json")
    assert_one_line_error(result, fragment)
    assert sorted(tmp_path.iterdir()) == before


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["-n", "0"], "-n"),
        (["-n", "-5"], "-n"),
        (["-n", "101"], "half the test set"),
        (["--data-dir", "NOWHERE"], "does not exist"),
    ],
)
def test_bad_options(invoke, tiny_export, data_dir, tmp_path, args, fragment):
    args = [str(tmp_path / "nowhere") if a == "NOWHERE" else a for a in args]
    if "--data-dir" not in args:
        args += ["--data-dir", str(data_dir)]
    result = invoke(eval_main, "--onnx", tiny_export / "unet.onnx", *args)
    assert_one_line_error(result, fragment)


def test_a_reference_that_is_not_mnists_test_set_is_named_in_a_warning(invoke, data_dir, tmp_path, monkeypatch):
    """Valid IDX files of other digits (here rotated) still score, with one warning line naming the folder
    and the report saying so; with MNIST's content there is no warning."""
    from ddpm.core import download
    from ddpm.core.mnist import load_mnist

    images, labels = load_mnist(data_dir, "test")
    foreign = tmp_path / "rotated"
    foreign.mkdir()
    (foreign / "t10k-images-idx3-ubyte").write_bytes(idx_bytes(np.rot90(images, axes=(1, 2))))
    (foreign / "t10k-labels-idx1-ubyte").write_bytes(idx_bytes(labels))
    samples = tmp_path / "samples.npz"
    np.savez(samples, images=np.pad(images[:20], ((0, 0), (2, 2), (2, 2))))

    result = invoke(eval_main, "--npz", samples, "--data-dir", foreign, "--json", tmp_path / "r.json")
    assert result.code == 0, result.err
    lines = [line for line in result.err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("ddpm-eval: warning: ") and str(foreign) in lines[0], result.err
    assert "not MNIST's" in lines[0] and "Fréchet distance" in result.out
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["reference_is_mnist"] is False and str(foreign) in report["reference"]

    monkeypatch.setattr(
        download,
        "CONTENT_SHA256",
        {**download.CONTENT_SHA256, **{path.name: download._content_sha256(path) for path in foreign.iterdir()}},
    )
    result = invoke(eval_main, "--npz", samples, "--data-dir", foreign, "--json", tmp_path / "r.json")
    assert result.code == 0 and "warning" not in result.err, result.err
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["reference_is_mnist"] is True and report["reference"] == "MNIST test images 100..199"
