"""DDIM, the cosine schedule, and class-conditional models with classifier-free guidance."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from conftest import DATA_DIR, assert_one_line_error
from ddpm.export.cli import main as export_main
from ddpm.runtime.cli import main as run_main
from ddpm.core.errors import DDPMError
from ddpm.runtime.eval_cli import main as eval_main
from ddpm.runtime.engine import SamplingEngine
from ddpm.runtime.pipeline import DDPM, class_prior_labels
from ddpm.core.samplers import AncestralSampler, DDIMSampler, spaced_timesteps
from ddpm.core.plan import DEFAULT_GUIDANCE, SettingError
from ddpm.runtime.sampling_cli import parse_digits
from ddpm.core.schedule import cosine_alpha_bar, make_schedule
from ddpm.train.config import preset
from ddpm.train.unet import UNet
from tests_support import run_main as call_main
from ddpm.train.cli import main as train_main


# -- schedules ------------------------------------------------------------------------------------


def test_cosine_schedule_closed_form():
    schedule = make_schedule("cosine", 1000)
    t = np.arange(1, 1001)
    expected = cosine_alpha_bar(t / 1000)  # ᾱ_t = f(t/T) / f(0)
    unclipped = schedule.betas < 0.999
    assert unclipped[:-1].all() and not unclipped[-1]  # only the very last β reaches the clip
    np.testing.assert_allclose(schedule.alpha_bars[:-1], expected[:-1], rtol=1e-10)
    # β_1 = 1 − f(1/T)/f(0), computed directly from the cosine.
    s = 0.008
    f = lambda u: np.cos((u + s) / (1 + s) * np.pi / 2) ** 2  # noqa: E731
    assert schedule.betas[0] == pytest.approx(1 - f(1 / 1000) / f(0), rel=1e-12)
    assert schedule.betas.max() == pytest.approx(0.999)
    assert np.all(np.diff(schedule.betas) > 0)
    # Half the signal variance is gone at about the middle, not in the first fifth as with linear β.
    middle = np.argmin(np.abs(schedule.alpha_bars - 0.5))
    assert 450 < middle < 550
    assert np.argmin(np.abs(make_schedule("linear").alpha_bars - 0.5)) < 300


@pytest.mark.parametrize("steps", [1, 2, 7, 10, 50, 333, 999, 1000])
@pytest.mark.parametrize("spacing", ["uniform", "quadratic"])
def test_spaced_timesteps(steps, spacing):
    kept = spaced_timesteps(1000, steps, spacing)
    assert len(kept) == steps and kept[-1] == 999
    assert np.all(np.diff(kept) > 0) and kept.min() >= 0
    if steps > 1:
        assert kept[0] == 0
    if spacing == "quadratic" and steps == 10:
        assert np.all(np.diff(np.diff(kept)) > 0)  # gaps widen towards t = T


# -- DDIM -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_ddim_with_every_step_and_eta_one_is_ancestral(kind):
    """σ becomes √β̃ and the DDIM mean becomes the posterior mean: the same update as the ancestral
    sampler with the posterior variance, step by step, for the same ε and noise."""
    schedule = make_schedule(kind, 1000)
    ddim = DDIMSampler(schedule, steps=1000, eta=1.0)
    ancestral = AncestralSampler(schedule, variance="posterior")
    np.testing.assert_array_equal(ddim.model_timesteps, ancestral.model_timesteps)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 1, 8, 8)).astype(np.float32)
    for i in range(len(ddim)):
        eps = rng.standard_normal(x.shape).astype(np.float32)
        noise = rng.standard_normal(x.shape).astype(np.float32)
        assert ddim.needs_noise(i) == ancestral.needs_noise(i)
        ours = ddim.step(x, i, eps, noise)
        theirs = ancestral.step(x, i, eps, noise)
        np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-4 if kind == "linear" else 2e-3)
        x = theirs


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
            x = sampler.step(x, i, ddpm.session.eps(x, np.full(2, t, np.int64)), rng.standard_normal(x.shape).astype(np.float32))
        results.append(x)
    np.testing.assert_array_equal(results[0], results[1])
    # And through generate: same seed, any sub-batch size, identical digits.
    a = ddpm.generate(4, ddpm.plan(sampler="ddim", steps=20), seed=3, batch_size=4)
    b = ddpm.generate(4, ddpm.plan(sampler="ddim", steps=20), seed=3, batch_size=1)
    np.testing.assert_allclose(a.samples, b.samples, atol=1e-5)
    c = ddpm.generate(4, ddpm.plan(sampler="ddim", steps=20, eta=1.0), seed=3)
    assert np.abs(c.samples - a.samples).max() > 0.1  # η = 1 does add noise


# -- class-conditional ----------------------------------------------------------------------------


def test_class_embedding_changes_eps_and_none_means_no_class():
    torch.manual_seed(0)
    model = UNet(preset("tiny", num_classes=10)).eval()
    with torch.no_grad():
        model.class_emb.weight.normal_()  # an untrained embedding would be random anyway; make it count
        x, t = torch.randn(2, 1, 32, 32), torch.tensor([10, 500])
        none = model(x, t)
        null = model(x, t, torch.tensor([10, 10]))
        three = model(x, t, torch.tensor([3, 3]))
    torch.testing.assert_close(none, null)
    assert (three - null).abs().max() > 1e-3
    assert "class_emb.weight" in model.state_dict() and "class_emb.weight" not in UNet(preset("tiny")).state_dict()


@pytest.fixture(scope="module")
def conditional(tmp_path_factory) -> Path:
    """A tiny class-conditional model on the cosine schedule, a few steps trained, exported."""
    root = tmp_path_factory.mktemp("conditional")
    assert call_main(train_main, "--preset", "tiny", "--data-dir", DATA_DIR, "--out", root, "--max-steps", 30,
                     "--conditional", "--schedule", "cosine", "--no-progress", "--no-samples") == 0
    assert call_main(export_main, "--ckpt", root / "model.pt", "--fixed-batch", 4) == 0
    return root


def test_conditional_checkpoint_and_export(conditional):
    checkpoint = torch.load(conditional / "model.pt", map_location="cpu", weights_only=False)
    assert checkpoint["model_config"]["num_classes"] == 10
    assert checkpoint["schedule"]["kind"] == "cosine"
    assert checkpoint["train"]["label_dropout"] == 0.1
    model = onnx.load(str(conditional / "unet.onnx"))
    inputs = {i.name: i.type.tensor_type for i in model.graph.input}
    assert set(inputs) == {"x", "t", "y"}
    assert inputs["y"].elem_type == onnx.TensorProto.INT64 and inputs["y"].shape.dim[0].dim_param
    metadata = {p.key: json.loads(p.value) for p in model.metadata_props}
    assert metadata["ddpm.num_classes"] == 10
    assert metadata["ddpm.schedule"]["kind"] == "cosine"
    ddpm = DDPM.load(conditional / "unet.onnx", provider="cpu")
    np.testing.assert_allclose(ddpm.schedule.betas, make_schedule("cosine", 1000).betas)


def test_guidance_arithmetic(conditional):
    for name in ("unet.onnx", "unet.b4.onnx"):  # dynamic batch, and fixed batch with padded calls
        ddpm = DDPM.load(conditional / name, provider="cpu")
        rng = np.random.default_rng(0)
        x = rng.standard_normal((3, 1, 32, 32), dtype=np.float32)
        y = np.array([1, 7, 7])
        pad = lambda a: np.concatenate([a, a[:1]])  # noqa: E731  (a fixed batch of 4 needs 4 rows)
        for w in (0.0, 1.0, 3.5):
            engine = SamplingEngine(ddpm.session, max_rows=4, max_request_rows=None)
            engine.submit(3, ddpm.plan("ddim", steps=1, digits=y, guidance=w), seed=0)
            engine._admit()
            flight = engine._active[0]
            flight.x = x
            t = np.full(4, flight.sampler.model_timesteps[0], np.int64)
            cond = ddpm.session.eps(pad(x), t, pad(y))[:3]
            uncond = ddpm.session.eps(pad(x), t, np.full(4, 10))[:3]
            assert np.abs(cond - uncond).max() > 0  # the labels reach the network
            got = engine._evaluate([flight])[0]
            np.testing.assert_allclose(got, (1 + w) * cond - w * uncond, atol=1e-5)


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


def test_run_and_eval_with_digits(invoke, conditional, tmp_path):
    out = tmp_path / "all.npz"
    result = invoke(run_main, "--onnx", conditional / "unet.onnx", "--digit", "all", "--sampler", "ddim", "--steps", 5,
                    "--npz", out, "--png", tmp_path / "all.png", "-q")
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


@pytest.mark.parametrize("args, fragment", [
    (["--digit", "10"], "out of range"),
    (["--digit", "-1"], "out of range"),
    (["--digit", "three"], "--digit"),
    (["--digit", "3", "--guidance", "-1"], "--guidance"),
    (["--guidance", "2"], "add --digit"),
    (["--sampler", "ddim", "--steps", "1001"], "--steps"),
    (["--sampler", "ddim", "--steps", "0"], "--steps"),
    (["--sampler", "ddim", "--eta", "-0.5"], "--eta"),
    (["--sampler", "ddim", "--eta", "1e300"], "--eta"),
    (["--digit", "3", "--guidance", "1e300"], "--guidance"),
    (["--eta", "0.5"], "--sampler ddim"),
    (["--spacing", "quadratic"], "--sampler ddim"),
])
def test_sampling_bad_inputs(invoke, conditional, tmp_path, args, fragment):
    result = invoke(run_main, "--onnx", conditional / "unet.onnx", "--png", tmp_path / "o.png", *args)
    assert_one_line_error(result, fragment)
    assert not (tmp_path / "o.png").exists()


@pytest.mark.parametrize("args, fragment", [(["--digit", "3"], "unconditional"), (["--guidance", "1"], "unconditional")])
def test_digits_on_an_unconditional_model(invoke, tiny_export, tmp_path, args, fragment):
    result = invoke(run_main, "--onnx", tiny_export / "unet.onnx", "--png", tmp_path / "o.png", *args)
    assert_one_line_error(result, fragment)


def test_fused_step_export_refuses_conditional_models(invoke, conditional, tmp_path):
    result = invoke(export_main, "--ckpt", conditional / "model.pt", "--fused-step", "--out-dir", tmp_path)
    assert_one_line_error(result, "unconditional")
    assert list(tmp_path.iterdir()) == []


def test_cosine_rejects_linear_settings(invoke, tmp_path):
    result = invoke(train_main, "--preset", "tiny", "--data-dir", DATA_DIR, "--out", tmp_path / "o", "--schedule", "cosine",
                    "--beta-end", "0.01", "--no-progress")
    assert_one_line_error(result, "cosine")


def test_the_embedded_model_serves_with_and_without_digits(invoke, tmp_path):
    assert DDPM.load(provider="cpu").info.num_classes == 10
    for args, labels in ((["--digit", "7"], [7, 7]), ([], None)):
        out = tmp_path / f"{len(args)}.npz"
        result = invoke(run_main, *args, "-n", 2, "--sampler", "ddim", "--steps", 3, "--npz", out, "--provider", "cpu")
        assert result.code == 0, result.err
        settings = json.loads(str(np.load(out)["settings"]))
        if labels:
            assert settings["labels"] == labels and settings["guidance"] == DEFAULT_GUIDANCE
        else:  # every digit equally often: two samples, two different digits
            assert len(set(settings["labels"])) == 2 and settings["guidance"] == 0.0


def test_embed_ships_a_conditional_model_for_both_uses(conditional, tmp_path, monkeypatch):
    from ddpm.export import embed

    out = tmp_path / "models"
    monkeypatch.setattr(sys, "argv", ["embed", "--ckpt", str(conditional / "model.pt"), "--out-dir", str(out),
                                      "--command", "ddpm-train --preset tiny --conditional", "--hardware", "a test"])
    embed.main()
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "default.onnx", "digits.png", "samples.png"]
    assert DDPM.load(out / "default.onnx", provider="cpu").info.num_classes == 10
    card = (out / "README.md").read_text()
    assert "with and without `--digit`" in card and "digits.png" in card and "ddpm-train --preset tiny --conditional" in card
