"""The ddpm-serve load generator (benchmarks/serve_load/): its bookkeeping, its loopback guard and
arguments, and a few seconds of each mode against a real server on loopback, locust in its own process."""

import importlib.util
import json
import sys

import pytest

pytest.importorskip("fastapi", reason="the serve extra is not installed")
pytest.importorskip("prometheus_client", reason="the serve extra is not installed")

from conftest import assert_one_line_error  # noqa: E402

from ddpm.benchmarks.serve_load.cli import main, run  # noqa: E402
from ddpm.benchmarks.serve_load.ledger import Ledger, LoadError, loopback_url, metric_values, rows_per_call  # noqa: E402
from ddpm.benchmarks.serve_load.options import parser  # noqa: E402
from ddpm.benchmarks.serve_load.swarm import ServerProcess  # noqa: E402


@pytest.mark.parametrize(
    "url, base",
    [
        ("http://127.0.0.1:8000", "http://127.0.0.1:8000"),
        ("http://localhost:9/v1/samples?x=1", "http://localhost:9"),
        ("http://[::1]:8000/", "http://[::1]:8000"),
    ],
)
def test_loopback_urls_are_taken(url, base):
    assert loopback_url(url) == base


@pytest.mark.parametrize(
    "url",
    [
        "http://10.0.0.1:8000",
        "http://example.com",
        "http://127.0.0.2:8000",
        "http://0.0.0.0:8000",
        "http://127.0.0.1@example.com:80",
        "http://user:pw@127.0.0.1:80",
        "https://127.0.0.1:8000",
        "127.0.0.1:8000",
        "http://example.com#@127.0.0.1",
        "http://127.0.0.1:99999",
    ],
)
def test_anything_but_loopback_is_refused(url):
    with pytest.raises(LoadError):
        loopback_url(url)


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["sweep", "--url", "http://192.0.2.1:8000", "--no-targets"], "loopback"),
        (["sweep", "--levels", "4,0"], "1 to 512"),
        (["soak", "--rate", "-1"], "--rate"),
        (["soak", "--minutes", "nan"], "--minutes"),
        (["sweep", "--tag", "../x"], "--tag"),
    ],
)
def test_bad_arguments_and_remote_targets_get_one_line_before_anything_is_sent(invoke, args, fragment):
    assert_one_line_error(invoke(main, *args), fragment)
    assert invoke(main, *args).code == 2


def test_the_ledger_passes_one_right_answer_per_request():
    ledger = Ledger()
    for seed in (100, 101, 102):
        ledger.send(seed)
    ledger.answer(100, 200, header_seed=100, png_seed=100, is_png=True)
    ledger.answer(101, 200, header_seed=101, png_seed=101, is_png=True)
    ledger.answer(102, 429, retry_after="2")
    check = ledger.check()
    assert check["clean"] and (check["ok"], check["refused"], check["lost"]) == (2, 1, 0)


def test_the_ledger_finds_lost_duplicated_wrong_and_bare_refusals():
    ledger = Ledger()
    for seed in range(100, 108):
        ledger.send(seed)
    right = lambda seed, **changed: {"header_seed": seed, "png_seed": seed, "is_png": True, **changed}  # noqa: E731
    ledger.answer(100, 200, **right(100))
    ledger.answer(101, 200, **right(101, header_seed=100))  # another request's seed: a duplicate and a mismatch
    ledger.answer(102, 200, **right(102, png_seed=999))  # the header is right, the PNG is not
    ledger.answer(103, 200, **right(103, is_png=False))
    ledger.answer(104, 429)  # no Retry-After
    ledger.answer(105, None, error="ReadTimeout: timed out")  # no answer at all
    ledger.answer(106, 500, detail='{"detail":"internal error"}')
    ledger.answer(106, 200, **right(106))  # the same request answered twice
    ledger.answer(999, 200, **right(999))  # an answer to nothing sent
    check = ledger.check()  # 107 was sent and never answered
    assert not check["clean"]
    assert check["lost"] == 2 and check["examples"]["lost"] == [105, 107]
    assert check["duplicated"] == 2  # seed 100 claimed twice, 106 answered twice
    assert check["mismatched"] == 3 and check["strangers"] == 1
    assert check["429_without_retry_after"] == 1
    assert check["unexpected"] == {"no response (ReadTimeout)": 1, "500": 1}
    with pytest.raises(ValueError):
        ledger.send(100)


