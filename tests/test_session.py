"""Opening a model (runtime/session.py, UNetSession): the provider, the CUDA fallback and what it says,
device ids, what needs CUDA or the fp32 model, and the bound fused step."""

import numpy as np
import pytest
from conftest import DATA_DIR, assert_one_line_error

from ddpm.core.errors import DDPMError
from ddpm.runtime.cli import main as run_main
from ddpm.runtime.eval_cli import main as eval_main
from ddpm.runtime.session import BoundStep, UNetSession, cores_shared

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning", "ignore::DeprecationWarning")


def test_auto_provider_says_when_it_falls_back(invoke, tiny, tmp_path, monkeypatch):
    import ddpm.runtime.precision as precision_module
    import ddpm.runtime.session as session_module

    monkeypatch.setattr(session_module, "gpu_present", lambda: False)
    # ONNX Runtime's fallback is under test: with OpenVINO offered too, auto may time it faster and run it instead
    monkeypatch.setattr(precision_module, "openvino_version", lambda: None)
    result = invoke(run_main, "--onnx", tiny / "unet.onnx", "-n", "1", "--steps", "2", "--png", tmp_path / "o.png")
    assert result.code == 0
    notes = [line for line in result.err.splitlines() if "running on the CPU" in line]
    assert len(notes) == 1
    assert "on CPUExecutionProvider" in result.err
    quiet = invoke(run_main, "--onnx", tiny / "unet.onnx", "-n", "1", "--steps", "2", "--png", tmp_path / "o.png", "-q")
    assert quiet.code == 0 and quiet.err == ""


def test_cuda_fallback_names_the_missing_libraries_and_the_extra(tiny_export, monkeypatch, invoke, tmp_path):
    """A machine with an NVIDIA driver whose CUDA provider cannot start: one line saying what is missing,
    and a ProviderWarning from the Python API (it used to fall back silently)."""
    import warnings

    from ddpm.runtime import session
    from ddpm.runtime.cli import main as run_main
    from ddpm.runtime.pipeline import DDPM

    monkeypatch.setattr(session, "gpu_present", lambda: True)
    monkeypatch.setattr(
        session.ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"]
    )
    monkeypatch.setattr(session, "missing_cuda_libraries", lambda: ["libcudnn.so.9"])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ddpm = DDPM.load(tiny_export / "unet.onnx")
    assert ddpm.provider == "CPUExecutionProvider"
    messages = [str(w.message) for w in caught if issubclass(w.category, session.ProviderWarning)]
    assert len(messages) == 1 and "libcudnn.so.9" in messages[0] and "ddpm-mnist[cuda]" in messages[0]
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


@pytest.mark.parametrize("main", [run_main, eval_main])
def test_device_id_past_the_device_count(invoke, tiny_export, tmp_path, main):
    result = invoke(
        main,
        "--onnx",
        tiny_export / "unet.onnx",
        "--device-id",
        3,
        "--png" if main is run_main else "-n",
        tmp_path / "o.png" if main is run_main else 4,
        "--data-dir" if main is eval_main else "-q",
        *([DATA_DIR] if main is eval_main else []),
    )
    assert_one_line_error(result, "CUDA device 3 does not exist")
    assert not (tmp_path / "o.png").exists()


def test_device_id_reaches_the_cuda_provider_options(tiny_export, monkeypatch):
    from ddpm.runtime import session

    monkeypatch.setattr(session, "cuda_device_count", lambda: 2)
    opened = session.UNetSession(tiny_export / "unet.onnx", provider="cpu", device_id=1)
    providers = opened._gpu_providers("cuda")
    assert providers[0][1]["device_id"] == "1"
    with pytest.raises(session.DDPMError, match="CUDA device 2 does not exist: this machine has 2"):
        session.UNetSession(tiny_export / "unet.onnx", provider="cuda", device_id=2)


@pytest.mark.parametrize(
    "name, fragment", [("unet.step.b3.onnx", "needs the CUDA provider"), ("unet.step.onnx", "fixed-batch")]
)
def test_cuda_graph_sessions_need_cuda_and_a_fixed_batch(variants, name, fragment):
    with pytest.raises(DDPMError, match=fragment):
        UNetSession(variants / name, provider="cpu", cuda_graph=True)


