"""Which copy of the embedded model runs (runtime/precision.py): int8 where it measures faster per image, each
copy at its best batch, fp32 elsewhere; the same choice through ddpm-run and the Python API."""

import pytest

from ddpm.runtime.cli import main as run_main


@pytest.fixture
def embedded_pair(int8_export, monkeypatch):
    """The tiny fp32 and int8 exports standing in for the package's embedded model and its int8 copy."""
    import ddpm.runtime.pipeline as pipeline
    import ddpm.runtime.precision as precision

    def default_model_path(precision="fp32"):
        return int8_export / ("unet.onnx" if precision == "fp32" else "unet.int8.onnx")

    monkeypatch.setattr(pipeline, "default_model_path", default_model_path)
    monkeypatch.setattr(precision, "default_model_path", default_model_path)
    return precision


@pytest.mark.parametrize("faster, precision, expected", [
    (True, "auto", "unet.int8.onnx (int8: 1.70x the speed of fp32 on this CPU"),
    (False, "auto", "unet.onnx (fp32: int8 measured 0.80x its speed on this CPU)"),
    (True, "fp32", "model unet.onnx on"),
    (False, "int8", "unet.int8.onnx (int8, as asked)"),
])
def test_the_embedded_copy_follows_the_measured_speed(invoke, embedded_pair, tmp_path, monkeypatch, faster, precision, expected):
    monkeypatch.setattr(embedded_pair, "int8_is_faster", lambda fp32, int8, on_measure=None: (faster, 1.7 if faster else 0.8))
    result = invoke(run_main, "--precision", precision, "--provider", "cpu", "-n", 2, "--sampler", "ddim", "--steps", 2,
                    "--png", tmp_path / "o.png")
    assert result.code == 0, result.err
    assert expected in result.err
    int8_used = "unet.int8.onnx" in result.err
    assert ("(int8, batch" in result.err) == int8_used  # the summary line says so too


def test_int8_speed_is_compared_at_each_ones_best_batch(int8_export, monkeypatch):
    from ddpm.runtime import cpu_batch
    from ddpm.runtime.precision import int8_is_faster
    from ddpm.runtime.session import UNetSession

    times = {"fp32": {4: 4.0, 64: 3.7}, "int8": {4: 2.9, 16: 2.3}}
    monkeypatch.setattr(cpu_batch, "choose", lambda session, on_measure=None: cpu_batch.BatchChoice(
        0, times[session.info.precision], cached=True))
    fp32 = UNetSession(int8_export / "unet.onnx", provider="cpu")
    int8 = UNetSession(int8_export / "unet.int8.onnx", provider="cpu")
    faster, ratio = int8_is_faster(fp32, int8)
    assert faster and ratio == pytest.approx(3.7 / 2.3)


@pytest.mark.parametrize("faster, expected", [(True, "int8"), (False, "fp32")])
def test_the_python_api_makes_the_same_choice(embedded_pair, monkeypatch, faster, expected):
    """precision.load_model: the choice ddpm-run makes, in one call of the Python API."""
    monkeypatch.setattr(embedded_pair, "int8_is_faster", lambda fp32, int8, on_measure=None: (faster, 1.7 if faster else 0.8))
    ddpm, note = embedded_pair.load_model(precision="auto", session_options={"provider": "cpu"})
    assert ddpm.info.precision == expected
    assert note.startswith(f"{expected}: ")


@pytest.mark.parametrize("path, precision, fragment", [
    ("unet.onnx", "int8", "a named file has its own"),
    (None, "fp16", "unknown precision 'fp16'"),
])
def test_the_python_api_refuses_a_precision_it_cannot_honour(embedded_pair, int8_export, path, precision, fragment):
    from ddpm.core.errors import DDPMError

    with pytest.raises(DDPMError, match=fragment):
        embedded_pair.load_model(None if path is None else int8_export / path, precision)
