"""Reading MNIST (core/mnist.py): IDX files gzipped or plain, and files that are not IDX, truncated, corrupt,
missing or mismatched, of another image size, or with labels outside 0-9, refused in one line."""

import gzip
import shutil

import numpy as np
import pytest

from ddpm.core.errors import DDPMError
from ddpm.core.mnist import load_mnist, read_idx
from tests_support import idx_bytes


def test_reads_gzipped_and_plain(data_dir, tmp_path):
    images, labels = load_mnist(data_dir, "train")
    assert images.shape == (1000, 28, 28) and images.dtype == np.uint8
    assert labels.shape == (1000,) and set(np.unique(labels)) == set(range(10))
    assert images.max() == 255 and images.min() == 0
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"):
        (tmp_path / name).write_bytes(gzip.decompress((data_dir / f"{name}.gz").read_bytes()))
    plain_images, plain_labels = load_mnist(tmp_path, "train")
    assert np.array_equal(plain_images, images) and np.array_equal(plain_labels, labels)


def test_wrong_magic(tmp_path):
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(b"\x00\x00\x08\x01" + b"\x00" * 100)
    with pytest.raises(DDPMError, match="not an IDX file of 3-D unsigned bytes"):
        read_idx(path, ndim=3)


def test_truncated(data_dir, tmp_path):
    raw = gzip.decompress((data_dir / "train-images-idx3-ubyte.gz").read_bytes())
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(raw[:-10])
    with pytest.raises(DDPMError, match="truncated"):
        read_idx(path, ndim=3)


def test_corrupt_gzip(data_dir, tmp_path):
    raw = (data_dir / "train-images-idx3-ubyte.gz").read_bytes()
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DDPMError, match="cannot read"):
        read_idx(path, ndim=3)


def test_missing_and_mismatched_files(data_dir, tmp_path):
    with pytest.raises(DDPMError, match="train-labels-idx1-ubyte"):
        shutil.copy(data_dir / "train-images-idx3-ubyte.gz", tmp_path)
        load_mnist(tmp_path, "train")
    shutil.copy(data_dir / "t10k-labels-idx1-ubyte.gz", tmp_path / "train-labels-idx1-ubyte.gz")
    with pytest.raises(DDPMError, match="1000 train images but 200 labels"):
        load_mnist(tmp_path, "train")


def write_split(folder, images, labels):
    folder.mkdir(exist_ok=True)
    for prefix in ("train", "t10k"):
        (folder / f"{prefix}-images-idx3-ubyte").write_bytes(idx_bytes(images))
        (folder / f"{prefix}-labels-idx1-ubyte").write_bytes(idx_bytes(labels))
    return folder


def test_train_and_eval_agree_on_foreign_image_sizes(invoke, tmp_path):
    """IDX files of another image size: the trainer and the judge both refuse them, in one line."""
    from conftest import assert_one_line_error

    from ddpm.runtime.eval_cli import main as eval_main
    from ddpm.train.cli import main as train_main

    folder = write_split(tmp_path / "d", np.zeros((64, 20, 20)), np.arange(64) % 10)
    train = invoke(train_main, "--preset", "tiny", "--data-dir", folder, "--out", tmp_path / "run", "--no-progress")
    assert_one_line_error(train, "20x20", "28x28")
    evaluation = invoke(eval_main, "--onnx", tmp_path / "none.onnx", "--data-dir", folder)
    assert_one_line_error(evaluation, "20x20", "28x28")
    assert not (tmp_path / "run").exists()


def test_labels_outside_0_9_are_refused_before_training(invoke, tmp_path):
    from conftest import assert_one_line_error

    from ddpm.train.cli import main as train_main

    labels = np.arange(64) % 10
    labels[5] = 12
    folder = write_split(tmp_path / "d", np.zeros((64, 28, 28)), labels)
    result = invoke(
        train_main,
        "--preset",
        "tiny",
        "--conditional",
        "--data-dir",
        folder,
        "--out",
        tmp_path / "run",
        "--no-progress",
        "--batch-size",
        16,
    )
    assert_one_line_error(result, "label is 12", "0-9")
    assert not (tmp_path / "run").exists()  # no folder, no log.jsonl from a run that never trained
