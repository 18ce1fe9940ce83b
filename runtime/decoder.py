"""A latent model's decoder: the file its U-Net names, checked against that U-Net, turning the latents a
sampler finishes with into images (one call per batch of finished samples, and per kept frame).

The U-Net's metadata names the decoder by file name (beside the U-Net) and SHA-256; a decoder that is
missing, another file, another autoencoder's, a U-Net, or one whose images are not finite is refused in
one line before anything is sampled.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import numpy as np

from ..core.errors import DDPMError, summary
from ..core.files import input_problem
from ..core.metadata import DecoderInfo, ModelInfo
from .onnx_check import read_outline
from .session import CPU_PROVIDER, MAX_MODEL_BYTES, session_options


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
    through ONNX Runtime (the decoder runs once per sample, the U-Net once per step)."""

    def __init__(self, unet_path: Path, unet: ModelInfo, threads: int | None = None, max_rows: int = 256) -> None:
        import onnxruntime as ort

        self.path = decoder_path(unet_path, unet)
        data, self.info = read_decoder_file(self.path, unet, unet_path)
        self.max_rows = max_rows
        try:
            self.session = ort.InferenceSession(data, session_options(threads), providers=[CPU_PROVIDER])
        except Exception as exc:  # ONNX Runtime's own exception types
            raise DDPMError(f"decoder {self.path} cannot be loaded: {summary(exc)}") from None
        self.run_seconds = 0.0
        self.run_calls = 0
        self._check_finite()

    def _check_finite(self) -> None:
        """A decoder with broken weights (NaN, infinite) draws no digit: refuse it before sampling."""
        info = self.info
        self.decode(np.zeros((1, info.latent_channels, info.latent_size, info.latent_size), np.float32))

    def decode(self, z: np.ndarray) -> np.ndarray:
        """Images for a batch of latents, in calls of at most ``max_rows`` rows; each answer is checked
        (shape, float32, finite), so a decoder that misbehaves mid-run ends it in one line."""
        parts = []
        for start in range(0, len(z), self.max_rows):
            rows = np.ascontiguousarray(z[start : start + self.max_rows], np.float32)
            began = time.perf_counter()
            try:
                image = self.session.run(["image"], {"z": rows})[0]
            except Exception as exc:
                raise DDPMError(f"decoder {self.path} failed: {summary(exc)}") from None
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
