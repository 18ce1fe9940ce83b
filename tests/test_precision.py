"""Which path samples on a CPU (runtime/precision.py): the fastest eligible backend and precision, each at its
best batch; bf16 and int8 only where their ε holds and the int8 copy is a copy of the same network; the
choice cached with the backends' versions; the same choice through ddpm-run and the Python API."""

import json
import time

import onnx
import pytest

from ddpm.core.errors import DDPMError
from ddpm.runtime import cpu_batch, openvino_session, pipeline
from ddpm.runtime.cli import main as run_main

HAS_OPENVINO = openvino_session.openvino_version() is not None
NATIVE_BF16 = HAS_OPENVINO and openvino_session.bf16_support() is None


@pytest.fixture
def embedded_pair(int8_export, monkeypatch, tmp_path):
    """The tiny fp32 and int8 exports standing in for the package's embedded model and its int8 copy,
    with a cache of this test's own."""
    import ddpm.runtime.precision as precision

    def embedded_model_path(name, precision="fp32"):
        return int8_export / ("unet.onnx" if precision == "fp32" else "unet.int8.onnx")

    monkeypatch.setattr(pipeline, "embedded_model_path", embedded_model_path)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return precision


def opened(model=None, precision="auto", provider="auto"):
    """What the front door opens, and its note."""
    ddpm = pipeline.open_model(model, provider, precision)
    return ddpm, ddpm.note


def fake_times(monkeypatch, times: dict[tuple[str, str], float], calls: list | None = None):
    """cpu_batch.time_together answering ``times`` (ms per image) by (backend, precision)."""

    def time_together(sessions, on_measure=None, note=""):
        if calls is not None:
            calls.append([(s.backend, s.precision) for s in sessions])
        stamp = cpu_batch.timestamp()
        return [
            cpu_batch.BatchChoice(8, {8: times[(s.backend, s.precision)]}, cached=False, measured=stamp)
            for s in sessions
        ]

    monkeypatch.setattr(cpu_batch, "time_together", time_together)


def run_args(tmp_path, *extra):
    return ("-n", 2, "--sampler", "ddim", "--steps", 2, "--png", tmp_path / "o.png", *extra)


@pytest.mark.parametrize(
    "fastest, expected",
    [
        (("onnxruntime", "int8"), "unet.int8.onnx (ONNX Runtime int8: 1.70x the speed of ONNX Runtime fp32"),
        (
            ("onnxruntime", "fp32"),
            "unet.onnx (ONNX Runtime fp32: the fastest path on this CPU "
            "(measured now; the others: ONNX Runtime int8 0.50x))",
        ),
    ],
)
def test_onnx_runtime_alone_picks_between_its_copies(invoke, embedded_pair, tmp_path, monkeypatch, fastest, expected):
    times = {("onnxruntime", "fp32"): 3.4, ("onnxruntime", "int8"): 4.0}
    times[fastest] = 2.0
    fake_times(monkeypatch, times)
    result = invoke(run_main, "--precision", "auto", "--provider", "cpu", *run_args(tmp_path))
    assert result.code == 0, result.err
    assert expected in result.err
    assert ("(int8, batch" in result.err) == (fastest[1] == "int8")  # the summary line says so too


# ms per image of every path; each test makes one of them the clear fastest
FIVE_PATHS = {
    ("onnxruntime", "fp32"): 3.0,
    ("onnxruntime", "int8"): 2.9,
    ("openvino", "fp32"): 3.5,
    ("openvino", "int8"): 2.8,
    ("openvino", "bf16"): 2.7,
}


@pytest.mark.skipif(not HAS_OPENVINO, reason="needs the openvino extra")
@pytest.mark.parametrize(
    "fastest", [("openvino", "int8"), ("openvino", "fp32")] + ([("openvino", "bf16")] if NATIVE_BF16 else [])
)
def test_auto_picks_the_fastest_path_across_backends(invoke, embedded_pair, tmp_path, monkeypatch, fastest):
    times = {**FIVE_PATHS, fastest: 1.5}
    calls = []
    fake_times(monkeypatch, times, calls)
    result = invoke(run_main, *run_args(tmp_path))
    assert result.code == 0, result.err
    assert f"OpenVINO {fastest[1]}: 2.00x the speed of ONNX Runtime fp32 on this CPU (measured now)" in result.err
    assert f"on OpenVINO CPU {fastest[1]}" in result.err
    assert len(calls[0]) == (5 if NATIVE_BF16 else 4)  # every path timed in one measurement


