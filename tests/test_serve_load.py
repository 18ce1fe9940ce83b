"""The ddpm-serve load generator (benchmarks/serve_load/): its bookkeeping, its loopback guard, and a
few seconds of it against a real server on loopback."""

import asyncio
import json
import time

import numpy as np
import pytest

pytest.importorskip("fastapi", reason="the serve extra is not installed")
pytest.importorskip("httpx", reason="the load generator talks through httpx")

from ddpm.benchmarks.serve_load.cli import main, parser, run  # noqa: E402
from ddpm.benchmarks.serve_load.client import (Ledger, LoadError, Outcome, Target, closed_loop, loopback_url,  # noqa: E402
                                               metric_values, percentile, png_text, rows_per_call, scrape,
                                               short_cpu_kind, summarize)
from ddpm.benchmarks.serve_load.hostile import RESET, Case, big_body, raw_post, repeated  # noqa: E402
from ddpm.benchmarks.serve_load.server import ServerProcess, read_rss_kb  # noqa: E402
from ddpm.core.outputs import png_bytes  # noqa: E402


def test_percentile_interpolates_like_numpy_and_is_none_without_values():
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == pytest.approx(50.5)
    assert percentile(values, 99) == pytest.approx(99.01)
    assert percentile([3.0], 99) == 3.0
    assert percentile([], 50) is None


@pytest.mark.parametrize("url, base", [
    ("http://127.0.0.1:8000", "http://127.0.0.1:8000"),
    ("http://localhost:9/v1/samples?x=1", "http://localhost:9"),
    ("http://[::1]:8000/", "http://[::1]:8000"),
])
def test_loopback_urls_are_taken(url, base):
    assert loopback_url(url) == base


@pytest.mark.parametrize("url", [
    "http://10.0.0.1:8000", "http://example.com", "http://127.0.0.2:8000", "http://0.0.0.0:8000",
    "http://127.0.0.1@example.com:80", "http://user:pw@127.0.0.1:80", "https://127.0.0.1:8000", "127.0.0.1:8000",
    "http://example.com#@127.0.0.1", "http://127.0.0.1:99999",
])
def test_anything_but_loopback_is_refused(url):
    with pytest.raises(LoadError):
        loopback_url(url)


def test_the_cli_refuses_a_remote_url_before_sending_anything(capsys):
    with pytest.raises(SystemExit) as ended:
        main(["sweep", "--url", "http://192.0.2.1:8000", "--no-targets"])
    assert ended.value.code == 2 and "loopback" in capsys.readouterr().err


def _ok(key, seed, header=None, png=None, is_png=True):
    return Outcome(key, seed, "k", 0.0, 1.0, status=200, header_seed=seed if header is None else header,
                   png_seed=seed if png is None else png, is_png=is_png)


def test_the_ledger_passes_one_right_answer_per_request():
    ledger = Ledger()
    for key in range(3):
        ledger.send(key, 100 + key)
    ledger.answer(_ok(0, 100))
    ledger.answer(_ok(1, 101))
    ledger.answer(Outcome(2, 102, "k", 0.0, 0.01, status=429, retry_after="2"))
    check = ledger.check()
    assert check["clean"] and (check["ok"], check["refused"], check["lost"]) == (2, 1, 0)


def test_the_ledger_finds_lost_duplicated_wrong_and_bare_refusals():
    ledger = Ledger()
    for key in range(7):
        ledger.send(key, 100 + key)
    ledger.answer(_ok(0, 100))
    ledger.answer(_ok(1, 101, header=100))  # another request's seed: a duplicate and a mismatch
    ledger.answer(_ok(2, 102, png=999))  # the header is right, the PNG is not
    ledger.answer(_ok(3, 103, is_png=False))
    ledger.answer(Outcome(4, 104, "k", 0.0, 0.01, status=429))  # no Retry-After
    ledger.answer(Outcome(5, 105, "k", 0.0, 9.0, error="ReadTimeout: timed out"))  # no answer at all
    ledger.answer(Outcome(6, 106, "k", 0.0, 0.1, status=500, detail='{"detail":"internal error"}'))
    ledger.answer(_ok(6, 106))  # the same request answered twice
    ledger.answer(_ok(7, 107))  # an answer to nothing sent
    check = ledger.check()
    assert not check["clean"]
    assert check["lost"] == 1 and check["examples"]["lost"] == [105]
    assert check["duplicated"] == 2  # seed 100 claimed twice, key 6 recorded twice
    assert check["mismatched"] == 3 and check["strangers"] == 1
    assert check["429_without_retry_after"] == 1
    assert check["unexpected"] == {"no response (ReadTimeout)": 1, "500": 1}
    with pytest.raises(ValueError):
        ledger.send(0, 1)


