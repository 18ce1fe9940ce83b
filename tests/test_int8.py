"""ddpm-export --int8: a QDQ int8 copy calibrated on noisy training digits, checked against fp32."""

import numpy as np
import onnx
import pytest

from conftest import DATA_DIR, assert_one_line_error
from ddpm.export.cli import main as export_main
from ddpm.runtime.cli import main as run_main
from ddpm.core.metadata import ModelInfo
from ddpm.runtime.pipeline import DDPM


@pytest.fixture(scope="module")
def int8_export(tiny_export, tmp_path_factory):
    from tests_support import run_main as run

    out = tmp_path_factory.mktemp("int8")
    assert run(export_main, "--ckpt", tiny_export / "model.pt", "--out-dir", out, "--int8", "--data-dir", DATA_DIR,
               "--no-torchscript") == 0
    return out


def test_int8_copy_is_quantized_and_says_so(int8_export):
    model = onnx.load(int8_export / "unet.int8.onnx")
    ops = {node.op_type for node in model.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    info = ModelInfo.from_metadata({p.key: p.value for p in model.metadata_props})
    assert info.precision == "int8"
    weights = [t for t in model.graph.initializer if t.data_type == onnx.TensorProto.INT8]
    assert len(weights) >= 4  # the convolutions' weights are stored as int8
    conv_inputs = [n for n in model.graph.node if n.op_type == "Conv"]
    first, last = conv_inputs[0], conv_inputs[-1]
    produced_by = {out: n.op_type for n in model.graph.node for out in n.output}
    assert produced_by.get(first.input[1]) != "DequantizeLinear"  # the first and last convolutions stay float
    assert produced_by.get(last.input[1]) != "DequantizeLinear"


def test_int8_samples_follow_fp32(int8_export):
    fp32, int8 = DDPM.load(int8_export / "unet.onnx", provider="cpu"), DDPM.load(int8_export / "unet.int8.onnx", provider="cpu")
    a = fp32.generate(8, fp32.plan(steps=20, sampler="ddim"), seed=3).images.astype(np.float64)
    b = int8.generate(8, int8.plan(steps=20, sampler="ddim"), seed=3).images.astype(np.float64)
    assert a.shape == b.shape
    assert np.abs(a - b).mean() < 12  # grey levels (of 255); an unrelated picture differs by ~100
    assert np.abs(a - b).mean() > 0  # and it is a different network, not a copy


def test_int8_tolerance_refuses_and_writes_nothing(invoke, tiny_export, tmp_path):
    result = invoke(export_main, "--ckpt", tiny_export / "model.pt", "--out-dir", tmp_path, "--int8", "--data-dir", DATA_DIR,
                    "--int8-tol", "1e-9", "--no-torchscript")
    assert_one_line_error(result, "unet.int8.onnx", "--int8-tol", "nothing written")
    assert list(tmp_path.iterdir()) == []


def test_int8_without_calibration_data_is_one_line_before_work(invoke, tiny_export, tmp_path):
    result = invoke(export_main, "--ckpt", tiny_export / "model.pt", "--out-dir", tmp_path / "out", "--int8",
                    "--data-dir", tmp_path / "nowhere")
    assert_one_line_error(result, "nowhere")
    assert list(tmp_path.iterdir()) == []


def test_int8_model_on_a_gpu_provider_is_refused(invoke, int8_export, tmp_path):
    result = invoke(run_main, "--onnx", int8_export / "unet.int8.onnx", "--provider", "cuda", "--png", tmp_path / "o.png")
    assert_one_line_error(result, "int8 copy for CPUs", "provider 'cuda'")
    assert list(tmp_path.iterdir()) == []


@pytest.fixture
def embedded_pair(int8_export, monkeypatch):
    """The tiny fp32 and int8 exports standing in for the package's embedded model and its int8 copy."""
    import ddpm.runtime.pipeline as pipeline
    import ddpm.runtime.precision as precision

    def default_model_path(precision="fp32"):
        return int8_export / ("unet.onnx" if precision == "fp32" else "unet.int8.onnx")

    monkeypatch.setattr(pipeline, "default_model_path", default_model_path)
    monkeypatch.setattr(precision, "default_model_path", default_model_path)
    return precision


@pytest.mark.parametrize("faster, precision, expected", [
    (True, "auto", "unet.int8.onnx (int8: 1.70x the speed of fp32 on this CPU"),
    (False, "auto", "unet.onnx (fp32: int8 measured 0.80x its speed on this CPU)"),
    (True, "fp32", "model unet.onnx on"),
    (False, "int8", "unet.int8.onnx (int8, as asked)"),
])
def test_the_embedded_copy_follows_the_measured_speed(invoke, embedded_pair, tmp_path, monkeypatch, faster, precision, expected):
    monkeypatch.setattr(embedded_pair, "int8_is_faster", lambda fp32, int8, on_measure=None: (faster, 1.7 if faster else 0.8))
    result = invoke(run_main, "--precision", precision, "--provider", "cpu", "-n", 2, "--sampler", "ddim", "--steps", 2,
                    "--png", tmp_path / "o.png")
    assert result.code == 0, result.err
    assert expected in result.err
    int8_used = "unet.int8.onnx" in result.err
    assert ("(int8, batch" in result.err) == int8_used  # the summary line says so too


def test_int8_speed_is_compared_at_each_ones_best_batch(int8_export, monkeypatch):
    from ddpm.runtime import cpu_batch
    from ddpm.runtime.precision import int8_is_faster
    from ddpm.runtime.session import UNetSession

    times = {"fp32": {4: 4.0, 64: 3.7}, "int8": {4: 2.9, 16: 2.3}}
    monkeypatch.setattr(cpu_batch, "choose", lambda session, on_measure=None: cpu_batch.BatchChoice(
        0, times[session.info.precision], cached=True))
    fp32 = UNetSession(int8_export / "unet.onnx", provider="cpu")
    int8 = UNetSession(int8_export / "unet.int8.onnx", provider="cpu")
    faster, ratio = int8_is_faster(fp32, int8)
    assert faster and ratio == pytest.approx(3.7 / 2.3)


@pytest.mark.parametrize("faster, expected", [(True, "int8"), (False, "fp32")])
def test_the_python_api_makes_the_same_choice(embedded_pair, monkeypatch, faster, expected):
    """precision.load_model: the choice ddpm-run makes, in one call of the Python API."""
    monkeypatch.setattr(embedded_pair, "int8_is_faster", lambda fp32, int8, on_measure=None: (faster, 1.7 if faster else 0.8))
    ddpm, note = embedded_pair.load_model(precision="auto", session_options={"provider": "cpu"})
    assert ddpm.info.precision == expected
    assert note.startswith(f"{expected}: ")


@pytest.mark.parametrize("path, precision, fragment", [
    ("unet.onnx", "int8", "a named file has its own"),
    (None, "fp16", "unknown precision 'fp16'"),
])
def test_the_python_api_refuses_a_precision_it_cannot_honour(embedded_pair, int8_export, path, precision, fragment):
    from ddpm.core.errors import DDPMError

    with pytest.raises(DDPMError, match=fragment):
        embedded_pair.load_model(None if path is None else int8_export / path, precision)


def test_precision_with_onnx_is_a_usage_error(invoke, int8_export, tmp_path):
    result = invoke(run_main, "--onnx", int8_export / "unet.onnx", "--precision", "int8", "--png", tmp_path / "o.png")
    assert_one_line_error(result, "--precision", "with --onnx the file decides")
