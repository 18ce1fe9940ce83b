"""The Python API (runtime/pipeline.py, DDPM): the NumPy loop against a torch reference, fixed batches,
frames and what they show, DDIM and the solvers through a real network, labels and guidance, the loop
engines, and the embedded model."""

import numpy as np
import pytest
import torch

from ddpm.core.errors import DDPMError
from ddpm.core.plan import SettingError
from ddpm.core.samplers import AncestralSampler
from ddpm.runtime.pipeline import DDPM, class_prior_labels, default_model_path, frame_positions
from ddpm.runtime.sampling_cli import parse_digits
from ddpm.train.config import preset
from ddpm.train.unet import UNet

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning", "ignore::DeprecationWarning")


def test_numpy_loop_matches_torch_reference(tiny):
    """All 1000 steps: the runtime's loop around ONNX Runtime vs eq. 11 written out in torch."""
    checkpoint = torch.load(tiny / "model.pt", weights_only=True)
    model = UNet(preset("tiny")).eval()
    model.load_state_dict(checkpoint["ema"])
    run = DDPM.load(tiny / "unet.onnx", provider="cpu").generate(2, seed=11)

    rng = np.random.default_rng(11)
    shape = (2, 1, 32, 32)
    x = torch.from_numpy(rng.standard_normal(shape, dtype=np.float32)).double()
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
    alpha_bars = torch.cumprod(1 - betas, 0)
    with torch.no_grad():
        for t in reversed(range(1000)):
            eps = model(x.float(), torch.full((2,), t)).double()
            mean = (x - betas[t] / torch.sqrt(1 - alpha_bars[t]) * eps) / torch.sqrt(1 - betas[t])
            x = (
                mean + torch.sqrt(betas[t]) * torch.from_numpy(rng.standard_normal(shape, dtype=np.float32))
                if t > 0
                else mean
            )
    assert np.abs(run.samples - x.numpy()).max() <= 1e-4


def test_fixed_batch_model_gives_the_same_samples(tiny):
    runs = {}
    for name in ("unet.onnx", "unet.b3.onnx"):
        ddpm = DDPM.load(tiny / name, provider="cpu")
        runs[name] = ddpm.generate(4, ddpm.plan(steps=20), seed=2)
    dynamic, fixed = runs["unet.onnx"], runs["unet.b3.onnx"]  # the fixed batch: 3 + 1 padded
    assert fixed.settings.batch_size == 3
    assert np.abs(dynamic.samples - fixed.samples).max() < 1e-4


def test_frame_positions_are_dense_at_the_end():
    positions = frame_positions(1000, 40)
    assert positions[-1] == 999 and positions == sorted(set(positions))
    assert sum(p >= 900 for p in positions) > sum(p < 100 for p in positions)


def test_python_api(tiny):
    ddpm = DDPM.load(tiny / "unet.onnx", provider="cpu")
    images = ddpm.sample(2, seed=1, steps=10)
    assert images.shape == (2, 32, 32) and images.dtype == np.uint8
    frames = ddpm.animation(2, seed=1, frames=4, steps=10)
    assert np.array_equal(frames[-1], images)
    assert ddpm.provider == "CPUExecutionProvider"


def test_show_x0_and_both(tiny_export):
    from ddpm.runtime.pipeline import DDPM

    ddpm = DDPM.load(tiny_export / "unet.onnx", provider="cpu")
    xt = ddpm.generate(2, ddpm.plan(steps=12, frames=4, sampler="ddim"), seed=1)
    x0 = ddpm.generate(2, ddpm.plan(steps=12, frames=4, sampler="ddim", show="x0"), seed=1)
    both = ddpm.generate(2, ddpm.plan(steps=12, frames=4, sampler="ddim", show="both"), seed=1)
    np.testing.assert_array_equal(xt.samples, x0.samples)  # what is shown does not change the sampling
    assert [f.shape for f in both.frames] == [(2, 32, 64)] * len(xt.frames)
    for a, b, pair in zip(xt.frames, x0.frames, both.frames):
        np.testing.assert_array_equal(pair[..., :32], a)
        np.testing.assert_array_equal(pair[..., 32:], b)
    first = np.unique(x0.frames[0])
    assert len(first) == 1 and 126 <= first[0] <= 129  # before the first prediction: mid-grey
    assert np.abs(x0.frames[1].astype(int) - xt.frames[1].astype(int)).mean() > 20  # x̂_0 is not the noisy x_t
    # The last step of DDIM (η = 0) lands on its own x̂_0 prediction.
    np.testing.assert_array_equal(x0.frames[-1], xt.frames[-1])


