"""The load generator's requests and their bookkeeping: pure helpers (percentiles, the loopback guard,
PNG text, Prometheus metrics), the request kinds and mixes, the ledger that accounts for every answer,
the target server, and the closed and open loops that send to it."""

from __future__ import annotations

import asyncio
import itertools
import random
import re
import secrets
import struct
import time
import zlib
from collections import Counter
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from ...runtime.machine import cpu_name
from ..serving import flag_line

LOOPBACK_HOSTS = ("127.0.0.1", "::1", "localhost")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


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
    flags = (flag_line() if flags is None else flags).split()
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


def fmt(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def counts(counts: dict) -> str:
    return ", ".join(f"{key} x{value}" for key, value in counts.items()) or "0"


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
    Kind("consistency2-digit", "consistency", 2, digit=True),  # a few-step student's, its guidance built in
)}
TARGET_KIND = "sde20-digit"  # the single-digit 20-call request of the targets
MIXES: dict[str, tuple[str, tuple[str, ...]]] = {
    "mixed": ("4/9 20-call dpm++2m-sde without a digit, 4/9 the same with a digit (guided), "
              "1/9 100-step ancestral with a digit (unguided)", ("sde20", "sde20-digit") * 4 + ("ancestral100-digit",)),
    "single-digit-20": ("n=1 with a digit (0-9 in turn), guided, 20 dpm++2m-sde calls", ("sde20-digit",)),
    "no-digit-20": ("n=1 without a digit, 20 dpm++2m-sde calls", ("sde20",)),
    "student-2": ("n=1 with a digit (0-9 in turn), 2 consistency calls: few-step students only (--onnx a student)",
                  ("consistency2-digit",)),
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


async def warm_up(target: Target, client, kinds: list[str], hard_deadline: float, warmed: set[str] | None = None) -> None:
    """One request of each kind not in ``warmed`` yet, not counted: the server's first calls set up its session."""
    ledger, warmed = Ledger(), set() if warmed is None else warmed
    for index, name in enumerate(kinds):
        if name not in warmed and time.monotonic() < hard_deadline:
            await post_sample(target, client, KINDS[name], index, ledger)
            warmed.add(name)


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
