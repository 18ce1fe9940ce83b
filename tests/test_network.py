"""The network calls of a sampling loop (runtime/network.py): fused-step graphs through session.run or
IOBinding give the plain loop's samples, and each sub-batch's stepper has CUDA graphs of its own."""

import numpy as np

from ddpm.runtime import network
from ddpm.runtime.pipeline import DDPM
from ddpm.runtime.session import BoundStep, step_graph_ids


def test_fused_loop_matches_the_plain_loop(variants):
    """Same seed, same samples on every path: 1000 steps through a fused graph (session.run, or
    IOBinding through bound buffers; dynamic or fixed batch with a padded last chunk) stay
    within 1e-2 of the NumPy loop (float32 rounding accumulated over 1000 steps)."""
    plain = DDPM.load(variants / "unet.onnx", provider="cpu")
    reference = plain.generate(4, plain.plan(frames=3), seed=5)
    for name, engine in [
        ("unet.step.onnx", "plain"),
        ("unet.step.onnx", "iobinding"),
        ("unet.step.b3.onnx", "iobinding"),
    ]:
        fused = DDPM.load(variants / name, provider="cpu")
        run = fused.generate(4, fused.plan(frames=3), seed=5, engine=engine)
        np.testing.assert_allclose(run.samples, reference.samples, atol=1e-2)
        assert len(run.frames) == len(reference.frames)
        for got, expected in zip(run.frames, reference.frames):
            assert np.abs(got.astype(int) - expected.astype(int)).max() <= 2


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