def test_ddim_full_loop_reduces_to_ancestral(tiny_export):
    """Through the real network: DDIM (S = T, η = 1) and the posterior-variance ancestral loop
    give the same samples from the same seed."""
    ddpm = DDPM.load(tiny_export / "unet.onnx", provider="cpu")
    ddim = ddpm.generate(3, ddpm.plan(sampler="ddim", steps=1000, eta=1.0), seed=4)
    sampler = AncestralSampler(ddpm.schedule, variance="posterior")
    rng = np.random.default_rng(4)
    x = rng.standard_normal((3, 1, 32, 32), dtype=np.float32)
    for i, t in enumerate(sampler.model_timesteps):
        noise = rng.standard_normal(x.shape, dtype=np.float32) if sampler.needs_noise(i) else None
        x = sampler.step(x, i, ddpm.session.eps(x, np.full(3, t, np.int64)), noise)
    np.testing.assert_allclose(ddim.samples, x, atol=1e-3)


def test_ddim_eta_zero_is_deterministic(tiny_export):
    ddpm = DDPM.load(tiny_export / "unet.onnx", provider="cpu")
    sampler = ddpm.plan("ddim", 20, eta=0.0).make_sampler(ddpm.info, ddpm.schedule)
    assert not any(sampler.needs_noise(i) for i in range(len(sampler)))
    x_T = np.random.default_rng(9).standard_normal((2, 1, 32, 32), dtype=np.float32)
    results = []
    for noise_seed in (1, 2):  # different noise streams, same x_T: the noise is never used
        rng = np.random.default_rng(noise_seed)
        x = x_T
        for i, t in enumerate(sampler.model_timesteps):
            x = sampler.step(
                x, i, ddpm.session.eps(x, np.full(2, t, np.int64)), rng.standard_normal(x.shape).astype(np.float32)
            )
        results.append(x)
    np.testing.assert_array_equal(results[0], results[1])
    # And through generate: same seed, any sub-batch size, identical digits.
    a = ddpm.generate(4, ddpm.plan(sampler="ddim", steps=20), seed=3, batch_size=4)
    b = ddpm.generate(4, ddpm.plan(sampler="ddim", steps=20), seed=3, batch_size=1)
    np.testing.assert_allclose(a.samples, b.samples, atol=1e-5)
    c = ddpm.generate(4, ddpm.plan(sampler="ddim", steps=20, eta=1.0), seed=3)
    assert np.abs(c.samples - a.samples).max() > 0.1  # η = 1 does add noise


@pytest.mark.parametrize("sampler", ["dpm++2m", "dpm++2m-sde"])
def test_runtime_solvers_batch_independent_and_reproducible(tiny_export, sampler):
    ddpm = DDPM.load(tiny_export / "unet.onnx", provider="cpu")
    whole = ddpm.generate(5, ddpm.plan(sampler=sampler, steps=8, frames=4), seed=4)
    split = ddpm.generate(5, ddpm.plan(sampler=sampler, steps=8), seed=4, batch_size=2)
    np.testing.assert_allclose(whole.samples, split.samples, atol=1e-4)
    assert (
        whole.settings.sampler == sampler
        and whole.settings.options["spacing"] == "logsnr"
        and whole.settings.steps == 8
    )
    assert len(whole.frames) == 4 and whole.frame_timesteps[-1] == 0  # x_T and 3 steps, the last one included
    other = ddpm.generate(5, ddpm.plan(sampler=sampler, steps=8), seed=5)
    assert np.abs(other.samples - whole.samples).max() > 1e-2
    assert np.all(np.isfinite(whole.samples))


