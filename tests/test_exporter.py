"""The exporter (export/exporter.py): fp16 copies that keep the timestep embedding in fp32 and stay close to
fp32, fused-step graphs equal to ε plus the NumPy update, and a worst difference that keeps NaN."""

import numpy as np
import onnx
import pytest

from ddpm.runtime.pipeline import DDPM
from ddpm.runtime.session import UNetSession

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning", "ignore::DeprecationWarning")


def test_fp16_keeps_the_timestep_embedding_in_fp32(variants):
    model = onnx.shape_inference.infer_shapes(onnx.load(str(variants / "unet.fp16.onnx")))
    types = {v.name: v.type.tensor_type.elem_type for v in [*model.graph.value_info, *model.graph.input]}
    trig = [node for node in model.graph.node if node.op_type in ("Sin", "Cos")]
    assert trig, "the sinusoidal embedding should appear as Sin/Cos nodes"
    assert all(types[node.input[0]] == onnx.TensorProto.FLOAT for node in trig)
    conv_weights = {node.input[1] for node in model.graph.node if node.op_type == "Conv"}
    initializers = {init.name: init.data_type for init in model.graph.initializer}
    assert conv_weights and all(initializers[name] == onnx.TensorProto.FLOAT16 for name in conv_weights)


def test_fp16_is_close_to_fp32(variants):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 1, 32, 32), dtype=np.float32)
    t = np.array([0, 500, 999], dtype=np.int64)
    full = UNetSession(variants / "unet.onnx", provider="cpu").eps(x, t)
    half = UNetSession(variants / "unet.fp16.onnx", provider="cpu").eps(x, t)
    assert half.dtype == np.float32
    difference = np.abs(full - half).max()
    assert 0 < difference < 1e-2  # rounded, not identical, and not broken


@pytest.mark.parametrize("name", ["unet.step.onnx", "unet.step.b3.onnx"])
def test_fused_step_equals_eps_plus_numpy_update(variants, name):
    eps_model = DDPM.load(variants / "unet.onnx", provider="cpu")
    fused = UNetSession(variants / name, provider="cpu")
    sampler = eps_model.plan().make_sampler(eps_model.info, eps_model.schedule)
    rng = np.random.default_rng(1)
    for position in (0, 500, len(sampler) - 1):  # t = 999, 499 and 0 (no noise at the last step)
        t = int(sampler.model_timesteps[position])
        x = rng.standard_normal((3, 1, 32, 32), dtype=np.float32)
        noise = rng.standard_normal(x.shape, dtype=np.float32)
        t_batch = np.full(3, t, dtype=np.int64)
        expected = sampler.step(
            x, position, eps_model.session.eps(x, t_batch), noise if sampler.needs_noise(position) else None
        )
        got = fused.session.run(["x_prev"], {"x": x, "t": t_batch, "noise": noise})[0]
        np.testing.assert_allclose(got, expected, atol=2e-5)


def test_worst_difference_keeps_nan():
    from ddpm.export.exporter import worst_difference

    a = np.zeros(3)
    assert worst_difference(0.0, a + 1e-3, a) == pytest.approx(1e-3)
    assert np.isnan(worst_difference(0.0, np.array([np.nan, 0, 0]), a))
    assert np.isnan(worst_difference(0.0, a, np.array([0, np.inf, 0])))
    assert np.isnan(worst_difference(float("nan"), a, a))  # once nan, always nan
