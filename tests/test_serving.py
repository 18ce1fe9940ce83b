"""The serving benchmark (benchmarks/serving.py): the engine, threads and one request at a time, on one
session."""

import pytest

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning", "ignore::DeprecationWarning")


def test_serving_benchmark_compares_the_three_ways_on_one_session():
    from ddpm.benchmarks import serving
    from ddpm.runtime.pipeline import DDPM

    ddpm = DDPM.load(provider="cpu", threads=1)
    plan = ddpm.plan("ddim", steps=3, digits=[1], guidance=0.0)
    requests = [serving.Request(1, plan, seed, 0.0, "ddim") for seed in range(3)]
    engine = serving.run_engine(ddpm, "t", requests, max_rows=8)
    threads = serving.run_threads(ddpm, "t", requests)
    sequential = serving.run_sequential(ddpm, "t", requests)
    assert [o.digits for o in (engine, threads, sequential)] == [3, 3, 3]
    assert 1 < engine.rows_per_call <= 3 and sequential.rows_per_call == 1  # calls shared (the first may start alone)
    assert all(latency > 0 for o in (engine, threads, sequential) for latency in o.latencies)
    waiting = serving.behind(ddpm, 2, max_rows=8, ancestral_steps=40, warm_ticks=2)
    assert waiting["ticks_taken"] == waiting["calls"] == 20  # room for all: it advanced at every tick