@pytest.mark.skipif(not HAS_OPENVINO, reason="needs the openvino extra")
def test_the_choice_is_cached_and_said_to_be(embedded_pair, monkeypatch):
    times = {**FIVE_PATHS, ("openvino", "int8"): 1.5}
    calls = []
    fake_times(monkeypatch, times, calls)
    first, note = opened()
    assert (first.session.backend, first.session.precision) == ("openvino", "int8") and "measured now" in note
    again, note = opened()
    assert len(calls) == 1, "measured although cached"
    assert (again.session.backend, again.session.precision) == ("openvino", "int8")
    assert "cached on 20" in note and "1.50x" not in note and "2.00x the speed of ONNX Runtime fp32" in note


@pytest.mark.skipif(not HAS_OPENVINO, reason="needs the openvino extra")
def test_a_cached_backend_that_is_gone_means_measuring_again(embedded_pair, monkeypatch):
    times = {**FIVE_PATHS, ("openvino", "int8"): 1.5}
    calls = []
    fake_times(monkeypatch, times, calls)
    opened()
    monkeypatch.setattr(embedded_pair, "openvino_version", lambda: None)  # uninstalled since
    ddpm, note = opened()
    assert len(calls) == 2 and ddpm.session.backend == "onnxruntime" and "measured now" in note


def test_a_cached_choice_of_a_path_not_offered_is_not_believed(embedded_pair, monkeypatch):
    calls = []
    fake_times(monkeypatch, {("onnxruntime", "fp32"): 3.0, ("onnxruntime", "int8"): 2.0}, calls)
    opened(provider="cpu")
    cache = cpu_batch.cache_file()
    stored = json.loads(cache.read_text())
    key = next(key for key in stored if key.startswith("path | "))
    stored[key].update(backend="tensorflow", precision="fp4")
    cache.write_text(json.dumps(stored))
    ddpm, note = opened(provider="cpu")
    assert len(calls) == 2 and ddpm.session.precision == "int8" and "measured now" in note


def test_a_path_whose_eps_strays_is_not_eligible(embedded_pair, monkeypatch):
    fake_times(monkeypatch, {("onnxruntime", "fp32"): 3.0, ("onnxruntime", "int8"): 1.0})
    monkeypatch.setattr(embedded_pair, "eps_difference", lambda reference, candidate: 0.2)
    ddpm, note = opened(provider="cpu")
    assert ddpm.session.precision == "fp32"
    assert "not eligible: ONNX Runtime int8 (ε 0.200 > 0.05)" in note


def test_the_eps_check_measures_the_real_difference(int8_export):
    from ddpm.runtime.eps_check import eps_difference
    from ddpm.runtime.session import UNetSession

    fp32 = UNetSession(int8_export / "unet.onnx", provider="cpu")
    assert eps_difference(fp32, UNetSession(int8_export / "unet.onnx", provider="cpu")) == 0.0
    assert 0.0 < eps_difference(fp32, UNetSession(int8_export / "unet.int8.onnx", provider="cpu")) < 0.05


@pytest.mark.parametrize(
    "change, fragment",
    [
        ({"ddpm.source": lambda source: {**source, "sha256": "0" * 64}}, "source checkpoint"),
        ({"ddpm.schedule": lambda schedule: {**schedule, "beta_end": 0.03}}, "schedule"),
        ({"ddpm.num_classes": lambda classes: 10}, "inputs are ['t', 'x'], expected ['t', 'x', 'y']"),
        ({"ddpm.precision": lambda precision: "fp32"}, "precision fp32"),
    ],
)
def test_an_int8_file_that_is_not_a_copy_is_never_swapped_in(
    embedded_pair, int8_export, tmp_path, monkeypatch, change, fragment
):
    model = onnx.load(int8_export / "unet.int8.onnx")
    for prop in model.metadata_props:
        if prop.key in change:
            prop.value = json.dumps(change[prop.key](json.loads(prop.value)))
    stranger = tmp_path / "stranger.int8.onnx"
    onnx.save(model, stranger)
    monkeypatch.setattr(
        pipeline,
        "embedded_model_path",
        lambda name, precision="fp32": int8_export / "unet.onnx" if precision == "fp32" else stranger,
    )
    monkeypatch.setattr(cpu_batch, "time_together", lambda *a, **k: pytest.fail("timed a single path"))
    ddpm, note = opened(provider="cpu")
    assert ddpm.session.path == int8_export / "unet.onnx"
    assert "stranger.int8.onnx" in note and "not" in note and fragment in note


