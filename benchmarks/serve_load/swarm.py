"""The command's side of a run: ``ddpm-serve`` as a subprocess on 127.0.0.1 (its memory and CPU), plain
HTTP to it (health, warm-up, /metrics), and locust processes running locustfile.py against it."""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .ledger import KINDS, LoadError, metric_values, rows_per_call

LOCUSTFILE = Path(__file__).with_name("locustfile.py")
LISTENING = re.compile(r"Uvicorn running on http://127\.0\.0\.1:(\d+)")
SERVER_START_S = 300.0  # the server may time this CPU once before it listens


class ServerProcess:
    """``ddpm-serve`` on 127.0.0.1, port 0, as a subprocess without a token; its log in a file."""

    def __init__(self, opts: argparse.Namespace) -> None:
        self.log_path = (
            Path(opts.server_log) if opts.server_log else Path(tempfile.mkdtemp(prefix="serve-load-")) / "serve.log"
        )
        self.process: subprocess.Popen | None = None
        self.args = ["--host", "127.0.0.1", "--port", "0", "--grace", "5"]
        for name in ("max_rows", "queue_rows", "threads", "onnx", "model", "precision"):
            self.args += (
                [f"--{name.replace('_', '-')}", str(getattr(opts, name))] if getattr(opts, name) is not None else []
            )

    def start(self) -> str:
        """Start it; its base URL once it listens."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-c", "from ddpm.serve.cli import main; main()", *self.args],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={k: v for k, v in os.environ.items() if k != "DDPM_SERVE_TOKEN"},
            )
        deadline = time.monotonic() + SERVER_START_S
        while not (found := LISTENING.search(self.log_path.read_text(errors="replace"))):
            tail = " | ".join(self.log_path.read_text(errors="replace").strip().splitlines()[-8:])
            if self.process.poll() is not None:
                raise LoadError(f"ddpm-serve ended ({self.process.returncode}) before listening: {tail}")
            if time.monotonic() > deadline:
                self.stop()
                raise LoadError(f"ddpm-serve did not listen within {SERVER_START_S:g} s: {tail}")
            time.sleep(0.1)
        return f"http://127.0.0.1:{found.group(1)}"

    @property
    def pid(self) -> int | None:
        return None if self.process is None else self.process.pid

    def stop(self) -> int | None:
        """SIGTERM (the server drains for its 5 s grace), then a kill past 30 s; its exit status."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        return None if self.process is None else self.process.returncode


def usage(pid: int | None) -> tuple[int | None, float | None]:
    """A process's resident memory (kB) and user + system CPU seconds; None for what cannot be read."""
    import psutil

    if pid is None:  # psutil.Process(None) would be this process
        return None, None
    try:
        process = psutil.Process(pid)
        return process.memory_info().rss // 1024, sum(process.cpu_times()[:2])
    except psutil.Error:
        return None, None


@dataclass
class Target:
    """The server under load; ``next_seed``: the next run's first seed, so that seeds stay unique across runs."""

    base: str
    token: str | None
    timeout: float
    pid: int | None = None
    next_seed: int = field(default_factory=lambda: int.from_bytes(os.urandom(5), "big"))


def http(target: Target, path: str, body: dict | None = None, timeout: float = 10.0) -> tuple[int | None, bytes, float]:
    """GET (or POST ``body`` as JSON) ``path``: the status (None: no answer), the body, the seconds it took."""
    import requests

    start = time.perf_counter()
    with requests.Session() as session:
        session.trust_env = False  # no proxy from the environment may carry loopback requests elsewhere
        try:
            response = session.request(
                "POST" if body else "GET",
                target.base + path,
                json=body,
                timeout=timeout,
                headers={"Authorization": f"Bearer {target.token}"} if target.token else {},
            )
            return response.status_code, response.content, time.perf_counter() - start
        except requests.RequestException as exc:
            return None, f"{type(exc).__name__}: {exc}".encode(), time.perf_counter() - start


def health(target: Target, timeout: float = 10.0) -> tuple[int | None, float, dict]:
    """/healthz: status, seconds to answer, body."""
    status, body, seconds = http(target, "/healthz", timeout=timeout)
    try:
        return status, seconds, json.loads(body) if status == 200 else {"answer": body.decode(errors="replace")[:200]}
    except ValueError:
        return status, seconds, {}


