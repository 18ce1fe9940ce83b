"""Sampling a latent model without torch: every sampler runs on the latents and the decoder turns them
into images once per finished batch; the engine serves latent and pixel requests with the samples
DDPM.generate draws; a decoder that is not the one the U-Net names is refused in one line."""

import hashlib
import json
import shutil

import numpy as np
import onnx
import pytest
from conftest import assert_one_line_error
from onnx import numpy_helper

from ddpm.core.errors import DDPMError
from ddpm.core.samplers import AncestralSampler
from ddpm.runtime import DDPM
from ddpm.runtime.cli import main as run_main
from tests_support import session


def manual_latent_loop(folder, n, seed, labels, steps):
    """The respaced ancestral loop written out with plain ONNX Runtime sessions: the reference for DDPM.generate."""
    unet, decoder = session(folder / "unet.onnx"), session(folder / "unet.decoder.onnx")
    ddpm = DDPM.load(folder / "unet.onnx", provider="cpu")
    sampler = AncestralSampler(ddpm.schedule, steps=steps, variance=ddpm.info.variance)
    rng = np.random.default_rng(seed)
    shape = (n, ddpm.info.image_channels, ddpm.info.image_size, ddpm.info.image_size)
    x = rng.standard_normal(shape, dtype=np.float32)
    for i, t in enumerate(sampler.model_timesteps):
        eps = unet.run(["eps"], {"x": x, "t": np.full(n, t, np.int64), "y": labels})[0]
        noise = rng.standard_normal(shape, dtype=np.float32) if sampler.needs_noise(i) else None
        x = sampler.step(x, i, eps, noise)
    return decoder.run(["image"], {"z": x})[0]


def test_generate_decodes_the_sampled_latents(latent_export):
    ddpm = DDPM.load(latent_export / "unet.onnx", provider="cpu")
    assert ddpm.decoder is not None
    labels = np.array([3, 1, 4], np.int64)
    run = ddpm.generate(
        3, ddpm.plan(sampler="ancestral", steps=20, digits=[3, 1, 4], guidance=0.0), seed=5, batch_size=3
    )
    assert run.images.shape == (3, 32, 32) and run.images.dtype == np.uint8
    expected = manual_latent_loop(latent_export, 3, 5, labels, steps=20)
    np.testing.assert_allclose(run.samples, expected, atol=1e-4)


@pytest.mark.parametrize("sampler", ["ddim", "dpm++2m", "unipc"])
def test_every_sampler_runs_in_latent_space(latent_export, sampler):
    ddpm = DDPM.load(latent_export / "unet.onnx", provider="cpu")
    run = ddpm.generate(4, ddpm.plan(sampler=sampler, steps=5, frames=3, show="both"), seed=1)
    assert run.images.shape == (4, 32, 32)
    assert np.isfinite(run.samples).all()
    assert [frame.shape for frame in run.frames] == [(4, 32, 64)] * len(run.frames)  # x_t and x̂_0, decoded


def test_the_engine_serves_latent_requests_with_generates_samples(latent_export):
    ddpm = DDPM.load(latent_export / "unet.onnx", provider="cpu")
    plans = [
        ddpm.plan(sampler="ddim", steps=6, digits=[7]),
        ddpm.plan(sampler="ddim", steps=6, digits=[2, 5]),
        ddpm.plan(sampler="unipc", steps=6),
    ]
    engine = ddpm.serving_engine(max_rows=32)
    jobs = [engine.submit(n, plan, seed) for n, plan, seed in zip((2, 3, 4), plans, (10, 11, 12))]
    calls_before = ddpm.decoder.run_calls
    engine.run_until_idle()
    # the three 6-step requests share every tick and finish in the same one: one decoder call for all
    assert ddpm.decoder.run_calls - calls_before == 1
    for job, plan, n, seed in zip(jobs, plans, (2, 3, 4), (10, 11, 12)):
        alone = ddpm.generate(n, plan, seed=seed)
        np.testing.assert_allclose(job.wait(0).samples, alone.samples, atol=1e-4)


