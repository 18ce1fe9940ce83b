"""A latent model's decoder: the file its U-Net names, checked against that U-Net, turning the latents a
sampler finishes with into images (one call per batch of finished samples, and per kept frame).

The U-Net's metadata names the decoder by file name (beside the U-Net) and SHA-256; a decoder that is
missing, another file, another autoencoder's, a U-Net, or one whose images are not finite is refused in
one line before anything is sampled.

Where the precision is pinned, the decoder runs beside its U-Net (:func:`decoder_backend`): on OpenVINO
beside an OpenVINO U-Net, in bf16 beside a bf16 one, its int8 copy (``NAME.decoder.int8.onnx``, made
by ``ddpm-export --int8``) beside an int8 U-Net, else on ONNX Runtime's CPU provider in fp32. Under
``auto`` it has a timed choice of its own (:mod:`.decoder_choice`). A bf16 decoder is used only while
its images stay within :data:`BF16_TOLERANCE` of fp32's on the check latents, an int8 copy only when it
was quantized from this decoder file and its images stay within
:data:`~ddpm.core.variant.DECODER_INT8_TOLERANCE` of fp32's on average; otherwise the decoder runs in
fp32 and says why in ``note``.
"""

from __future__ import annotations

import hashlib
import threading
import time
from pathlib import Path

import numpy as np

from ..core.errors import DDPMError, summary
from ..core.files import input_problem
from ..core.metadata import DecoderInfo, ModelInfo, int8_decoder_source
from ..core.variant import DECODER_INT8_TOLERANCE, Variant, grey_level_difference
from .onnx_check import read_outline
from .openvino_session import OPENVINO_PROVIDER, openvino_module
from .session import CPU_PROVIDER, MAX_MODEL_BYTES, EpsCalls, session_options

BF16_TOLERANCE = 4.0 / 127.5  # largest |bf16 − fp32| pixel allowed, in the [-1, 1] data range: 4 grey levels
CHECK_LATENTS = 16  # standard-normal latents, seed 0, on which a bf16 decoder is compared with fp32


def decoder_backend(session: EpsCalls) -> tuple[str, str]:
    """The (backend, precision) a latent U-Net's decoder runs on beside ``session``: OpenVINO beside
    OpenVINO, at bf16 beside bf16 and fp32 beside anything else; ONNX Runtime on the CPU beside every
    ONNX Runtime session, a GPU one included, in int8 beside an int8 U-Net and fp32 otherwise."""
    if session.backend == "openvino":
        return "openvino", "bf16" if session.precision == "bf16" else "fp32"
    return "onnxruntime", "int8" if session.precision == "int8" else "fp32"


def int8_decoder_path(decoder: Path) -> Path:
    """Where a decoder's int8 copy lies: beside it, tagged as the U-Net's int8 copy is."""
    return decoder.with_name(Variant("int8").file_name(decoder.name))


def decoder_path(model_path: Path, info: ModelInfo) -> Path:
    """Where a latent U-Net's decoder lies: beside it, under the name its metadata gives."""
    return model_path.parent / info.latent["decoder_file"]


def read_decoder_file(path: Path, unet: ModelInfo, unet_path: Path) -> tuple[bytes, DecoderInfo]:
    """The decoder's bytes and metadata, checked to be the one ``unet`` was exported with."""
    problem = input_problem(path)
    if problem:
        raise DDPMError(f"the decoder of {unet_path.name}, {path}, {problem}")
    if path.stat().st_size > MAX_MODEL_BYTES:
        raise DDPMError(f"decoder {path} is larger than any single-file ONNX model can be")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DDPMError(f"cannot read decoder {path}: {exc.strerror or exc}") from None
    info = DecoderInfo.from_metadata(read_outline(data, str(path)).metadata, str(path))
    latent = unet.latent
    if info.autoencoder_sha256 != latent["autoencoder_sha256"]:
        raise DDPMError(
            f"decoder {path} belongs to another autoencoder ({info.autoencoder_sha256[:12]}) than "
            f"{unet_path.name} ({latent['autoencoder_sha256'][:12]})"
        )
    found = hashlib.sha256(data).hexdigest()
    if found != latent["decoder_sha256"]:
        raise DDPMError(
            f"decoder {path} is not the file {unet_path.name} was exported with "
            f"(sha256 {found[:12]}, expected {latent['decoder_sha256'][:12]}); export the model again"
        )
    shapes = (
        (info.latent_channels, unet.image_channels),
        (info.latent_size, unet.image_size),
        (info.image_size, latent["image_size"]),
        (info.image_channels, latent["image_channels"]),
    )
    if any(mine != theirs for mine, theirs in shapes) or info.data_range != unet.data_range:
        raise DDPMError(f"decoder {path} does not fit {unet_path.name}: its latents, images or data range differ")
    return data, info


