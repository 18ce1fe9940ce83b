"""Which path samples on a CPU when the precision is ``auto``: a backend (ONNX Runtime or OpenVINO)
and an arithmetic (fp32, bf16, int8), for the file named or the embedded model with its int8 copy.

    # note: which path and why
    session, note, timing = fastest_path(reference, int8_file, provider="auto", threads=None)

No one path is fastest on every CPU: bf16 pays where the CPU has AMX, int8 where it has fast int8
kernels, and ONNX Runtime and OpenVINO differ by CPU. So ``auto`` measures every eligible path at
its own best batch, interleaved, once per machine, and remembers the choice (:mod:`cpu_batch`).
The choice is made from one pass alone: when the remembered one cannot be used (a path is new or
gone, a backend's version changed, the record is of an older format: figures that could be of
different ages, or the backend stored under its former key "engine"), every path is timed again,
together; a cached figure never meets a fresh one.
The first real run holds the chosen path's figure to account (``timing``, see
:func:`cpu_batch.recheck`): far from it, the choice is forgotten and the next run times all again.
A path other than fp32 is eligible only when its ε stays within the int8 export's tolerance of
fp32's on the check digits (:mod:`eps_check`); an int8 copy only when its metadata says it is a
copy of the same network; and it replaces the fp32 reference only when it measures at least
:data:`MARGIN` times faster, so that timing noise never trades exact arithmetic for nothing.
:func:`~ddpm.runtime.pipeline.open_model` opens the reference and calls :func:`fastest_path`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..core.errors import DDPMError
from . import cpu_batch
from .choice import open_session
from .eps_check import TOLERANCE, eps_difference
from .openvino_session import bf16_support, openvino_version
from .session import EpsCalls, UNetSession, read_model_file

BACKENDS = {"onnxruntime": "ONNX Runtime", "openvino": "OpenVINO"}
MARGIN = 1.05  # a path other than the fp32 reference must beat it by this much: less is within timing noise
SAME_NETWORK = (
    "schedule",
    "image_size",
    "image_channels",
    "data_range",
    "prediction",
    "variance",
    "num_classes",
    "noise_at_last_step",
    "model_config",
    "latent",  # a latent model's copies name the same decoder file
)


@dataclass(frozen=True)
class CpuPath:
    """A backend and the arithmetic it runs: the unit ``auto`` chooses among."""

    backend: str  # "onnxruntime" or "openvino"
    precision: str  # "fp32", "bf16" (OpenVINO only) or "int8" (the int8 copy)

    def __str__(self) -> str:
        return f"{BACKENDS[self.backend]} {self.precision}"


def fastest_path(
    reference: EpsCalls,
    int8_file: Path | None,
    provider: str,
    threads: int | None,
    on_measure: Callable[[], None] | None = None,
) -> tuple[EpsCalls, str | None, cpu_batch.Timing | None]:
    """The fastest eligible path per image on this CPU (measured once, cached), why (None: nothing
    to say), and the chosen path's figure for the first real run to check (None: nothing was compared).
    ``reference`` is the fp32 session opened as asked; ``int8_file`` the embedded model's int8 copy,
    None for a named file; ``on_measure`` is called before the CPU is timed."""
    files = {"fp32": reference.path}
    notes = []
    if int8_file is not None:
        int8_file, refusal = int8_copy(reference, int8_file)
        if int8_file is not None:
            files["int8"] = int8_file
        elif refusal:
            notes.append(refusal)
    paths = candidate_paths(provider, files, notes)
    if len(paths) == 1:
        return reference, "; ".join(notes) or None, None
    reference_path = CpuPath(reference.backend, "fp32")
    key = choice_key(reference, paths)
    cached = read_choice(key, paths)
    if cached is not None:
        path, why, timing = cached
        chosen = reference if path == reference_path else _open(path, files, threads)
        if chosen is not None:
            return chosen, "; ".join([*notes, f"{path}: {why}"]), timing
    chosen, why, timing = measure_paths(reference, reference_path, paths, files, threads, on_measure, key)
    return chosen, "; ".join([*notes, why]), timing


def int8_copy(reference: EpsCalls, path: Path) -> tuple[Path | None, str | None]:
    """``path``, the embedded int8 copy, when it is a copy of the running fp32 model; else why not."""
    try:
        info = read_model_file(path).info  # the metadata alone: no backend session for a file that may not run
    except DDPMError as exc:
        return None, f"the int8 copy is not used: {exc}"
    fp32 = reference.info
    differences = [name for name in SAME_NETWORK if getattr(info, name) != getattr(fp32, name)]
    if info.source.get("sha256") != fp32.source.get("sha256"):
        differences.insert(0, "source checkpoint")
    if differences or info.precision != "int8":
        what = ", ".join(differences) if differences else f"precision {info.precision}"
        return None, f"{path.name} is not an int8 copy of {reference.path.name} ({what} differ); fp32 runs"
    return path, None


def candidate_paths(provider: str, files: dict[str, Path], notes: list[str]) -> list[CpuPath]:
    """The paths the provider allows for these files, in the order of preference when times tie."""
    backends = {"cpu": ["onnxruntime"], "openvino": ["openvino"]}.get(provider, ["onnxruntime", "openvino"])
    if "openvino" in backends and openvino_version() is None:
        backends.remove("openvino")
    paths = []
    for backend in backends:
        paths += [CpuPath(backend, precision) for precision in files]
        if backend == "openvino" and "fp32" in files:
            refusal = bf16_support()
            if refusal is None:
                paths.append(CpuPath("openvino", "bf16"))
            elif provider == "openvino":
                notes.append(refusal)
    return paths


def _open(path: CpuPath, files: dict[str, Path], threads: int | None) -> EpsCalls | None:
    """A session on ``path``; None when it cannot be opened (the backend is gone, the file broken)."""
    file = files["int8" if path.precision == "int8" else "fp32"]
    provider = "openvino" if path.backend == "openvino" else "cpu"
    try:
        return open_session(file, provider, bf16=path.precision == "bf16", threads=threads)
    except DDPMError:
        return None


def measure_paths(
    session: EpsCalls,
    reference: CpuPath,
    paths: list[CpuPath],
    files: dict[str, Path],
    threads: int | None,
    on_measure: Callable[[], None] | None,
    key: str,
) -> tuple[EpsCalls, str, cpu_batch.Timing | None]:
    """Open every path beside the reference ``session``, check its ε, time the eligible ones now in one
    interleaved pass (never beside a cached figure), remember the fastest with the pass's figures."""
    if on_measure is not None:
        on_measure()
    opened = {reference: session}
    differences: dict[CpuPath, float] = {}
    for path in paths:
        if path in opened:
            continue
        candidate = _open(path, files, threads)
        if candidate is None:
            continue
        if path.precision != "fp32":
            differences[path] = eps_difference(session, candidate)
            if not differences[path] <= TOLERANCE:
                continue
        opened[path] = candidate
    choices = dict(zip(opened, cpu_batch.time_together(list(opened.values()))))
    times = {path: choice.best_ms for path, choice in choices.items() if choice.best_ms}
    if not times:
        return session, f"{reference}: the CPU could not be timed", None
    fastest = min(times, key=lambda path: (times[path], paths.index(path)))
    baseline = times.get(reference, times[fastest])
    best = fastest if reference not in times or baseline / times[fastest] >= MARGIN else reference
    why = f"{best}: " + reason(
        best,
        str(reference),
        baseline / times[best],
        differences.get(best),
        "measured now",
        {str(path): ms for path, ms in times.items()},
    )
    timing = cpu_batch.Timing(key, str(best), choices[best].batch, times[best], choices[best].measured)
    write_choice(key, best, str(reference), baseline / times[best], differences, times, timing)
    refused = [
        f"{path} (ε {value:.3f} > {TOLERANCE:g})" for path, value in differences.items() if not value <= TOLERANCE
    ]
    if refused:
        why += f"; not eligible: {', '.join(refused)}"
    return opened[best], why, timing


