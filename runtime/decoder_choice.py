"""Which backend decodes a latent model's samples on a CPU when the precision is ``auto``.

The decoder is a second graph with its own best backend: the arithmetic that pays for the U-Net's
small 8x8 calls need not pay for the decoder's 32x32 (or 64x64) ones, nor the other way round. So,
as :mod:`.precision` does for the U-Net, ``auto`` times every decoder path the provider allows (ONNX
Runtime fp32, ONNX Runtime int8 where the decoder's int8 copy lies beside it and passes its check,
OpenVINO f32, OpenVINO bf16 where the CPU runs it natively and its images pass the decoder's bf16
check), interleaved, once per machine, and remembers the fastest. A path other than
ONNX Runtime fp32 replaces it only when it measures :data:`~.precision.MARGIN` times faster.

    decoder, note = fastest_decoder(ddpm.session, ddpm.info, provider="auto", threads=None)
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable

import numpy as np

from ..core.metadata import ModelInfo
from . import cpu_batch
from .decoder import Decoder, decoder_path, int8_decoder_path
from .openvino_session import bf16_support, openvino_version
from .precision import BACKENDS, MARGIN
from .session import EpsCalls, UNetSession

TIMING_ROWS = 64  # latents per timed call: a batch of finished samples, as the engine decodes them
TIMING_REPEATS = 5  # the fastest of these calls per path, after one warm-up


def candidates(provider: str, int8: bool = False) -> list[tuple[str, str]]:
    """The (backend, precision) paths ``provider`` allows the decoder, ONNX Runtime fp32 first: the
    reference the others must beat; ``int8``: the decoder has an int8 copy beside it."""
    paths = []
    if provider != "openvino":
        paths += [("onnxruntime", "fp32"), ("onnxruntime", "int8")] if int8 else [("onnxruntime", "fp32")]
    if provider in ("auto", "openvino") and openvino_version() is not None:
        paths.append(("openvino", "fp32"))
        if bf16_support() is None:
            paths.append(("openvino", "bf16"))
    return paths


def name(path: tuple[str, str]) -> str:
    backend, precision = path
    return f"{BACKENDS[backend]} {precision}"


def fastest_decoder(
    session: EpsCalls,
    info: ModelInfo,
    provider: str,
    threads: int | None,
    on_measure: Callable[[], None] | None = None,
    opened: Decoder | None = None,
) -> tuple[Decoder, str | None]:
    """The fastest decoder path of ``session``'s latent model on this CPU (cached per machine and
    decoder file) and why (None: only one path is allowed). ``opened``: a decoder of that model already
    open, used again where its path is wanted instead of opening a second one."""
    paths = candidates(provider, int8_decoder_path(decoder_path(session.path, info)).is_file())
    open_path = _opener(session, info, threads, opened)
    if len(paths) == 1:
        return open_path(paths[0]), None
    key = choice_key(session, info, paths)
    entry = cpu_batch.read_cache().get(key)
    cached = _cached_path(entry, paths)
    if cached is not None:
        decoder = open_path(cached)
        return decoder, f"decoder on {decoder_label(decoder)} (cached on {entry['measured'][:10]})"
    if on_measure is not None:
        on_measure()
    decoders = {path: open_path(path) for path in paths}
    # a bf16 or int8 decoder that fell back to fp32 (see Decoder.note) is not a path of its own
    decoders = {path: decoder for path, decoder in decoders.items() if decoder.precision == path[1]}
    times = time_decoders(list(decoders.values()), info)
    reference = paths[0]
    fastest = min(times, key=lambda path: times[path])
    best = fastest if times[reference] / times[fastest] >= MARGIN else reference
    cpu_batch.remember(
        key,
        {
            "backend": best[0],
            "precision": best[1],
            "per_digit_ms": {name(path): round(ms, 4) for path, ms in times.items()},
            "measured": cpu_batch.timestamp(),
        },
    )
    chosen = decoders[best]
    why = f"{times[reference] / times[best]:.2f}x {name(reference)}" if best != reference else "the reference path"
    return chosen, f"decoder on {decoder_label(chosen)}: {why} (measured now)"


def decoder_label(decoder: Decoder) -> str:
    return name((decoder.backend, decoder.precision))


def _opener(
    session: EpsCalls, info: ModelInfo, threads: int | None, opened: Decoder | None
) -> Callable[[tuple[str, str]], Decoder]:
    def open_path(path: tuple[str, str]) -> Decoder:
        backend, precision = path
        if opened is not None and (opened.backend, opened.precision) == path:
            return opened
        return Decoder(session.path, info, threads, backend=backend, precision=precision)

    return open_path


def time_decoders(decoders: list[Decoder], info: ModelInfo) -> dict[tuple[str, str], float]:
    """Milliseconds per digit of each decoder on :data:`TIMING_ROWS` latents: the fastest of
    :data:`TIMING_REPEATS` calls after a warm-up, the decoders' calls interleaved."""
    shape = (TIMING_ROWS, info.image_channels, info.image_size, info.image_size)  # the U-Net's are latents
    z = np.random.default_rng(0).standard_normal(shape, dtype=np.float32)
    for decoder in decoders:
        decoder.decode(z)
    best = [float("inf")] * len(decoders)
    for _ in range(TIMING_REPEATS):
        for index, decoder in enumerate(decoders):
            start = time.perf_counter()
            decoder.decode(z)
            best[index] = min(best[index], time.perf_counter() - start)
    for decoder in decoders:
        decoder.run_seconds, decoder.run_calls = 0.0, 0
    return {(d.backend, d.precision): seconds / TIMING_ROWS * 1e3 for d, seconds in zip(decoders, best)}


def choice_key(session: EpsCalls, info: ModelInfo, paths: list[tuple[str, str]]) -> str:
    """This CPU at this thread count, the decoder file, and the backends' versions."""
    versions = {"onnxruntime": UNetSession.version, "openvino": openvino_version()}
    offered = ",".join(f"{backend}-{versions[backend]}-{precision}" for backend, precision in paths)
    machine = " | ".join(cpu_batch.machine_key(session).split(" | ")[:3])
    digest = hashlib.sha256(offered.encode()).hexdigest()[:16]
    return f"decoder | {machine} | {info.latent['decoder_sha256'][:16]} | {digest}"


def _cached_path(entry: object, paths: list[tuple[str, str]]) -> tuple[str, str] | None:
    """The remembered path when it is one offered now, else None (timed again)."""
    if not isinstance(entry, dict) or not isinstance(entry.get("measured"), str):
        return None
    path = (entry.get("backend"), entry.get("precision"))
    return path if path in paths else None
