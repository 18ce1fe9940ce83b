"""The continuous-batching engine: requests of different plans share network calls and still get the
samples they would get alone; joining, cancelling, failing, fairness and capacity; the guided ε."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from ddpm.core.errors import DDPMError
from ddpm.core.samplers import SPECS
from ddpm.runtime.engine import Cancelled, SamplingEngine
from ddpm.runtime.pipeline import DDPM

# Float round-off between batch compositions (a row's ε computed beside other rows): measured on the
# embedded model at up to ~1e-5; identical compositions give identical samples.
MIXED_TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def ddpm() -> DDPM:
    """The embedded class-conditional model, so guided and unguided requests can mix."""
    return DDPM.load(provider="cpu", threads=2)


def plans(ddpm: DDPM) -> dict[str, object]:
    """One short plan per registered sampler, plus guided ones."""
    chosen = {spec.name: ddpm.plan(spec.name, steps=6) for spec in SPECS if not spec.student}  # students: test_distill
    chosen["ddim-noisy"] = ddpm.plan("ddim", steps=6, eta=1.0)
    chosen["guided-sde"] = ddpm.plan("dpm++2m-sde", steps=6, digits=[3, 8], guidance=2.0)
    chosen["guided-ancestral"] = ddpm.plan("ancestral", steps=6, digits=[1], guidance=1.0)
    return chosen


def test_a_request_alone_is_generate_exactly(ddpm):
    for name, plan in plans(ddpm).items():
        engine = SamplingEngine(ddpm.session, max_rows=8)
        job = engine.submit(3, plan, seed=11)
        engine.run_until_idle()
        alone = ddpm.generate(3, plan, seed=11, batch_size=8)
        np.testing.assert_array_equal(job.wait().samples, alone.samples, err_msg=name)


def test_mixed_plans_share_calls_and_keep_their_samples(ddpm):
    chosen = plans(ddpm)
    engine = SamplingEngine(ddpm.session, max_rows=64)
    jobs = {name: engine.submit(2, plan, seed=index) for index, (name, plan) in enumerate(chosen.items())}
    engine.run_until_idle()
    longest = max(job.steps for job in jobs.values())
    assert engine.stats.ticks == longest  # every request advanced at every tick: one call serves them all
    assert engine.stats.calls == longest
    for index, (name, plan) in enumerate(chosen.items()):
        alone = ddpm.generate(2, plan, seed=index)
        assert np.abs(jobs[name].wait().samples - alone.samples).max() <= MIXED_TOLERANCE, name
        assert jobs[name].state == "done" and jobs[name].position == jobs[name].steps


def test_a_request_joining_mid_flight_gets_its_own_samples(ddpm):
    plan = ddpm.plan("dpm++2m-sde", steps=8)
    engine = SamplingEngine(ddpm.session, max_rows=16)
    first = engine.submit(2, plan, seed=1)
    for _ in range(3):
        engine.tick()
    late = engine.submit(3, ddpm.plan("ddim", steps=5, digits=[4]), seed=2)
    assert late.position == 0 and first.position == 3
    engine.run_until_idle()
    assert np.abs(late.wait().samples - ddpm.generate(3, late.plan, seed=2).samples).max() <= MIXED_TOLERANCE
    assert np.abs(first.wait().samples - ddpm.generate(2, plan, seed=1).samples).max() <= MIXED_TOLERANCE


def test_cancelling_frees_the_rows_at_the_next_tick(ddpm):
    engine = SamplingEngine(ddpm.session, max_rows=16)
    doomed = engine.submit(4, ddpm.plan("ddim", steps=10), seed=0)
    kept = engine.submit(2, ddpm.plan("ddim", steps=10), seed=1)
    engine.tick()
    doomed.cancel()
    engine.tick()
    assert doomed.state == "cancelled" and doomed.position == 1 and engine.active_rows == 2
    with pytest.raises(Cancelled, match="after 1 of 10 steps"):
        doomed.wait(0)
    engine.run_until_idle()
    assert kept.wait().images.shape == (2, 32, 32)


def test_done_callbacks_run_once_at_the_end_whatever_the_outcome(ddpm):
    engine = SamplingEngine(ddpm.session, max_rows=16)
    done = engine.submit(1, ddpm.plan("ddim", steps=3), seed=0)
    cancelled = engine.submit(1, ddpm.plan("ddim", steps=3), seed=1)
    seen = []

    def broken(job):
        raise RuntimeError("a caller's bug")

    for job in (done, cancelled):
        job.add_done_callback(broken)  # ignored: it cannot change the outcome or stop the others
        job.add_done_callback(lambda job: seen.append((job.id, job.state, job.position)))
    engine.tick()
    assert seen == []  # nothing has ended yet
    cancelled.cancel()
    engine.run_until_idle()
    assert sorted(seen) == [(done.id, "done", 3), (cancelled.id, "cancelled", 1)]
    done.add_done_callback(lambda job: seen.append("late"))  # added after the end: called at once
    assert seen[-1] == "late" and done.wait(0).images.shape == (1, 32, 32)


def test_a_failing_request_ends_alone(ddpm):
    engine = SamplingEngine(ddpm.session, max_rows=16)
    healthy = engine.submit(2, ddpm.plan("ddim", steps=4), seed=0)
    broken = engine.submit(2, ddpm.plan("ddim", steps=4), seed=1)
    flight = engine._pending[-1]
    step = flight.sampler.step
    flight.sampler.step = lambda x, i, eps, noise: step(x, i, eps, noise) * (np.inf if i == 2 else 1)
    engine.run_until_idle()
    with pytest.raises(DDPMError, match="NaN or infinite at step 3 of 4") as error:
        broken.wait()
    assert "\n" not in str(error.value) and broken.position == 2
    assert healthy.state == "done" and np.isfinite(healthy.wait().samples).all()
    assert engine.stats.outcomes == {"done": 1, "failed": 1, "cancelled": 0}


def test_a_failing_callback_or_call_ends_only_its_requests(ddpm, monkeypatch):
    engine = SamplingEngine(ddpm.session, max_rows=16)
    healthy = engine.submit(1, ddpm.plan("ddim", steps=3), seed=0)
    noisy = engine.submit(1, ddpm.plan("ddim", steps=3), seed=1, on_step=lambda job: 1 / 0)
    engine.run_until_idle()
    assert (
        healthy.state == "done"
        and noisy.state == "failed"
        and noisy.error == "the progress callback failed at step 1: division by zero"
    )
    late = engine.submit(1, ddpm.plan("ddim", steps=3), seed=2)
    monkeypatch.setattr(ddpm.session, "eps", lambda *args: np.zeros((2, 2)) @ np.zeros((3, 3)))  # a foreign error
    engine.run_until_idle()
    assert late.state == "failed" and late.error.startswith("the network call failed: ")
    monkeypatch.undo()
    again = engine.submit(1, ddpm.plan("ddim", steps=3), seed=3)
    engine.run_until_idle()
    assert again.state == "done"  # the engine itself survived both


def test_a_short_request_behind_long_ones_waits_only_its_share(ddpm):
    engine = SamplingEngine(ddpm.session, max_rows=4)
    long = [engine.submit(1, ddpm.plan("ancestral", steps=60), seed=s) for s in range(4)]
    for _ in range(5):
        engine.tick()
    short = engine.submit(1, ddpm.plan("dpm++2m", steps=6), seed=9)
    start = engine.stats.ticks
    while not short.done:
        engine.tick()
    taken = engine.stats.ticks - start
    # 5 requests of one row share calls of 4 rows: the short one advances at 4 of every 5 ticks.
    assert taken <= 2 * short.steps, taken
    assert all(job.position < job.steps for job in long)  # it did not wait for them to finish
    engine.run_until_idle()
    assert all(job.state == "done" for job in long)


def test_no_call_exceeds_the_capacity(ddpm, monkeypatch):
    sizes = []
    eps = ddpm.session.eps
    monkeypatch.setattr(ddpm.session, "eps", lambda x, t, y=None: sizes.append(len(x)) or eps(x, t, y))
    engine = SamplingEngine(ddpm.session, max_rows=6)
    for seed, plan in enumerate(plans(ddpm).values()):
        engine.submit(1 + seed % 3, plan, seed=seed)
    engine.run_until_idle()
    assert max(sizes) <= 6 and engine.stats.calls == len(sizes)
    assert engine.stats.rows_per_call > 3  # the calls are filled, not one request each


def test_a_request_that_cannot_fit_is_refused_before_it_takes_rows(ddpm):
    engine = SamplingEngine(ddpm.session, max_rows=8)
    with pytest.raises(
        DDPMError, match="need 10 rows; this engine takes at most 8 rows per request: ask for at most 4"
    ) as error:
        engine.submit(5, ddpm.plan("ddim", steps=3, digits=[2], guidance=1.0), seed=0)
    assert "\n" not in str(error.value)
    assert engine.active_rows == 0 and not engine.tick()


def test_progress_and_frames_per_request(ddpm):
    engine = SamplingEngine(ddpm.session, max_rows=8)
    seen = []
    job = engine.submit(
        2, ddpm.plan("ddim", steps=6, frames=3, show="x0"), seed=0, on_step=lambda j: seen.append(j.position)
    )
    engine.run_until_idle()
    assert seen == [1, 2, 3, 4, 5, 6]
    run = job.wait()
    assert len(run.frames) == len(run.frame_timesteps) >= 3 and run.frame_timesteps[0] == -1
    np.testing.assert_array_equal(run.frames[-1], run.images)  # x̂_0 of the last step is the sample


def test_a_thread_serves_many_callers_and_drains_on_stop(ddpm):
    engine = SamplingEngine(ddpm.session, max_rows=16)
    engine.start()
    plan = ddpm.plan("dpm++2m", steps=5)
    results = {}

    def call(seed):
        results[seed] = engine.submit(1, plan, seed=seed).wait(timeout=60).samples

    threads = [threading.Thread(target=call, args=(seed,)) for seed in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert engine.stop(grace=30)
    assert sorted(results) == list(range(6))
    assert engine.stats.rows_per_call > 1  # callers arriving together shared calls
    for seed in (0, 5):
        assert np.abs(results[seed] - ddpm.generate(1, plan, seed=seed).samples).max() <= MIXED_TOLERANCE
    with pytest.raises(DDPMError, match="shutting down"):
        engine.submit(1, plan, seed=0)


def test_stop_cancels_what_outlives_the_grace(ddpm):
    engine = SamplingEngine(ddpm.session, max_rows=4)
    job = engine.submit(1, ddpm.plan("ancestral"), seed=0)  # 1000 steps: longer than no grace at all
    assert not engine.stop(grace=0)
    assert job.state == "cancelled"


def test_a_stop_during_a_tick_ends_each_request_once(ddpm):
    """stop(0) while the engine's thread is inside a network call: each request ends once, cancelled,
    and the engine's counts add up to the requests (not failed and cancelled both)."""
    plan = ddpm.plan("ancestral")  # 1000 steps: still running when the stop comes
    for trial in range(5):
        engine = SamplingEngine(ddpm.session, max_rows=16)
        engine.start()
        jobs = [engine.submit(8, plan, seed=trial * 2 + k) for k in range(2)]
        while min(job.position for job in jobs) < 3:
            threading.Event().wait(0.001)
        assert not engine.stop(grace=0)
        assert [job.state for job in jobs] == ["cancelled", "cancelled"]
        assert engine.stats.outcomes == {"done": 0, "failed": 0, "cancelled": 2}
        assert all(job.error is None for job in jobs)


