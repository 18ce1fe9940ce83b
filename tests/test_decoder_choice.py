"""A latent model's decoder on a CPU: pinned, it runs on the U-Net's backend and arithmetic; under
``auto`` every decoder path the provider allows is timed once per machine and the fastest kept (by
the same margin as the U-Net's paths); a bf16 decoder whose images stray runs in fp32 and says so."""

import numpy as np
import pytest

import ddpm.runtime.decoder as decoder_module
from ddpm.runtime import cpu_batch, decoder_choice, openvino_session, pipeline
from tests_support import session

HAS_OPENVINO = openvino_session.openvino_version() is not None
NATIVE_BF16 = HAS_OPENVINO and openvino_session.bf16_support() is None


@pytest.fixture
def own_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


def reference_images(folder, z):
    return session(folder / "unet.decoder.onnx").run(["image"], {"z": z})[0]


def latents(ddpm, rows=8):
    shape = (rows, ddpm.info.image_channels, ddpm.info.image_size, ddpm.info.image_size)
    return np.random.default_rng(3).standard_normal(shape, dtype=np.float32)


def fake_decoder_times(monkeypatch, times, calls):
    """decoder_choice.time_decoders answering ``times`` (ms per digit) by (backend, precision)."""

    def time_decoders(decoders, info):
        calls.append([(d.backend, d.precision) for d in decoders])
        return {(d.backend, d.precision): times[(d.backend, d.precision)] for d in decoders}

    monkeypatch.setattr(decoder_choice, "time_decoders", time_decoders)


def fake_unet_times(monkeypatch):
    """The U-Net's own timing answered at once: ONNX Runtime fp32 fastest, so only the decoder's choice varies."""

    def time_together(sessions, on_measure=None, note=""):
        stamp = cpu_batch.timestamp()
        ms = {("onnxruntime", "fp32"): 1.0}
        return [
            cpu_batch.BatchChoice(8, {8: ms.get((s.backend, s.precision), 5.0)}, cached=False, measured=stamp)
            for s in sessions
        ]

    monkeypatch.setattr(cpu_batch, "time_together", time_together)


def timed_decoders(monkeypatch, times) -> list:
    """The U-Net's timing answered at once and the decoders' by ``times``; the list of decoder timings made."""
    fake_unet_times(monkeypatch)
    calls = []
    fake_decoder_times(monkeypatch, times, calls)
    return calls


PINNED = [("cpu", "fp32", ("onnxruntime", "fp32"))]
if HAS_OPENVINO:
    PINNED.append(("openvino", "fp32", ("openvino", "fp32")))
if NATIVE_BF16:
    PINNED.append(("openvino", "bf16", ("openvino", "bf16")))


@pytest.mark.parametrize("provider, precision, expected", PINNED)
def test_a_pinned_request_decodes_on_the_unets_backend(latent_export, own_cache, provider, precision, expected):
    ddpm = pipeline.open_model(latent_export / "unet.onnx", provider, precision)
    assert (ddpm.decoder.backend, ddpm.decoder.precision) == expected
    z = latents(ddpm)
    tolerance = decoder_module.BF16_TOLERANCE if precision == "bf16" else 1e-4
    np.testing.assert_allclose(ddpm.decoder.decode(z), reference_images(latent_export, z), atol=tolerance)
    run = ddpm.generate(2, ddpm.plan(sampler="ddim", steps=2), seed=0, batch_size=2)
    assert run.images.shape == (2, 32, 32)


def test_the_cpu_provider_offers_the_decoder_onnx_runtime_alone():
    assert decoder_choice.candidates("cpu") == [("onnxruntime", "fp32")]
    offered = decoder_choice.candidates("auto")
    assert offered[0] == ("onnxruntime", "fp32")
    assert (("openvino", "fp32") in offered) == HAS_OPENVINO
    assert (("openvino", "bf16") in offered) == NATIVE_BF16


@pytest.mark.skipif(not HAS_OPENVINO, reason="needs the openvino extra")
def test_auto_keeps_the_fastest_decoder_and_remembers_it(latent_export, own_cache, monkeypatch):
    calls = timed_decoders(
        monkeypatch, {("onnxruntime", "fp32"): 1.0, ("openvino", "fp32"): 0.5, ("openvino", "bf16"): 0.8}
    )
    ddpm = pipeline.open_model(latent_export / "unet.onnx", "auto", "auto")
    assert (ddpm.decoder.backend, ddpm.decoder.precision) == ("openvino", "fp32")
    assert "decoder on OpenVINO fp32: 2.00x ONNX Runtime fp32 (measured now)" in ddpm.note
    assert ddpm.session.backend == "onnxruntime"  # each graph its own fastest
    assert len(calls) == 1 and len(calls[0]) == (3 if NATIVE_BF16 else 2)
    again = pipeline.open_model(latent_export / "unet.onnx", "auto", "auto")
    assert len(calls) == 1, "timed again although remembered"
    assert (again.decoder.backend, again.decoder.precision) == ("openvino", "fp32")
    assert "decoder on OpenVINO fp32 (cached on 20" in again.note


@pytest.mark.skipif(not HAS_OPENVINO, reason="needs the openvino extra")
def test_a_decoder_gain_within_timing_noise_keeps_onnx_runtime(latent_export, own_cache, monkeypatch):
    timed_decoders(monkeypatch, {("onnxruntime", "fp32"): 1.0, ("openvino", "fp32"): 0.97, ("openvino", "bf16"): 0.99})
    ddpm = pipeline.open_model(latent_export / "unet.onnx", "auto", "auto")
    assert (ddpm.decoder.backend, ddpm.decoder.precision) == ("onnxruntime", "fp32")
    assert "decoder on ONNX Runtime fp32: the reference path (measured now)" in ddpm.note


@pytest.mark.skipif(not HAS_OPENVINO, reason="needs the openvino extra")
def test_a_remembered_decoder_path_not_offered_is_timed_again(latent_export, own_cache, monkeypatch):
    calls = timed_decoders(
        monkeypatch, {("onnxruntime", "fp32"): 1.0, ("openvino", "fp32"): 0.5, ("openvino", "bf16"): 0.8}
    )
    pipeline.open_model(latent_export / "unet.onnx", "auto", "auto")
    (key,) = [key for key in cpu_batch.read_cache() if key.startswith("decoder | ")]
    cpu_batch.remember(key, {**cpu_batch.read_cache()[key], "backend": "tensorrt"})  # no decoder path
    ddpm = pipeline.open_model(latent_export / "unet.onnx", "auto", "auto")
    assert len(calls) == 2, "a remembered path that is not offered was used"
    assert (ddpm.decoder.backend, ddpm.decoder.precision) == ("openvino", "fp32")
    assert "decoder on OpenVINO fp32: 2.00x ONNX Runtime fp32 (measured now)" in ddpm.note


@pytest.mark.skipif(not NATIVE_BF16, reason="needs OpenVINO and a CPU with native bf16")
def test_a_bf16_decoder_whose_images_stray_runs_in_fp32_and_says_so(latent_export, own_cache, monkeypatch):
    monkeypatch.setattr(decoder_module, "BF16_TOLERANCE", 0.0)
    ddpm = pipeline.open_model(latent_export / "unet.onnx", "openvino", "bf16")
    assert ddpm.session.precision == "bf16"
    assert (ddpm.decoder.backend, ddpm.decoder.precision) == ("openvino", "fp32")
    assert "the decoder runs in fp32: in bf16 its images differ from fp32's by up to" in ddpm.note
    z = latents(ddpm)
    np.testing.assert_allclose(ddpm.decoder.decode(z), reference_images(latent_export, z), atol=1e-4)
