"""OUT/log.jsonl: the loss and speed window behind each record, and trimming on resume."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

from ..core.files import atomic_write


class LossWindow:
    """Loss and throughput since the last record of OUT/log.jsonl; skipped steps add images but no loss."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.loss, self.steps, self.images, self.start = 0.0, 0, 0, time.perf_counter()

    def add(self, loss: float, images: int) -> None:
        if math.isfinite(loss):
            self.loss += loss
            self.steps += 1
        self.images += images


def trim_log(path: Path, step: int) -> None:
    """Drop log records past ``step`` (a killed run logged steps that the resumed run repeats)."""
    if not path.exists():
        return
    lines = path.read_text(encoding="utf-8").splitlines()
    kept = []
    for line in lines:
        try:
            if json.loads(line)["step"] <= step:
                kept.append(line)
        except (ValueError, KeyError, TypeError):
            continue
    if len(kept) != len(lines):
        with atomic_write(path) as handle:
            handle.write("".join(f"{line}\n" for line in kept).encode("utf-8"))