def test_the_python_api_makes_the_same_choice(embedded_pair, monkeypatch):
    from ddpm.runtime.pipeline import DDPM

    fake_times(monkeypatch, {("onnxruntime", "fp32"): 3.0, ("onnxruntime", "int8"): 2.0})
    ddpm = DDPM.load(provider="cpu", precision="auto")
    assert ddpm.session.precision == "int8" and ddpm.note.startswith("ONNX Runtime int8: 1.50x")


@pytest.mark.parametrize(
    "path, precision, provider, fragment",
    [
        ("unet.onnx", "int8", "auto", "a named file has its own"),
        (None, "fp16", "auto", "unknown precision 'fp16'"),
        (None, "bf16", "cpu", "bf16 runs on the OpenVINO backend"),
    ],
)
def test_the_python_api_refuses_a_precision_it_cannot_honour(
    embedded_pair, int8_export, path, precision, provider, fragment
):
    with pytest.raises(DDPMError, match=fragment):
        opened(None if path is None else int8_export / path, precision, provider)


@pytest.mark.parametrize(
    "args, fragment",
    [
        (("--precision", "bf16", "--provider", "cpu"), "bf16 runs on the OpenVINO backend"),
        (("--precision", "int8", "--onnx", "ONNX"), "--precision int8 picks a copy of the embedded model"),
        (("--engine", "cudagraph", "--provider", "openvino"), "cudagraph needs --provider cuda"),
    ],
)
def test_ddpm_run_refuses_impossible_combinations_as_usage_errors(invoke, int8_export, tmp_path, args, fragment):
    from tests_support import assert_usage_error

    args = tuple(str(int8_export / "unet.onnx") if arg == "ONNX" else arg for arg in args)
    assert_usage_error(invoke(run_main, *run_args(tmp_path, *args)), fragment)


@pytest.mark.parametrize(
    "int8_ms, expected",
    [
        (4.0, "ONNX Runtime fp32: the fastest path on this CPU ({when}; the others: ONNX Runtime int8 0.75x)"),
        (2.9, "ONNX Runtime fp32: kept ({when}): ONNX Runtime int8 measured 1.03x, under the 1.05x"),
    ],
)
def test_a_kept_reference_says_how_the_others_compared_measured_and_cached(
    embedded_pair, monkeypatch, int8_ms, expected
):
    calls = []
    fake_times(monkeypatch, {("onnxruntime", "fp32"): 3.0, ("onnxruntime", "int8"): int8_ms}, calls)
    _, measured = opened(provider="cpu")
    _, cached = opened(provider="cpu")
    assert len(calls) == 1
    assert measured.startswith(expected.format(when="measured now"))
    assert cached.startswith(expected.format(when=f"cached on {time.strftime('%Y-%m-%d', time.gmtime())}"))


def test_a_gain_within_timing_noise_keeps_fp32(embedded_pair, monkeypatch):
    fake_times(monkeypatch, {("onnxruntime", "fp32"): 3.0, ("onnxruntime", "int8"): 2.9})  # 1.03x
    ddpm, note = opened(provider="cpu")
    assert ddpm.session.precision == "fp32"
    assert note.startswith("ONNX Runtime fp32: kept (measured now): ONNX Runtime int8 measured 1.03x, under the 1.05x")


# Every figure of a choice comes from one interleaved pass: the real pass code (cpu_batch.time_together)
# runs over a fake measurement and a fake clock.


