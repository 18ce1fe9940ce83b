"""What a base install (the runtime alone, no PyTorch) says when a command needs an extra."""

import subprocess
import sys

import pytest

from conftest import DATA_DIR

HIDE = (
    "import sys\n"
    "class Missing:\n"
    "    def find_spec(self, name, path=None, target=None):\n"
    "        if name.split('.')[0] in ('torch', 'torchvision', 'onnx', 'onnxscript'):\n"
    "            raise ModuleNotFoundError(f'No module named {name!r}', name=name)\n"
    "sys.meta_path.insert(0, Missing())\n"
)


def run_without_torch(module: str, *args: str) -> subprocess.CompletedProcess:
    script = HIDE + f"from {module} import main\nmain()\n"
    return subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True)


@pytest.mark.parametrize("module, args", [
    ("ddpm.train.cli", ["--data-dir", str(DATA_DIR), "--dry-run"]),
    ("ddpm.export.cli", ["--ckpt", "model.pt"]),
])
def test_commands_needing_torch_name_the_extra(module, args):
    result = run_without_torch(module, *args)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert 'pip install "ddpm-mnist[train]"' in lines[0] and "this command needs" in lines[0]


def test_help_needs_no_extra():
    for module in ("ddpm.train.cli", "ddpm.export.cli"):
        result = run_without_torch(module, "--help")
        assert result.returncode == 0 and "Usage" in result.stdout, result.stderr


def test_other_missing_modules_are_not_blamed_on_an_extra():
    from ddpm.core.console import missing_extra

    assert missing_extra(ModuleNotFoundError("No module named 'yaml'", name="yaml")) is None
    assert "[train]" in missing_extra(ModuleNotFoundError("x", name="torch.nn"))
    assert "[bench]" in missing_extra(ModuleNotFoundError("x", name="matplotlib"))


def test_cuda_fallback_names_the_missing_libraries_and_the_extra(tiny_export, monkeypatch, invoke, tmp_path):
    """A machine with an NVIDIA driver whose CUDA provider cannot start: one line saying what is missing,
    and a ProviderWarning from the Python API (it used to fall back silently)."""
    import warnings

    from ddpm.runtime import session
    from ddpm.runtime.cli import main as run_main
    from ddpm.runtime.pipeline import DDPM

    monkeypatch.setattr(session, "gpu_present", lambda: True)
    monkeypatch.setattr(session.ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    monkeypatch.setattr(session, "missing_cuda_libraries", lambda: ["libcudnn.so.9"])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ddpm = DDPM.load(tiny_export / "unet.onnx")
    assert ddpm.provider == "CPUExecutionProvider"
    messages = [str(w.message) for w in caught if issubclass(w.category, session.ProviderWarning)]
    assert len(messages) == 1 and "libcudnn.so.9" in messages[0] and 'ddpm-mnist[cuda]' in messages[0]
    result = invoke(run_main, "--onnx", tiny_export / "unet.onnx", "-n", 1, "--steps", 2, "--png", tmp_path / "o.png")
    assert result.code == 0, result.err
    lines = [line for line in result.err.splitlines() if "libcudnn.so.9" in line]
    assert lines == [f"ddpm-run: {messages[0]}"]
    forced = invoke(run_main, "--onnx", tiny_export / "unet.onnx", "--provider", "cuda", "--png", tmp_path / "p.png")
    assert forced.code == 1 and "libcudnn.so.9" in forced.err and "ddpm-mnist[cuda]" in forced.err


def test_both_onnxruntime_packages_are_reported(monkeypatch):
    from ddpm.runtime import session

    monkeypatch.setattr(session.metadata, "distribution", lambda name: object())
    note = session.conflicting_runtimes()
    assert "onnxruntime and onnxruntime-gpu are both installed" in note and "pip uninstall" in note

    def only_gpu(name):
        if name != "onnxruntime-gpu":
            raise session.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(session.metadata, "distribution", only_gpu)
    assert session.conflicting_runtimes() is None
