"""The CPU batch size for the machine at hand: the per-image time of a few batch sizes, measured
once (seconds to a minute) and remembered in the user's cache folder.

The best batch differs between CPUs (cache sizes, AVX-512 or not, int8 or fp32 kernels), so a
constant tuned on one machine is wrong on the next. The measurement is keyed by everything that
sets the cost of one network call: the CPU, the thread count, the backend (ONNX Runtime or OpenVINO)
and its version, the arithmetic it runs (fp32, bf16, int8) and the network's shape (not its weights).

Timings that are compared with each other come from one interleaved pass (:func:`time_together`):
whenever one of them is timed, all are, so that a figure taken while other jobs shared the cores is
never held against one taken on a quiet machine.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import stat
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .machine import cpu_name

CANDIDATES = (4, 8, 16, 32, 64)
RECHECK_RATIO = 1.5  # a real run this many times slower or faster than its timing means timing again
RECHECK_CALLS = 10  # a run of fewer calls says little: its first call, at a new shape, costs several
CALL_BUDGET_S = 1.0  # a batch whose one call takes longer ends the search: larger ones only cost more
FALLBACK = 16  # when nothing can be measured
MAX_CACHE_BYTES = 1 << 20  # thousands of entries; anything larger is not this cache


@dataclass(frozen=True)
class BatchChoice:
    batch: int
    per_image_ms: dict[int, float]  # measured per-image time of each batch tried
    cached: bool  # read from the cache rather than measured now
    measured: str = ""  # when it was measured (UTC, ISO 8601)
    stored: bool = False  # written to the cache (a measurement that could not be is taken again next time)
    note: str = ""  # what was odd about the cache file, when something was
    confirmed: bool = False  # a real run has agreed with the measurement (see :func:`recheck`)

    @property
    def best_ms(self) -> float | None:
        """The per-image time at the chosen batch, None when nothing was measured."""
        return min(self.per_image_ms.values()) if self.per_image_ms else None


@dataclass(frozen=True)
class Timing:
    """A cached figure that the first real run holds to account (see :func:`recheck`): the cache entry
    under ``key`` says that one call of ``batch`` rows of the session that runs costs ``per_image_ms``
    per image; ``figure`` names it in the entry's own ``per_image_ms``."""

    key: str
    figure: str
    batch: int
    per_image_ms: float
    measured: str  # the stamp of the pass that timed it; a different stamp means timed again since
    confirmed: bool = False


def timestamp() -> str:
    """Now, in UTC, ISO 8601 to the second: the one stamp of a pass, and of a run's confirmation."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def cache_file() -> Path:
    """$XDG_CACHE_HOME/ddpm-mnist/cpu-batch.json; a relative XDG_CACHE_HOME is ignored, as the XDG
    spec says, for ~/.cache."""
    base = os.environ.get("XDG_CACHE_HOME", "")
    return (Path(base) if os.path.isabs(base) else Path.home() / ".cache") / "ddpm-mnist" / "cpu-batch.json"


def machine_key(session) -> str:
    info = session.info
    network = json.dumps(
        [info.model_config, info.precision, info.image_size, info.image_channels, info.num_classes], sort_keys=True
    )
    parts = [
        cpu_name(),
        str(os.cpu_count()),
        f"threads={session.threads or 'default'}",
        f"{session.backend} {session.version}",
        session.precision,
        hashlib.sha256(network.encode()).hexdigest()[:16],
    ]
    return " | ".join(parts)


def measure_together(
    sessions: list, candidates: tuple[int, ...] = CANDIDATES, repeats: int = 5
) -> list[dict[int, float]]:
    """Per-image milliseconds of one network call of each session at each batch size: the fastest
    of ``repeats`` after one warm-up, the sessions' calls interleaved, so that whatever else runs on
    the machine disturbs each of them alike and the minimum is the least disturbed call."""
    rng = np.random.default_rng(0)
    found: list[dict[int, float]] = [{} for _ in sessions]
    active = list(range(len(sessions)))
    for batch in candidates:
        calls = {index: _call(sessions[index], batch, rng) for index in active}
        for call in calls.values():
            call()  # warm-up: the first call at a new shape plans and allocates
        best = {index: float("inf") for index in active}
        for _ in range(repeats):
            for index, call in calls.items():
                start = time.perf_counter()
                call()
                best[index] = min(best[index], time.perf_counter() - start)
        for index, seconds in best.items():
            found[index][batch] = seconds / batch * 1e3
        active = [index for index in active if best[index] <= CALL_BUDGET_S]
        if not active:
            break
    for session in sessions:
        session.run_seconds, session.run_calls, session.run_rows = 0.0, 0, 0
    return found


def _call(session, batch: int, rng: np.random.Generator) -> Callable[[], object]:
    """One network call of ``session`` on ``batch`` noisy inputs at the middle timestep."""
    info = session.info
    middle = info.schedule["timesteps"] // 2  # checked when the metadata was read
    x = rng.standard_normal((batch, info.image_channels, info.image_size, info.image_size), dtype=np.float32)
    feeds = session.feeds(x, np.full(batch, middle, dtype=np.int64))
    return lambda: session.run(session.output_name, feeds)


def read_cache(path: Path | None = None) -> dict:
    """The cache's entries; {} when there is none or it is anything odd (see :func:`read_cache_checked`)."""
    return read_cache_checked(path)[0]


