"""The ``hostile`` mode: malformed, oversized, slow and dropped requests and missing tokens, each case
beside a measured background load of normal requests."""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import resource
import select
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

from .client import (MIXES, Ledger, LoadError, Outcome, Target, bounded, closed_loop, counts, fmt, health, percentile,
                     scrape, warm_up)

BODY_SECONDS = 10.0  # the server's deadline for a request body (serve/limits.py); the slow-body case waits past it
ANSWER_BOUND = 2.0  # seconds: what an error answer may take


@dataclass
class Case:
    """One hostile case: what was sent, what came back, how fast."""

    name: str
    what: str
    expected: tuple
    bound: float | None  # seconds an answer may take (None: nothing to answer)
    statuses: Counter = field(default_factory=Counter)
    times: list[float] = field(default_factory=list)
    details: dict[str, str] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    start: float = 0.0
    end: float = 0.0

    def record(self, status: int | str, seconds: float | None, detail: str = "") -> None:
        self.statuses[status] += 1
        if seconds is not None:
            self.times.append(seconds)
        if detail and str(status) not in self.details:
            self.details[str(status)] = detail[:160]

    @property
    def server_errors(self) -> int:
        return sum(count for status, count in self.statuses.items() if isinstance(status, int) and status >= 500)

    @property
    def passed(self) -> bool:
        on_time = self.bound is None or not self.times or max(self.times) <= self.bound
        return (self.server_errors == 0 and set(self.statuses) <= set(self.expected) and on_time
                and self.extra.get("healthz_after", 200) == 200 and self.extra.get("probe_ok", True) and self.extra.get("early", True))


def _status_of(head: bytes) -> int | None:
    parts = head.split(b" ", 2)
    return int(parts[1]) if len(parts) >= 2 and parts[1].isdigit() else None


def _request_head(target: Target, path: str, headers: dict[str, str], method: str = "POST") -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: {target.netloc}", *(f"{k}: {v}" for k, v in headers.items()), "", ""]
    return "\r\n".join(lines).encode("latin-1")


async def _connect(target: Target, timeout: float = 5.0):
    return await asyncio.wait_for(asyncio.open_connection(target.host, target.port), timeout)


async def repeated(case: Case, send_once: Callable[[], Awaitable[tuple[int | str, str]]], seconds: float,
                   callers: int = 2, limit: int = 400) -> None:
    """``send_once`` again and again from ``callers`` callers for ``seconds`` (at most ``limit`` times)."""
    stop_at, counter = time.monotonic() + seconds, itertools.count()

    async def caller() -> None:
        while time.monotonic() < stop_at and next(counter) < limit:
            start = time.perf_counter()
            status, detail = await send_once()
            case.record(status, time.perf_counter() - start, detail)

    await bounded([asyncio.create_task(caller()) for _ in range(callers)], stop_at + 30)


def raw_post(target: Target, client, content: bytes, headers: dict[str, str] | None = None, path: str = "/v1/samples"):
    import httpx

    async def send_once() -> tuple[int | str, str]:
        try:
            response = await client.post(f"{target.base}{path}", content=content, timeout=30,
                                         headers={"content-type": "application/json", **(target.headers if headers is None else headers)})
            return response.status_code, response.text
        except httpx.HTTPError as exc:
            return f"no answer ({type(exc).__name__})", str(exc)

    return send_once


def raw_get(target: Target, client, path: str, headers: dict[str, str]):
    import httpx

    async def send_once() -> tuple[int | str, str]:
        try:
            response = await client.get(f"{target.base}{path}", headers=headers, timeout=30)
            return response.status_code, response.text[:160]
        except httpx.HTTPError as exc:
            return f"no answer ({type(exc).__name__})", str(exc)

    return send_once


RESET = "reset by the server (its answer, if any, lost to the reset)"