def test_runtime_ode_first_steps_match_ddim(tiny_export):
    """One network call: DPM-Solver++ and DDIM η=0 return the same x̂_0."""
    ddpm = DDPM.load(tiny_export / "unet.onnx", provider="cpu")
    a = ddpm.generate(3, ddpm.plan(sampler="dpm++2m", steps=1), seed=0).samples
    b = ddpm.generate(3, ddpm.plan(sampler="ddim", steps=1), seed=0).samples
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_library_errors_for_solvers(tiny_export):
    ddpm = DDPM.load(tiny_export / "unet.onnx", provider="cpu")
    with pytest.raises(DDPMError, match="spacing"):
        ddpm.generate(2, ddpm.plan(sampler="dpm++2m", spacing="karras"))
    with pytest.raises(DDPMError, match="sampler"):
        ddpm.generate(2, ddpm.plan(sampler="euler"))


def test_conditional_generate_labels(conditional):
    ddpm = DDPM.load(conditional / "unet.onnx", provider="cpu")
    labels = ddpm.plan(digits=parse_digits("all", 10)).labels(12)
    np.testing.assert_array_equal(labels, [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1])
    np.testing.assert_array_equal(ddpm.plan(digits=parse_digits("3,5", 10)).labels(5), [3, 5, 3, 5, 3])
    plain = ddpm.generate(4, ddpm.plan(sampler="ddim", steps=10), seed=1)
    guided = ddpm.generate(4, ddpm.plan(sampler="ddim", steps=10, digits=[2], guidance=2.0), seed=1)
    assert guided.settings.labels == (2, 2, 2, 2) and guided.settings.guidance == 2.0
    assert np.abs(guided.samples - plain.samples).max() > 1e-3
    with pytest.raises(SettingError, match="digits: 10 is out of range"):
        ddpm.plan(digits=np.array([1, 10]))


def test_without_labels_every_class_is_drawn_equally_often(conditional):
    """No requested digit: labels from the class prior, balanced, in a seeded order on a stream of
    their own (the images' noise is that of the same labels given explicitly)."""
    ddpm = DDPM.load(conditional / "unet.onnx", provider="cpu")
    run = ddpm.generate(23, ddpm.plan(sampler="ddim", steps=5), seed=4)
    labels = np.array(run.settings.labels)
    assert sorted(np.bincount(labels, minlength=10)) == [2] * 7 + [3] * 3  # 23 = 10·2 + 3
    assert run.settings.guidance == 0.0 and run.settings.labels_drawn
    again = ddpm.generate(23, ddpm.plan(sampler="ddim", steps=5, digits=labels, guidance=0), seed=4)
    np.testing.assert_array_equal(again.images, run.images)
    other = ddpm.generate(23, ddpm.plan(sampler="ddim", steps=5), seed=5).settings.labels
    assert other != run.settings.labels
    np.testing.assert_array_equal(class_prior_labels(23, 10, 4), labels)


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


def test_embedded_model_draws_digit_shaped_images():
    ddpm = DDPM.load(provider="cpu")
    assert default_model_path().stat().st_size < 20e6
    assert ddpm.info.source.get("preset") == "small" and ddpm.info.source.get("weights") == "ema"
    images = ddpm.sample(2, seed=0)  # the full 1000-step loop
    assert images.shape == (2, 32, 32) and images.dtype == np.uint8
    for image in images:
        # dark background, some bright strokes: not noise, not blank
        assert np.mean(image < 64) > 0.6
        assert 0.03 < np.mean(image > 128) < 0.4
        assert np.all(image[:2] < 64) and np.all(image[:, :2] < 64)  # the padding border stays background


def test_progress_shows_on_a_terminal_or_when_asked(tiny, capsys, monkeypatch):
    """A Python caller at a terminal sees the loop's progress and ETA; a script writing to a file or
    pipe, or one with its own on_step, sees nothing unless it asks."""
    ddpm = DDPM.load(tiny / "unet.onnx", provider="cpu")
    ddpm.sample(1, steps=4, progress=True)
    assert "4/4" in capsys.readouterr().err
    ddpm.sample(1, steps=4)  # pytest's captured stderr is no terminal
    assert capsys.readouterr().err == ""
    monkeypatch.setattr("sys.stderr.isatty", lambda: True, raising=False)
    seen = []
    ddpm.sample(1, steps=4, on_step=lambda done, total: seen.append(done))
    assert seen == [1, 2, 3, 4] and capsys.readouterr().err == ""
    ddpm.sample(1, steps=4)
    assert "sample 1 [" in capsys.readouterr().err
