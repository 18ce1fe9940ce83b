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


def test_concurrency_levels_on_a_chosen_provider_write_a_report_per_level(tmp_path, capsys):
    import json

    from ddpm.benchmarks import serving

    with pytest.raises(SystemExit):
        serving.parse_args(["--methods", "engine,naive"])
    opts = serving.parse_args(["--provider", "cpu", "--concurrency", "1,2"])
    assert opts.concurrency == [1, 2] and opts.max_rows == 2 and opts.methods == list(serving.METHODS)
    serving.main(
        [
            "--provider",
            "cpu",
            "--quick",
            "--concurrency",
            "1,2",
            "--methods",
            "engine,sequential",
            "--threads",
            "1",
            "--out",
            str(tmp_path),
        ]
    )
    report = json.loads((tmp_path / "serving-concurrency-cpu.json").read_text())
    assert [(o["scenario"], o["method"]) for o in report["outcomes"]] == [
        ("1 at once", "engine"),
        ("1 at once", "sequential"),
        ("2 at once", "engine"),
        ("2 at once", "sequential"),
    ]
    assert report["machine"]["provider"] == "CPUExecutionProvider"
    assert "2 at once, engine vs sequential" in capsys.readouterr().out