class Decoder:
    """Scaled latents [B, L, h, w] → float32 images [B, C, H, W] in the model's data range, on the CPU
    (the decoder runs once per sample, the U-Net once per step).

    ``backend`` "onnxruntime" or "openvino" and ``precision`` "fp32", "bf16" (OpenVINO only) or "int8"
    (ONNX Runtime only), as :func:`decoder_backend` gives them; ``provider`` says what runs, ``note`` why
    bf16 or int8 was declined (else None).
    """

    def __init__(
        self,
        unet_path: Path,
        unet: ModelInfo,
        threads: int | None = None,
        max_rows: int = 256,
        *,
        backend: str = "onnxruntime",
        precision: str = "fp32",
    ) -> None:
        self.path = decoder_path(unet_path, unet)
        data, self.info = read_decoder_file(self.path, unet, unet_path)
        self.sha256 = unet.latent["decoder_sha256"]  # read_decoder_file found the file's own hash equal to it
        self.max_rows = max_rows
        self.note: str | None = None
        self.run_seconds = 0.0
        self.run_calls = 0
        self._open(data, backend, precision, threads)
        self._check_finite()
        if self.precision == "bf16":
            self._check_bf16(data, threads)
        if self.precision == "int8":
            self._check_int8(data, threads)

    def _open(self, data: bytes, backend: str, precision: str, threads: int | None) -> None:
        if backend == "openvino":
            self._run = _OpenVINORunner(data, self.path, precision, threads)
            self.provider = f"{OPENVINO_PROVIDER} {precision}"
        elif precision == "int8":
            copy = self._int8_copy(data)
            if copy is None:
                return self._open(data, backend, "fp32", threads)
            self._run = _OnnxRuntimeRunner(copy, int8_decoder_path(self.path), threads)
            self.provider = f"{CPU_PROVIDER} int8"
        else:
            self._run = _OnnxRuntimeRunner(data, self.path, threads)
            self.provider = CPU_PROVIDER
        self.session = self._run.session  # the backend's own session (ONNX Runtime) or compiled model (OpenVINO)
        self.backend, self.precision = backend, precision

    def _check_finite(self) -> None:
        """A decoder with broken weights (NaN, infinite) draws no digit: refuse it before sampling."""
        info = self.info
        self.decode(np.zeros((1, info.latent_channels, info.latent_size, info.latent_size), np.float32))

    def _check_latents(self) -> np.ndarray:
        """The latents a bf16 decoder or an int8 copy is compared with fp32 on: standard normal, seed 0."""
        info = self.info
        shape = (CHECK_LATENTS, info.latent_channels, info.latent_size, info.latent_size)
        return np.random.default_rng(0).standard_normal(shape, dtype=np.float32)

    def _check_bf16(self, data: bytes, threads: int | None) -> None:
        """bf16 images against fp32's on the check latents; too far apart, the decoder runs in fp32."""
        z = self._check_latents()
        exact = _OpenVINORunner(data, self.path, "fp32", threads)(z)
        difference = float(np.abs(self._run(z) - exact).max())
        if not difference <= BF16_TOLERANCE:
            self.note = (
                f"the decoder runs in fp32: in bf16 its images differ from fp32's by up to {difference:.3f} "
                f"(tolerance {BF16_TOLERANCE:.3f})"
            )
            self._open(data, "openvino", "fp32", threads)

    def _int8_copy(self, data: bytes) -> bytes | None:
        """The int8 copy's bytes when one lies beside this decoder and was quantized from it; else None,
        with ``note`` saying why."""
        path = int8_decoder_path(self.path)
        if not path.is_file():
            self.note = f"the decoder runs in fp32: no int8 copy of it ({path.name}) lies beside it"
            return None
        try:
            copy = path.read_bytes()
            source = int8_decoder_source(read_outline(copy, str(path)).metadata, str(path))
        except (OSError, DDPMError) as exc:
            self.note = f"the decoder runs in fp32: {summary(exc)}"
            return None
        if source != self.sha256:
            self.note = f"the decoder runs in fp32: {path.name} was quantized from another decoder file"
            return None
        return copy

    def _check_int8(self, data: bytes, threads: int | None) -> None:
        """int8 images against fp32's on the check latents; too far apart on average, the decoder runs in fp32."""
        z = self._check_latents()
        exact = _OnnxRuntimeRunner(data, self.path, threads)(z)
        difference = grey_level_difference(self._run(z), exact, self.info.data_range)
        if not difference <= DECODER_INT8_TOLERANCE:
            self.note = (
                f"the decoder runs in fp32: its int8 copy's images differ from fp32's by {difference:.2f} grey "
                f"levels on average (tolerance {DECODER_INT8_TOLERANCE:g})"
            )
            self._open(data, "onnxruntime", "fp32", threads)

    def decode(self, z: np.ndarray) -> np.ndarray:
        """Images for a batch of latents, in calls of at most ``max_rows`` rows; each answer is checked
        (shape, float32, finite), so a decoder that misbehaves mid-run ends it in one line."""
        parts = []
        for start in range(0, len(z), self.max_rows):
            rows = np.ascontiguousarray(z[start : start + self.max_rows], np.float32)
            began = time.perf_counter()
            image = self._run(rows)
            self.run_seconds += time.perf_counter() - began
            self.run_calls += 1
            parts.append(self._checked(image, len(rows)))
        return np.concatenate(parts) if parts else np.empty((0,), np.float32)

    def _checked(self, image: np.ndarray, rows: int) -> np.ndarray:
        info = self.info
        expected = [rows, info.image_channels, info.image_size, info.image_size]
        if list(image.shape) != expected:
            raise DDPMError(f"decoder {self.path} returned images of shape {list(image.shape)}, expected {expected}")
        if image.dtype != np.float32:
            raise DDPMError(f"decoder {self.path} returned {image.dtype} images, expected float32")
        if not np.isfinite(image).all():
            raise DDPMError(f"decoder {self.path} produces NaN or infinite images; its weights are broken")
        return image