async def big_body(target: Target, case: Case, total: int, chunked: bool, bound: float, expect: bool = False) -> None:
    """Stream ``total`` bytes of body as fast as the socket takes them, looking for an answer before
    each 64 kB write and stopping at its first byte. Records the status (or that the server reset the
    connection first: a server that closes with unread data makes the kernel drop its own answer), the
    time to it and the bytes handed to the socket before it. ``expect``: send ``Expect: 100-continue``
    and wait up to a second for the server's word before the body, as curl does for large bodies."""
    headers = {"Content-Type": "application/json", **target.headers}
    headers.update({"Transfer-Encoding": "chunked"} if chunked else {"Content-Length": str(total)})
    if expect:
        headers["Expect"] = "100-continue"
    sent, start = 0, time.perf_counter()
    try:
        reader, writer = await _connect(target)
    except (OSError, asyncio.TimeoutError) as exc:
        case.record(f"no connection ({type(exc).__name__})", None)
        return
    sock = writer.get_extra_info("socket")

    def answered() -> bool:  # something to read (or the connection gone): stop writing
        fd = sock.fileno()
        return fd < 0 or bool(select.select([fd], [], [], 0)[0])

    piece = b" " * 65536
    stop_at = time.monotonic() + bound + 5
    try:
        writer.write(_request_head(target, "/v1/samples", headers))
        if expect:
            try:
                first = await asyncio.wait_for(reader.readline(), 1.0)
            except asyncio.TimeoutError:
                first = b""  # no word from the server: send the body anyway, as curl does
            if _status_of(first) not in (None, 100):
                case.record(_status_of(first), time.perf_counter() - start)
                case.extra.update(bytes_sent_before_answer=0, body_bytes=total, early=True)
                writer.transport.abort()
                return
            if _status_of(first) == 100:
                await asyncio.wait_for(reader.readline(), 5.0)  # the blank line after "100 Continue"
        while sent < total and time.monotonic() < stop_at and not answered():
            chunk = piece[: total - sent]
            writer.write(b"%x\r\n%s\r\n" % (len(chunk), chunk) if chunked else chunk)
            sent += len(chunk)  # handed to the socket: what the server may have had to take in
            await asyncio.wait_for(writer.drain(), max(0.01, stop_at - time.monotonic()))
        if chunked and sent >= total:
            writer.write(b"0\r\n\r\n")
    except (OSError, asyncio.TimeoutError) as exc:  # the server closed its side, or stopped reading
        case.extra["write_ended"] = type(exc).__name__
    try:
        line = await asyncio.wait_for(reader.readline(), max(0.01, stop_at - time.monotonic()))
        status = _status_of(line) or ("closed without an answer" if not line else f"not HTTP: {line[:40]!r}")
    except ConnectionResetError:
        status = RESET
    except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError) as exc:
        status = f"no answer ({type(exc).__name__})"
    case.record(status, time.perf_counter() - start)
    case.extra["bytes_sent_before_answer"] = sent
    case.extra["body_bytes"] = total
    case.extra["early"] = sent < total  # the server stopped taking the body before its end
    writer.transport.abort()


