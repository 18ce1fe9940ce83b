"""int8 copies of an exported model: static QDQ quantization, per-channel weights.

The U-Net's copy is calibrated on real noisy inputs x_t = √ᾱ_t·x_0 + √(1−ᾱ_t)·ε at timesteps spread
over 0..T−1 (the activation ranges near t = 0 and near t = T differ a lot, so every part of the range
is seen), x_0 being training digits, or for a latent model their scaled latents. A latent model's
decoder gets a copy of its own, calibrated on those latents.

What stays float, and why (``benchmarks/int8_choices.py`` measures each choice's ε error and speed;
results in benchmarks/results/int8-choices.md):

- the first and the last convolution: they read x (or z) and write ε (or the image), where every
  grey level counts; and where the U-Net's copy misses its tolerance so, a few more at either end
  (:func:`quantize_within`: a distilled student, whose few calls leave no later step to correct an
  error, needs them);
- attention's two products of activations (QKᵀ and softmax·V) and the softmax;
- the timestep and class embeddings (Gemm, not among the quantized op types): they act on one
  vector per image, a negligible share of the work, and their error would reach every block.

Quantized: every other convolution and the attention projections with stored weights.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx

from ..core.errors import DDPMError, summary
from ..core.metadata import ModelInfo, int8_decoder_metadata
from ..core.mnist import load_mnist
from ..core.variant import grey_level_difference
from ..runtime.session import cpu_session

QUANTIZED_OPS = ("Conv", "MatMul")
CALIBRATION_SEED = 20_201_126
CALIBRATION_IMAGES = 256  # 16 batches of 16, t stratified over the whole schedule
MORE_FLOAT = (0, 2, 4)  # convolutions kept float at either end beyond the first and last, tried in turn
Encoder = Callable[[np.ndarray], np.ndarray]  # uint8 MNIST digits -> a latent model's scaled latents


def noisy_feeds(info: ModelInfo, x0: np.ndarray, labels: np.ndarray, rng: np.random.Generator) -> list[dict]:
    """Feeds {x, t[, y]} of 16 inputs each: x_t of the clean inputs ``x0`` (digits in the data range, or
    a latent model's scaled latents) with t stratified over 0..T−1, and for a class-conditional model
    the digit's label (one in ten the "no class" index, which guidance feeds)."""
    count, schedule = len(x0), info.make_schedule()
    steps = schedule.timesteps
    t = (np.arange(count) * steps // count + rng.integers(0, max(1, steps // count), count)).clip(0, steps - 1)
    t = rng.permutation(t)
    alpha_bar = schedule.alpha_bars[t].astype(np.float32)[:, None, None, None]
    x = np.sqrt(alpha_bar) * x0 + np.sqrt(1.0 - alpha_bar) * rng.standard_normal(x0.shape).astype(np.float32)
    feeds = []
    for start in range(0, count, 16):
        part = slice(start, start + 16)
        feed = {"x": np.ascontiguousarray(x[part], dtype=np.float32), "t": t[part].astype(np.int64)}
        if info.num_classes:
            y = labels[part].astype(np.int64)
            feed["y"] = np.where(rng.random(len(y)) < 0.1, info.num_classes, y)
        feeds.append(feed)
    return feeds


def clean_inputs(info: ModelInfo, images: np.ndarray, encode: Encoder | None) -> np.ndarray:
    """What the model denoises, for MNIST digits ``images`` (uint8 [N, 28, 28]): the digits as the model
    was trained on them, or through ``encode`` a latent model's scaled latents."""
    if encode is not None:
        return encode(images)
    from ..train.data import DataConfig, transform_images

    config = DataConfig(info.image_size, info.source.get("transform") or "pad", info.data_range)
    return transform_images(images, config).numpy()


def calibration_data(
    info: ModelInfo, data_dir: Path, encode: Encoder | None = None, count: int = CALIBRATION_IMAGES
) -> tuple[list[dict], list[dict], list[np.ndarray], list[np.ndarray]]:
    """Calibration feeds of ``count`` MNIST training digits, and held-out feeds (a quarter as many
    other digits, other noise) for checking the result; for a latent model (``encode`` given) also
    the clean latents of both, in batches of 16, for its decoder's copy."""
    images, labels = load_mnist(data_dir, "train")
    held = count // 4
    if len(images) < count + held:
        raise DDPMError(f"{data_dir}: {len(images)} training images; int8 calibration needs {count + held}")
    rng = np.random.default_rng(CALIBRATION_SEED)
    pick = rng.choice(len(images), size=count + held, replace=False)
    x0 = clean_inputs(info, images[pick], encode).astype(np.float32)
    calibration, check = slice(0, count), slice(count, count + held)
    feeds = noisy_feeds(info, x0[calibration], labels[pick][calibration], rng)
    held_out = noisy_feeds(info, x0[check], labels[pick][check], rng)
    if encode is None:
        return feeds, held_out, [], []
    return feeds, held_out, _batches(x0[calibration]), _batches(x0[check])


def _batches(x: np.ndarray, size: int = 16) -> list[np.ndarray]:
    return [np.ascontiguousarray(x[start : start + size]) for start in range(0, len(x), size)]


def float_nodes(model: onnx.ModelProto, more: int = 0) -> list[str]:
    """Names of the weighted nodes kept in float: the first and the last convolution (and ``more``
    after the first and before the last), and every product of two activations (attention's QKᵀ and
    softmax·V)."""
    stored = {tensor.name for tensor in model.graph.initializer}
    convs = [node.name for node in model.graph.node if node.op_type == "Conv"]
    keep = set(convs[: 1 + more] + convs[len(convs) - 1 - more :]) if convs else set()
    keep |= {node.name for node in model.graph.node if node.op_type == "MatMul" and not set(node.input) & stored}
    return sorted(keep)


def quantize(
    model: onnx.ModelProto, info: ModelInfo, calibration: list[dict], keep: list[str] | None = None
) -> onnx.ModelProto:
    """The int8 QDQ copy of ``model`` (an fp32 ε graph), metadata saying so; ``keep``: the nodes left
    in float [default: :func:`float_nodes`]."""
    if info.graph != "eps" or info.precision != "fp32" or info.fixed_batch is not None:
        raise DDPMError("int8 copies are made of the plain fp32 ε graph with a dynamic batch")
    named = with_node_names(model)
    quantized = quantize_static_qdq(named, calibration, float_nodes(named) if keep is None else keep)
    return with_metadata(quantized, model, replace(info, precision="int8").to_metadata())


def quantize_within(
    model: onnx.ModelProto, info: ModelInfo, calibration: list[dict], held_out: list[dict], tolerance: float
) -> onnx.ModelProto:
    """The int8 copy with the fewest float convolutions whose ε stays within ``tolerance`` (relative
    RMS) of fp32's on ``held_out``: :func:`float_nodes` first, then with each of :data:`MORE_FLOAT`
    more convolutions at either end; the last try where none does (the export then reports its miss)."""
    named, fp32 = with_node_names(model), model.SerializeToString()
    for more in MORE_FLOAT:
        copy = quantize(model, info, calibration, float_nodes(named, more))
        if relative_error(fp32, copy.SerializeToString(), held_out) <= tolerance:
            break
    return copy


def quantize_decoder(model: onnx.ModelProto, fp32_sha256: str, latents: list[np.ndarray]) -> onnx.ModelProto:
    """The int8 QDQ copy of a latent model's decoder (``model``, the fp32 file whose SHA-256 is
    ``fp32_sha256``), calibrated on scaled latents of training digits: every convolution in int8 but
    the first and the last. Its metadata is the fp32 decoder's, with its precision and that SHA-256."""
    named = with_node_names(model)
    quantized = quantize_static_qdq(named, [{"z": z} for z in latents], float_nodes(named))
    props = {entry.key: entry.value for entry in model.metadata_props}
    return with_metadata(quantized, model, int8_decoder_metadata(props, fp32_sha256))


def quantize_static_qdq(named: onnx.ModelProto, calibration: list[dict], keep: list[str]) -> onnx.ModelProto:
    """ONNX Runtime's static QDQ quantization of ``named`` (every node named), calibrated on the feeds
    ``calibration``, the nodes ``keep`` left in float; its failures are one DDPMError."""
    from onnxruntime.quantization import QuantFormat, QuantType
    from onnxruntime.quantization import quantize_static as quantize_onnx

    quantizer_log = logging.getLogger()  # the quantizer advises through the root logger, once per call
    level = quantizer_log.level
    quantizer_log.setLevel(logging.ERROR)
    with tempfile.TemporaryDirectory(prefix="ddpm-int8-") as work:
        source, target = Path(work) / "fp32.onnx", Path(work) / "int8.onnx"
        onnx.save(named, source)
        try:
            # reduce_range: 7-bit weights. x86 CPUs without VNNI multiply u8 x s8 pairs with a
            # saturating 16-bit add (VPMADDUBSW), which full-range weights overflow; the copy must
            # compute the same on whichever CPU runs it, not only on the one that made it.
            quantize_onnx(
                source,
                target,
                calibration_reader(calibration),
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                reduce_range=True,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                op_types_to_quantize=list(QUANTIZED_OPS),
                nodes_to_exclude=keep,
                extra_options={"ActivationSymmetric": False},
            )
            return onnx.load(target)
        except Exception as exc:  # the quantizer's failures come in many types
            raise DDPMError(f"int8 quantization failed: {summary(exc)}") from None
        finally:
            quantizer_log.setLevel(level)


def with_metadata(quantized: onnx.ModelProto, original: onnx.ModelProto, props: dict[str, str]) -> onnx.ModelProto:
    """``quantized`` with ``props`` for metadata and the original's producer name."""
    del quantized.metadata_props[:]
    for key, value in props.items():
        quantized.metadata_props.add(key=key, value=value)
    quantized.producer_name = original.producer_name
    return quantized


def with_node_names(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` whose nodes all have names (the quantizer addresses nodes by name)."""
    named = onnx.ModelProto()
    named.CopyFrom(model)
    for index, node in enumerate(named.graph.node):
        node.name = node.name or f"node_{index}"
    return named


def calibration_reader(calibration: list[dict]):
    """The calibration feeds as the quantizer reads them: one feed at a time, then None."""
    from onnxruntime.quantization import CalibrationDataReader

    class Feeds(CalibrationDataReader):
        def __init__(self) -> None:
            self.pending = iter(calibration)

        def get_next(self):
            return next(self.pending, None)

    return Feeds()


def relative_error(fp32: bytes, int8: bytes, feeds: list[dict]) -> float:
    """‖ε_int8 − ε_fp32‖ / ‖ε_fp32‖ over the held-out feeds, on ONNX Runtime's CPU provider
    (NaN when either is not finite)."""
    sessions = [cpu_session(blob) for blob in (fp32, int8)]
    squared_diff = squared_ref = 0.0
    for feed in feeds:
        reference, quantized = (session.run(None, feed)[0].astype(np.float64) for session in sessions)
        squared_diff += float(np.sum((quantized - reference) ** 2))
        squared_ref += float(np.sum(reference**2))
    ratio = np.sqrt(squared_diff / squared_ref) if squared_ref > 0 else float("nan")
    return float(ratio) if np.isfinite(ratio) else float("nan")


def decoder_difference(fp32: bytes, int8: bytes, latents: list[np.ndarray], data_range: tuple[float, float]) -> float:
    """Mean |image_int8 − image_fp32| over ``latents``, in grey levels of 255, on ONNX Runtime's CPU
    provider (NaN when either is not finite)."""
    reference, quantized = (
        np.concatenate([session.run(["image"], {"z": z})[0] for z in latents])
        for session in (cpu_session(blob) for blob in (fp32, int8))
    )
    difference = grey_level_difference(quantized, reference, data_range)
    return difference if np.isfinite(difference) else float("nan")