class _OnnxRuntimeRunner:
    """z → images through an ONNX Runtime CPU session (``session``); its failures are one line."""

    def __init__(self, data: bytes, path: Path, threads: int | None) -> None:
        import onnxruntime as ort

        self.path = path
        try:
            self.session = ort.InferenceSession(data, session_options(threads), providers=[CPU_PROVIDER])
        except Exception as exc:  # ONNX Runtime's own exception types
            raise DDPMError(f"decoder {path} cannot be loaded: {summary(exc)}") from None

    def __call__(self, z: np.ndarray) -> np.ndarray:
        try:
            return self.session.run(["image"], {"z": z})[0]
        except Exception as exc:
            raise DDPMError(f"decoder {self.path} failed: {summary(exc)}") from None


class _OpenVINORunner:
    """z → images through an OpenVINO CPU compiled model (``session``) at ``precision`` ("fp32" or "bf16")."""

    def __init__(self, data: bytes, path: Path, precision: str, threads: int | None) -> None:
        ov = openvino_module()
        core = ov.Core()
        hint = "bf16" if precision == "bf16" else "f32"
        config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": hint}
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        try:
            self.session = core.compile_model(core.read_model(data), "CPU", config)
        except Exception as exc:  # OpenVINO's front ends raise their own types
            raise DDPMError(f"decoder {path} cannot be loaded by OpenVINO: {summary(exc)}") from None
        self.path = path
        self.request = self.session.create_infer_request()
        self.output = self.session.output("image")
        self.lock = threading.Lock()  # one request, reused: two engines sharing the decoder take turns

    def __call__(self, z: np.ndarray) -> np.ndarray:
        with self.lock:
            try:
                result = self.request.infer({"z": z})[self.output]
            except Exception as exc:
                raise DDPMError(f"decoder {self.path} failed: {summary(exc)}") from None
            return np.array(result, dtype=np.float32, copy=True)  # the request reuses its output buffer