def fake_pass(monkeypatch, times: dict[tuple[str, str], float], calls: list, clock: dict):
    """cpu_batch.measure_together answering ``times`` (ms per image at batch 4) by (backend, precision),
    each pass's sessions appended to ``calls``; cpu_batch's clock reads ``clock["now"]``."""

    def measure_together(sessions, *args, **kwargs):
        calls.append({(s.backend, s.precision) for s in sessions})
        return [{4: times[(s.backend, s.precision)]} for s in sessions]

    monkeypatch.setattr(cpu_batch, "measure_together", measure_together)
    monkeypatch.setattr(cpu_batch, "timestamp", lambda: clock["now"])


def path_record(paths: set[str]) -> dict:
    """The cached choice whose figures name exactly ``paths``."""
    records = [entry for key, entry in cpu_batch.read_cache().items() if key.startswith("path | ")]
    return next(entry for entry in records if set(entry["per_image_ms"]) == paths)


@pytest.mark.skipif(not HAS_OPENVINO, reason="needs the openvino extra")
def test_a_new_backend_retimes_every_path_in_one_pass(embedded_pair, monkeypatch):
    """The reported case: ONNX Runtime timed while the cores were shared, OpenVINO installed later."""
    calls, clock = [], {"now": "2026-01-01T21:40:00Z"}
    busy = {("onnxruntime", "fp32"): 32.0, ("onnxruntime", "int8"): 40.0}
    fake_pass(monkeypatch, busy, calls, clock)
    monkeypatch.setattr(embedded_pair, "eps_difference", lambda reference, candidate: 0.01)
    monkeypatch.setattr(embedded_pair, "openvino_version", lambda: None)
    opened()
    monkeypatch.setattr(embedded_pair, "openvino_version", openvino_session.openvino_version)  # the extra arrives
    clock["now"] = "2026-01-01T22:36:00Z"
    quiet = {
        ("onnxruntime", "fp32"): 9.6,
        ("onnxruntime", "int8"): 12.0,
        ("openvino", "fp32"): 11.6,
        ("openvino", "int8"): 13.0,
        ("openvino", "bf16"): 12.5,
    }
    fake_pass(monkeypatch, quiet, calls, clock)
    ddpm, note = opened()
    offered = {path for path in quiet if path[1] != "bf16" or NATIVE_BF16}
    assert calls == [set(busy), offered]  # the cached ONNX Runtime figures were timed again with the new ones
    assert (ddpm.session.backend, ddpm.session.precision) == ("onnxruntime", "fp32") and "measured now" in note
    record = path_record({str(embedded_pair.CpuPath(*path)) for path in offered})
    assert record["measured"] == "2026-01-01T22:36:00Z" and record["one_pass"] is True
    assert record["per_image_ms"]["ONNX Runtime fp32"] == 9.6
    batches = [entry for key, entry in cpu_batch.read_cache().items() if not key.startswith("path | ")]
    assert len(batches) == len(offered) and {entry["measured"] for entry in batches} == {"2026-01-01T22:36:00Z"}


def test_a_record_of_the_older_format_is_timed_again_as_a_whole(embedded_pair, monkeypatch):
    calls, clock = [], {"now": "2026-01-01T21:40:00Z"}
    times = {("onnxruntime", "fp32"): 3.0, ("onnxruntime", "int8"): 2.0}
    fake_pass(monkeypatch, times, calls, clock)
    opened(provider="cpu")
    cache = cpu_batch.cache_file()
    stored = json.loads(cache.read_text())
    key = next(key for key in stored if key.startswith("path | "))
    for name in ("one_pass", "batch"):  # as the older code wrote it: figures of whatever age beside one stamp
        del stored[key][name]
    cache.write_text(json.dumps(stored))
    clock["now"] = "2026-01-01T22:36:00Z"
    _, note = opened(provider="cpu")
    assert calls == [set(times), set(times)] and "measured now" in note
    assert path_record({"ONNX Runtime fp32", "ONNX Runtime int8"})["measured"] == "2026-01-01T22:36:00Z"


