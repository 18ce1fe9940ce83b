"""The OpenVINO backend (runtime/openvino_session.py): the same ε as ONNX Runtime at f32, bf16 within the int8
tolerance, the session interface the pipeline and the serving engine use, and one-line refusals."""

import builtins

import numpy as np
import pytest

from ddpm.core.errors import DDPMError
from ddpm.runtime import openvino_session
from ddpm.runtime.pipeline import DDPM
from ddpm.runtime.session import UNetSession

pytest.importorskip("openvino")

NATIVE_BF16 = openvino_session.bf16_support() is None


def inputs(info, batch=5, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, info.image_channels, info.image_size, info.image_size), dtype=np.float32)
    return x, rng.integers(0, info.schedule["timesteps"], batch)


def test_f32_computes_onnx_runtimes_eps(tiny_export):
    reference = UNetSession(tiny_export / "unet.onnx", provider="cpu")
    session = openvino_session.OpenVINOSession(tiny_export / "unet.onnx")
    x, t = inputs(reference.info)
    assert np.abs(session.eps(x, t) - reference.eps(x, t)).max() < 1e-4
    assert session.provider == "OpenVINO CPU fp32" and session.on_cpu and session.fixed_batch is None
    assert session.run_calls == 1


def test_a_fixed_batch_model_keeps_its_batch(tiny_export):
    assert openvino_session.OpenVINOSession(tiny_export / "unet.b3.onnx").fixed_batch == 3


@pytest.mark.skipif(not NATIVE_BF16, reason="this CPU has no native bf16")
def test_bf16_stays_within_the_int8_tolerance(tiny_export):
    from ddpm.runtime.eps_check import TOLERANCE, eps_difference

    reference = UNetSession(tiny_export / "unet.onnx", provider="cpu")
    bf16 = openvino_session.OpenVINOSession(tiny_export / "unet.onnx", precision="bf16")
    difference = eps_difference(reference, bf16)
    assert 0 < difference < TOLERANCE  # bf16 rounds: not the same numbers, but close


def test_the_int8_copy_runs_with_its_own_precision(int8_export):
    session = openvino_session.OpenVINOSession(int8_export / "unet.int8.onnx")
    assert session.precision == "int8" and session.provider == "OpenVINO CPU int8"
    with pytest.raises(DDPMError, match="bf16 inference runs the fp32 model"):
        openvino_session.OpenVINOSession(int8_export / "unet.int8.onnx", precision="bf16")


def test_the_pipeline_samples_through_openvino_as_through_onnx_runtime(tiny_export):
    plan = dict(sampler="ddim", steps=3)
    ours = DDPM.load(tiny_export / "unet.onnx", provider="openvino")
    theirs = DDPM.load(tiny_export / "unet.onnx", provider="cpu")
    run = ours.generate(4, ours.plan(**plan), seed=3, batch_size=4)
    assert run.settings.provider == "OpenVINO CPU fp32"
    assert (
        np.abs(run.images.astype(int) - theirs.generate(4, theirs.plan(**plan), seed=3, batch_size=4).images).max() <= 1
    )
    engine = ours.serving_engine(max_rows=4)
    job = engine.submit(2, ours.plan(**plan), seed=3)
    engine.run_until_idle()
    assert job.wait(0).images.shape[0] == 2


def test_iobinding_is_refused_on_openvino(tiny_export):
    from ddpm.core.plan import SettingError

    with pytest.raises(SettingError, match="IOBinding is ONNX Runtime's"):
        DDPM.load(tiny_export / "unet.onnx", provider="openvino").engine("iobinding")


def test_without_the_package_the_error_names_the_extra(tiny_export, monkeypatch):
    real_import = builtins.__import__

    def no_openvino(name, *args, **kwargs):
        if name == "openvino" or name.startswith("openvino."):
            raise ImportError("No module named 'openvino'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_openvino)
    with pytest.raises(DDPMError, match=r'pip install "ddpm-mnist\[openvino\]"'):
        openvino_session.OpenVINOSession(tiny_export / "unet.onnx")


def test_bf16_is_refused_on_a_cpu_without_it_naming_what_is_missing(tiny_export, monkeypatch):
    monkeypatch.setattr(openvino_session, "cpu_flags", lambda: frozenset({"avx2", "avx512f"}))
    with pytest.raises(DDPMError, match="bf16 needs a CPU with AMX or AVX512-BF16; .* has neither"):
        openvino_session.OpenVINOSession(tiny_export / "unet.onnx", precision="bf16")


@pytest.mark.parametrize("stage", ["read_model", "compile_model"])
def test_a_read_or_compile_failure_names_the_file(tiny_export, monkeypatch, stage):
    import openvino

    def fail(*args, **kwargs):
        raise RuntimeError("Exception from src/core: something inside OpenVINO\nmore lines")

    monkeypatch.setattr(openvino.Core, stage, fail)
    with pytest.raises(DDPMError) as error:
        openvino_session.OpenVINOSession(tiny_export / "unet.onnx")
    assert str(tiny_export / "unet.onnx") in str(error.value) and "\n" not in str(error.value)


def test_a_file_that_breaks_the_contract_is_refused_before_openvino_sees_it(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x08\x07" + b"\xff" * 50)
    with pytest.raises(DDPMError, match="bad.onnx"):
        openvino_session.OpenVINOSession(bad)