def read_cache_checked(path: Path | None = None) -> tuple[dict, str | None]:
    """The cache's entries, and what is wrong with the file when something is (None: nothing, or no
    file). It is opened without following a link and without blocking (a FIFO there), and read up
    to :data:`MAX_CACHE_BYTES`; entries that are not JSON objects are dropped."""
    path = path or cache_file()
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0))
    except FileNotFoundError:
        return {}, None
    except OSError as exc:
        return {}, "it is a link" if os.path.islink(path) else (exc.strerror or "it cannot be opened")
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return {}, "it is not a regular file"
        data = os.read(fd, MAX_CACHE_BYTES + 1)
    except OSError as exc:
        return {}, exc.strerror or "it cannot be read"
    finally:
        os.close(fd)
    if len(data) > MAX_CACHE_BYTES:
        return {}, f"it is larger than {MAX_CACHE_BYTES >> 20} MiB"
    try:
        content = json.loads(data.decode("utf-8"), parse_constant=_no_constant)
    except (UnicodeDecodeError, ValueError):
        return {}, "it is not JSON"
    if not isinstance(content, dict):
        return {}, "it is not a JSON object"
    return {key: entry for key, entry in content.items() if isinstance(entry, dict)}, None


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not a measurement")


def remember(key: str, entry: dict) -> bool:
    """Add ``entry`` under ``key``, merged with what other processes stored meanwhile (see
    :func:`_update`). False when the cache cannot be written (then the next run measures again)."""
    return _update(lambda cache: {**cache, key: entry}, {key: entry})


def forget(drop: Callable[[str], bool]) -> bool:
    """Remove the entries whose key ``drop`` selects, keeping what other processes stored meanwhile."""
    return _update(lambda cache: {key: entry for key, entry in cache.items() if not drop(key)}, {})


def _update(change: Callable[[dict], dict], alone: dict) -> bool:
    """Rewrite the cache as ``change`` makes it from its current entries: under a lock, written to a
    new file renamed over the old (so a link there is replaced, never written through). ``alone`` is
    written instead when the result would outgrow :data:`MAX_CACHE_BYTES` (other machines' entries
    go). False when the cache cannot be written."""
    path = cache_file()
    try:
        directory = path.parent
        directory.mkdir(parents=True, exist_ok=True)
        if directory.is_symlink() or not directory.is_dir():
            return False
        with _locked(directory / (path.name + ".lock")):
            cache = change(read_cache(path))
            fd, temporary = tempfile.mkstemp(prefix=".cpu-batch-", suffix=".tmp", dir=directory)
            try:
                data = (json.dumps(cache, indent=2, sort_keys=True) + "\n").encode("utf-8")
                if len(data) > MAX_CACHE_BYTES:
                    data = (json.dumps(alone, indent=2) + "\n").encode("utf-8")
                with os.fdopen(fd, "wb") as handle:
                    handle.write(data)
                os.replace(temporary, path)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(temporary)
                raise
        return True
    except OSError:
        return False


@contextlib.contextmanager
def _locked(lock_path: Path):
    """An exclusive lock on ``lock_path`` (a regular file; never a link), where the system has flock."""
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0), 0o600)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(f"{lock_path} is not a regular file")
        try:
            import fcntl
        except ImportError:  # Windows: the rename alone keeps the file whole
            yield
            return
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def choose(session, on_measure: Callable[[], None] | None = None) -> BatchChoice:
    """The fastest batch per image for ``session`` on this CPU (see :func:`choose_together`)."""
    return choose_together([session], on_measure)[0]


def choose_together(sessions: list, on_measure: Callable[[], None] | None = None) -> list[BatchChoice]:
    """The fastest batch per image for each session on this CPU: from the cache when every session has
    an entry there and all come from one pass, else all of them timed again together
    (:func:`time_together`), so that a cached figure never stands beside a fresh one."""
    cache, problem = read_cache_checked()
    choices = [_cached(cache.get(machine_key(session))) for session in sessions]
    if all(choice is not None for choice in choices) and len({choice.measured for choice in choices}) == 1:
        return choices
    return time_together(sessions, on_measure, f"ignored {cache_file()}: {problem}" if problem else "")


