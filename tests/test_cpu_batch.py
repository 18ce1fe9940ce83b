"""The CPU batch size is measured once per machine and network shape, then read from the cache."""

import json

import pytest

from ddpm.runtime import cpu_batch
from ddpm.runtime.pipeline import DDPM
from ddpm.runtime.session import UNetSession


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
    assert second.cached and second.batch == first.batch and second.per_image_ms == pytest.approx(first.per_image_ms, abs=1e-3)


def test_the_key_follows_threads_and_network_not_weights(tiny_export, variants):
    one, two = (UNetSession(tiny_export / "unet.onnx", provider="cpu", threads=n) for n in (1, 2))
    assert cpu_batch.machine_key(one) != cpu_batch.machine_key(two)
    half = UNetSession(variants / "unet.fp16.onnx", provider="cpu", threads=1)
    assert cpu_batch.machine_key(half) != cpu_batch.machine_key(one)  # another precision, another cost
    assert cpu_batch.machine_key(UNetSession(tiny_export / "unet.onnx", provider="cpu", threads=1)) == cpu_batch.machine_key(one)


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
    monkeypatch.setattr(cpu_batch, "choose", lambda session, on_measure=None: cpu_batch.BatchChoice(5, {5: 1.0}, cached=True))
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


@pytest.mark.parametrize("entry", [
    {"batch": True, "per_image_ms": {"1": 1.0}, "measured": "x"},
    {"batch": 8, "per_image_ms": {"8": "fast"}, "measured": "x"},
    {"batch": 8, "per_image_ms": {"８": 1.0}, "measured": "x"},  # a full-width digit: not ASCII
    {"batch": 8, "per_image_ms": {"8": 1.0}},
    {"batch": 16, "per_image_ms": {"8": 1.0}, "measured": "x"},  # a batch never measured
    {"batch": 8, "per_image_ms": {"8": -1.0}, "measured": "x"},
])
def test_entries_of_the_wrong_types_are_measured_again(tiny_export, cache, monkeypatch, entry):
    session = UNetSession(tiny_export / "unet.onnx", provider="cpu", threads=1)
    cache.parent.mkdir(parents=True)
    cache.write_text(json.dumps({cpu_batch.machine_key(session): entry}))
    calls = []
    fake_measure(monkeypatch, calls)
    assert not cpu_batch.choose(session).cached and calls == [1]


@pytest.mark.parametrize("content, problem", [('{"k": NaN}', "not JSON"), ("x" * (cpu_batch.MAX_CACHE_BYTES + 10), "larger than"),
                                              ('"a string"', "not a JSON object")])
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

    code = ("import sys; from ddpm.runtime import cpu_batch\n"
            "for i in range(40): cpu_batch.remember(f'{sys.argv[1]}-{i}', {'batch': 4, 'per_image_ms': {'4': 1.0}, 'measured': 'x'})")
    writers = [subprocess.Popen([sys.executable, "-c", code, name]) for name in ("a", "b")]
    assert [writer.wait(timeout=120) for writer in writers] == [0, 0]
    stored = json.loads(cache.read_text())
    assert {f"{name}-{i}" for name in "ab" for i in range(40)} <= set(stored)