def reason(
    best: CpuPath,
    reference: str,
    ratio: float,
    difference: float | None,
    when: str,
    per_image_ms: dict[str, float] | None = None,
) -> str:
    """Why ``best`` runs, for the first output line. When the reference stays, ``per_image_ms``
    (path name → ms per image, as measured) says how the others compared."""
    if str(best) != reference:
        check = (
            "" if difference is None else f", ε within {difference:.3f} of fp32 (relative RMS, tolerance {TOLERANCE:g})"
        )
        return f"{ratio:.2f}x the speed of {reference} on this CPU ({when}){check}"
    times = per_image_ms or {}
    others = sorted((ms, name) for name, ms in times.items() if name != reference)
    if reference not in times or not others:
        return f"the reference path ({when})"
    (fastest_ms, fastest), base = others[0], times[reference]
    if fastest_ms < base:
        return (
            f"kept ({when}): {fastest} measured {base / fastest_ms:.2f}x, "
            f"under the {MARGIN:g}x a change of arithmetic needs"
        )
    listed = ", ".join(f"{name} {base / ms:.2f}x" for ms, name in others)
    return f"the fastest path on this CPU ({when}; the others: {listed})"


def choice_key(session, paths: list[CpuPath]) -> str:
    """The cache key of a choice: the reference session's machine key and the backends' versions."""
    versions = {"onnxruntime": UNetSession.version, "openvino": openvino_version()}
    offered = ",".join(f"{path.backend}-{versions[path.backend]}-{path.precision}" for path in paths)
    return f"path | {cpu_batch.machine_key(session)} | {hashlib.sha256(offered.encode()).hexdigest()[:16]}"


