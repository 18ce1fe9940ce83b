"""Load on a real ``ddpm-serve`` over loopback: a concurrency sweep, an overload soak, hostile clients.

    python -m ddpm.benchmarks.serve_load sweep --quick                    # a few seconds a level (development)
    python -m ddpm.benchmarks.serve_load sweep --out benchmarks/results   # 1, 4, 16, 64 callers, with the targets
    python -m ddpm.benchmarks.serve_load soak --minutes 10 --out benchmarks/results
    python -m ddpm.benchmarks.serve_load hostile --out benchmarks/results
    python -m ddpm.benchmarks.serve_load sweep --url http://127.0.0.1:8000 --pid 1234   # a server already running

The server is started here as a subprocess on 127.0.0.1 (``--port 0``; ``--max-rows``, ``--queue-rows``,
``--threads``, ``--onnx`` and ``--precision`` are passed through) unless ``--url`` names one that runs;
only loopback addresses are accepted (127.0.0.1, ::1, localhost). Every loop is bounded in count and
in time, and each mode has a hard deadline (``--deadline``) past which requests still out are
cancelled and counted as lost.

Modes:

- ``sweep``: closed loops of 1, 4, 16 and 64 callers (each sends its next request when the previous
  one ends), a fixed number of requests or seconds per level. Per level: digits/s, p50/p99 latency
  (200s only), 429s apart from errors (by status), and rows per network call from the ``/metrics``
  counters' deltas. Targets, reported and never asserted: (a) 16 callers of ``single-digit-20``
  requests reach >= 0.8x the throughput of the engine itself with the same 16 requests submitted at
  once (measured here, in process, with the server's ``max_rows``, while the server is idle), and
  (b) p99 at one caller <= 1.2x ``DDPM.generate(1, plan, seed)`` for the same request (what
  ``ddpm-run`` spends sampling, start-up excluded; median of ``--repeats``).
- ``soak``: ``--minutes`` of open-loop (Poisson) arrivals at ``--overload`` (2) times the capacity
  measured first (or at ``--rate`` requests/s), each with a unique seed. Every request must get
  exactly one answer: a 200 PNG whose ``X-DDPM-Seed`` and PNG ``ddpm.seed`` text are the seed sent,
  or a 429 with ``Retry-After``, answered promptly. The server's resident memory is read every
  ``--rss-every`` s; ``/healthz`` must answer 200 afterwards and the server log must hold no traceback.
- ``hostile``: a background load of normal requests, its latency measured before and during each
  case: malformed JSON, wrong types, huge numbers, NaN, n over the limit, 1,000 digits, deep nesting,
  bad UTF-8, a 1 MB header, 100 MB bodies (declared, chunked, and declared with ``Expect:
  100-continue``; bytes handed to the socket before the answer counted), slow-loris headers and a
  slow body, 500 connections opened and dropped (bare, and after sending a sampling request), and
  requests without or with a wrong bearer token (the server is started with ``DDPM_SERVE_TOKEN``).
  No case may get a 5xx; what the server survives but a reader should know is listed as findings.

Request mixes (``--mix``; default ``mixed`` for sweep and soak, ``single-digit-20`` for the
background of hostile), cycled in a fixed order over the requests of a run:

- ``mixed``: one digit per request: 4 of 9 20-call DPM-Solver++ 2M SDE without a digit (the class
  prior draws one), 4 of 9 the same with a requested digit (classifier-free guidance, 2 rows), 1 of 9
  the 100-step ancestral loop with a digit and no guidance. (The 1000-step loop of the engine's own
  benchmark is too slow for a sweep on a small CPU.)
- ``single-digit-20``: only n=1 requests with a digit (cycling 0-9), guided, 20 DPM-Solver++ 2M SDE calls.
- ``no-digit-20``: only n=1 20-call DPM-Solver++ 2M SDE requests without a digit (one row each).

``--out DIR`` writes ``serve-load-<mode>-<tag>.json`` and ``.md``; the tag defaults to a short CPU
kind (``xeon-amx``, ``epyc-avx512``) and the ``.md`` names the CPU and its flags.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import itertools
import json
import os
import random
import re
import resource
import secrets
import select
import signal
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Awaitable, Callable
from urllib.parse import urlsplit

import numpy as np

from ..core.outputs import write_bytes
from ..runtime.cpu_batch import cpu_name
from .serving import cpu_flags

LOOPBACK_HOSTS = ("127.0.0.1", "::1", "localhost")
LISTENING = re.compile(r"Uvicorn running on http://127\.0\.0\.1:(\d+)")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
BODY_SECONDS = 10.0  # the server's deadline for a request body (serve/limits.py); the slow-body case waits past it
ANSWER_BOUND = 2.0  # seconds: what an error answer may take
REFUSAL_BOUND = 1.0  # seconds: what a 429 may take in the soak
SERVER_START_S = 300.0  # the server may time this CPU once before it listens


class LoadError(Exception):
    """A one-line reason the load generator cannot run."""


# -- pure helpers ------------------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float | None:
    """The q-th percentile (linear interpolation, numpy's default); None for no values."""
    return float(np.percentile(np.asarray(values, dtype=float), q)) if len(values) else None


def loopback_url(url: str) -> str:
    """``url`` reduced to ``http://host:port`` if it names this machine's loopback; else LoadError."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise LoadError(f"--url {url!r}: {exc}") from None
    if parts.scheme != "http":
        raise LoadError(f"--url {url!r}: only plain http on loopback is load-tested, not {parts.scheme or 'no scheme'!r}")
    host = parts.hostname
    if host not in LOOPBACK_HOSTS or parts.username is not None or parts.password is not None:
        raise LoadError(f"--url {url!r}: this load generator talks only to loopback ({', '.join(LOOPBACK_HOSTS)}), "
                        f"not {host!r}")
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port or 80}"


def short_cpu_kind(name: str | None = None, flags: str | None = None) -> str:
    """A file tag for this CPU: its family and widest vector unit, e.g. ``xeon-amx``, ``epyc-avx512``."""
    name = (cpu_name() if name is None else name).lower()
    flags = (cpu_flags() if flags is None else flags).split()
    family = next((word for word in ("xeon", "epyc", "ryzen", "threadripper", "core", "graviton", "neoverse", "apple")
                   if word in name), None)
    if family is None:
        words = [w for w in re.split(r"[^a-z0-9]+", re.sub(r"\((r|tm)\)", "", name)) if w and w not in ("cpu", "processor")]
        family = "-".join(words[:2]) or "cpu"
    unit = "amx" if any(f.startswith("amx") for f in flags) else "avx512" if "avx512f" in flags else \
        "avx2" if "avx2" in flags else ""
    return re.sub(r"[^a-z0-9._-]", "", f"{family}-{unit}" if unit else family)[:40] or "cpu"


def png_text(data: bytes) -> dict[str, str]:
    """The text chunks of a PNG (tEXt, zTXt, iTXt); {} for anything that is not a PNG."""
    found: dict[str, str] = {}
    if not data.startswith(PNG_MAGIC):
        return found
    pos = len(PNG_MAGIC)
    try:
        while pos + 8 <= len(data):
            length, kind = struct.unpack(">I4s", data[pos:pos + 8])
            chunk = data[pos + 8:pos + 8 + length]
            pos += 12 + length
            if kind == b"tEXt":
                key, _, value = chunk.partition(b"\0")
                found[key.decode("latin-1")] = value.decode("latin-1")
            elif kind == b"zTXt":
                key, _, rest = chunk.partition(b"\0")
                found[key.decode("latin-1")] = zlib.decompressobj().decompress(rest[1:], 1 << 20).decode("latin-1")
            elif kind == b"iTXt":
                key, _, rest = chunk.partition(b"\0")
                compressed, rest = rest[0], rest[2:]
                _language, _, rest = rest.partition(b"\0")
                _translated, _, text = rest.partition(b"\0")
                if compressed:
                    text = zlib.decompressobj().decompress(text, 1 << 20)
                found[key.decode("latin-1")] = text.decode("utf-8", "replace")
            elif kind == b"IEND":
                break
    except (struct.error, zlib.error, IndexError, UnicodeDecodeError):
        pass
    return found


def metric_values(text: str) -> dict[str, float]:
    """Prometheus text as {series (with its labels): value}."""
    values: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name, _, value = line.rpartition(" ")
        try:
            values[name] = float(value)
        except ValueError:
            continue
    return values


def _counter(values: dict[str, float], name: str) -> float | None:
    return values.get(f"{name}_total", values.get(name))


def rows_per_call(before: dict[str, float], after: dict[str, float]) -> float | None:
    """Mean rows per network call between two scrapes (the rows and calls counters' deltas)."""
    rows = [_counter(v, "ddpm_network_rows") for v in (before, after)]
    calls = [_counter(v, "ddpm_network_calls") for v in (before, after)]
    if None in rows or None in calls or calls[1] - calls[0] <= 0:
        return None
    return (rows[1] - rows[0]) / (calls[1] - calls[0])


# -- requests and their bookkeeping -------------------------------------------------------------------


@dataclass(frozen=True)
class Kind:
    """One kind of request: n=1, a sampler and its calls, with a requested digit or without."""

    name: str
    sampler: str
    steps: int
    digit: bool
    guidance: float | None = None  # None: the server's default (guided with a digit)

    def digits(self, index: int) -> list[int] | None:
        return [index % 10] if self.digit else None

    def body(self, index: int, seed: int) -> dict[str, Any]:
        body: dict[str, Any] = {"n": 1, "sampler": self.sampler, "steps": self.steps, "seed": seed}
        if self.digit:
            body["digits"] = self.digits(index)
        if self.guidance is not None:
            body["guidance"] = self.guidance
        return body

    def plan(self, ddpm, index: int):
        return ddpm.plan(self.sampler, steps=self.steps, digits=self.digits(index), guidance=self.guidance)


KINDS = {kind.name: kind for kind in (
    Kind("sde20", "dpm++2m-sde", 20, digit=False),
    Kind("sde20-digit", "dpm++2m-sde", 20, digit=True),
    Kind("ancestral100-digit", "ancestral", 100, digit=True, guidance=0.0),
)}
TARGET_KIND = "sde20-digit"  # the single-digit 20-call request of the targets
MIXES: dict[str, tuple[str, tuple[str, ...]]] = {
    "mixed": ("4/9 20-call dpm++2m-sde without a digit, 4/9 the same with a digit (guided), "
              "1/9 100-step ancestral with a digit (unguided)", ("sde20", "sde20-digit") * 4 + ("ancestral100-digit",)),
    "single-digit-20": ("n=1 with a digit (0-9 in turn), guided, 20 dpm++2m-sde calls", ("sde20-digit",)),
    "no-digit-20": ("n=1 without a digit, 20 dpm++2m-sde calls", ("sde20",)),
}


def mix_kind(mix: str, index: int) -> Kind:
    pattern = MIXES[mix][1]
    return KINDS[pattern[index % len(pattern)]]


@dataclass
class Outcome:
    """One request and its one answer (``status`` None: no HTTP answer came, ``error`` says why)."""

    key: int
    seed: int
    kind: str
    start: float
    end: float = 0.0
    status: int | None = None
    error: str = ""
    header_seed: int | None = None
    png_seed: int | None = None
    is_png: bool = False
    retry_after: str | None = None
    detail: str = ""
    digits: int = 1

    @property
    def latency(self) -> float:
        return self.end - self.start

    @property
    def label(self) -> str:
        return str(self.status) if self.status is not None else f"no response ({self.error.split(':')[0]})"


class Ledger:
    """Every request sent and every answer received, to find the lost, the duplicated and the wrong."""

    def __init__(self) -> None:
        self.sent: dict[int, int] = {}  # key -> seed sent
        self.outcomes: list[Outcome] = []

    def send(self, key: int, seed: int) -> None:
        if key in self.sent:
            raise ValueError(f"request {key} sent twice")
        self.sent[key] = seed

    def answer(self, outcome: Outcome) -> None:
        self.outcomes.append(outcome)

    def check(self) -> dict[str, Any]:
        """Counts of what went wrong; ``clean`` when each request got exactly one right answer."""
        answered = Counter(o.key for o in self.outcomes if o.status is not None)
        recorded = Counter(o.key for o in self.outcomes)
        lost = [key for key in self.sent if answered[key] == 0]
        twice = [key for key, count in recorded.items() if count > 1]
        strangers = [key for key in recorded if key not in self.sent]
        ok = [o for o in self.outcomes if o.status == 200]
        claims = Counter(o.header_seed for o in ok)
        duplicated = sorted(seed for seed, count in claims.items() if count > 1 and seed is not None)
        mismatched = [o.key for o in ok if o.key in self.sent and (not o.is_png or o.header_seed != self.sent[o.key]
                                                                    or o.png_seed != self.sent[o.key])]
        refused = [o for o in self.outcomes if o.status == 429]
        bare_429 = [o.key for o in refused if not (o.retry_after or "").strip().isdigit()]
        unexpected = Counter(o.label for o in self.outcomes if o.status not in (200, 429))
        report = {"sent": len(self.sent), "answered": sum(answered.values()), "ok": len(ok), "refused": len(refused),
                  "lost": len(lost), "duplicated": len(duplicated) + len(twice), "mismatched": len(mismatched),
                  "strangers": len(strangers), "429_without_retry_after": len(bare_429), "unexpected": dict(unexpected)}
        report["clean"] = not (lost or duplicated or twice or mismatched or strangers or bare_429 or unexpected)
        examples = {"lost": [self.sent[k] for k in lost[:5]], "duplicated_seeds": duplicated[:5],
                    "mismatched": [{"sent": self.sent.get(k), **{f: getattr(o, f) for f in ("status", "header_seed", "png_seed", "is_png")}}
                                   for o in ok for k in [o.key] if k in mismatched[:5]],
                    "unexpected": {o.label: o.detail or o.error for o in self.outcomes if o.status not in (200, 429)}}
        report["examples"] = {key: value for key, value in examples.items() if value}
        return report


@dataclass
class Target:
    """The server under load and how to reach it."""

    base: str
    headers: dict[str, str]
    timeout: float
    pid: int | None = None
    token: str | None = None
    seed_base: int = field(default_factory=lambda: secrets.randbits(40))
    _keys: itertools.count = field(default_factory=itertools.count)

    @property
    def host(self) -> str:
        return urlsplit(self.base).hostname

    @property
    def port(self) -> int:
        return urlsplit(self.base).port

    @property
    def netloc(self) -> str:
        return urlsplit(self.base).netloc

    def next_request(self) -> tuple[int, int]:
        """A key unique in this run and its seed, unique too."""
        key = next(self._keys)
        return key, self.seed_base + key

    def client(self, connections: int = 128):
        import httpx

        limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections, keepalive_expiry=4.0)
        # trust_env=False: no proxy from the environment may carry loopback requests elsewhere
        return httpx.AsyncClient(limits=limits, trust_env=False, timeout=httpx.Timeout(self.timeout))


async def post_sample(target: Target, client, kind: Kind, index: int, ledger: Ledger) -> Outcome:
    """POST one sampling request; its outcome goes into ``ledger`` whatever happens (a request cut off
    by a deadline is recorded without an answer)."""
    import httpx

    key, seed = target.next_request()
    outcome = Outcome(key, seed, kind.name, time.perf_counter())
    ledger.send(key, seed)
    try:
        response = await client.post(f"{target.base}/v1/samples", json=kind.body(index, seed), headers=target.headers)
        outcome.status = response.status_code
        outcome.retry_after = response.headers.get("retry-after")
        content = response.content
        if outcome.status == 200:
            with_seed = response.headers.get("x-ddpm-seed", "")
            outcome.header_seed = int(with_seed) if with_seed.isdigit() else None
            outcome.is_png = response.headers.get("content-type", "").startswith("image/png") and content.startswith(PNG_MAGIC)
            text_seed = png_text(content).get("ddpm.seed", "")
            outcome.png_seed = int(text_seed) if text_seed.isdigit() else None
        else:
            outcome.detail = response.text[:200]
    except asyncio.CancelledError:
        outcome.error = "cancelled: past the deadline"
        raise
    except httpx.HTTPError as exc:
        outcome.error = f"{type(exc).__name__}: {exc}"[:200]
    finally:
        outcome.end = time.perf_counter()
        ledger.answer(outcome)
    return outcome


async def bounded(tasks: list[asyncio.Task], deadline: float) -> None:
    """Wait for ``tasks`` until the monotonic ``deadline``; cancel what is left, raise a task's own failure."""
    if not tasks:
        return
    _, pending = await asyncio.wait(tasks, timeout=max(0.0, deadline - time.monotonic()))
    for task in pending:
        task.cancel()
    if pending:
        await asyncio.wait(pending, timeout=10)
    for task in tasks:
        if task.done() and not task.cancelled() and task.exception() is not None:
            raise task.exception()


async def closed_loop(target: Target, client, mix: str, concurrency: int, count: int, seconds: float, hard_deadline: float,
                      ledger: Ledger, stop: asyncio.Event | None = None) -> None:
    """``concurrency`` callers, each sending its next request when its last one ends, until ``count``
    requests were sent or ``seconds`` passed (or ``stop`` is set); requests out at ``hard_deadline``
    are cancelled."""
    counter = itertools.count()
    stop_at = min(time.monotonic() + seconds, hard_deadline)

    async def caller() -> None:
        while time.monotonic() < stop_at and not (stop is not None and stop.is_set()):
            index = next(counter)
            if index >= count:
                return
            outcome = await post_sample(target, client, mix_kind(mix, index), index, ledger)
            if outcome.status == 429:  # an honest client waits, up to a second, before the next
                wait = int(outcome.retry_after) if (outcome.retry_after or "").isdigit() else 1
                await asyncio.sleep(max(0.0, min(wait, 1.0, stop_at - time.monotonic())))

    await bounded([asyncio.create_task(caller()) for _ in range(concurrency)], hard_deadline)


async def open_loop(target: Target, client, mix: str, rate: float, seconds: float, drain: float, hard_deadline: float,
                    ledger: Ledger, max_outstanding: int, seed: int = 0) -> dict[str, Any]:
    """Poisson arrivals at ``rate`` per second for ``seconds``, whatever the server answers; at most
    ``max_outstanding`` requests out (an arrival beyond is not sent, and counted); then up to ``drain``
    seconds for the last answers."""
    rng = random.Random(seed)
    start = time.monotonic()
    stop_at = min(start + seconds, hard_deadline)
    limit = int(rate * seconds * 1.5) + 10
    out: set[asyncio.Task] = set()
    tasks, skipped, next_at, index = [], 0, start, 0
    while index < limit:
        next_at += rng.expovariate(rate)
        if next_at >= stop_at:
            break
        await asyncio.sleep(max(0.0, next_at - time.monotonic()))
        if len(out) >= max_outstanding:
            skipped += 1
            continue
        task = asyncio.create_task(post_sample(target, client, mix_kind(mix, index), index, ledger))
        out.add(task)
        task.add_done_callback(out.discard)
        tasks.append(task)
        index += 1
    sent_for = time.monotonic() - start
    await bounded(tasks, min(time.monotonic() + drain, hard_deadline))
    return {"arrivals_sent": index, "skipped_at_client_cap": skipped, "arrival_seconds": sent_for,
            "offered_rate": index / sent_for if sent_for > 0 else 0.0}


async def scrape(target: Target, client) -> dict[str, float]:
    try:
        response = await client.get(f"{target.base}/metrics", headers=target.headers, timeout=10)
    except Exception:  # a scrape is a nicety; its absence shows as "-"
        return {}
    return metric_values(response.text) if response.status_code == 200 else {}


async def health(target: Target, client, timeout: float = 10.0) -> tuple[int | None, float, dict]:
    """/healthz: status, seconds to answer, body."""
    start = time.perf_counter()
    try:
        response = await client.get(f"{target.base}/healthz", timeout=timeout)
        body = response.json() if response.status_code == 200 else {}
        return response.status_code, time.perf_counter() - start, body
    except Exception as exc:
        return None, time.perf_counter() - start, {"error": f"{type(exc).__name__}: {exc}"[:200]}


def summarize(name: str, concurrency: int | None, mix: str, ledger: Ledger, before: dict, after: dict) -> dict[str, Any]:
    """A level's figures: throughput over the first send to the last answer, latency of the 200s."""
    outcomes = ledger.outcomes
    ok = [o for o in outcomes if o.status == 200]
    span = (max(o.end for o in outcomes) - min(o.start for o in outcomes)) if outcomes else 0.0
    digits = sum(o.digits for o in ok)
    latencies = [o.latency for o in ok]
    kinds = {}
    for kind in sorted({o.kind for o in ok}):
        values = [o.latency for o in ok if o.kind == kind]
        kinds[kind] = {"requests": len(values), "p50_s": percentile(values, 50), "p99_s": percentile(values, 99)}
    refused = [o.latency for o in outcomes if o.status == 429]
    return {"level": name, "concurrency": concurrency, "mix": mix, "requests": len(outcomes), "ok": len(ok),
            "refused_429": len(refused), "errors": dict(Counter(o.label for o in outcomes if o.status not in (200, 429))),
            "digits": digits, "seconds": span, "digits_per_s": digits / span if span > 0 else 0.0,
            "p50_s": percentile(latencies, 50), "p99_s": percentile(latencies, 99),
            "p99_429_s": percentile(refused, 99), "rows_per_call": rows_per_call(before, after), "kinds": kinds,
            "check": ledger.check()}


# -- the server --------------------------------------------------------------------------------------


class ServerProcess:
    """``ddpm-serve`` on 127.0.0.1, port 0, as a subprocess; its log in a file."""

    def __init__(self, opts: argparse.Namespace, token: str | None = None) -> None:
        self.opts, self.token = opts, token
        self.log_path = Path(opts.server_log) if opts.server_log else Path(tempfile.mkdtemp(prefix="serve-load-")) / "serve.log"
        self.process: subprocess.Popen | None = None
        self.returncode: int | None = None
        self.args = ["--host", "127.0.0.1", "--port", "0", "--grace", "5"]
        for flag, value in (("--max-rows", opts.max_rows), ("--queue-rows", opts.queue_rows), ("--threads", opts.threads),
                            ("--onnx", opts.onnx), ("--precision", opts.precision)):
            if value is not None:
                self.args += [flag, str(value)]

    def start(self) -> str:
        env = {key: value for key, value in os.environ.items() if key != "DDPM_SERVE_TOKEN"}
        if self.token is not None:
            env["DDPM_SERVE_TOKEN"] = self.token
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen([sys.executable, "-c", "from ddpm.serve.cli import main; main()", *self.args],
                                            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + SERVER_START_S
        while True:
            found = LISTENING.search(self.log_text())
            if found:
                return f"http://127.0.0.1:{found.group(1)}"
            if self.process.poll() is not None:
                raise LoadError(f"ddpm-serve ended ({self.process.returncode}) before listening: {self.log_tail()}")
            if time.monotonic() > deadline:
                self.stop()
                raise LoadError(f"ddpm-serve did not listen within {SERVER_START_S:g} s: {self.log_tail()}")
            time.sleep(0.1)

    @property
    def pid(self) -> int | None:
        return None if self.process is None else self.process.pid

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def log_tail(self, lines: int = 8) -> str:
        return " | ".join(self.log_text().strip().splitlines()[-lines:])

    def stop(self) -> int | None:
        """SIGTERM (the server drains for its 5 s grace), then a kill past 30 s."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self.returncode = self.process.returncode
        return self.returncode


def read_rss_kb(pid: int | None) -> int | None:
    if pid is None:
        return None
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def cpu_seconds(pid: int | None) -> float | None:
    """User + system CPU seconds of a process (``/proc/<pid>/stat``)."""
    if pid is None:
        return None
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def own_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


# -- sweep -------------------------------------------------------------------------------------------


def offline_figures(opts: argparse.Namespace, served: dict, kinds: list[str], echo) -> dict[str, Any]:
    """In process, on the server's model and max_rows: the engine with 16 single-digit 20-call requests
    submitted at once (digits/s, median of ``--repeats-engine`` runs), and ``DDPM.generate(1)`` per kind
    (median of ``--repeats``), the time ``ddpm-run`` spends sampling."""
    from ..runtime.precision import load_model
    from . import serving

    provider = "cpu" if served.get("provider", "").startswith("CPU") else "auto"
    ddpm, note = load_model(opts.onnx, opts.precision or "auto", {"provider": provider, "threads": opts.threads})
    try:
        model = ddpm.session.path.name
        if served.get("model") and model != served["model"]:
            echo(f"note: in process the model is {model}, the server samples {served['model']}")
        max_rows = int(served["rows_per_call"])
        kind = KINDS[TARGET_KIND]
        ddpm.generate(1, kind.plan(ddpm, 0), seed=0)  # warm the session
        requests = [serving.Request(1, kind.plan(ddpm, i), 1000 + i, 0.0, kind.name) for i in range(16)]
        engine_runs = []
        for _ in range(opts.repeats_engine):
            outcome = serving.run_engine(ddpm, "offline", requests, max_rows)
            engine_runs.append({"digits_per_s": outcome.throughput, "seconds": outcome.seconds, "rows_per_call": outcome.rows_per_call})
        generate = {}
        for name in kinds:
            times = []
            for repeat in range(opts.repeats):
                start = time.perf_counter()
                ddpm.generate(1, KINDS[name].plan(ddpm, repeat), seed=repeat)
                times.append(time.perf_counter() - start)
            generate[name] = {"median_s": float(np.median(times)), "times_s": times}
        return {"model": model, "precision_note": note, "max_rows": max_rows, "requests": 16, "kind": kind.name,
                "engine_runs": engine_runs,
                "engine_digits_per_s": float(np.median([run["digits_per_s"] for run in engine_runs])),
                "generate": generate}
    finally:
        del ddpm
        gc.collect()


async def warm_up(target: Target, client, kinds: list[str], hard_deadline: float, warmed: set[str] | None = None) -> None:
    """One request of each kind not in ``warmed`` yet, not counted: the server's first calls set up its session."""
    ledger, warmed = Ledger(), set() if warmed is None else warmed
    for index, name in enumerate(kinds):
        if name not in warmed and time.monotonic() < hard_deadline:
            await post_sample(target, client, KINDS[name], index, ledger)
            warmed.add(name)


async def run_sweep(opts: argparse.Namespace, target: Target, echo) -> dict[str, Any]:
    hard = time.monotonic() + opts.deadline
    async with target.client(max(opts.levels) + 8) as client:
        status, _, served = await health(target, client)
        if status != 200:
            raise LoadError(f"/healthz answered {status}: {served}")
    kinds = sorted(set(MIXES[opts.mix][1]) | ({TARGET_KIND} if opts.targets else set()))
    offline = None
    if opts.targets:
        echo(f"in process, server idle: the engine with 16 {TARGET_KIND} requests at once, max_rows {served['rows_per_call']}; "
             f"DDPM.generate(1) for {', '.join(kinds)} ...")
        offline = offline_figures(opts, served, kinds, echo)
    levels = [(c, opts.mix, f"{c}") for c in opts.levels]
    if opts.targets and 1 not in opts.levels:
        levels.append((1, "single-digit-20", "1 (target b)"))
    if opts.targets and not (16 in opts.levels and opts.mix == "single-digit-20"):
        levels.append((16, "single-digit-20", "16 (target a)"))
    results, warmed = [], set()
    for concurrency, mix, name in levels:
        if time.monotonic() >= hard:
            echo(f"level {name}: skipped, past the sweep's deadline")
            continue
        count = opts.requests or (max(2, concurrency) if opts.quick else max(32, 4 * concurrency))
        echo(f"level {name}: {concurrency} callers, mix {mix}, up to {count} requests or {opts.seconds:g} s ...")
        async with target.client(concurrency + 4) as client:
            await warm_up(target, client, sorted(set(MIXES[mix][1])), hard, warmed)
            ledger, before = Ledger(), await scrape(target, client)
            await closed_loop(target, client, mix, concurrency, count, opts.seconds,
                              min(hard, time.monotonic() + opts.seconds + opts.drain), ledger)
            after = await scrape(target, client)
        results.append(summarize(name, concurrency, mix, ledger, before, after))
    return {"served": served, "offline": offline, "levels": results, "targets": sweep_targets(results, offline)}


def sweep_targets(levels: list[dict], offline: dict | None) -> list[dict[str, Any]]:
    """(a) served vs engine throughput at 16 callers, (b) p99 at 1 caller vs DDPM.generate, per kind."""
    if offline is None:
        return []
    found = []
    sixteen = next((lv for lv in levels if lv["concurrency"] == 16 and lv["mix"] == "single-digit-20"), None)
    if sixteen is not None and offline["engine_digits_per_s"] > 0:
        ratio = sixteen["digits_per_s"] / offline["engine_digits_per_s"]
        found.append({"target": "a", "what": f"16 callers of {TARGET_KIND}: served digits/s vs the engine in process",
                      "served": sixteen["digits_per_s"], "reference": offline["engine_digits_per_s"], "ratio": ratio,
                      "bound": ">= 0.8x", "met": ratio >= 0.8})
    for level in (lv for lv in levels if lv["concurrency"] == 1):
        for kind, figures in level["kinds"].items():
            reference = offline["generate"].get(kind, {}).get("median_s")
            if reference and figures["p99_s"] is not None:
                ratio = figures["p99_s"] / reference
                found.append({"target": "b" if kind == TARGET_KIND else "b (info)",
                              "what": f"1 caller ({level['mix']}), {kind}: p99 vs DDPM.generate(1) median",
                              "served": figures["p99_s"], "reference": reference, "ratio": ratio, "bound": "<= 1.2x",
                              "met": ratio <= 1.2})
    return found


def _fmt(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _counts(counts: dict) -> str:
    return ", ".join(f"{key} x{value}" for key, value in counts.items()) or "0"


def sweep_markdown(result: dict) -> list[str]:
    lines = ["| level | mix | callers | requests | digits/s | p50 (s) | p99 (s) | 200 | 429 | errors | rows/call | lost / dup / wrong |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---|---:|---|"]
    for lv in result["levels"]:
        check = lv["check"]
        lines.append(f"| {lv['level']} | {lv['mix']} | {lv['concurrency']} | {lv['requests']} | {lv['digits_per_s']:.2f} | "
                     f"{_fmt(lv['p50_s'])} | {_fmt(lv['p99_s'])} | {lv['ok']} | {lv['refused_429']} | {_counts(lv['errors'])} | "
                     f"{_fmt(lv['rows_per_call'], 1)} | {check['lost']} / {check['duplicated']} / {check['mismatched']} |")
    lines += ["", "| level | request kind | requests | p50 (s) | p99 (s) |", "|---|---|---:|---:|---:|"]
    for lv in result["levels"]:
        for kind, figures in lv["kinds"].items():
            lines.append(f"| {lv['level']} | {kind} | {figures['requests']} | {_fmt(figures['p50_s'])} | {_fmt(figures['p99_s'])} |")
    offline = result["offline"]
    if offline:
        runs = ", ".join(f"{run['digits_per_s']:.2f}" for run in offline["engine_runs"])
        lines += ["", f"In process (server idle, {offline['model']}, max_rows {offline['max_rows']}): the engine with 16 "
                      f"{offline['kind']} requests at once, {offline['engine_digits_per_s']:.2f} digits/s (median of {runs}); "
                      "DDPM.generate(1) median: " + ", ".join(f"{k} {v['median_s']:.3f} s" for k, v in offline["generate"].items()) + "."]
    if result["targets"]:
        lines += ["", "Targets (reported, not asserted):", ""]
        for t in result["targets"]:
            lines.append(f"- ({t['target']}) {t['what']}: {t['served']:.3f} vs {t['reference']:.3f} = {t['ratio']:.2f}x "
                         f"(target {t['bound']}): {'met' if t['met'] else 'MISSED'}")
    return lines


# -- soak --------------------------------------------------------------------------------------------


async def run_soak(opts: argparse.Namespace, target: Target, echo) -> dict[str, Any]:
    hard = time.monotonic() + opts.deadline
    connections = opts.max_outstanding + 8
    async with target.client(connections) as client:
        status, _, served = await health(target, client)
        if status != 200:
            raise LoadError(f"/healthz answered {status}: {served}")
        await warm_up(target, client, sorted(set(MIXES[opts.mix][1])), hard)
        capacity = None
        if opts.capacity_callers is None:  # enough to keep every call full with a queue behind it
            opts.capacity_callers = min(64, max(4, 2 * int(served["rows_per_call"])))
        if opts.rate is None:
            echo(f"capacity: {opts.capacity_callers} callers, mix {opts.mix}, for {opts.capacity_seconds:g} s ...")
            ledger = Ledger()
            await closed_loop(target, client, opts.mix, opts.capacity_callers, 1_000_000, opts.capacity_seconds,
                              min(hard, time.monotonic() + opts.capacity_seconds + opts.drain), ledger)
            capacity = summarize("capacity", opts.capacity_callers, opts.mix, ledger, {}, {})
            per_second = capacity["ok"] / capacity["seconds"] if capacity["seconds"] > 0 else 0.0
            capacity["requests_per_s"] = per_second
            if per_second <= 0:
                raise LoadError(f"capacity: no request finished in {opts.capacity_seconds:g} s ({capacity['errors']})")
            rate = opts.overload * per_second
        else:
            rate = opts.rate
        seconds = opts.minutes * 60
        echo(f"soak: {rate:.2f} arrivals/s for {seconds:g} s (mix {opts.mix}), RSS every {opts.rss_every:g} s ...")
        rss: list[tuple[float, int]] = []
        began = time.monotonic()
        server_cpu, client_cpu = cpu_seconds(target.pid), own_cpu_seconds()

        async def watch_memory() -> None:
            while True:
                kb = read_rss_kb(target.pid)
                if kb is not None:
                    rss.append((time.monotonic() - began, kb))
                await asyncio.sleep(opts.rss_every)

        watcher = asyncio.create_task(watch_memory())
        ledger, before = Ledger(), await scrape(target, client)
        try:
            arrivals = await open_loop(target, client, opts.mix, rate, seconds, opts.drain, hard, ledger, opts.max_outstanding)
        finally:
            watcher.cancel()
        kb = read_rss_kb(target.pid)
        if kb is not None:
            rss.append((time.monotonic() - began, kb))
        after = await scrape(target, client)
        status, answered_in, _ = await health(target, client)
    figures = summarize("soak", None, opts.mix, ledger, before, after)
    memory = None
    if rss:
        values = [kb for _, kb in rss]
        memory = {"start_mb": values[0] / 1024, "max_mb": max(values) / 1024, "end_mb": values[-1] / 1024,
                  "growth_mb": (values[-1] - values[0]) / 1024, "samples": [[round(t, 1), kb] for t, kb in rss]}
    cpu_now = cpu_seconds(target.pid)
    return {"served": served, "capacity": capacity, "arrival_rate": rate, "arrivals": arrivals, "soak": figures,
            "memory": memory, "healthz_after": {"status": status, "seconds": answered_in},
            "cpu_seconds": {"server": None if server_cpu is None or cpu_now is None else cpu_now - server_cpu,
                            "client": own_cpu_seconds() - client_cpu}}


def soak_markdown(result: dict) -> list[str]:
    soak, check = result["soak"], result["soak"]["check"]
    arrivals, memory = result["arrivals"], result["memory"]
    lines = []
    if result["capacity"]:
        cap = result["capacity"]
        lines += [f"Capacity measured first: {cap['concurrency']} callers, {cap['ok']} requests in {cap['seconds']:.1f} s = "
                  f"{cap['requests_per_s']:.2f} requests/s ({cap['digits_per_s']:.2f} digits/s); arrivals at "
                  f"{result['arrival_rate']:.2f}/s.", ""]
    refusal_p99 = soak["p99_429_s"]
    rows = [("arrivals sent (offered rate)", f"{arrivals['arrivals_sent']} ({arrivals['offered_rate']:.2f}/s over {arrivals['arrival_seconds']:.0f} s)", ""),
            ("not sent: client cap on requests out", str(arrivals["skipped_at_client_cap"]), ""),
            ("200 (PNG, seed right)", f"{check['ok'] - check['mismatched']} of {check['ok']}", "pass" if check["mismatched"] == 0 else "FAIL"),
            ("429 with Retry-After", f"{check['refused'] - check['429_without_retry_after']} of {check['refused']}",
             "pass" if check["429_without_retry_after"] == 0 else "FAIL"),
            ("lost (no answer)", str(check["lost"]), "pass" if check["lost"] == 0 else "FAIL"),
            ("duplicated", str(check["duplicated"]), "pass" if check["duplicated"] == 0 else "FAIL"),
            ("other answers", _counts(check["unexpected"]), "pass" if not check["unexpected"] else "FAIL"),
            ("served digits/s", f"{soak['digits_per_s']:.2f}", ""),
            ("200 latency p50 / p99 (s)", f"{_fmt(soak['p50_s'])} / {_fmt(soak['p99_s'])}", ""),
            ("429 latency p99 (s)", _fmt(refusal_p99, 3), "" if refusal_p99 is None else
             ("pass" if refusal_p99 <= REFUSAL_BOUND else "MISSED") + f" (<= {REFUSAL_BOUND:g} s)"),
            ("rows per network call", _fmt(soak["rows_per_call"], 1), "")]
    if memory:
        rows.append(("server RSS start / max / end (MB)", f"{memory['start_mb']:.0f} / {memory['max_mb']:.0f} / {memory['end_mb']:.0f}",
                     f"growth {memory['growth_mb']:+.1f} MB"))
    else:
        rows.append(("server RSS", "not read (no pid: give --pid with --url)", ""))
    health_after = result["healthz_after"]
    rows.append(("/healthz after", f"{health_after['status']} in {health_after['seconds']:.3f} s",
                 "pass" if health_after["status"] == 200 else "FAIL"))
    cpu = result["cpu_seconds"]
    rows.append(("CPU seconds: server / this load generator", f"{_fmt(cpu['server'], 1)} / {_fmt(cpu['client'], 1)}", ""))
    return lines + ["| check | figure | |", "|---|---|---|", *[f"| {a} | {b} | {c} |" for a, b, c in rows]]


# -- hostile -----------------------------------------------------------------------------------------


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
             f"p50 {_fmt(bg['before_p50_s'])} s, p99 {_fmt(bg['before_p99_s'])} s; during the run: "
             f"lost {bg['check']['lost']}, 5xx {bg['errors_5xx']}, other {_counts(bg['check']['unexpected'])}.", "",
             "| case | answers | answer p99 / max (s) | bound (s) | normal during: n, p50 / p99 (s) | slowed by (p50, p99) | result |",
             "|---|---|---:|---:|---|---|---|"]
    for row in result["cases"]:
        slowed = f"{_fmt(row['slowed_p50'])}x, {_fmt(row['slowed_p99'])}x" if row["normal_during"] else "-"
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
        answers = _counts(row["statuses"]) + (f" ({'; '.join(notes)})" if notes else "")
        lines.append(f"| {row['case']} | {answers} | {_fmt(row['answer_p99_s'], 3)} / {_fmt(row['answer_max_s'], 3)} | "
                     f"{_fmt(row['bound_s'], 0)} | {row['normal_during']}, {_fmt(row['normal_p50_s'])} / {_fmt(row['normal_p99_s'])} | "
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


# -- command line ------------------------------------------------------------------------------------

MODES = {"sweep": (run_sweep, sweep_markdown), "soak": (run_soak, soak_markdown), "hostile": (run_hostile, hostile_markdown)}


def _levels(text: str) -> list[int]:
    try:
        levels = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of integers") from None
    if not levels or any(level < 1 or level > 512 for level in levels):
        raise argparse.ArgumentTypeError(f"{text!r}: levels are 1 to 512 callers")
    return levels


def _tag(text: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,63}", text):
        raise argparse.ArgumentTypeError(f"{text!r}: use up to 64 letters, digits, '.', '_' or '-', not starting with '.'")
    return text


def parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--url", default=None, help="A ddpm-serve already running on loopback. [default: start one here]")
    common.add_argument("--pid", type=int, default=None, help="With --url: the server's process id, for its memory and CPU.")
    common.add_argument("--token", default=None, help="With --url: its bearer token. [default: $DDPM_SERVE_TOKEN]")
    common.add_argument("--server-log", default=None, help="Where the started server logs (read for tracebacks). [default: a temp file]")
    common.add_argument("--onnx", default=None, help="Passed to ddpm-serve (and used in process for the targets).")
    common.add_argument("--precision", default=None, choices=("auto", "fp32", "int8"), help="Passed to ddpm-serve.")
    common.add_argument("--max-rows", type=int, default=None, help="Passed to ddpm-serve. [default: its own]")
    common.add_argument("--queue-rows", type=int, default=None, help="Passed to ddpm-serve. [default: its own]")
    common.add_argument("--threads", type=int, default=None, help="Passed to ddpm-serve and to the in-process model.")
    common.add_argument("--mix", choices=sorted(MIXES), default=None,
                        help="Request mix (see the module's help). [default: mixed; single-digit-20 for hostile's background]")
    common.add_argument("--timeout", type=float, default=None, help="Seconds one request may take. [default: 120; 30 --quick]")
    common.add_argument("--deadline", type=float, default=None, help="Hard deadline of the whole mode, seconds.")
    common.add_argument("--drain", type=float, default=None, help="Seconds a level or the soak waits for its last answers.")
    common.add_argument("--quick", action="store_true", help="A very short run (a few seconds a level or case), for development.")
    common.add_argument("--out", type=Path, default=None, help="Write serve-load-<mode>-<tag>.json and .md here.")
    common.add_argument("--tag", type=_tag, default=None, help="File tag. [default: a short CPU kind, e.g. xeon-amx]")
    top = argparse.ArgumentParser(prog="python -m ddpm.benchmarks.serve_load", description=__doc__,
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
    modes = top.add_subparsers(dest="mode", required=True, metavar="MODE")
    sweep = modes.add_parser("sweep", parents=[common], help="Closed loops of 1, 4, 16, 64 callers, with targets (a) and (b).")
    sweep.add_argument("--levels", type=_levels, default=None, help="Callers per level. [default: 1,4,16,64; 1,4 --quick, beside the target levels]")
    sweep.add_argument("--requests", type=int, default=None, help="Requests per level. [default: max(32, 4 x callers); callers --quick]")
    sweep.add_argument("--seconds", type=float, default=None, help="Seconds per level, at most. [default: 30; 2 --quick]")
    sweep.add_argument("--no-targets", dest="targets", action="store_false", help="Skip the in-process figures and target levels.")
    sweep.add_argument("--repeats", type=int, default=None, help="DDPM.generate(1) runs per kind (median). [default: 5; 2 --quick]")
    sweep.add_argument("--repeats-engine", type=int, default=None, help="In-process engine runs (median). [default: 3; 1 --quick]")
    soak = modes.add_parser("soak", parents=[common], help="Open-loop overload for --minutes, every answer accounted for.")
    soak.add_argument("--minutes", type=float, default=None, help="Length of the soak. [default: 10; 0.2 --quick]")
    soak.add_argument("--rate", type=float, default=None, help="Arrivals per second. [default: --overload x the measured capacity]")
    soak.add_argument("--overload", type=float, default=2.0, help="Arrival rate over the measured capacity.")
    soak.add_argument("--capacity-seconds", type=float, default=None, help="Capacity measurement. [default: 20; 3 --quick]")
    soak.add_argument("--capacity-callers", type=int, default=None,
                      help="Closed-loop callers while measuring capacity. [default: 2 x rows per call, 4 to 64]")
    soak.add_argument("--rss-every", type=float, default=None, help="Seconds between RSS reads. [default: 10; 1 --quick]")
    soak.add_argument("--max-outstanding", type=int, default=512, help="Requests out at once, at most (uvicorn takes 1024 connections).")
    hostile = modes.add_parser("hostile", parents=[common], help="Hostile clients beside a background of normal requests.")
    hostile.add_argument("--background", type=int, default=2, help="Callers of the normal background load.")
    hostile.add_argument("--before", type=float, default=None, help="Seconds of background before the cases. [default: 15; 3 --quick]")
    hostile.add_argument("--case-seconds", type=float, default=None, help="Seconds each repeated case lasts. [default: 3; 1 --quick]")
    hostile.add_argument("--loris", type=int, default=50, help="Slow-loris connections.")
    hostile.add_argument("--loris-seconds", type=float, default=None, help="How long they trickle. [default: 30; 4 --quick]")
    hostile.add_argument("--drops", type=int, default=500, help="Connections opened and dropped at once.")
    hostile.add_argument("--big-mb", type=int, default=100, help="Size of the oversized bodies, MB.")
    return top


def settle(opts: argparse.Namespace) -> argparse.Namespace:
    """Per-mode and --quick defaults for what was not given."""
    quick = opts.quick

    def default(name: str, normal, short) -> None:
        if getattr(opts, name, None) is None:
            setattr(opts, name, short if quick else normal)

    default("timeout", 120.0, 30.0)
    default("drain", 120.0, 30.0)
    if opts.mode == "sweep":
        default("mix", "mixed", "mixed")
        default("levels", [1, 4, 16, 64], [1, 4])
        default("seconds", 30.0, 2.0)
        default("repeats", 5, 2)
        default("repeats_engine", 3, 1)
        default("deadline", 1800.0, 180.0)
    elif opts.mode == "soak":
        default("mix", "mixed", "mixed")
        default("minutes", 10.0, 0.2)
        default("capacity_seconds", 20.0, 3.0)
        default("rss_every", 10.0, 1.0)
        default("deadline", opts.minutes * 60 + opts.capacity_seconds + 2 * opts.drain + 120, opts.minutes * 60 + 90)
    else:
        default("mix", "single-digit-20", "single-digit-20")
        default("before", 15.0, 3.0)
        default("case_seconds", 3.0, 1.0)
        default("loris_seconds", 30.0, 4.0)
        default("deadline", 900.0, 240.0)
    for name in ("timeout", "deadline", "drain"):
        if getattr(opts, name) <= 0:
            raise LoadError(f"--{name} must be > 0")
    return opts


def machine(opts: argparse.Namespace, served: dict) -> dict[str, Any]:
    return {"cpu": cpu_name(), "flags": cpu_flags(), "cores": os.cpu_count(), "threads": opts.threads,
            "model": served.get("model"), "provider": served.get("provider"), "max_rows": served.get("rows_per_call"),
            "queue_rows": opts.queue_rows or "server default"}


def render(mode: str, opts: argparse.Namespace, result: dict, command: str) -> str:
    info = result["machine"]
    lines = [f"# ddpm-serve under load: {mode} on {info['cpu']}", "", f"`{command}`", "",
             f"CPU: {info['cpu']}, {info['cores']} cores; flags: {info['flags']}; threads: {info['threads'] or 'default'}; "
             f"model {info['model']} on {info['provider']}; {info['max_rows']} rows per network call; queue rows: {info['queue_rows']}; "
             f"mix {opts.mix} ({MIXES[opts.mix][0]}).", ""]
    lines += MODES[mode][1](result)
    log = result.get("server_log")
    if log:
        lines += ["", f"Server log: {'no traceback' if not log['tracebacks'] else str(log['tracebacks']) + ' TRACEBACK(S)'}; "
                      f"exit status {log['returncode']}; last line: {log['last_line']}"]
    findings = result.get("findings", [])
    if findings:
        lines += ["", "Findings (answered without a 5xx, but worth a look):", ""] + [f"- {f}" for f in findings]
    problems = result.get("problems", [])
    lines += ["", "Problems found: " + ("none." if not problems else "")] + [f"- {p}" for p in problems]
    return "\n".join(lines) + "\n"


def problems_of(mode: str, result: dict) -> list[str]:
    """What a reader must not miss: 5xx answers, lost or duplicated answers, a failed check."""
    found = []
    if mode == "sweep":
        for level in result["levels"]:
            check = level["check"]
            if not check["clean"]:
                found.append(f"level {level['level']}: lost {check['lost']}, duplicated {check['duplicated']}, wrong {check['mismatched']}, "
                             f"other answers {_counts(check['unexpected'])}; examples {check['examples']}")
    elif mode == "soak":
        check = result["soak"]["check"]
        if not check["clean"]:
            found.append(f"soak: lost {check['lost']}, duplicated {check['duplicated']}, wrong {check['mismatched']}, "
                         f"429 without Retry-After {check['429_without_retry_after']}, other {_counts(check['unexpected'])}; "
                         f"examples {check['examples']}")
        if result["healthz_after"]["status"] != 200:
            found.append(f"/healthz after the soak: {result['healthz_after']['status']}")
    else:
        for row in result["cases"]:
            if not row["passed"]:
                found.append(f"case {row['case']!r}: {row['request']} -> {_counts(row['statuses'])} "
                             f"(expected {', '.join(row['expected'])}, answer max {_fmt(row['answer_max_s'], 3)} s, bound "
                             f"{_fmt(row['bound_s'], 0)} s) {row['details'] or ''} {row['extra'] or ''}".strip())
        if not result["background"]["check"]["clean"]:
            found.append(f"background load: {result['background']['check']}")
        if result["healthz_after"]["status"] != 200:
            found.append(f"/healthz after the cases: {result['healthz_after']['status']}")
    log = result.get("server_log")
    if log and log["tracebacks"]:
        found.append(f"the server log holds {log['tracebacks']} traceback(s): {log['first_traceback']}")
    return found


def findings_of(mode: str, result: dict) -> list[str]:
    """Hostile cases the server survived in a way a reader should know about."""
    if mode != "hostile":
        return []
    found = []
    for row in result["cases"]:
        statuses = row["statuses"]
        if statuses.get("open at the end"):
            found.append(f"{row['case']}: the server closed {sum(statuses.values()) - statuses['open at the end']} of "
                         f"{sum(statuses.values())} connections in {row['seconds']:.0f} s (no deadline for request headers)")
        if row["case"].endswith("MB header") and "422" in statuses:
            found.append(f"{row['case']}: the header was accepted and the body checked (422): no bound on header size")
        if RESET in statuses:
            found.append(f"{row['case']}: the server reset the connection after {row['extra'].get('bytes_sent_before_answer', 0):,} "
                         "bytes; its 413, if sent, was lost to the reset (it closes with unread data, no lingering close), "
                         "so a client streaming a body may see 'connection reset' instead of the 413")
        if row["case"] == "malformed JSON without a token" and "422" in statuses:
            found.append(f"{row['case']}: 422 before 401: the body is checked before the token")
    return found


async def _run(mode: str, opts: argparse.Namespace, target: Target, echo) -> dict:
    return await MODES[mode][0](opts, target, echo)


def run(argv: list[str] | None = None, echo=None) -> tuple[dict, str]:
    """Parse ``argv``, run the mode against a server (started here unless --url), return the result and its markdown."""
    echo = echo or (lambda line: print(line, file=sys.stderr, flush=True))
    opts = settle(parser().parse_args(argv))
    command = "python -m ddpm.benchmarks.serve_load " + " ".join(argv if argv is not None else sys.argv[1:])
    token = None
    if opts.mode == "hostile" and opts.url is None:
        token = secrets.token_urlsafe(24)
    elif opts.url is not None:
        token = opts.token or os.environ.get("DDPM_SERVE_TOKEN")
    server = None
    if opts.url is not None:
        base, pid = loopback_url(opts.url), opts.pid
    else:
        server = ServerProcess(opts, token)
        echo(f"starting ddpm-serve {' '.join(server.args)} (log {server.log_path}) ...")
        base = server.start()
        pid = server.pid
        echo(f"ddpm-serve listening on {base} (pid {pid})")
    target = Target(base, {"authorization": f"Bearer {token}"} if token else {}, opts.timeout, pid, token)
    try:
        result = asyncio.run(_run(opts.mode, opts, target, echo))
    finally:
        if server is not None:
            server.stop()
    result["machine"] = machine(opts, result.get("served", {}))
    result["options"] = {key: (str(value) if isinstance(value, Path) else value) for key, value in vars(opts).items()}
    log_text = server.log_text() if server is not None else (Path(opts.server_log).read_text(errors="replace")
                                                             if opts.server_log and Path(opts.server_log).is_file() else None)
    if log_text is not None:
        lines = log_text.strip().splitlines()
        at = log_text.find("Traceback")
        result["server_log"] = {"tracebacks": log_text.count("Traceback"), "returncode": None if server is None else server.returncode,
                                "last_line": lines[-1] if lines else "", "path": str(server.log_path if server else opts.server_log),
                                "first_traceback": log_text[at:at + 600] if at >= 0 else None}
    result["problems"] = problems_of(opts.mode, result)
    result["findings"] = findings_of(opts.mode, result)
    markdown = render(opts.mode, opts, result, command)
    if opts.out is not None:
        tag = opts.tag or short_cpu_kind()
        opts.out.mkdir(parents=True, exist_ok=True)
        write_bytes(opts.out / f"serve-load-{opts.mode}-{tag}.md", markdown.encode())
        write_bytes(opts.out / f"serve-load-{opts.mode}-{tag}.json", (json.dumps(result, indent=2, default=str) + "\n").encode())
        echo(f"wrote {opts.out / f'serve-load-{opts.mode}-{tag}'}.md and .json")
    return result, markdown


def main(argv: list[str] | None = None) -> None:
    try:
        _, markdown = run(argv)
    except LoadError as exc:
        print(f"serve_load: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        raise SystemExit(130) from None
    print(markdown)


if __name__ == "__main__":
    main()
