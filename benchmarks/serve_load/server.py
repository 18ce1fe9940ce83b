"""The server under load: ``ddpm-serve`` started as a subprocess, and what /proc says of a process."""

from __future__ import annotations

import argparse
import os
import re
import resource
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .client import LoadError

LISTENING = re.compile(r"Uvicorn running on http://127\.0\.0\.1:(\d+)")
SERVER_START_S = 300.0  # the server may time this CPU once before it listens


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