def test_rows_per_call_from_the_counters_deltas_in_prometheus_text():
    from prometheus_client import CollectorRegistry, Counter, generate_latest

    def scrape(calls, rows):
        registry = CollectorRegistry()
        Counter("ddpm_network_calls", "calls", registry=registry).inc(calls)
        Counter("ddpm_network_rows", "rows", registry=registry).inc(rows)
        Counter("ddpm_engine_requests", "ended", ["outcome"], registry=registry).labels("done").inc(3)
        return metric_values(generate_latest(registry).decode())

    before, after = scrape(10, 40), scrape(30, 200)
    assert before['ddpm_engine_requests_total{outcome="done"}'] == 3.0
    assert rows_per_call(before, after) == pytest.approx(8.0)
    assert rows_per_call(after, after) is None and rows_per_call({}, after) is None
    assert metric_values("<html>not metrics</html>") == {}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """One ddpm-serve for the module: 8 rows a call, 8 rows admitted (four guided digits), so that an
    open loop meets 429s within seconds."""
    if importlib.util.find_spec("locust") is None:  # found, never imported here: it patches the standard library
        pytest.skip("the load extra (locust) is not installed")
    opts = parser().parse_args(
        [
            "sweep",
            "--precision",
            "fp32",
            "--max-rows",
            "8",
            "--queue-rows",
            "8",
            "--threads",
            "1",
            "--server-log",
            str(tmp_path_factory.mktemp("serve") / "serve.log"),
        ]
    )
    process = ServerProcess(opts)
    base = process.start()
    yield base, process
    assert process.stop() == 0
    assert "Traceback" not in process.log_path.read_text()


def test_a_sweep_counts_every_answer_shares_calls_and_writes_its_report(server, tmp_path):
    base, process = server
    result, markdown = run(
        [
            "sweep",
            "--quick",
            "--url",
            base,
            "--pid",
            str(process.pid),
            "--levels",
            "1,3",
            "--requests",
            "3",
            "--seconds",
            "30",
            "--mix",
            "single-digit-20",
            "--no-targets",
            "--out",
            str(tmp_path),
            "--tag",
            "test",
        ],
        echo=lambda line: None,
    )
    one, three = result["levels"]
    assert [level["requests"] for level in (one, three)] == [3, 3] and not result["problems"]  # bounded in count
    assert all(level["ok"] == 3 and level["check"]["clean"] and level["digits_per_s"] > 0 for level in (one, three))
    assert three["p99_s"] >= three["p50_s"] > 0 and three["kinds"]["sde20-digit"]["requests"] == 3
    assert one["rows_per_call"] == pytest.approx(2.0) and 2 < three["rows_per_call"] <= 6  # three callers share calls
    assert "| 3 | single-digit-20 | 3 | 3 |" in markdown and "| lost / dup / wrong |" in markdown
    saved = json.loads((tmp_path / "serve-load-sweep-test.json").read_text())
    assert saved["levels"][1]["check"]["clean"] and (tmp_path / "serve-load-sweep-test.md").read_text() == markdown
    assert "locust" not in sys.modules and "gevent" not in sys.modules  # locust ran in its own process


def test_a_soak_past_capacity_answers_every_arrival_with_a_digit_or_a_prompt_429(server):
    base, process = server
    result, markdown = run(
        [
            "soak",
            "--url",
            base,
            "--pid",
            str(process.pid),
            "--rate",
            "8",
            "--minutes",
            "0.05",
            "--mix",
            "single-digit-20",
            "--drain",
            "30",
            "--timeout",
            "30",
            "--rss-every",
            "1",
        ],
        echo=lambda line: None,
    )
    soak, check = result["soak"], result["soak"]["check"]
    assert check["clean"] and check["lost"] == 0 and check["refused"] > 0 and check["ok"] > 0, check
    assert check["sent"] == result["arrivals"]["arrivals_sent"] <= 8 * 3 * 1.5 + 10  # bounded in count
    assert result["arrivals"]["arrival_seconds"] < 3 + 1  # and in time
    assert soak["p99_429_s"] < 1.0 and result["healthz_after"]["status"] == 200
    assert result["memory"]["start_mb"] > 10 and result["cpu_seconds"]["client"] > 0
    assert "| lost (no answer) | 0 | pass |" in markdown and "| 429 with Retry-After |" in markdown
