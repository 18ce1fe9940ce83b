"""Sample quality by the judge (a small MNIST classifier shipped as ONNX): confidence, class balance,
and the Fréchet distance between the judge's penultimate features of two image sets; and the targets
a model's samples are held to against the floor (real digits). NumPy only.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..core.errors import DDPMError, summary
from ..core.files import input_problem
from .installed import models_dir
from .session import cpu_session

CONFIDENT = 0.9
JUDGE_SIZE = 28

# The quality targets (docs/RESULTS.md, Quality): FD within this factor of the floor's, unconditional or
# with requested digits; with requested digits also the share judged as requested, overall and
# for the worst digit.
FD_FACTOR = {"drawn": 1.3, "requested": 1.5}
REQUESTED_ACCURACY = 0.98
WORST_DIGIT_ACCURACY = 0.95


def judge_path() -> Path:
    return models_dir() / "judge.onnx"


class Judge:
    """Class probabilities and 128-d features of 28x28 uint8 digits."""

    def __init__(self, path: Path | None = None, threads: int | None = None) -> None:
        path = path or judge_path()
        problem = input_problem(path)
        if problem == "does not exist":
            raise DDPMError(f"the judge model is missing from this installation ({path})")
        if problem:
            raise DDPMError(f"the judge model {path} {problem}; reinstall the package")
        try:
            self.session = cpu_session(path, threads)
        except Exception as exc:  # ONNX Runtime's own exception types
            raise DDPMError(
                f"the judge model {path} cannot be loaded ({summary(exc)}); reinstall the package"
            ) from None
        names = ({i.name for i in self.session.get_inputs()}, {o.name for o in self.session.get_outputs()})
        if names != ({"images"}, {"logits", "features"}):
            raise DDPMError(
                f"the judge model {path} is not the judge (inputs {sorted(names[0])}, outputs {sorted(names[1])}); "
                "reinstall the package"
            )
        self.path = path

    def __call__(self, images: np.ndarray, batch: int = 500) -> tuple[np.ndarray, np.ndarray]:
        """uint8 [N, 28, 28] → (probabilities [N, 10], features [N, 128]), float64."""
        probabilities, features = [], []
        for start in range(0, len(images), batch):
            x = images[start : start + batch].astype(np.float32)[:, None] / 255.0
            try:
                logits, feats = self.session.run(["logits", "features"], {"images": x})
            except Exception as exc:
                raise DDPMError(f"the judge model {self.path} failed: {summary(exc)}; reinstall the package") from None
            logits = logits.astype(np.float64)
            exp = np.exp(logits - logits.max(axis=1, keepdims=True))
            probabilities.append(exp / exp.sum(axis=1, keepdims=True))
            features.append(feats.astype(np.float64))
        return np.concatenate(probabilities), np.concatenate(features)


def to_judge_size(images: np.ndarray, transform: str) -> np.ndarray:
    """Bring uint8 [N, S, S] digits to 28x28 the inverse way they were made: crop the padding, or resize."""
    size = images.shape[-1]
    if size == JUDGE_SIZE:
        return images
    if transform == "pad":
        if size < JUDGE_SIZE:
            raise DDPMError(f"images of {size}x{size} are smaller than the judge's {JUDGE_SIZE}x{JUDGE_SIZE}")
        offset = (size - JUDGE_SIZE) // 2
        return images[:, offset : offset + JUDGE_SIZE, offset : offset + JUDGE_SIZE]
    if transform == "resize":
        return resize_bilinear(images, JUDGE_SIZE)
    raise DDPMError(f"unknown transform {transform!r}; expected 'pad' or 'resize'")


def real_floor(real: np.ndarray, size: int, transform: str) -> np.ndarray:
    """Real uint8 [N, 28, 28] test digits as a model's samples reach the judge: for a model trained on
    digits resized to ``size``, through the same resize there and back (the floor a 64x64 model can
    reach); padded digits lose nothing on the way, so they stay as they are."""
    if transform != "resize" or size == JUDGE_SIZE:
        return real
    return to_judge_size(resize_bilinear(real, size), "resize")


def resize_bilinear(images: np.ndarray, size: int) -> np.ndarray:
    """Bilinear resize of uint8 [N, H, W] to [N, size, size] (pixel centres aligned)."""
    height, width = images.shape[1:]
    rows = (np.arange(size) + 0.5) * height / size - 0.5
    cols = (np.arange(size) + 0.5) * width / size - 0.5
    r0 = np.clip(np.floor(rows).astype(int), 0, height - 1)
    c0 = np.clip(np.floor(cols).astype(int), 0, width - 1)
    r1, c1 = np.clip(r0 + 1, 0, height - 1), np.clip(c0 + 1, 0, width - 1)
    fr = np.clip(rows - r0, 0, 1)[:, None]
    fc = np.clip(cols - c0, 0, 1)[None, :]
    x = images.astype(np.float64)
    top = x[:, r0][:, :, c0] * (1 - fc) + x[:, r0][:, :, c1] * fc
    bottom = x[:, r1][:, :, c0] * (1 - fc) + x[:, r1][:, :, c1] * fc
    return np.clip(np.round(top * (1 - fr) + bottom * fr), 0, 255).astype(np.uint8)


def frechet_distance(features_a: np.ndarray, features_b: np.ndarray) -> float:
    """‖μa − μb‖² + tr(Σa + Σb − 2 (Σa Σb)^½) between Gaussians fitted to two feature sets.

    tr((Σa Σb)^½) = Σ √λ over the eigenvalues of Σa^½ Σb Σa^½, a symmetric PSD matrix, which avoids
    the complex square roots of the non-symmetric product.
    """
    mu_a, mu_b = features_a.mean(axis=0), features_b.mean(axis=0)
    cov_a, cov_b = np.cov(features_a, rowvar=False), np.cov(features_b, rowvar=False)
    values, vectors = np.linalg.eigh(cov_a)
    sqrt_a = (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T
    middle = sqrt_a @ cov_b @ sqrt_a
    trace_sqrt = np.sqrt(np.clip(np.linalg.eigvalsh((middle + middle.T) / 2), 0, None)).sum()
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b) - 2 * trace_sqrt)


@dataclass
class Scores:
    count: int
    confidence: float  # share of images whose top class has probability > 0.9
    histogram: list[float]  # share of images per predicted class 0..9
    max_class_deviation: float  # largest |share − 0.1|
    frechet_distance: float  # judge features against the reference set
    accuracy: float | None = None  # with requested labels: share the judge assigns to them
    class_accuracy: list[float | None] | None = None  # the same per requested digit 0..9 (None: not requested)

    def to_dict(self) -> dict:
        return asdict(self)


def score(
    probabilities: np.ndarray, features: np.ndarray, reference_features: np.ndarray, labels: np.ndarray | None = None
) -> Scores:
    """The judge's figures for one image set; ``labels`` (the digit each image should show) adds accuracy."""
    predicted = probabilities.argmax(axis=1)
    histogram = np.bincount(predicted, minlength=10) / len(predicted)
    return Scores(
        count=len(predicted),
        confidence=float((probabilities.max(axis=1) > CONFIDENT).mean()),
        histogram=[float(h) for h in histogram],
        max_class_deviation=float(np.abs(histogram - 0.1).max()),
        frechet_distance=frechet_distance(features, reference_features),
        accuracy=None if labels is None else float((predicted == np.asarray(labels)).mean()),
        class_accuracy=None if labels is None else per_class_accuracy(predicted, np.asarray(labels)),
    )


