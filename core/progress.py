"""A small progress bar on stderr: count, rate, ETA and a free-form status."""

from __future__ import annotations

import sys
import time
from typing import TextIO


def _duration(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60:02d}:{rest % 60:02d}"


class Progress:
    """Redraws one line in place on a terminal; elsewhere prints a line every ``interval`` seconds."""

    def __init__(
        self,
        total: int,
        description: str = "",
        unit: str = "it",
        start: int = 0,
        stream: TextIO | None = None,
        enabled: bool = True,
        interval: float | None = None,
    ) -> None:
        self.total, self.count, self.description, self.unit = total, start, description, unit
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.interval = interval if interval is not None else (0.2 if self.tty else 30.0)
        self._start_time = time.perf_counter()
        self._start_count = start
        self._last_draw = float("-inf")
        self.status = ""

    @property
    def rate(self) -> float:
        elapsed = time.perf_counter() - self._start_time
        return (self.count - self._start_count) / elapsed if elapsed > 0 else 0.0

    def update(self, advance: int = 1, status: str | None = None) -> None:
        self.count += advance
        if status is not None:
            self.status = status
        now = time.perf_counter()
        if self.enabled and (now - self._last_draw >= self.interval or self.count >= self.total):
            self._last_draw = now
            self._draw()

    def line(self) -> str:
        rate = self.rate
        eta = (self.total - self.count) / rate if rate > 0 else float("nan")
        width = 24
        filled = int(width * self.count / self.total) if self.total else width
        bar = "#" * filled + "-" * (width - filled)
        eta_text = _duration(eta) if eta == eta else "--:--"
        parts = [
            f"{self.description} [{bar}] {self.count}/{self.total}",
            f"{rate:.2f} {self.unit}/s",
            f"elapsed {_duration(time.perf_counter() - self._start_time)}",
            f"eta {eta_text}",
        ]
        if self.status:
            parts.append(self.status)
        return "  ".join(parts).strip()

    def _draw(self) -> None:
        if self.tty:
            self.stream.write("\r\x1b[2K" + self.line())
        else:
            self.stream.write(self.line() + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.enabled and self.tty:
            self.stream.write("\n")
            self.stream.flush()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
