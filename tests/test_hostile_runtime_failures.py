"""A loaded model that misbehaves while sampling ends in one line, never a traceback or a black picture."""

import numpy as np
import pytest

from ddpm.core.errors import DDPMError
from ddpm.runtime.pipeline import DDPM


@pytest.fixture
def ddpm(tiny_export):
    return DDPM.load(tiny_export / "unet.onnx", provider="cpu")


class FakeRun:
    def __init__(self, make):
        self.make = make

    def __call__(self, names, feeds):
        return [self.make(feeds["x"])]


@pytest.mark.parametrize("make, fragment", [
    (lambda x: np.zeros((len(x), 1, 1, 1), np.float32), "shape [3, 1, 1, 1]"),
    (lambda x: np.zeros((1, *x.shape[1:]), np.float32), "shape [1, 1, 32, 32]"),
    (lambda x: np.zeros(x.shape, np.float64), "float64"),
])
def test_eps_of_the_wrong_shape_or_type(ddpm, monkeypatch, make, fragment):
    monkeypatch.setattr(ddpm.session.session, "run", FakeRun(make))
    with pytest.raises(DDPMError, match="returned ε") as error:
        ddpm.generate(3, ddpm.plan(steps=2))
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