def per_class_accuracy(predicted: np.ndarray, labels: np.ndarray) -> list[float | None]:
    """For each digit 0..9, the share of images asked to show it that the judge assigns to it."""
    return [
        float((predicted[labels == digit] == digit).mean()) if np.any(labels == digit) else None for digit in range(10)
    ]


MIN_VERDICT_SAMPLES = 50  # fewer samples than this make a Fréchet distance and a share too noisy to judge


def targets(samples: Scores, floor: Scores, requested: bool) -> list[str]:
    """The targets each figure is held to; ``requested``: the digits were asked for (``--digit``)."""
    factor = FD_FACTOR["requested" if requested else "drawn"]
    checks = [
        (
            f"Fréchet distance <= {factor:g} x floor",
            samples.frechet_distance <= factor * floor.frechet_distance,
            f"{samples.frechet_distance:.3f} vs {factor * floor.frechet_distance:.3f}",
        ),
        (
            "confidence >= floor - 0.03",
            samples.confidence >= floor.confidence - 0.03,
            f"{samples.confidence:.3f} vs {floor.confidence - 0.03:.3f}",
        ),
    ]
    if not requested:
        checks.append(
            (
                "largest class deviation <= 0.03",
                samples.max_class_deviation <= 0.03,
                f"{samples.max_class_deviation:.3f}",
            )
        )
    if requested and samples.accuracy is not None:
        worst = min(a for a in samples.class_accuracy if a is not None)
        checks += [
            (
                f"judged as requested >= {REQUESTED_ACCURACY:g}",
                samples.accuracy >= REQUESTED_ACCURACY,
                f"{samples.accuracy:.3f}",
            ),
            (
                f"worst digit judged as requested >= {WORST_DIGIT_ACCURACY:g}",
                worst >= WORST_DIGIT_ACCURACY,
                f"{worst:.3f}",
            ),
        ]
    if samples.count < MIN_VERDICT_SAMPLES:  # the figures still print; a verdict on so few would mislead
        return [
            f"{name}: {figures}: no verdict below N = {MIN_VERDICT_SAMPLES} (N = {samples.count})"
            for name, _, figures in checks
        ]
    return [f"{name}: {figures}: {'met' if ok else 'missed'}" for name, ok, figures in checks]


def table(samples: Scores, floor: Scores) -> str:
    """The samples' figures beside the floor's, one row each, as ddpm-eval prints them."""
    rows = [
        ("images", f"{samples.count}", f"{floor.count}"),
        ("confidence (top class p > 0.9)", f"{samples.confidence:.3f}", f"{floor.confidence:.3f}"),
        ("largest class deviation from 0.1", f"{samples.max_class_deviation:.3f}", f"{floor.max_class_deviation:.3f}"),
        ("Fréchet distance (judge features)", f"{samples.frechet_distance:.3f}", f"{floor.frechet_distance:.3f}"),
    ]
    if samples.accuracy is not None:
        rows.insert(1, ("judged as the requested digit", f"{samples.accuracy:.3f}", f"{floor.accuracy:.3f}"))
    rows += [
        (f"  class {digit} share", f"{samples.histogram[digit]:.3f}", f"{floor.histogram[digit]:.3f}")
        for digit in range(10)
    ]
    if samples.class_accuracy is not None:
        rows += [
            (f"  digit {digit} judged as requested", f"{a:.3f}", "-" if b is None else f"{b:.3f}")
            for digit, (a, b) in enumerate(zip(samples.class_accuracy, floor.class_accuracy))
            if a is not None
        ]
    width = max(len(r[0]) for r in rows)
    lines = [f"{'':{width}}  {'samples':>10}  {'real (floor)':>12}"]
    lines += [f"{name:{width}}  {a:>10}  {b:>12}" for name, a, b in rows]
    return "\n".join(lines)
