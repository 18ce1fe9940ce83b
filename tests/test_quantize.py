"""ddpm-export --int8 (export/quantize.py): a QDQ int8 copy calibrated on noisy training digits, checked
against fp32; a tolerance it misses, or no calibration data, writes nothing."""

import numpy as np
import onnx
from conftest import DATA_DIR, assert_one_line_error

from ddpm.core.metadata import ModelInfo
from ddpm.export.cli import main as export_main
from ddpm.runtime.pipeline import DDPM


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
    fp32, int8 = (
        DDPM.load(int8_export / "unet.onnx", provider="cpu"),
        DDPM.load(int8_export / "unet.int8.onnx", provider="cpu"),
    )
    a = fp32.generate(8, fp32.plan(steps=20, sampler="ddim"), seed=3).images.astype(np.float64)
    b = int8.generate(8, int8.plan(steps=20, sampler="ddim"), seed=3).images.astype(np.float64)
    assert a.shape == b.shape
    assert np.abs(a - b).mean() < 12  # grey levels (of 255); an unrelated picture differs by ~100
    assert np.abs(a - b).mean() > 0  # and it is a different network, not a copy


def test_int8_tolerance_refuses_and_writes_nothing(invoke, tiny_export, tmp_path):
    result = invoke(
        export_main,
        "--ckpt",
        tiny_export / "model.pt",
        "--out-dir",
        tmp_path,
        "--int8",
        "--data-dir",
        DATA_DIR,
        "--int8-tol",
        "1e-9",
        "--no-torchscript",
    )
    assert_one_line_error(result, "unet.int8.onnx", "--int8-tol", "nothing written")
    assert list(tmp_path.iterdir()) == []


def test_int8_without_calibration_data_is_one_line_before_work(invoke, tiny_export, tmp_path):
    result = invoke(
        export_main,
        "--ckpt",
        tiny_export / "model.pt",
        "--out-dir",
        tmp_path / "out",
        "--int8",
        "--data-dir",
        tmp_path / "nowhere",
    )
    assert_one_line_error(result, "nowhere")
    assert list(tmp_path.iterdir()) == []


def test_quantize_within_keeps_more_convolutions_float_only_while_the_copy_misses(tiny_export):
    from ddpm.export.quantize import MORE_FLOAT, calibration_data, quantize_within

    model = onnx.load(tiny_export / "unet.onnx")
    info = ModelInfo.from_metadata({p.key: p.value for p in model.metadata_props})
    feeds, held_out, _, _ = calibration_data(info, DATA_DIR, count=64)

    def float_convs(copy):
        produced_by = {out: n.op_type for n in copy.graph.node for out in n.output}
        return sum(produced_by.get(n.input[1]) != "DequantizeLinear" for n in copy.graph.node if n.op_type == "Conv")

    assert float_convs(quantize_within(model, info, feeds, held_out, tolerance=1e9)) == 2  # the first try passes
    assert float_convs(quantize_within(model, info, feeds, held_out, tolerance=0.0)) == 2 + 2 * MORE_FLOAT[-1]