def test_png_text_reads_the_seed_the_server_writes():
    images = np.zeros((2, 28, 28), dtype=np.uint8)
    data = png_bytes(images, settings={"seed": 12345678901234, "sampler": "ancestral"})
    text = png_text(data)
    assert text["ddpm.seed"] == "12345678901234" and json.loads(text["ddpm.settings"])["sampler"] == "ancestral"
    assert png_text(b"GIF89a...") == {} and png_text(data[:40]) == {}


def test_rows_per_call_from_the_counters_deltas():
    before = metric_values("# HELP x\nddpm_network_calls_total 10.0\nddpm_network_rows_total 40.0\n"
                                      'ddpm_engine_requests_total{outcome="done"} 3.0\n')
    after = metric_values("ddpm_network_calls_total 30.0\nddpm_network_rows_total 200.0\n")
    assert before['ddpm_engine_requests_total{outcome="done"}'] == 3.0
    assert rows_per_call(before, after) == pytest.approx(8.0)
    assert rows_per_call(after, after) is None and rows_per_call({}, after) is None


def test_short_cpu_kind_names_the_family_and_the_widest_unit():
    assert short_cpu_kind("Intel(R) Xeon(R) Platinum 8480+", "avx2 avx512f amx_bf16") == "xeon-amx"
    assert short_cpu_kind("AMD EPYC 7B13 64-Core Processor", "avx2 avx512f") == "epyc-avx512"
    assert short_cpu_kind("Some Chip(TM) 9000 CPU", "none of avx2/avx512/amx") == "some-chip"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    opts = parser().parse_args(["sweep", "--precision", "fp32", "--max-rows", "8", "--threads", "1",
                                          "--server-log", str(tmp_path_factory.mktemp("serve") / "serve.log")])
    process = ServerProcess(opts)
    base = process.start()
    yield base, process
    assert process.stop() == 0
    assert "Traceback" not in process.log_text()


def test_a_closed_loop_gets_every_answer_and_shares_network_calls(server):
    base, process = server
    target = Target(base, {}, timeout=30, pid=process.pid)

    async def go():
        async with target.client(8) as client:
            ledger, before = Ledger(), await scrape(target, client)
            await closed_loop(target, client, "single-digit-20", 3, 6, 30, time.monotonic() + 60, ledger)
            after = await scrape(target, client)
            return summarize("3", 3, "single-digit-20", ledger, before, after)

    level = asyncio.run(go())
    assert level["requests"] == level["ok"] == 6 and level["check"]["clean"], level
    assert level["digits"] == 6 and level["digits_per_s"] > 0 and level["p99_s"] >= level["p50_s"] > 0
    assert 2 < level["rows_per_call"] <= 8  # guided rows, three callers sharing calls
    assert read_rss_kb(process.pid) > 10_000


def test_hostile_helpers_against_the_server(server):
    base, _ = server
    target = Target(base, {}, timeout=30)

    async def go():
        async with target.client(4) as client:
            nan = Case("nan", "", (422,), 2.0)
            await repeated(nan, raw_post(target, client, b'{"n":1,"guidance":NaN,"digits":[1]}'), 0.3)
            asked = Case("expect", "", (413,), 2.0)
            await big_body(target, asked, 20_000_000, chunked=False, bound=2.0, expect=True)
            streamed = Case("chunked", "", (413, RESET), 2.0)
            await big_body(target, streamed, 20_000_000, chunked=True, bound=2.0)
            return nan, asked, streamed

    nan, asked, streamed = asyncio.run(go())
    assert set(nan.statuses) == {422} and nan.passed
    assert asked.statuses == {413: 1} and asked.passed and asked.extra["bytes_sent_before_answer"] == 0
    # streamed: the 413, or a reset that swallowed it (the server closes with unread data); either way early
    assert set(streamed.statuses) <= {413, RESET} and streamed.passed
    assert streamed.extra["bytes_sent_before_answer"] < 20_000_000


def test_the_command_runs_a_quick_sweep_against_a_running_server(server, tmp_path):
    base, process = server
    result, markdown = run(["sweep", "--quick", "--url", base, "--pid", str(process.pid), "--levels", "1,2",
                                       "--requests", "2", "--mix", "no-digit-20", "--no-targets", "--out", str(tmp_path),
                                       "--tag", "test"], echo=lambda line: None)
    assert [lv["ok"] for lv in result["levels"]] == [2, 2] and not result["problems"]
    assert "| 2 | no-digit-20 | 2 | 2 |" in markdown and result["machine"]["max_rows"] == 8
    saved = json.loads((tmp_path / "serve-load-sweep-test.json").read_text())
    assert saved["levels"][1]["check"]["clean"] and (tmp_path / "serve-load-sweep-test.md").read_text() == markdown
