"""The judge and its scores (runtime/quality.py): accuracy on the committed slice, the Fréchet distance,
the class deviation and per-digit accuracy. ddpm-eval itself: test_eval_cli.py."""

import numpy as np
import pytest

from ddpm.core.mnist import load_mnist
from ddpm.runtime.quality import Judge, frechet_distance, resize_bilinear, score, to_judge_size

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning", "ignore::DeprecationWarning")


@pytest.fixture(scope="module")
def judge():
    return Judge()


@pytest.fixture(scope="module")
def test_slice(data_dir=None):
    from conftest import DATA_DIR

    return load_mnist(DATA_DIR, "test")


def test_judge_accuracy_on_the_committed_slice(judge, test_slice):
    images, labels = test_slice
    probabilities, features = judge(images)
    assert features.shape == (200, 128)
    assert np.allclose(probabilities.sum(axis=1), 1.0)
    assert (probabilities.argmax(axis=1) == labels).mean() >= 0.97


def test_frechet_distance_identities():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((500, 6)) @ rng.standard_normal((6, 6))
    shift = np.arange(6.0)
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-9)
    # equal covariances: only the means differ
    assert frechet_distance(a, a + shift) == pytest.approx((shift**2).sum(), rel=1e-9)
    # b = 2a: |μ|² + tr(Σ + 4Σ − 2·2Σ) = |μ|² + tr(Σ)
    expected = (a.mean(axis=0) ** 2).sum() + np.trace(np.cov(a, rowvar=False))
    assert frechet_distance(a, 2 * a) == pytest.approx(expected, rel=1e-9)
    assert frechet_distance(a, 2 * a) == pytest.approx(frechet_distance(2 * a, a), rel=1e-9)


def test_real_against_real_and_noise(judge, test_slice):
    images, _ = test_slice
    probabilities, features = judge(images)
    same = score(probabilities, features, features)
    scale = 2 * np.trace(np.cov(features, rowvar=False))  # rounding is relative to the traces
    assert abs(same.frechet_distance) <= 1e-8 * scale
    gaussian = np.random.default_rng(1).normal(128, 64, size=(200, 28, 28))
    noisy = score(*judge(np.clip(gaussian, 0, 255).astype(np.uint8)), features)
    # two halves of the real slice differ only by sampling (100 images in 128 dimensions inflate FD)
    real_halves = score(*judge(images[:100]), judge(images[100:])[1]).frechet_distance
    assert noisy.frechet_distance > 5 * real_halves
    assert noisy.max_class_deviation > 0.2  # noise lands on a few classes


def test_one_class_gives_deviation_of_0_9(judge, test_slice):
    images, labels = test_slice
    ones = images[labels == 1]
    result = score(*judge(ones), judge(images)[1])
    assert result.max_class_deviation == pytest.approx(0.9)
    assert result.histogram[1] == 1.0


def test_to_judge_size():
    images = np.zeros((2, 32, 32), np.uint8)
    images[:, 2:30, 2:30] = 200
    assert np.all(to_judge_size(images, "pad") == 200)
    resized = resize_bilinear(np.full((1, 32, 32), 77, np.uint8), 28)
    assert resized.shape == (1, 28, 28) and np.all(resized == 77)


def test_per_digit_accuracy():
    from ddpm.runtime.quality import per_class_accuracy

    labels = np.array([0, 0, 1, 1, 1, 3])
    predicted = np.array([0, 5, 1, 1, 2, 3])
    assert per_class_accuracy(predicted, labels) == [0.5, pytest.approx(2 / 3), None, 1.0] + [None] * 6
    probabilities = np.eye(10)[predicted]
    scores = score(
        probabilities,
        np.random.default_rng(0).standard_normal((6, 4)),
        np.random.default_rng(1).standard_normal((50, 4)),
        labels,
    )
    assert scores.accuracy == pytest.approx(4 / 6) and scores.class_accuracy[3] == 1.0


@pytest.mark.parametrize("count, verdict", [(20, "no verdict below N = 50 (N = 20)"), (50, "met")])
def test_too_few_samples_get_no_verdict(count, verdict):
    from ddpm.runtime.quality import Scores, targets

    good = Scores(count, 0.99, [0.1] * 10, 0.0, 1.0)
    floor = Scores(count, 0.99, [0.1] * 10, 0.0, 10.0)
    assert all(line.endswith(verdict) for line in targets(good, floor, requested=False))


def test_the_floor_of_a_resized_model_goes_through_its_resize(data_dir):
    """A 64x64 model's samples come back to 28x28 by a resize: its floor makes the same trip, 28 -> 64 -> 28,
    which blurs a little but keeps each digit; padded models' floors are the real digits themselves."""
    from ddpm.runtime.quality import real_floor

    real = load_mnist(data_dir, "test")[0][:50]
    assert real_floor(real, 32, "pad") is real
    assert real_floor(real, 28, "resize") is real
    trip = real_floor(real, 64, "resize")
    assert trip.shape == real.shape and trip.dtype == np.uint8
    difference = np.abs(trip.astype(int) - real.astype(int))
    assert 0 < difference.mean() < 8 and difference.max() > 0
