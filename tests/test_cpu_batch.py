"""The CPU batch size is measured once per machine and network shape, then read from the cache."""

import json

import pytest

from ddpm.runtime import cpu_batch
from ddpm.runtime.pipeline import DDPM
from ddpm.runtime.session import UNetSession
from tests_support import fake_run


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    return tmp_path / "ddpm-mnist" / "cpu-batch.json"


def test_measured_once_then_read_from_the_cache(tiny_export, cache, monkeypatch):
    session = UNetSession(tiny_export / "unet.onnx", provider="cpu", threads=1)
    first = cpu_batch.choose(session)
    assert not first.cached and set(first.per_image_ms) <= set(cpu_batch.CANDIDATES)
    assert first.batch == min(first.per_image_ms, key=first.per_image_ms.get)
    stored = json.loads(cache.read_text())
    assert stored[cpu_batch.machine_key(session)]["batch"] == first.batch

    monkeypatch.setattr(cpu_batch, "measure_together", lambda *a, **k: pytest.fail("measured although cached"))
    second = cpu_batch.choose(session)
    assert (
        second.cached
        and second.batch == first.batch
        and second.per_image_ms == pytest.approx(first.per_image_ms, abs=1e-3)
    )


def test_the_key_follows_threads_and_network_not_weights(tiny_export, variants):
    one, two = (UNetSession(tiny_export / "unet.onnx", provider="cpu", threads=n) for n in (1, 2))
    assert cpu_batch.machine_key(one) != cpu_batch.machine_key(two)
    half = UNetSession(variants / "unet.fp16.onnx", provider="cpu", threads=1)
    assert cpu_batch.machine_key(half) != cpu_batch.machine_key(one)  # another precision, another cost
    assert cpu_batch.machine_key(
        UNetSession(tiny_export / "unet.onnx", provider="cpu", threads=1)
    ) == cpu_batch.machine_key(one)


@pytest.mark.parametrize("damage", ["not json", "[1, 2]", '{"KEY": {"batch": -3}}'])
def test_a_damaged_cache_is_measured_again_and_repaired(tiny_export, cache, monkeypatch, damage):
    session = UNetSession(tiny_export / "unet.onnx", provider="cpu", threads=1)
    cache.parent.mkdir(parents=True)
    cache.write_text(damage.replace("KEY", cpu_batch.machine_key(session)))
    monkeypatch.setattr(cpu_batch, "measure_together", lambda sessions, *a, **k: [{4: 2.0, 8: 1.0, 16: 1.5}])
    choice = cpu_batch.choose(session)
    assert choice.batch == 8 and not choice.cached
    assert json.loads(cache.read_text())[cpu_batch.machine_key(session)]["batch"] == 8


def test_an_unwritable_cache_only_means_measuring_again(tiny_export, tmp_path, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker))  # the cache folder cannot be made under a file
    monkeypatch.setattr(cpu_batch, "measure_together", lambda sessions, *a, **k: [{4: 2.0, 8: 3.0}])
    session = UNetSession(tiny_export / "unet.onnx", provider="cpu", threads=1)
    assert cpu_batch.choose(session).batch == 4


def test_sampling_uses_the_chosen_batch_and_batch_size_wins(tiny_export, monkeypatch):
    monkeypatch.setattr(
        cpu_batch, "choose", lambda session, on_measure=None: cpu_batch.BatchChoice(5, {5: 1.0}, cached=True)
    )
    ddpm = DDPM.load(tiny_export / "unet.onnx", provider="cpu")
    assert ddpm.generate(12, ddpm.plan(steps=2, sampler="ddim"), seed=0).settings.batch_size == 5
    assert ddpm.generate(12, ddpm.plan(steps=2, sampler="ddim"), seed=0, batch_size=3).settings.batch_size == 3


# The cache is read and written as a hostile file: links, special files, wrong types, other writers.


def fake_measure(monkeypatch, calls=None):
    def measure_together(sessions, *args, **kwargs):
        if calls is not None:
            calls.append(len(sessions))
        return [{4: 2.0, 8: 1.0} for _ in sessions]

    monkeypatch.setattr(cpu_batch, "measure_together", measure_together)


def test_a_link_at_the_cache_path_is_replaced_never_written_through(tiny_export, cache, tmp_path, monkeypatch):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    cache.parent.mkdir(parents=True)
    cache.symlink_to(victim)
    fake_measure(monkeypatch)
    choice = cpu_batch.choose(UNetSession(tiny_export / "unet.onnx", provider="cpu", threads=1))
    assert victim.read_text() == "precious\n"
    assert not cache.is_symlink() and json.loads(cache.read_text())
    assert choice.stored and "it is a link" in choice.note


