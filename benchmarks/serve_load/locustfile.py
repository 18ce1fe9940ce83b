"""The load, as locust users. Locust patches the standard library with gevent when imported, so this
file runs only in a locust process of its own, started by ``python -m ddpm.benchmarks.serve_load``
(by hand: ``locust -f locustfile.py --host http://127.0.0.1:8000 --mix mixed Caller``).

``Caller`` is a closed loop (each user sends its next request when its last one ends, after a 429
Retry-After, at most 1 s, later), ended after ``--count`` requests or at --run-time. ``Arrivals`` is
an open loop: Poisson arrivals at ``--rate`` per second for ``--seconds`` whatever the server
answers, at most ``--max-outstanding`` out (an arrival beyond is counted, not sent), then up to
``--drain`` s for the last answers. Locust keeps the latencies: a 200 under its request kind, a 429
as "429", the rest as "error" failures. Each request has its own seed, which a Ledger checks its
answer against; its check and locust's percentiles go to ``--facts`` as JSON at the end."""

from __future__ import annotations

import io
import json
import os
import random
import time

import gevent
import locust.stats
from gevent.pool import Pool
from locust import FastHttpUser, events, task
from locust.stats import StatsEntry
from PIL import Image, UnidentifiedImageError

from ddpm.benchmarks.serve_load.ledger import Ledger, mix_kind

LEDGER, HEADERS = Ledger(), {}
RUN = {"next": 0, "first_send": None, "last_answer": None, "quitting": False}
ARRIVALS = {"arrivals_sent": 0, "skipped_at_client_cap": 0, "arrival_seconds": None}
OPTIONS = {  # this file's own command-line options: their types and defaults
    "--mix": (str, "mixed"),
    "--count": (int, 1_000_000),
    "--seed-base": (int, 0),
    "--request-timeout": (float, 120.0),
    "--rate": (float, 1.0),
    "--seconds": (float, 60.0),
    "--drain": (float, 30.0),
    "--max-outstanding": (int, 512),
    "--facts": (str, ""),
}


def three_digits(ms: float) -> int:
    """Response times kept to 3 significant digits (locust keeps 2: 11.82 s would read 12 s)."""
    return round(ms) if ms < 1000 else int(round(ms, -1)) if ms < 10_000 else int(round(ms, -2))


locust.stats.bucket_response_time = three_digits  # locust's documented hook for its histogram buckets


@events.init_command_line_parser.add_listener
def options(parser) -> None:
    for name, (kind, default) in OPTIONS.items():
        parser.add_argument(name, type=kind, default=default)


@events.init.add_listener
def configure(environment, **_) -> None:
    opts, token = environment.parsed_options, os.environ.get("DDPM_SERVE_TOKEN")
    for user in (Caller, Arrivals):
        user.network_timeout = user.connection_timeout = opts.request_timeout
    Arrivals.concurrency = opts.max_outstanding + 1
    HEADERS.update({"Authorization": f"Bearer {token}"} if token else {})


def seed_of(text: str | None) -> int | None:
    return int(text) if text and text.isdigit() else None


def png_facts(response, header) -> dict:
    """What a 200 says of its seed: the ``X-DDPM-Seed`` header, and the PNG's own ``ddpm.seed`` text."""
    try:
        image = Image.open(io.BytesIO(response.content or b""))
        text, is_png = image.text, image.format == "PNG" and (header("content-type") or "").startswith("image/png")
    except (UnidentifiedImageError, OSError, SyntaxError):
        text, is_png = {}, False
    return {"header_seed": seed_of(header("x-ddpm-seed")), "png_seed": seed_of(text.get("ddpm.seed")), "is_png": is_png}


