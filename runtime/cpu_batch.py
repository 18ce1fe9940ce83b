"""The CPU batch size for the machine at hand: the per-image time of a few batch sizes, measured
once (a few seconds) and remembered in the user's cache folder.

The best batch differs between CPUs (cache sizes, AVX-512 or not, int8 or fp32 kernels), so a
constant tuned on one machine is wrong on the next. The measurement is keyed by everything that
sets the cost of one network call: the CPU, the thread count, ONNX Runtime's version and the
network's shape and precision (not its weights).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import onnxruntime as ort

from ..core.files import atomic_write

CANDIDATES = (4, 8, 16, 32, 64)
CALL_BUDGET_S = 1.0  # a batch whose one call takes longer ends the search: larger ones only cost more
FALLBACK = 16  # when nothing can be measured


@dataclass(frozen=True)
class BatchChoice:
    batch: int
    per_image_ms: dict[int, float]  # measured per-image time of each batch tried
    cached: bool  # read from the cache rather than measured now


def cpu_name() -> str:
    """The CPU's model name (Linux's /proc/cpuinfo), else what the platform module says."""
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def cache_file() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "ddpm-mnist" / "cpu-batch.json"


def machine_key(session) -> str:
    info = session.info
    network = json.dumps([info.model_config, info.precision, info.image_size, info.image_channels, info.num_classes],
                         sort_keys=True)
    parts = [cpu_name(), str(os.cpu_count()), f"threads={session.threads or 'default'}", ort.__version__,
             hashlib.sha256(network.encode()).hexdigest()[:16]]
    return " | ".join(parts)


def measure(session, candidates: tuple[int, ...] = CANDIDATES, repeats: int = 5) -> dict[int, float]:
    """Per-image milliseconds of one network call at each batch size: the fastest of ``repeats``
    after one warm-up (the least disturbed by whatever else runs)."""
    info, rng = session.info, np.random.default_rng(0)
    middle = info.schedule["timesteps"] // 2  # checked when the metadata was read
    found: dict[int, float] = {}
    for batch in candidates:
        x = rng.standard_normal((batch, info.image_channels, info.image_size, info.image_size), dtype=np.float32)
        t = np.full(batch, middle, dtype=np.int64)
        feeds = session.feeds(x, t)
        session.session.run(None, feeds)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            session.session.run(None, feeds)
            times.append(time.perf_counter() - start)
        found[batch] = min(times) / batch * 1e3
        if min(times) > CALL_BUDGET_S:
            break
    return found


def _read_cache(path: Path) -> dict:
    with contextlib.suppress(OSError, ValueError):
        content = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(content, dict):
            return content
    return {}


def choose(session, on_measure: Callable[[], None] | None = None) -> BatchChoice:
    """The fastest batch per image for ``session`` on this CPU: from the cache, or measured and
    stored there (a cache that cannot be written only means measuring again next time).
    ``on_measure`` is called before a measurement starts."""
    path, key = cache_file(), machine_key(session)
    cache = _read_cache(path)
    entry = cache.get(key)
    if isinstance(entry, dict) and isinstance(entry.get("batch"), int) and entry["batch"] >= 1:
        times = entry.get("per_image_ms") if isinstance(entry.get("per_image_ms"), dict) else {}
        return BatchChoice(entry["batch"], {int(k): float(v) for k, v in times.items() if str(k).isdigit()}, cached=True)
    if on_measure is not None:
        on_measure()
    try:
        times = measure(session)
    except Exception:  # an ONNX Runtime failure here will show, in one line, in the real run
        return BatchChoice(FALLBACK, {}, cached=False)
    best = min(times, key=times.get)
    cache[key] = {"batch": best, "per_image_ms": {str(k): round(v, 4) for k, v in times.items()},
                  "measured": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    with contextlib.suppress(OSError):
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(path) as handle:
            handle.write((json.dumps(cache, indent=2, sort_keys=True) + "\n").encode("utf-8"))
    return BatchChoice(best, times, cached=False)