async def slow_clients(target: Target, case: Case, connections: int, seconds: float, body: bool, client) -> None:
    """``connections`` clients sending a byte a second: of never-ending headers, or (``body``) of a
    64-byte body after complete headers. Each either gets an answer (status and time recorded) or is
    still open after ``seconds``. /healthz is timed halfway, while they hang on."""
    closed_at: list[float] = []

    async def one() -> None:
        try:
            reader, writer = await _connect(target)
        except (OSError, asyncio.TimeoutError) as exc:
            case.record(f"no connection ({type(exc).__name__})", None)
            return
        if body:
            head = _request_head(target, "/v1/samples", {"Content-Type": "application/json", "Content-Length": "64", **target.headers})
            writer.write(head)
            trickle = itertools.cycle(b'{"n": 1}' + b" " * 56)
        else:
            head = f"POST /v1/samples HTTP/1.1\r\nHost: {target.netloc}\r\nX-Slow: ".encode()
            trickle = itertools.chain(head, itertools.repeat(ord("a")))
        start = time.perf_counter()
        answering = asyncio.create_task(reader.readline())
        stop_at = time.monotonic() + seconds
        try:
            while not answering.done() and time.monotonic() < stop_at:
                writer.write(bytes([next(trickle)]))
                await writer.drain()
                await asyncio.wait({answering}, timeout=1.0)
        except OSError:
            pass
        if answering.done() and not answering.cancelled() and answering.exception() is None:
            line = answering.result()
            status = _status_of(line) or "closed by the server"
            case.record(status, time.perf_counter() - start)
            closed_at.append(time.perf_counter() - start)
        elif answering.done():
            case.record("closed by the server", time.perf_counter() - start)
        else:
            answering.cancel()
            case.record("open at the end", None)
        writer.transport.abort()

    async def probe() -> None:
        await asyncio.sleep(min(seconds / 2, 5.0))
        status, answered_in, _ = await health(target, client, timeout=ANSWER_BOUND + 3)
        case.extra["healthz_during"] = {"status": status, "seconds": answered_in}
        case.extra["probe_ok"] = status == 200 and answered_in <= ANSWER_BOUND

    tasks = [asyncio.create_task(one()) for _ in range(connections)] + [asyncio.create_task(probe())]
    await bounded(tasks, time.monotonic() + seconds + 10)
    if closed_at:
        case.extra["closed_after_s"] = {"min": min(closed_at), "max": max(closed_at)}


async def dropped(target: Target, case: Case, connections: int, request: bytes | None, client) -> None:
    """``connections`` TCP connections opened at once and dropped (RST), bare or right after sending
    ``request``; then /healthz is timed and, for requests, the seconds until the server holds no more
    rows than before."""
    before = await scrape(target, client)
    rows_before = before.get("ddpm_active_rows", 0.0)

    async def one() -> str:
        try:
            _, writer = await _connect(target, 10)
        except (OSError, asyncio.TimeoutError) as exc:
            return f"no connection ({type(exc).__name__})"
        try:
            if request is not None:
                writer.write(request)
                await writer.drain()
        except OSError:
            pass
        return writer

    opened = await asyncio.gather(*(one() for _ in range(connections)))
    for item in opened:
        if isinstance(item, str):
            case.record(item, None)
        else:
            item.transport.abort()
            case.record("dropped", None)
    status, answered_in, _ = await health(target, client, timeout=ANSWER_BOUND + 3)
    case.extra["healthz_after"] = status
    case.extra["healthz_after_s"] = answered_in
    case.times.append(answered_in)  # the answer that counts here: /healthz right after the drop
    if request is not None:
        start, deadline = time.perf_counter(), time.monotonic() + 20
        while time.monotonic() < deadline:
            rows = (await scrape(target, client)).get("ddpm_active_rows")
            if rows is not None and rows <= rows_before + 4:  # the background's own rows may come and go
                break
            await asyncio.sleep(0.25)
        case.extra["rows_freed_after_s"] = time.perf_counter() - start
        after = await scrape(target, client)
        key = 'ddpm_engine_requests_total{outcome="cancelled"}'
        case.extra["engine_cancelled"] = after.get(key, 0.0) - before.get(key, 0.0)
        case.extra["refused_or_cancelled"] = "the server took the dropped requests' rows back" \
            if rows is not None and rows <= rows_before + 4 else "rows still held 20 s after the drop"


