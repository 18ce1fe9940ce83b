"""The GPU-oriented export variants and loop engines, checked on the CPU: fused-step graphs, fp16
copies, fixed batches and the ``--engine`` plumbing of ddpm-run."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from conftest import assert_one_line_error
from ddpm.runtime.cli import main as run_main
from ddpm.core.errors import DDPMError
from ddpm.runtime import network
from ddpm.runtime.pipeline import DDPM
from ddpm.runtime.session import BoundStep, UNetSession, step_graph_ids

VARIANTS = ["unet.onnx", "unet.b3.onnx", "unet.fp16.onnx", "unet.fp16.b3.onnx",
            "unet.step.onnx", "unet.step.b3.onnx", "unet.step.fp16.onnx", "unet.step.fp16.b3.onnx"]


def test_export_writes_every_variant_with_its_metadata(variants):
    assert sorted(p.name for p in variants.glob("*.onnx")) == sorted(VARIANTS)
    for name in VARIANTS:
        info = UNetSession(variants / name, provider="cpu").info
        assert info.graph == ("fused-step" if ".step" in name else "eps")
        assert info.precision == ("fp16" if ".fp16" in name else "fp32")
        assert info.fixed_batch == (3 if ".b3" in name else None)
        model = onnx.load(str(variants / name))
        inputs = {i.name: i.type.tensor_type for i in model.graph.input}
        assert set(inputs) == ({"x", "t", "noise"} if ".step" in name else {"x", "t"})
        assert inputs["x"].elem_type == onnx.TensorProto.FLOAT  # fp32 at the boundary, always
        assert [o.name for o in model.graph.output] == (["x_prev"] if ".step" in name else ["eps"])
        batch = inputs["x"].shape.dim[0]
        assert (batch.dim_value == 3) if ".b3" in name else bool(batch.dim_param)


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
        expected = sampler.step(x, position, eps_model.session.eps(x, t_batch), noise if sampler.needs_noise(position) else None)
        got = fused.session.run(["x_prev"], {"x": x, "t": t_batch, "noise": noise})[0]
        np.testing.assert_allclose(got, expected, atol=2e-5)


def test_fused_loop_matches_the_plain_loop(variants):
    """Same seed, same samples on every path: 1000 steps through a fused graph (session.run, or
    IOBinding through bound buffers; dynamic or fixed batch with a padded last chunk) stay
    within 1e-2 of the NumPy loop (float32 rounding accumulated over 1000 steps)."""
    plain = DDPM.load(variants / "unet.onnx", provider="cpu")
    reference = plain.generate(4, plain.plan(frames=3), seed=5)
    for name, engine in [("unet.step.onnx", "plain"), ("unet.step.onnx", "iobinding"), ("unet.step.b3.onnx", "iobinding")]:
        fused = DDPM.load(variants / name, provider="cpu")
        run = fused.generate(4, fused.plan(frames=3), seed=5, engine=engine)
        np.testing.assert_allclose(run.samples, reference.samples, atol=1e-2)
        assert len(run.frames) == len(reference.frames)
        for got, expected in zip(run.frames, reference.frames):
            assert np.abs(got.astype(int) - expected.astype(int)).max() <= 2


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


def test_each_fused_sub_batch_gets_its_own_cuda_graphs(variants, monkeypatch):
    """A captured CUDA graph replays the buffer addresses it saw, so the steppers of different
    sub-batches must not share graph ids: shared ids ran sub-batch 1's steps on sub-batch 0's
    buffers (seen on an H100, 39% of the pixels wrong)."""
    slots = []

    class Recording(BoundStep):
        def __init__(self, session, x0, slot=0):
            slots.append(slot)
            super().__init__(session, x0, slot)

    monkeypatch.setattr(network, "BoundStep", Recording)
    DDPM.load(variants / "unet.step.b3.onnx", provider="cpu").generate(7, seed=1, engine="iobinding", batch_size=3)
    assert slots == [0, 1, 2]
    ids = [graph for slot in slots for graph in step_graph_ids(slot)]
    assert len(set(ids)) == len(ids) and 0 not in ids  # 0 is BoundEps's graph


def test_fused_model_cannot_respace(variants):
    with pytest.raises(DDPMError, match="cannot respace"):
        DDPM.load(variants / "unet.step.onnx", provider="cpu").plan(steps=10)


def test_engine_resolution(variants, monkeypatch):
    ddpm = DDPM.load(variants / "unet.b3.onnx", provider="cpu")
    assert ddpm.engine("auto") == "plain" and ddpm.engine("iobinding") == "iobinding"
    with pytest.raises(DDPMError, match="engine: must be one of"):
        ddpm.engine("cudagraph")  # a session flag (DDPM.load(cuda_graph=True)), not a loop
    monkeypatch.setattr(ddpm.session, "provider", "CUDAExecutionProvider")
    assert ddpm.engine("auto") == "iobinding"
    monkeypatch.setattr(ddpm.session, "cuda_graph", True)
    with pytest.raises(DDPMError, match="runs through IOBinding"):
        ddpm.engine("plain")


@pytest.mark.parametrize("name, fragment", [("unet.step.b3.onnx", "needs the CUDA provider"), ("unet.step.onnx", "fixed-batch")])
def test_cuda_graph_sessions_need_cuda_and_a_fixed_batch(variants, name, fragment):
    with pytest.raises(DDPMError, match=fragment):
        UNetSession(variants / name, provider="cpu", cuda_graph=True)


def test_run_engines_give_the_same_digits(invoke, variants, tmp_path):
    outputs = {}
    for engine in ("plain", "iobinding", "auto"):
        target = tmp_path / f"{engine}.npz"
        result = invoke(run_main, "--onnx", variants / "unet.onnx", "-n", 2, "--steps", 20, "--npz", target,
                        "--engine", engine, "--provider", "cpu", "--seed", 0)
        assert result.code == 0, result.err
        outputs[engine] = np.load(target)["images"]
    assert "engine auto (plain)" in result.err
    np.testing.assert_array_equal(outputs["plain"], outputs["iobinding"])
    np.testing.assert_array_equal(outputs["plain"], outputs["auto"])


@pytest.mark.parametrize("args, fragment", [
    (["--engine", "cudagraph", "--provider", "cpu"], "cudagraph"),
    (["--engine", "cudagraph"], "CUDA provider"),  # auto falls back to the CPU here
    (["--engine", "warp"], "warp"),
    (["--onnx", "STEP", "--steps", "10"], "cannot respace"),
])
def test_run_engine_errors(invoke, variants, tmp_path, args, fragment):
    args = [str(variants / "unet.step.onnx") if a == "STEP" else a for a in args]
    if "--onnx" not in args:
        args = ["--onnx", str(variants / "unet.b3.onnx"), *args]
    result = invoke(run_main, *args, "--npz", tmp_path / "out.npz", "-q")
    assert_one_line_error(result, fragment)
    assert not (tmp_path / "out.npz").exists()