def scrape(target: Target) -> dict[str, float]:
    status, body, _ = http(target, "/metrics")
    return metric_values(body.decode(errors="replace")) if status == 200 else {}


def warm_up(target: Target, kinds: list[str], warmed: set[str]) -> None:
    """One request of each kind not warmed yet, not counted: the server's first calls set up its session."""
    for name in sorted(set(kinds) - warmed):
        http(target, "/v1/samples", KINDS[name].body(0, target.next_seed), timeout=target.timeout)
        target.next_seed += 1
        warmed.add(name)


def swarm(
    target: Target,
    name: str,
    user: str,
    users: int,
    mix: str,
    count: int,
    seconds: float,
    drain: float,
    deadline: float,
    extra: dict[str, Any] | None = None,
    every: tuple[float, Callable[[], None]] | None = None,
) -> dict:
    """Run ``users`` of locustfile.py's ``user`` class in a process of its own for at most ``seconds`` and
    ``count`` requests, then ``drain`` s for the answers out; stopped past ``deadline`` (monotonic).
    ``every``: (seconds, callback) called while it runs. The run's figures: digits/s from the first send
    to the last answer (a request is a digit), locust's percentiles of the 200s, rows per network call
    (the /metrics counters' deltas), and the ledger's check."""
    facts = Path(tempfile.mkdtemp(prefix="serve-load-")) / "facts.json"
    options = {
        "mix": mix,
        "count": count,
        "seed-base": target.next_seed,
        "request-timeout": target.timeout,
        "drain": drain,
        "facts": facts,
        **(extra or {}),
    }
    command = [
        sys.executable,
        "-m",
        "locust",
        "-f",
        str(LOCUSTFILE),
        "--headless",
        "--host",
        target.base,
        "--users",
        str(users),
        "--spawn-rate",
        str(users),
        "--run-time",
        f"{math.ceil(seconds)}s",
        "--stop-timeout",
        str(math.ceil(drain)),
        "--only-summary",
        "--loglevel",
        "WARNING",
        "--exit-code-on-error",
        "0",
        *(part for key, value in options.items() for part in (f"--{key}", str(value))),
        user,
    ]
    env = {key: value for key, value in os.environ.items() if key != "DDPM_SERVE_TOKEN"}
    env.update({"DDPM_SERVE_TOKEN": target.token} if target.token else {})  # not on the command line, where ps shows it
    before = scrape(target)
    with open(facts.with_name("locust.log"), "wb") as log:
        process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env)
        while process.poll() is None:
            if time.monotonic() > deadline:
                process.terminate()  # locust stops its users and still writes its facts; a kill past 15 s
                try:
                    process.wait(15)
                except subprocess.TimeoutExpired:
                    process.kill()
            elif every is not None:
                every[1]()
            try:
                process.wait(every[0] if every else 1.0)
            except subprocess.TimeoutExpired:
                pass
    if process.returncode != 0 or not facts.is_file():
        tail = " | ".join(facts.with_name("locust.log").read_text(errors="replace").strip().splitlines()[-6:])
        raise LoadError(f"locust ended ({process.returncode}) without its facts: {tail}")
    found = json.loads(facts.read_text())
    check, span = found["check"], found["span_s"]
    target.next_seed += check["sent"]
    return {
        "level": name,
        "concurrency": users if user == "Caller" else None,
        "mix": mix,
        "requests": check["sent"],
        "ok": check["ok"],
        "refused_429": check["refused"],
        "errors": check["unexpected"],
        "digits": check["ok"],
        "seconds": span,
        "digits_per_s": check["ok"] / span if span > 0 else 0.0,
        "p50_s": found["ok"]["p50_s"],
        "p99_s": found["ok"]["p99_s"],
        "p99_429_s": found["refused"]["p99_s"],
        "rows_per_call": rows_per_call(before, scrape(target)),
        "kinds": found["kinds"],
        "check": check,
        **({"arrivals": found["arrivals"]} if user == "Arrivals" else {}),
    }