def hostile_cases(opts: argparse.Namespace, target: Target, client) -> list[tuple[Case, Callable[[Case], Awaitable[None]]]]:
    """The cases, in order, each with the coroutine that runs it."""
    seconds = opts.case_seconds
    normal = {"n": 1, "sampler": "dpm++2m-sde", "steps": 20, "digits": [1]}
    bodies = [
        ("malformed JSON", b'{"n": 1, "digits": [3', (422,)),
        ("not JSON at all", b"hello, server", (422,)),
        ("empty body", b"", (422,)),
        ("wrong type: n as a string", b'{"n": "1"}', (422,)),
        ("wrong type: digits as a string", b'{"n": 1, "digits": "7"}', (422,)),
        ("wrong type: a JSON array", b"[1, 2, 3]", (422,)),
        ("unknown field", b'{"n": 1, "bogus": true}', (422,)),
        ("n = 1e30", b'{"n": 1e30}', (422,)),
        ("n = 10**30", b'{"n": 1' + b"0" * 30 + b"}", (422,)),
        ("steps = 10**30", b'{"n": 1, "steps": 1' + b"0" * 30 + b"}", (422,)),
        ("seed = 10**30", b'{"n": 1, "seed": 1' + b"0" * 30 + b"}", (422,)),
        ("guidance = 1e999 (inf)", b'{"n": 1, "digits": [1], "guidance": 1e999}', (422,)),
        ("guidance = NaN", b'{"n":1,"guidance":NaN,"digits":[1]}', (422,)),
        ("n = 65 (over the limit)", b'{"n": 65}', (422,)),
        ("1,000 digits", json.dumps({"n": 1, "digits": [i % 10 for i in range(1000)]}).encode(), (422,)),
        ("JSON nested 5,000 deep", b'{"n": 1, "digits": ' + b"[" * 5000 + b"]" * 5000 + b"}", (400, 422)),
        ("invalid UTF-8", b'{"n": 1, "sampler": "\xff\xfe"}', (400, 422)),
    ]
    cases: list[tuple[Case, Callable[[Case], Awaitable[None]]]] = []
    for name, content, expected in bodies:
        shown = content if len(content) <= 80 else content[:60] + b"... (%d bytes)" % len(content)
        cases.append((Case(name, f"POST /v1/samples {shown!r}", expected, ANSWER_BOUND),
                      lambda case, content=content: repeated(case, raw_post(target, client, content), seconds)))
    big_header = {**target.headers, "content-type": "application/json", "x-big": "a" * 1_000_000}
    cases.append((Case("a 1 MB header", 'POST /v1/samples {"n": 0} with a 1,000,000-byte X-Big header', (400, 413, 422, 431),
                       ANSWER_BOUND), lambda case: repeated(case, raw_post(target, client, b'{"n": 0}', big_header), seconds)))
    size = opts.big_mb * 1_000_000
    for chunked, expect in ((False, False), (True, False), (False, True)):
        how = "chunked, no length" if chunked else "Content-Length declared" + (", Expect: 100-continue" if expect else "")
        cases.append((Case(f"{opts.big_mb} MB body ({how})", f"POST /v1/samples with {size:,} bytes of body, {how}",
                           (413,) if expect else (413, RESET), ANSWER_BOUND),
                      lambda case, chunked=chunked, expect=expect: big_body(target, case, size, chunked, ANSWER_BOUND, expect)))
    cases.append((Case(f"slow-loris headers ({opts.loris} connections, a byte per second)",
                       f"{opts.loris} connections sending 'POST /v1/samples ... X-Slow: aaa...' one byte a second for {opts.loris_seconds:g} s",
                       ("open at the end", "closed by the server", 400, 408, 431), None),
                  lambda case: slow_clients(target, case, opts.loris, opts.loris_seconds, False, client)))
    cases.append((Case("slow body (5 connections, a byte per second)",
                       "complete headers with Content-Length: 64, then the body one byte a second",
                       (408,), BODY_SECONDS + ANSWER_BOUND),
                  lambda case: slow_clients(target, case, 5, BODY_SECONDS + 5, True, client)))
    cases.append((Case(f"{opts.drops} connections opened and dropped", f"{opts.drops} TCP connections at once, closed with a reset",
                       ("dropped",), ANSWER_BOUND),
                  lambda case: dropped(target, case, opts.drops, None, client)))
    sample = json.dumps(normal).encode()
    request = _request_head(target, "/v1/samples", {"Content-Type": "application/json", "Content-Length": str(len(sample)),
                                                    **target.headers}) + sample
    cases.append((Case(f"{opts.drops} sampling requests sent and dropped",
                       f"{opts.drops} connections each sending POST /v1/samples {sample.decode()}, then a reset",
                       ("dropped",), ANSWER_BOUND),
                  lambda case: dropped(target, case, opts.drops, request, client)))
    if target.token is None:
        return cases
    plain = {"content-type": "application/json"}
    for name, headers, expected in (("no token", plain, (401,)),
                                    ("wrong token", {**plain, "authorization": "Bearer " + "x" * len(target.token)}, (401,)),
                                    ("token in the wrong scheme", {**plain, "authorization": f"Basic {target.token}"}, (401,)),
                                    ("malformed JSON without a token", plain, (401, 422))):
        content = b'{"n": 1, "digits": [3' if name.startswith("malformed") else sample
        cases.append((Case(name, f"POST /v1/samples {content.decode()} with {headers.get('authorization', 'no Authorization')!r}"
                           .replace(target.token, "<token>"), expected, ANSWER_BOUND),
                      lambda case, content=content, headers=headers: repeated(case, raw_post(target, client, content, headers), seconds)))
    cases.append((Case("/metrics without a token", "GET /metrics with no Authorization", (401,), ANSWER_BOUND),
                  lambda case: repeated(case, raw_get(target, client, "/metrics", {}), seconds)))
    return cases