def test_a_fifo_at_the_cache_path_does_not_hang(tiny_export, cache, monkeypatch):
    import os

    cache.parent.mkdir(parents=True)
    os.mkfifo(cache)
    fake_measure(monkeypatch)
    choice = cpu_batch.choose(UNetSession(tiny_export / "unet.onnx", provider="cpu", threads=1))
    assert choice.batch == 8 and "not a regular file" in choice.note


def test_a_directory_at_the_cache_path_is_not_called_remembered(tiny_export, cache, monkeypatch):
    cache.mkdir(parents=True)
    fake_measure(monkeypatch)
    choice = cpu_batch.choose(UNetSession(tiny_export / "unet.onnx", provider="cpu", threads=1))
    assert choice.batch == 8 and not choice.stored and cache.is_dir()


@pytest.mark.parametrize(
    "entry",
    [
        {"batch": True, "per_image_ms": {"1": 1.0}, "measured": "x"},
        {"batch": 8, "per_image_ms": {"8": "fast"}, "measured": "x"},
        {"batch": 8, "per_image_ms": {"８": 1.0}, "measured": "x"},  # a full-width digit: not ASCII
        {"batch": 8, "per_image_ms": {"8": 1.0}},
        {"batch": 16, "per_image_ms": {"8": 1.0}, "measured": "x"},  # a batch never measured
        {"batch": 8, "per_image_ms": {"8": -1.0}, "measured": "x"},
    ],
)
def test_entries_of_the_wrong_types_are_measured_again(tiny_export, cache, monkeypatch, entry):
    session = UNetSession(tiny_export / "unet.onnx", provider="cpu", threads=1)
    cache.parent.mkdir(parents=True)
    cache.write_text(json.dumps({cpu_batch.machine_key(session): entry}))
    calls = []
    fake_measure(monkeypatch, calls)
    assert not cpu_batch.choose(session).cached and calls == [1]


@pytest.mark.parametrize(
    "content, problem",
    [
        ('{"k": NaN}', "not JSON"),
        ("x" * (cpu_batch.MAX_CACHE_BYTES + 10), "larger than"),
        ('"a string"', "not a JSON object"),
    ],
)
def test_odd_files_are_named_in_a_note(tiny_export, cache, monkeypatch, content, problem):
    cache.parent.mkdir(parents=True)
    cache.write_text(content)
    fake_measure(monkeypatch)
    assert problem in cpu_batch.choose(UNetSession(tiny_export / "unet.onnx", provider="cpu", threads=1)).note


def test_a_relative_xdg_cache_home_is_ignored(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/cache")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert cpu_batch.cache_file() == tmp_path / ".cache" / "ddpm-mnist" / "cpu-batch.json"


def test_two_writers_keep_both_entries(cache):
    """Each write merges with what is there: two processes measuring different networks lose nothing."""
    import subprocess
    import sys

    code = (
        "import sys; from ddpm.runtime import cpu_batch\n"
        "for i in range(40): cpu_batch.remember(f'{sys.argv[1]}-{i}', "
        "{'batch': 4, 'per_image_ms': {'4': 1.0}, 'measured': 'x'})"
    )
    writers = [subprocess.Popen([sys.executable, "-c", code, name]) for name in ("a", "b")]
    assert [writer.wait(timeout=120) for writer in writers] == [0, 0]
    stored = json.loads(cache.read_text())
    assert {f"{name}-{i}" for name in "ab" for i in range(40)} <= set(stored)


def cached_timing(cache, session, per_image_ms, **extra):
    """A cache holding ``per_image_ms`` as this session's timing, a path choice of this CPU, and
    another CPU's timing."""
    key = cpu_batch.machine_key(session)
    entries = {
        key: {"batch": 4, "per_image_ms": per_image_ms, "measured": "2026-01-01T00:00:00Z", **extra},
        f"path | {key} | 0123456789abcdef": {"backend": "onnxruntime", "precision": "fp32"},
        "Another CPU | 64 | threads=default | onnxruntime 1.0 | fp32 | 0": {
            "batch": 8,
            "per_image_ms": {"8": 1.0},
            "measured": "2026-01-01T00:00:00Z",
        },
    }
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps(entries))
    return key


