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