def test_fused_step_models_batch_too(variants):
    ddpm = DDPM.load(variants / "unet.step.onnx", provider="cpu")
    plan = ddpm.plan()
    engine = SamplingEngine(ddpm.session, max_rows=8)
    a, b = engine.submit(2, plan, seed=3), engine.submit(1, plan, seed=4)
    engine.run_until_idle()
    assert engine.stats.rows_per_call == 3
    assert np.abs(a.wait().samples - ddpm.generate(2, plan, seed=3).samples).max() <= MIXED_TOLERANCE
    assert np.abs(b.wait().samples - ddpm.generate(1, plan, seed=4).samples).max() <= MIXED_TOLERANCE


def test_guidance_arithmetic(conditional):
    for name in ("unet.onnx", "unet.b4.onnx"):  # dynamic batch, and fixed batch with padded calls
        ddpm = DDPM.load(conditional / name, provider="cpu")
        rng = np.random.default_rng(0)
        x = rng.standard_normal((3, 1, 32, 32), dtype=np.float32)
        y = np.array([1, 7, 7])
        pad = lambda a: np.concatenate([a, a[:1]])  # noqa: E731  (a fixed batch of 4 needs 4 rows)
        for w in (0.0, 1.0, 3.5):
            engine = SamplingEngine(ddpm.session, max_rows=4, max_request_rows=None)
            engine.submit(3, ddpm.plan("ddim", steps=1, digits=y, guidance=w), seed=0)
            engine._admit()
            flight = engine._active[0]
            flight.x = x
            t = np.full(4, flight.sampler.model_timesteps[0], np.int64)
            cond = ddpm.session.eps(pad(x), t, pad(y))[:3]
            uncond = ddpm.session.eps(pad(x), t, np.full(4, 10))[:3]
            assert np.abs(cond - uncond).max() > 0  # the labels reach the network
            got = engine._evaluate([flight])[0]
            np.testing.assert_allclose(got, (1 + w) * cond - w * uncond, atol=1e-5)