def test_int8_model_on_a_gpu_provider_is_refused(invoke, int8_export, tmp_path):
    result = invoke(
        run_main, "--onnx", int8_export / "unet.int8.onnx", "--provider", "cuda", "--png", tmp_path / "o.png"
    )
    assert_one_line_error(result, "int8 copy for CPUs", "provider 'cuda'")
    assert list(tmp_path.iterdir()) == []


def test_bound_step_swaps_buffers_and_fetches(variants):
    session = UNetSession(variants / "unet.step.onnx", provider="cpu")
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 1, 32, 32), dtype=np.float32)
    noise = rng.standard_normal(x.shape, dtype=np.float32)
    stepper = BoundStep(session, x)
    expected = x
    for t in (999, 998, 997):
        t_batch = np.full(2, t, dtype=np.int64)
        expected = session.session.run(["x_prev"], {"x": expected, "t": t_batch, "noise": noise})[0]
        stepper(t_batch, noise)
    np.testing.assert_allclose(stepper.fetch(), expected, atol=1e-6)
    assert session.run_calls == 3


def test_onnx_runtime_prints_nothing_before_the_one_line_error(tiny_export, tmp_path):
    """ONNX Runtime logs its own failures to the process's stderr (coloured, several lines) before the
    exception the one-line error quotes; the runtime keeps that log quiet."""
    import subprocess
    import sys

    import onnx

    model = onnx.load(tiny_export / "unet.onnx")
    next(node for node in model.graph.node if node.op_type == "Conv").op_type = "NoSuchOperator"
    broken = tmp_path / "broken.onnx"
    onnx.save(model, broken)
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            "from ddpm.runtime.cli import main; main()",
            "--onnx",
            str(broken),
            "--png",
            str(tmp_path / "o.png"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 1 and len(lines) == 1 and "is not a loadable ONNX model" in lines[0], result.stderr


def spinning(session) -> tuple[str | None, str | None]:
    """A session's (intra-op spinning, stop spinning when a call returns) settings; None where unset."""
    options = session.get_session_options()

    def entry(key: str) -> str | None:
        try:
            return options.get_session_config_entry(key)
        except RuntimeError:
            return None

    return entry("session.intra_op.allow_spinning"), entry("session.force_spinning_stop")


def test_sessions_stop_spinning_between_calls_and_inside_cores_shared_at_all(latent_export):
    """Both of a latent model's sessions stop spinning when a call returns; opened inside cores_shared
    they never spin; before and after it, the first holds again."""
    from ddpm.runtime.pipeline import open_model

    before = open_model(latent_export / "unet.onnx", "cpu", "fp32", 1)
    with cores_shared():
        shared = open_model(latent_export / "unet.onnx", "cpu", "fp32", 1)
    after = open_model(latent_export / "unet.onnx", "cpu", "fp32", 1)
    assert [spinning(shared.session.session), spinning(shared.decoder._run.session)] == [("0", "1")] * 2
    for ddpm in (before, after):
        assert [spinning(ddpm.session.session), spinning(ddpm.decoder._run.session)] == [(None, "1")] * 2


def test_ddpm_serve_opens_its_model_with_cores_shared(invoke, tiny_export, monkeypatch):
    """The server's HTTP front and PNG renders share the engine's cores: its sessions do not spin."""
    from ddpm.serve import server as server_module
    from ddpm.serve.cli import main as serve_main

    pytest.importorskip("fastapi", reason="the serve extra is not installed")
    opened = []

    class Recorded:
        def __init__(self, ddpm, *args, **kwargs):
            opened.append(ddpm)

        def run(self):
            pass

        def report(self):
            return "0 requests"

    monkeypatch.setattr(server_module, "Server", Recorded)
    result = invoke(serve_main, "--onnx", tiny_export / "unet.onnx", "--precision", "fp32", "--provider", "cpu")
    assert result.code == 0, result.err
    assert [spinning(ddpm.session.session) for ddpm in opened] == [("0", "1")]