def test_a_record_naming_its_backend_under_the_former_key_is_timed_again(embedded_pair, monkeypatch):
    """A cache written before the rename stored the backend as "engine": re-timed, never trusted or a crash."""
    calls, clock = [], {"now": "2026-01-01T21:40:00Z"}
    times = {("onnxruntime", "fp32"): 3.0, ("onnxruntime", "int8"): 2.0}
    fake_pass(monkeypatch, times, calls, clock)
    opened(provider="cpu")
    cache = cpu_batch.cache_file()
    stored = json.loads(cache.read_text())
    key = next(key for key in stored if key.startswith("path | "))
    stored[key]["engine"] = stored[key].pop("backend")  # otherwise a well-formed one-pass record
    cache.write_text(json.dumps(stored))
    clock["now"] = "2026-01-01T22:36:00Z"
    ddpm, note = opened(provider="cpu")
    assert calls == [set(times), set(times)] and "measured now" in note and ddpm.session.precision == "int8"
    record = path_record({"ONNX Runtime fp32", "ONNX Runtime int8"})
    assert record["backend"] == "onnxruntime" and "engine" not in record
    assert record["measured"] == "2026-01-01T22:36:00Z"


def confirm_batch_entry(session):
    """Mark ``session``'s batch timing confirmed, as an earlier run at that precision would have."""
    cache = cpu_batch.cache_file()
    stored = json.loads(cache.read_text())
    stored[cpu_batch.machine_key(session)]["confirmed"] = "2026-01-01T00:00:00Z"
    cache.write_text(json.dumps(stored))


def test_the_first_real_run_retimes_a_backend_choice_it_contradicts(invoke, embedded_pair, tmp_path, monkeypatch):
    calls, clock = [], {"now": "2026-01-01T21:40:00Z"}
    fake_pass(
        monkeypatch, {("onnxruntime", "fp32"): 3.0, ("onnxruntime", "int8"): 1e-3}, calls, clock
    )  # int8: far too fast
    ddpm, _ = opened(provider="cpu")
    assert ddpm.session.precision == "int8"
    confirm_batch_entry(ddpm.session)  # the batch's own check is done: only the backend choice's can see this
    result = invoke(
        run_main,
        "--precision",
        "auto",
        "--provider",
        "cpu",
        "-n",
        4,
        "--sampler",
        "ddim",
        "--steps",
        12,
        "--png",
        tmp_path / "o.png",
        "--seed",
        0,
    )
    assert result.code == 0, result.err
    assert "the next run times this CPU again" in result.err and "at batch 4" in result.err
    assert not any(key.startswith("path | ") for key in cpu_batch.read_cache())
    assert len(calls) == 1
    opened(provider="cpu")
    assert calls[1] == {("onnxruntime", "fp32"), ("onnxruntime", "int8")}  # every path again, together


def test_a_first_real_run_that_agrees_confirms_the_backend_choice_once(embedded_pair, monkeypatch):
    from tests_support import fake_run

    calls, clock = [], {"now": "2026-01-01T21:40:00Z"}
    fake_pass(monkeypatch, {("onnxruntime", "fp32"): 3.0, ("onnxruntime", "int8"): 2.0}, calls, clock)
    opened(provider="cpu")
    ddpm, _ = opened(provider="cpu")
    choice = ddpm.batch_choice()
    assert (
        ddpm.path_timing is not None and not ddpm.path_timing.confirmed and ddpm.path_timing.batch == choice.batch == 4
    )
    fake_run(ddpm.session, calls=20, batch=4, per_image_ms=2.0 * 1.4)  # within 1.5x
    assert cpu_batch.recheck(ddpm.session, choice, ddpm.path_timing) is None
    assert path_record({"ONNX Runtime fp32", "ONNX Runtime int8"})["confirmed"] == "2026-01-01T21:40:00Z"
    again, _ = opened(provider="cpu")
    assert again.path_timing.confirmed and again.batch_choice().confirmed
    fake_run(again.session, calls=20, batch=4, per_image_ms=50.0)  # confirmed: not checked again
    assert cpu_batch.recheck(again.session, again.batch_choice(), again.path_timing) is None
    assert len(calls) == 1 and path_record({"ONNX Runtime fp32", "ONNX Runtime int8"})
