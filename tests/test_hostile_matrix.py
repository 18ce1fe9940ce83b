"""Every command against the same hostile inputs: files that are missing, empty, truncated, random
or foreign, directories where files belong, and wrong types and out-of-range values for every numeric
option. Each case: exit code != 0, one line on stderr naming the problem, no traceback, nothing created."""

from __future__ import annotations

import gzip
import os
import shutil

import click
import pytest
import torch

from conftest import DATA_DIR, assert_one_line_error
from ddpm.benchmarks.bench import bench_command
from ddpm.benchmarks.bench import main as bench_main
from ddpm.export.cli import export_command
from ddpm.export.cli import main as export_main
from ddpm.runtime.cli import main as run_main
from ddpm.runtime.cli import run_cli
from ddpm.runtime.eval_cli import eval_command
from ddpm.runtime.eval_cli import main as eval_main
from ddpm.train.cli import main as train_main
from ddpm.train.cli import train_command

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning", "ignore::DeprecationWarning")

FILE_CASES = ("missing", "empty", "truncated", "random", "foreign", "directory")


def fill(arg: str, replacements: dict[str, str]) -> str:
    for key, value in replacements.items():
        arg = arg.replace(key, value)
    return arg


def snapshot(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def make_bad(kind: str, path, good_bytes: bytes, foreign_bytes: bytes) -> None:
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "truncated":
        path.write_bytes(good_bytes[: len(good_bytes) // 3])
    elif kind == "random":
        path.write_bytes(os.urandom(4096))
    elif kind == "foreign":
        path.write_bytes(foreign_bytes)
    elif kind == "directory":
        path.mkdir()


@pytest.fixture(scope="module")
def foreign_checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("foreign") / "resnet.pt"
    torch.save({"epoch": 4, "state": {"w": torch.zeros(3)}}, path)
    return path.read_bytes()


def foreign_onnx() -> bytes:
    from onnx import TensorProto, helper

    node = helper.make_node("Relu", ["a"], ["b"])
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("a", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("b", TensorProto.FLOAT, [1])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9).SerializeToString()


def npz_bytes(images: bool) -> bytes:
    import io

    import numpy as np

    buffer = io.BytesIO()
    if images:
        np.savez(buffer, images=np.zeros((4, 32, 32), np.uint8))
    else:
        np.savez(buffer, weights=np.zeros(3))
    return buffer.getvalue()


# (command, file option, the other arguments it needs; OUT is replaced by the case's output folder)
FILE_OPTIONS = [
    ("ddpm-train", "--resume", ["--data-dir", str(DATA_DIR), "--out", "OUT", "--no-progress"]),
    ("ddpm-export", "--ckpt", ["--out-dir", "OUT"]),
    ("ddpm-run", "--onnx", ["--png", "OUT/o.png", "-n", "1", "--steps", "2"]),
    ("ddpm-bench", "--onnx", ["--quick", "--out-dir", "OUT"]),
    ("ddpm-bench", "--labml-onnx", ["--quick", "--out-dir", "OUT", "--models", "labml"]),
    ("ddpm-eval", "--npz", ["--data-dir", str(DATA_DIR), "--json", "OUT/r.json"]),
    ("ddpm-eval", "--onnx", ["--data-dir", str(DATA_DIR), "--json", "OUT/r.json", "-n", "4", "--steps", "2"]),
]
MAINS = {"ddpm-train": train_main, "ddpm-export": export_main, "ddpm-run": run_main, "ddpm-bench": bench_main,
         "ddpm-eval": eval_main}
EXPECTED = {  # what the one line must say, per kind of bad file
    "missing": "does not exist", "empty": "empty", "directory": "directory",
}


@pytest.mark.parametrize("kind", FILE_CASES)
@pytest.mark.parametrize("command, option, others", FILE_OPTIONS, ids=[f"{c}{o}" for c, o, _ in FILE_OPTIONS])
def test_bad_files(invoke, tmp_path, tiny_export, foreign_checkpoint, command, option, others, kind):
    if option == "--npz":
        good, foreign, path = npz_bytes(images=True), npz_bytes(images=False), tmp_path / "input.npz"
    elif option.endswith("onnx"):
        good, foreign, path = (tiny_export / "unet.onnx").read_bytes(), foreign_onnx(), tmp_path / "input.onnx"
    else:
        good, foreign, path = (tiny_export / "model.pt").read_bytes(), foreign_checkpoint, tmp_path / "input.pt"
    make_bad(kind, path, good, foreign)
    before = snapshot(tmp_path)
    args = [fill(a, {"OUT": str(tmp_path / "out")}) for a in others]
    result = invoke(MAINS[command], option, path, *args)
    assert_one_line_error(result, str(path), *([EXPECTED[kind]] if kind in EXPECTED else []))
    assert snapshot(tmp_path) == before


DATA_CASES = ("missing", "not_a_directory", "empty", "random", "truncated", "foreign")


@pytest.mark.parametrize("kind", DATA_CASES)
def test_bad_data_dir(invoke, tmp_path, kind):
    data = tmp_path / "data"
    names = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte")
    if kind == "not_a_directory":
        data.write_text("x")
    elif kind != "missing":
        data.mkdir()
    raw = {name: gzip.decompress((DATA_DIR / f"{name}.gz").read_bytes()) for name in names}
    if kind == "random":
        (data / names[0]).write_bytes(os.urandom(5000))
        (data / names[1]).write_bytes(raw[names[1]])
    elif kind == "truncated":
        (data / names[0]).write_bytes(raw[names[0]][:-100])
        (data / names[1]).write_bytes(raw[names[1]])
    elif kind == "foreign":  # a labels file where the images belong
        (data / names[0]).write_bytes(raw[names[1]])
        (data / names[1]).write_bytes(raw[names[1]])
    before = snapshot(tmp_path)
    result = invoke(train_main, "--preset", "tiny", "--data-dir", data, "--out", tmp_path / "out", "--no-progress")
    fragment = {"missing": "does not exist", "not_a_directory": "not a directory", "empty": "lacks the MNIST",
                "random": "not an IDX file", "truncated": "truncated", "foreign": "not an IDX file"}[kind]
    assert_one_line_error(result, fragment)
    assert snapshot(tmp_path) == before


def numeric_cases():
    """Every numeric option of every command: a word, and a value just outside its range."""
    cases = []
    for name, command in (("ddpm-train", train_command), ("ddpm-export", export_command), ("ddpm-run", run_cli),
                          ("ddpm-bench", bench_command), ("ddpm-eval", eval_command)):
        for param in command.params:
            if not isinstance(param, click.Option) or param.is_flag:
                continue
            kind = param.type
            if not isinstance(kind, (click.types.IntParamType, click.types.FloatParamType)):
                continue
            option = max(param.opts, key=len)
            cases.append((name, option, "abc"))
            low = getattr(kind, "min", None)
            if low is not None:
                below = low if getattr(kind, "min_open", False) else (low - 1 if isinstance(kind, click.types.IntParamType) else low - 0.5)
                cases.append((name, option, str(below)))
            high = getattr(kind, "max", None)
            if high is not None:
                above = high if getattr(kind, "max_open", False) else (high + 1 if isinstance(kind, click.types.IntParamType) else high + 0.5)
                cases.append((name, option, str(above)))
    return cases


NUMERIC_CASES = numeric_cases()
BASE_ARGS = {
    "ddpm-train": ["--preset", "tiny", "--data-dir", str(DATA_DIR), "--out", "OUT", "--no-progress"],
    "ddpm-export": ["--ckpt", "CKPT", "--out-dir", "OUT"],
    "ddpm-run": ["--onnx", "ONNX", "--png", "OUT/o.png"],
    "ddpm-bench": ["--quick", "--out-dir", "OUT"],
    "ddpm-eval": ["--onnx", "ONNX", "--data-dir", str(DATA_DIR), "--json", "OUT/r.json", "-q"],
}


def test_numeric_cases_cover_every_command():
    commands = {name for name, _, _ in NUMERIC_CASES}
    assert commands == set(BASE_ARGS)
    assert len(NUMERIC_CASES) > 60


@pytest.mark.parametrize("command, option, value", NUMERIC_CASES, ids=[f"{c}{o}={v}" for c, o, v in NUMERIC_CASES])
def test_bad_numbers(invoke, tmp_path, tiny_export, command, option, value):
    replacements = {"OUT": str(tmp_path / "out"), "CKPT": str(tiny_export / "model.pt"), "ONNX": str(tiny_export / "unet.onnx")}
    args = [fill(a, replacements) for a in BASE_ARGS[command]]
    before = snapshot(tmp_path)
    result = invoke(MAINS[command], *args, f"{option}={value}")
    assert_one_line_error(result, option)
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize(
    "command, args, fragment",
    [
        ("ddpm-train", ["--out", "FILE"], "not a directory"),
        ("ddpm-export", ["--ckpt", "CKPT", "--out-dir", "FILE"], "not a directory"),
        ("ddpm-export", ["--ckpt", "CKPT", "--onnx", "DIR"], "is a directory"),
        ("ddpm-export", ["--ckpt", "CKPT", "--torchscript", "DIR"], "is a directory"),
        ("ddpm-run", ["--onnx", "ONNX", "--png", "DIR"], "is a directory"),
        ("ddpm-run", ["--onnx", "ONNX", "--gif", "DIR"], "is a directory"),
        ("ddpm-run", ["--onnx", "ONNX", "--npz", "DIR"], "is a directory"),
        ("ddpm-bench", ["--quick", "--out-dir", "FILE"], "not a directory"),
    ],
)
def test_output_paths_that_cannot_be_used(invoke, tmp_path, tiny_export, command, args, fragment):
    (tmp_path / "file").write_text("x")
    (tmp_path / "dir").mkdir()
    replacements = {"FILE": str(tmp_path / "file"), "DIR": str(tmp_path / "dir"), "CKPT": str(tiny_export / "model.pt"),
                    "ONNX": str(tiny_export / "unet.onnx")}
    extra = ["--preset", "tiny", "--data-dir", str(DATA_DIR), "--no-progress"] if command == "ddpm-train" else []
    before = snapshot(tmp_path)
    result = invoke(MAINS[command], *extra, *[fill(a, replacements) for a in args])
    assert_one_line_error(result, fragment)
    assert snapshot(tmp_path) == before