def read_choice(key: str, paths: list[CpuPath]) -> tuple[CpuPath, str, cpu_batch.Timing] | None:
    """A remembered choice among ``paths``, why, and the chosen path's figure; None when there is none,
    it names a path not offered now (as a record of the former format that stored its backend under
    "engine" does), or it is not one pass's record (the older format, whose figures could be of
    different ages, is timed again as a whole)."""
    entry = cpu_batch.read_cache().get(key)
    if not isinstance(entry, dict) or entry.get("one_pass") is not True:
        return None
    path = CpuPath(str(entry.get("backend")), str(entry.get("precision")))
    ratio, difference, when, versus, batch = (
        entry.get(name) for name in ("ratio", "eps_difference", "measured", "versus", "batch")
    )
    if path not in paths or not _number(ratio) or not isinstance(when, str) or not isinstance(versus, str):
        return None
    if difference is not None and not (_number(difference) and difference <= TOLERANCE):
        return None
    times = entry.get("per_image_ms")
    times = {name: float(ms) for name, ms in times.items() if _number(ms) and ms > 0} if isinstance(times, dict) else {}
    if str(path) not in times or type(batch) is not int or batch < 1:
        return None
    timing = cpu_batch.Timing(key, str(path), batch, times[str(path)], when, isinstance(entry.get("confirmed"), str))
    return path, reason(path, versus, float(ratio), difference, f"cached on {when[:10]}", times), timing


def _number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == value and abs(value) < 1e9


def write_choice(
    key: str,
    best: CpuPath,
    versus: str,
    ratio: float,
    differences: dict[CpuPath, float],
    times: dict[CpuPath, float],
    timing: cpu_batch.Timing,
) -> None:
    """One record of one pass: every path's figure, the chosen path's batch, the pass's one timestamp."""
    entry = {
        "backend": best.backend,
        "precision": best.precision,
        "versus": versus,
        "ratio": round(ratio, 4),
        "eps_difference": None if best not in differences else round(differences[best], 5),
        "per_image_ms": {str(path): round(ms, 4) for path, ms in times.items()},
        "batch": timing.batch,
        "measured": timing.measured,
        "one_pass": True,
    }
    cpu_batch.remember(key, entry)