def test_pixel_and_latent_engines_side_by_side(latent_export, conditional):
    pixel = DDPM.load(conditional / "unet.onnx", provider="cpu")
    latent = DDPM.load(latent_export / "unet.onnx", provider="cpu")
    engines = [model.serving_engine(max_rows=16) for model in (pixel, latent)]
    for engine in engines:
        engine.start()
    try:
        jobs = [
            (model, engine.submit(2, model.plan(sampler="ddim", steps=4, digits=[1]), 3))
            for model, engine in zip((pixel, latent), engines)
        ]
        for model, job in jobs:
            expected = model.generate(2, model.plan(sampler="ddim", steps=4, digits=[1]), seed=3)
            np.testing.assert_allclose(job.wait(60).samples, expected.samples, atol=1e-4)
            assert job.wait(0).images.shape == (2, 32, 32)
    finally:
        for engine in engines:
            engine.stop(grace=10)


def test_ddpm_run_draws_a_latent_model(invoke, latent_export, tmp_path):
    result = invoke(
        run_main,
        "--onnx",
        latent_export / "unet.onnx",
        "--sampler",
        "ddim",
        "--steps",
        "4",
        "-n",
        "4",
        "--png",
        tmp_path / "grid.png",
        "--npz",
        tmp_path / "s.npz",
        "--gif",
        tmp_path / "a.gif",
        "-q",
    )
    assert result.code == 0, result.err
    with np.load(tmp_path / "s.npz") as archive:
        assert archive["images"].shape == (4, 32, 32)


def copy_export(folder, tmp_path):
    target = tmp_path / "model"
    target.mkdir()
    for name in ("unet.onnx", "unet.decoder.onnx"):
        shutil.copy(folder / name, target / name)
    return target


def test_a_missing_decoder_is_refused(latent_export, tmp_path):
    folder = copy_export(latent_export, tmp_path)
    (folder / "unet.decoder.onnx").unlink()
    with pytest.raises(DDPMError, match="the decoder of unet.onnx, .*unet.decoder.onnx, does not exist"):
        DDPM.load(folder / "unet.onnx", provider="cpu")


def test_a_pixel_model_given_as_decoder_is_refused(latent_export, tiny_export, tmp_path, invoke):
    folder = copy_export(latent_export, tmp_path)
    shutil.copy(tiny_export / "unet.onnx", folder / "unet.decoder.onnx")
    result = invoke(run_main, "--onnx", folder / "unet.onnx", "--png", tmp_path / "x.png", "-q")
    assert_one_line_error(result, "is a U-Net, not a latent model's decoder")
    assert result.code == 1
    assert not (tmp_path / "x.png").exists()


def edit_metadata(path, key, change):
    """Rewrite one ddpm.<key> metadata value of an ONNX file: ``change`` maps its JSON value to the new one."""
    model = onnx.load(str(path))
    prop = next(prop for prop in model.metadata_props if prop.key == f"ddpm.{key}")
    prop.value = json.dumps(change(json.loads(prop.value)), sort_keys=True)
    onnx.save(model, str(path))


def test_another_autoencoders_decoder_is_refused(latent_export, tmp_path):
    folder = copy_export(latent_export, tmp_path)
    edit_metadata(folder / "unet.decoder.onnx", "autoencoder_sha256", lambda value: "0" * 64)
    with pytest.raises(DDPMError, match="belongs to another autoencoder"):
        DDPM.load(folder / "unet.onnx", provider="cpu")


def test_a_changed_decoder_file_is_refused(latent_export, tmp_path):
    folder = copy_export(latent_export, tmp_path)
    model = onnx.load(str(folder / "unet.decoder.onnx"))
    model.doc_string = "edited"
    onnx.save(model, str(folder / "unet.decoder.onnx"))
    with pytest.raises(DDPMError, match="is not the file unet.onnx was exported with"):
        DDPM.load(folder / "unet.onnx", provider="cpu")


def test_a_decoder_with_nan_weights_is_refused(latent_export, tmp_path):
    """A decoder whose weights turned NaN, with the U-Net's metadata naming its hash: refused before sampling."""
    folder = copy_export(latent_export, tmp_path)
    decoder = onnx.load(str(folder / "unet.decoder.onnx"))
    weight = next(init for init in decoder.graph.initializer if numpy_helper.to_array(init).ndim == 4)
    weight.CopyFrom(
        numpy_helper.from_array(np.full(numpy_helper.to_array(weight).shape, np.nan, np.float32), weight.name)
    )
    data = decoder.SerializeToString()
    (folder / "unet.decoder.onnx").write_bytes(data)
    edit_metadata(
        folder / "unet.onnx", "latent", lambda latent: {**latent, "decoder_sha256": hashlib.sha256(data).hexdigest()}
    )
    with pytest.raises(DDPMError, match="produces NaN or infinite images"):
        DDPM.load(folder / "unet.onnx", provider="cpu")
