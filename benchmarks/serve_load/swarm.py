"""The command's side of a run: ``ddpm-serve`` as a subprocess on 127.0.0.1 (its memory and CPU), plain
HTTP to it (health, warm-up, /metrics), and locust processes running locustfile.py against it."""

from __future__ import annotations

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

from .ledger import KINDS, LoadError, metric_values, rows_per_call

LOCUSTFILE = Path(__file__).with_name("locustfile.py")
LISTENING = re.compile(r"Uvicorn running on http://127\.0\.0\.1:(\d+)")
SERVER_START_S = 300.0  # the server may time this CPU once before it listens
PASSED = ("max_rows", "queue_rows", "threads", "onnx", "model", "precision")  # options handed to ddpm-serve


def environment(token: str | None = None) -> dict[str, str]:
    """This process's environment with ``DDPM_SERVE_TOKEN`` set to ``token`` (there, not on a command
    line that ``ps`` shows), or without it."""
    env = {key: value for key, value in os.environ.items() if key != "DDPM_SERVE_TOKEN"}
    return env | ({"DDPM_SERVE_TOKEN": token} if token else {})


class ServerProcess:
    """``ddpm-serve`` on 127.0.0.1, port 0, as a subprocess without a token; its log in a file."""

    def __init__(self, opts) -> None:
        folder = Path(tempfile.mkdtemp(prefix="serve-load-"))
        self.log_path = Path(opts.server_log) if opts.server_log else folder / "serve.log"
        self.process: subprocess.Popen | None = None
        self.args = ["--host", "127.0.0.1", "--port", "0", "--grace", "5"]
        for name in (name for name in PASSED if getattr(opts, name) is not None):
            self.args += [f"--{name.replace('_', '-')}", str(getattr(opts, name))]

    def start(self) -> str:
        """Start it; its base URL once it listens."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        command = [sys.executable, "-c", "from ddpm.serve.cli import main; main()", *self.args]
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=environment()
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

    try:  # pid None: psutil.Process(None) would be this process
        process = psutil.Process(pid) if pid is not None else None
        return (process.memory_info().rss // 1024, sum(process.cpu_times()[:2])) if process else (None, None)
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

    def http(self, path: str, body: dict | None = None, timeout: float = 10.0) -> tuple[int | None, bytes, float]:
        """GET (or POST ``body`` as JSON) ``path``: the status (None: no answer), the body, the seconds it took."""
        import requests

        start, headers = time.perf_counter(), {"Authorization": f"Bearer {self.token}"} if self.token else {}
        with requests.Session() as session:
            session.trust_env = False  # no proxy from the environment may carry loopback requests elsewhere
            try:
                method = "POST" if body else "GET"
                answer = session.request(method, self.base + path, json=body, timeout=timeout, headers=headers)
                return answer.status_code, answer.content, time.perf_counter() - start
            except requests.RequestException as exc:
                return None, f"{type(exc).__name__}: {exc}".encode(), time.perf_counter() - start

    def health(self) -> tuple[int | None, float, dict]:
        """/healthz: status, seconds to answer, body."""
        status, body, seconds = self.http("/healthz")
        try:
            return (
                status,
                seconds,
                json.loads(body) if status == 200 else {"answer": body.decode(errors="replace")[:200]},
            )
        except ValueError:
            return status, seconds, {}

    def metrics(self) -> dict[str, float]:
        status, body, _ = self.http("/metrics")
        return metric_values(body.decode(errors="replace")) if status == 200 else {}

    def warm_up(self, kinds: set[str], warmed: set[str]) -> None:
        """One request of each kind not warmed yet, not counted: the server's first calls set up its session."""
        for name in sorted(kinds - warmed):
            self.http("/v1/samples", KINDS[name].body(0, self.next_seed), timeout=self.timeout)
            self.next_seed += 1
            warmed.add(name)


@dataclass
class Level:
    """One locust run: ``users`` of locustfile.py's ``user`` class, at most ``count`` requests and
    ``seconds`` s, then ``drain`` s for the answers out; ``extra``: more locustfile options."""

    name: str
    mix: str
    count: int
    seconds: float
    drain: float
    users: int = 1
    user: str = "Caller"
    extra: dict = field(default_factory=dict)

    def command(self, target: Target, facts: Path) -> list[str]:
        """The locust command line: this level's users and bounds, and locustfile.py's own options."""
        flags = {"--host": target.base, "--users": self.users, "--spawn-rate": self.users, "--loglevel": "WARNING"}
        flags |= {"--run-time": f"{math.ceil(self.seconds)}s", "--stop-timeout": math.ceil(self.drain)}
        flags |= {"--exit-code-on-error": 0, "--mix": self.mix, "--count": self.count, "--facts": facts}
        flags |= {"--seed-base": target.next_seed, "--request-timeout": target.timeout, "--drain": self.drain}
        flags |= {f"--{key}": value for key, value in self.extra.items()}
        head = [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless", "--only-summary"]
        return head + [str(part) for pair in flags.items() for part in pair] + [self.user]


def swarm(target: Target, level: Level, deadline: float, every: tuple[float, Callable[[], None]] | None = None) -> dict:
    """Run ``level`` in a locust process of its own, stopped past ``deadline`` (monotonic); ``every``:
    (seconds, callback) called while it runs. The level's figures: digits/s from the first send to the
    last answer (a request is a digit), locust's percentiles of the 200s, rows per network call (the
    /metrics counters' deltas), and the ledger's check."""
    facts, before = Path(tempfile.mkdtemp(prefix="serve-load-")) / "facts.json", target.metrics()
    with open(facts.with_name("locust.log"), "wb") as log:
        out = {"stdin": subprocess.DEVNULL, "stdout": log, "stderr": log, "env": environment(target.token)}
        process = subprocess.Popen(level.command(target, facts), **out)
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
    check, span, ok = found["check"], found["span_s"], found["check"]["ok"]
    target.next_seed += check["sent"]
    figures = {"level": level.name, "mix": level.mix, "concurrency": level.users if level.user == "Caller" else None}
    figures |= {"requests": check["sent"], "ok": ok, "refused_429": check["refused"], "errors": check["unexpected"]}
    figures |= {"seconds": span, "digits_per_s": ok / span if span > 0 else 0.0, "kinds": found["kinds"]}
    figures |= {"p50_s": found["ok"]["p50_s"], "p99_s": found["ok"]["p99_s"], "p99_429_s": found["refused"]["p99_s"]}
    figures |= {"rows_per_call": rows_per_call(before, target.metrics()), "check": check}
    return figures | ({"arrivals": found["arrivals"]} if level.user == "Arrivals" else {})