def _window(outcomes: list[Outcome], start: float, end: float) -> list[float]:
    """Latencies of the background's 200s that overlapped [start, end]."""
    return [o.latency for o in outcomes if o.status == 200 and o.start <= end and o.end >= start]


async def run_hostile(opts: argparse.Namespace, target: Target, echo) -> dict[str, Any]:
    hard = time.monotonic() + opts.deadline
    with_drops = max(opts.drops, opts.loris) + 64
    _raise_file_limit(2 * with_drops + 256)
    async with target.client(opts.background + 4) as background_client, target.client(32) as client:
        status, _, served = await health(target, client)
        if status != 200:
            raise LoadError(f"/healthz answered {status}: {served}")
        await warm_up(target, background_client, sorted(set(MIXES[opts.mix][1])), hard)
        ledger, stop = Ledger(), asyncio.Event()
        background = asyncio.create_task(closed_loop(target, background_client, opts.mix, opts.background, 1_000_000,
                                                     opts.deadline, hard, ledger, stop))
        echo(f"background: {opts.background} callers of {opts.mix} for {opts.before:g} s before the cases ...")
        await asyncio.sleep(opts.before)
        first_case = time.perf_counter()
        cases = []
        for case, run_case in hostile_cases(opts, target, client):
            if time.monotonic() >= hard:
                case.statuses["skipped: past the deadline"] += 1
                cases.append(case)
                continue
            echo(f"case: {case.name} ...")
            case.start = time.perf_counter()
            try:
                await asyncio.wait_for(run_case(case), max(1.0, hard - time.monotonic()))
            except asyncio.TimeoutError:
                case.statuses["cut off at the deadline"] += 1
            case.end = time.perf_counter()
            cases.append(case)
        await asyncio.sleep(min(opts.case_seconds, 2.0))  # the background's requests overlapping the last case end
        stop.set()
        await bounded([background], min(hard + 5, time.monotonic() + 120))
        status, answered_in, _ = await health(target, client)
    outcomes = ledger.outcomes
    before = [o.latency for o in outcomes if o.status == 200 and o.end < first_case]
    base50, base99 = percentile(before, 50), percentile(before, 99)
    rows = []
    for case in cases:
        during = _window(outcomes, case.start, case.end)
        p50, p99 = percentile(during, 50), percentile(during, 99)
        rows.append({"case": case.name, "request": case.what, "statuses": {str(k): v for k, v in case.statuses.items()},
                     "expected": [str(e) for e in case.expected], "answer_p99_s": percentile(case.times, 99),
                     "answer_max_s": max(case.times) if case.times else None, "bound_s": case.bound,
                     "server_errors": case.server_errors, "details": case.details, "extra": case.extra,
                     "seconds": case.end - case.start, "normal_during": len(during), "normal_p50_s": p50, "normal_p99_s": p99,
                     "slowed_p50": p50 / base50 if p50 and base50 else None, "slowed_p99": p99 / base99 if p99 and base99 else None,
                     "passed": case.passed})
    return {"served": served, "token": target.token is not None, "background": {
        "callers": opts.background, "mix": opts.mix, "before_requests": len(before), "before_p50_s": base50, "before_p99_s": base99,
        "check": ledger.check(), "errors_5xx": sum(1 for o in outcomes if o.status is not None and o.status >= 500)},
        "cases": rows, "healthz_after": {"status": status, "seconds": answered_in}}


