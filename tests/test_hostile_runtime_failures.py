"""A loaded model that misbehaves while sampling (a latent model's U-Net or decoder too) ends in one line,
never a traceback or a black picture."""

import numpy as np
import pytest

from ddpm.core.errors import DDPMError
from ddpm.runtime.pipeline import DDPM


@pytest.fixture(params=["tiny_export", "latent_export"])
def ddpm(request):
    """The pixel model, and a latent one (its U-Net samples [B, 2, 16, 16] latents, its decoder draws the images)."""
    return DDPM.load(request.getfixturevalue(request.param) / "unet.onnx", provider="cpu")


class FakeRun:
    def __init__(self, make):
        self.make = make

    def __call__(self, names, feeds):
        return [self.make(feeds["x"])]


@pytest.mark.parametrize(
    "make, fragment",
    [
        (lambda x: np.zeros((len(x), 1, 1, 1), np.float32), "shape [3, 1, 1, 1]"),
        (lambda x: np.zeros((1, *x.shape[1:]), np.float32), "shape [1, {channels}, {size}, {size}]"),
        (lambda x: np.zeros(x.shape, np.float64), "float64"),
    ],
)
def test_eps_of_the_wrong_shape_or_type(ddpm, monkeypatch, make, fragment):
    monkeypatch.setattr(ddpm.session.session, "run", FakeRun(make))
    with pytest.raises(DDPMError, match="returned ε") as error:
        ddpm.generate(3, ddpm.plan(steps=2))
    fragment = fragment.format(channels=ddpm.info.image_channels, size=ddpm.info.image_size)
    assert fragment in str(error.value) and "\n" not in str(error.value)


def test_onnx_runtime_failure_is_one_line(ddpm, monkeypatch):
    def fail(names, feeds):
        raise RuntimeError("[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : Non-zero status code\nmore detail")

    monkeypatch.setattr(ddpm.session.session, "run", fail)
    with pytest.raises(DDPMError, match="ONNX Runtime failed while running the model: .*RUNTIME_EXCEPTION") as error:
        ddpm.generate(2, ddpm.plan(steps=2))
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("sampler", ["ancestral", "ddim", "dpm++2m"])
def test_non_finite_samples_stop_the_run_naming_the_step(ddpm, monkeypatch, sampler):
    calls = []

    def nan_on_second_call(x):
        calls.append(1)
        return np.full(x.shape, np.nan if len(calls) == 2 else 0.0, np.float32)

    monkeypatch.setattr(ddpm.session.session, "run", FakeRun(nan_on_second_call))
    with pytest.raises(DDPMError, match=r"NaN or infinite at step 2 of 5"):
        ddpm.generate(2, ddpm.plan(steps=5, sampler=sampler))


class FakeDecoder:
    def __init__(self, make):
        self.make = make

    def __call__(self, names, feeds):
        return [self.make(feeds["z"])]


@pytest.mark.parametrize(
    "make, fragment",
    [
        (lambda z: np.zeros((len(z), 1, 1, 1), np.float32), "shape [3, 1, 1, 1]"),
        (lambda z: np.zeros((1, 1, 32, 32), np.float32), "shape [1, 1, 32, 32]"),
        (lambda z: np.zeros((len(z), 1, 32, 32), np.float64), "float64"),
        (lambda z: np.full((len(z), 1, 32, 32), np.nan, np.float32), "NaN"),
        (lambda z: np.full((len(z), 1, 32, 32), np.inf, np.float32), "infinite"),
    ],
    ids=["shape", "rows", "float64", "nan", "inf"],
)
@pytest.mark.parametrize("ddpm", ["latent_export"], indirect=True)
def test_a_decoder_that_misbehaves_while_sampling(ddpm, monkeypatch, make, fragment):
    """The decoder of a latent model loaded fine, then returns images of the wrong shape, type or value."""
    monkeypatch.setattr(ddpm.decoder.session, "run", FakeDecoder(make))
    with pytest.raises(DDPMError, match="decoder") as error:
        ddpm.generate(3, ddpm.plan(steps=2))
    assert fragment in str(error.value) and "\n" not in str(error.value)


@pytest.mark.parametrize("ddpm", ["latent_export"], indirect=True)
def test_decoder_onnx_runtime_failure_is_one_line(ddpm, monkeypatch):
    def fail(names, feeds):
        raise RuntimeError("[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : Non-zero status code\nmore detail")

    monkeypatch.setattr(ddpm.decoder.session, "run", fail)
    with pytest.raises(DDPMError, match="decoder .*unet.decoder.onnx failed: .*RUNTIME_EXCEPTION") as error:
        ddpm.generate(2, ddpm.plan(steps=2))
    assert "\n" not in str(error.value)