def post(user: FastHttpUser, index: int) -> float:
    """One sampling request, its answer in the ledger and locust's stats; returns the caller's pause."""
    opts = user.environment.parsed_options
    kind, seed, pause = mix_kind(opts.mix, index), opts.seed_base + index, 0.0
    LEDGER.send(seed)
    RUN["first_send"] = RUN["first_send"] or time.perf_counter()
    body = kind.body(index, seed)
    with user.client.post("/v1/samples", json=body, headers=HEADERS, name=kind.name, catch_response=True) as answer:
        status, header = answer.status_code, answer.headers.get if answer.headers else lambda _: None
        if status == 200:
            LEDGER.answer(seed, 200, **png_facts(answer, header))
            answer.success()
        elif status == 429:
            LEDGER.answer(seed, 429, retry_after=header("retry-after"))
            pause = min(float(seed_of(header("retry-after")) or 1), 1.0)
            answer.request_meta["name"] = "429"
            answer.success()
        else:
            error = getattr(answer, "error", None)
            why = (
                {"detail": (answer.text or "")[:200]} if status else {"error": f"{type(error).__name__}: {error}"[:200]}
            )
            LEDGER.answer(seed, status or None, **why)
            answer.request_meta["name"] = "error"
            answer.failure(str(status or type(error).__name__))
    RUN["last_answer"] = time.perf_counter()
    return pause


def quit_once(environment) -> None:
    """End the run; the runner lets the other users finish their request (--stop-timeout)."""
    if not RUN["quitting"]:
        RUN["quitting"] = True
        gevent.spawn(environment.runner.quit)


class Caller(FastHttpUser):
    pause = 0.0

    def wait_time(self) -> float:
        return self.pause

    @task
    def call(self) -> None:
        index, RUN["next"] = RUN["next"], RUN["next"] + 1
        if index >= self.environment.parsed_options.count:
            self.pause = 1.0  # idle until the runner stops this user
            return quit_once(self.environment)
        self.pause = post(self, index)


class Arrivals(FastHttpUser):
    fixed_count = 1

    def on_start(self) -> None:
        self.rng, self.began = random.Random(0), time.monotonic()
        self.out = Pool(self.environment.parsed_options.max_outstanding)

    def wait_time(self) -> float:
        return 1.0 if RUN["quitting"] else self.rng.expovariate(self.environment.parsed_options.rate)

    @task
    def arrive(self) -> None:
        opts = self.environment.parsed_options
        if time.monotonic() - self.began >= opts.seconds or ARRIVALS["arrivals_sent"] >= opts.count:
            ARRIVALS["arrival_seconds"] = ARRIVALS["arrival_seconds"] or time.monotonic() - self.began
            self.out.join(timeout=opts.drain)
            return quit_once(self.environment)
        if self.out.full():
            ARRIVALS["skipped_at_client_cap"] += 1
            return
        self.out.spawn(post, self, ARRIVALS["arrivals_sent"])
        ARRIVALS["arrivals_sent"] += 1


def figures(entry: StatsEntry | None) -> dict:
    """Locust's count and percentiles of a stats entry, in seconds (None without requests)."""
    count = entry.num_requests if entry is not None else 0
    percentile = lambda q: entry.get_response_time_percentile(q) / 1000 if count else None  # noqa: E731
    return {"requests": count, "p50_s": percentile(0.5), "p99_s": percentile(0.99)}


@events.test_stop.add_listener
def write_facts(environment, **_) -> None:
    stats, facts_path = environment.stats, environment.parsed_options.facts
    kinds = {name: entry for (name, _), entry in stats.entries.items() if name not in ("429", "error")}
    ok = StatsEntry(stats, "200", "POST")
    for entry in kinds.values():
        ok.extend(entry)
    span = RUN["last_answer"] - RUN["first_send"] if RUN["first_send"] and RUN["last_answer"] else 0.0
    facts = {
        "check": LEDGER.check(),
        "span_s": span,
        "ok": figures(ok),
        "refused": figures(stats.entries.get(("429", "POST"))),
        "kinds": {name: figures(entry) for name, entry in sorted(kinds.items())},
        "arrivals": ARRIVALS,
    }
    if facts_path:
        with open(facts_path, "w") as file:
            json.dump(facts, file)