def time_together(sessions: list, on_measure: Callable[[], None] | None = None, note: str = "") -> list[BatchChoice]:
    """Every session timed now, in one interleaved pass (:func:`measure_together`), each one's fastest
    batch stored under its own key with the pass's one timestamp; a cache that cannot be written only
    means timing again next time. ``on_measure`` is called before the pass starts."""
    if on_measure is not None:
        on_measure()
    try:
        measured = measure_together(sessions)
    except Exception:  # a backend's failure here will show, in one line, in the real run
        measured = [{} for _ in sessions]
    stamp = timestamp()
    choices = []
    for session, times in zip(sessions, measured):
        if not times:
            choices.append(BatchChoice(FALLBACK, {}, cached=False, note=note))
            continue
        best = min(times, key=times.get)
        stored = remember(
            machine_key(session),
            {"batch": best, "per_image_ms": {str(k): round(v, 4) for k, v in times.items()}, "measured": stamp},
        )
        choices.append(BatchChoice(best, times, cached=False, measured=stamp, stored=stored, note=note))
    return choices


def _cached(entry: dict | None) -> BatchChoice | None:
    """A cache entry as a choice, None unless it is a well-formed one: a batch among those measured,
    positive finite times keyed by ASCII batch sizes, the time it was measured."""
    if entry is None:
        return None
    batch, times, stamp = entry.get("batch"), entry.get("per_image_ms"), entry.get("measured")
    if not isinstance(times, dict) or not isinstance(stamp, str) or type(batch) is not int:
        return None
    measured = {}
    for size, ms in times.items():
        if not (size.isascii() and size.isdigit()) or type(ms) not in (int, float) or not 0 < ms < 1e9:
            return None
        measured[int(size)] = float(ms)
    if batch not in measured:
        return None
    return BatchChoice(batch, measured, cached=True, measured=stamp, confirmed=isinstance(entry.get("confirmed"), str))


def recheck(session, choice: BatchChoice, path: Timing | None = None) -> str | None:
    """Hold the CPU timings behind ``choice`` and ``path`` (the backend choice's figure of the path
    that ran, where ``auto`` chose it) against the run that ``session`` has just made on them.

    A timing taken on a busy machine (or a run on one) is not repeated as fact: when the run's own
    time per image and a timing at the same batch are more than :data:`RECHECK_RATIO` apart, every
    timing of this CPU at this thread count is forgotten (batches and backend choices alike), so that
    the next run times them again, all together; the note returned says so. When they agree, the
    entries are marked confirmed and not checked again. Only runs of :data:`RECHECK_CALLS` calls or
    more, each of a timing's batch, are compared with it.

    One test serves both: a backend choice says the path that runs is ``ratio`` = other_ms / timed_ms
    times as fast as another, and the run says other_ms / run_ms; the two ratios stand apart by
    run_ms / timed_ms, the same quotient the batch's timing is held to.
    """
    rows, calls = getattr(session, "run_rows", 0), getattr(session, "run_calls", 0)
    if calls < RECHECK_CALLS or not session.run_seconds:
        return None
    timings = [
        timing
        for timing in (_timing(session, choice), path)
        if timing is not None and not timing.confirmed and rows == calls * timing.batch
    ]
    if not timings:
        return None
    run_ms = session.run_seconds / rows * 1e3
    apart = {timing: max(run_ms / timing.per_image_ms, timing.per_image_ms / run_ms) for timing in timings}
    worst = max(timings, key=apart.get)
    if apart[worst] <= RECHECK_RATIO:
        stamp = timestamp()

        def confirm(cache: dict) -> dict:
            for timing in timings:
                entry = cache.get(timing.key)
                if _same_timing(entry, timing):  # not timed again meanwhile
                    cache = {**cache, timing.key: {**entry, "confirmed": stamp}}
            return cache

        _update(confirm, {})
        return None
    prefix = _machine_prefix(session)
    forget(lambda name: name.removeprefix("path | ").startswith(prefix))
    return (
        f"this run took {run_ms:.2f} ms per image at batch {worst.batch}, the CPU's timing {worst.per_image_ms:.2f} ms "
        f"({apart[worst]:.1f}x apart: was the machine busy?); the next run times this CPU again"
    )


def _timing(session, choice: BatchChoice) -> Timing | None:
    """The batch entry's figure at the chosen batch, None when nothing was measured."""
    if choice.batch not in choice.per_image_ms:
        return None
    return Timing(
        machine_key(session),
        str(choice.batch),
        choice.batch,
        choice.per_image_ms[choice.batch],
        choice.measured,
        choice.confirmed,
    )


def _same_timing(entry: dict | None, timing: Timing) -> bool:
    """Whether the cache entry still holds ``timing``'s figure from the same pass, as stored (rounded)."""
    if entry is None or entry.get("measured") != timing.measured:
        return False
    figures = entry.get("per_image_ms")
    return isinstance(figures, dict) and figures.get(timing.figure) == round(timing.per_image_ms, 4)


def _machine_prefix(session) -> str:
    """The start of every cache key of this CPU at this thread count, whatever the backend and model."""
    return " | ".join(machine_key(session).split(" | ")[:3]) + " | "