def test_a_run_far_from_its_timing_forgets_this_cpus_timings(invoke, tiny_export, cache):
    from ddpm.runtime.cli import main as run_main

    session = UNetSession(tiny_export / "unet.onnx", provider="cpu")
    cached_timing(cache, session, {"4": 1e-5})  # far faster than any real call: a timing to distrust
    result = invoke(
        run_main,
        "--onnx",
        tiny_export / "unet.onnx",
        "--provider",
        "cpu",
        "-n",
        4,
        "--sampler",
        "ddim",
        "--steps",
        12,
        "--png",
        cache.parent.parent / "o.png",
        "--seed",
        0,
    )
    assert result.code == 0, result.err
    assert "the next run times this CPU again" in result.err and "at batch 4" in result.err
    assert list(json.loads(cache.read_text())) == ["Another CPU | 64 | threads=default | onnxruntime 1.0 | fp32 | 0"]


def test_a_run_that_agrees_confirms_the_timing_once(tiny_export, cache):
    session = UNetSession(tiny_export / "unet.onnx", provider="cpu")
    key = cached_timing(cache, session, {"4": 2.0, "8": 3.0})
    choice = cpu_batch.choose(session)
    assert choice.cached and not choice.confirmed
    fake_run(session, calls=20, batch=4, per_image_ms=2.0 * 1.4)  # within 1.5x
    assert cpu_batch.recheck(session, choice) is None
    confirmed = cpu_batch.choose(session)
    assert confirmed.confirmed and json.loads(cache.read_text())[key]["confirmed"].startswith("20")
    fake_run(session, calls=20, batch=4, per_image_ms=50.0)  # a confirmed timing is not checked again
    assert cpu_batch.recheck(session, confirmed) is None
    assert key in json.loads(cache.read_text())


@pytest.mark.parametrize("calls, batch, why", [(9, 4, "too few calls"), (20, 2, "calls smaller than the chosen batch")])
def test_runs_that_say_little_are_not_compared(tiny_export, cache, calls, batch, why):
    session = UNetSession(tiny_export / "unet.onnx", provider="cpu")
    key = cached_timing(cache, session, {"4": 2.0})
    choice = cpu_batch.choose(session)
    fake_run(session, calls=calls, batch=batch, per_image_ms=50.0)
    assert cpu_batch.recheck(session, choice) is None, why
    entry = json.loads(cache.read_text())[key]
    assert "confirmed" not in entry


def two_sessions(tiny_export):
    """Two sessions with keys of their own (the thread count is part of the key)."""
    return [UNetSession(tiny_export / "unet.onnx", provider="cpu", threads=n) for n in (1, 2)]


@pytest.mark.parametrize("second", [None, "2026-01-02T00:00:00Z"], ids=["missing", "of another pass"])
def test_sessions_compared_are_timed_again_all_together(tiny_export, cache, monkeypatch, second):
    """One entry missing, or two of different passes: no cached figure stands beside another age's."""
    sessions = two_sessions(tiny_export)
    entries = {
        cpu_batch.machine_key(sessions[0]): {"batch": 4, "per_image_ms": {"4": 9.0}, "measured": "2026-01-01T00:00:00Z"}
    }
    if second:
        entries[cpu_batch.machine_key(sessions[1])] = {"batch": 4, "per_image_ms": {"4": 9.0}, "measured": second}
    cache.parent.mkdir(parents=True)
    cache.write_text(json.dumps(entries))
    calls = []
    fake_measure(monkeypatch, calls)
    monkeypatch.setattr(cpu_batch, "timestamp", lambda: "2026-01-03T00:00:00Z")
    choices = cpu_batch.choose_together(sessions)
    assert calls == [2] and [choice.per_image_ms for choice in choices] == [{4: 2.0, 8: 1.0}] * 2
    stored = json.loads(cache.read_text())
    assert {stored[cpu_batch.machine_key(session)]["measured"] for session in sessions} == {"2026-01-03T00:00:00Z"}


def test_sessions_of_one_pass_are_read_from_the_cache(tiny_export, cache, monkeypatch):
    sessions = two_sessions(tiny_export)
    fake_measure(monkeypatch)
    cpu_batch.choose_together(sessions)
    monkeypatch.setattr(cpu_batch, "measure_together", lambda *a, **k: pytest.fail("timed although one pass is cached"))
    assert all(choice.cached for choice in cpu_batch.choose_together(sessions))