def hostile_markdown(result: dict) -> list[str]:
    bg = result["background"]
    lines = [f"Background: {bg['callers']} callers of {bg['mix']}; before the cases {bg['before_requests']} requests, "
             f"p50 {fmt(bg['before_p50_s'])} s, p99 {fmt(bg['before_p99_s'])} s; during the run: "
             f"lost {bg['check']['lost']}, 5xx {bg['errors_5xx']}, other {counts(bg['check']['unexpected'])}.", "",
             "| case | answers | answer p99 / max (s) | bound (s) | normal during: n, p50 / p99 (s) | slowed by (p50, p99) | result |",
             "|---|---|---:|---:|---|---|---|"]
    for row in result["cases"]:
        slowed = f"{fmt(row['slowed_p50'])}x, {fmt(row['slowed_p99'])}x" if row["normal_during"] else "-"
        notes = []
        extra = row["extra"]
        if "bytes_sent_before_answer" in extra:
            notes.append(f"{extra['bytes_sent_before_answer']:,} bytes written before the answer or reset")
        if "healthz_during" in extra:
            notes.append(f"/healthz during: {extra['healthz_during']['status']} in {extra['healthz_during']['seconds']:.3f} s")
        if "healthz_after_s" in extra:
            notes.append(f"/healthz after: {extra['healthz_after']} in {extra['healthz_after_s']:.3f} s")
        if "rows_freed_after_s" in extra:
            notes.append(f"{extra['refused_or_cancelled']} ({extra['rows_freed_after_s']:.1f} s; {extra['engine_cancelled']:.0f} cancelled)")
        if row["statuses"].get("open at the end"):
            notes.append(f"the server closed {sum(v for k, v in row['statuses'].items() if k != 'open at the end')} of "
                         f"{sum(row['statuses'].values())} in {row['seconds']:.0f} s")
        if "closed_after_s" in extra:
            notes.append(f"answered after {extra['closed_after_s']['min']:.1f}-{extra['closed_after_s']['max']:.1f} s")
        answers = counts(row["statuses"]) + (f" ({'; '.join(notes)})" if notes else "")
        lines.append(f"| {row['case']} | {answers} | {fmt(row['answer_p99_s'], 3)} / {fmt(row['answer_max_s'], 3)} | "
                     f"{fmt(row['bound_s'], 0)} | {row['normal_during']}, {fmt(row['normal_p50_s'])} / {fmt(row['normal_p99_s'])} | "
                     f"{slowed} | {'pass' if row['passed'] else 'FAIL'} |")
    after = result["healthz_after"]
    lines += ["", f"/healthz after every case: {after['status']} in {after['seconds']:.3f} s. "
                  f"{sum(r['server_errors'] for r in result['cases'])} 5xx answers to the cases."]
    if not result["token"]:
        lines.append("The server has no token known here: the token cases were left out.")
    return lines


def _raise_file_limit(wanted: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(wanted, hard) if hard != resource.RLIM_INFINITY else wanted, hard))
