"""Every command against the same hostile inputs: files that are missing, empty, truncated, random
or foreign, directories where files belong, and wrong types and out-of-range values for every numeric
option. Each case: exit code != 0, one line on stderr naming the problem, no traceback, nothing created."""

from __future__ import annotations

import gzip
import os

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
from tests_support import copy_latent, edit_onnx_metadata

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
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("a", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("b", TensorProto.FLOAT, [1])],
    )
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
MAINS = {
    "ddpm-train": train_main,
    "ddpm-export": export_main,
    "ddpm-run": run_main,
    "ddpm-bench": bench_main,
    "ddpm-eval": eval_main,
}
EXPECTED = {  # what the one line must say, per kind of bad file
    "missing": "does not exist",
    "empty": "empty",
    "directory": "directory",
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


# A latent model is two files: the U-Net its option names, and the decoder beside it that the U-Net's
# metadata names by file name and SHA-256. Every bad kind above is applied to each of the two, plus
# "swapped" (the pair's other file in its place), "edited" (a valid file, but not the pair's: the
# decoder with its doc string changed, or the U-Net naming another decoder hash) and "huge-number" (a
# scale factor of 10**400 in the metadata: valid JSON, beyond any float).
LATENT_KINDS = (*FILE_CASES, "swapped", "edited", "huge-number")
LATENT_OPTIONS = [
    ("ddpm-run", "--onnx", ["--png", "OUT/o.png", "-n", "1", "--steps", "2"]),
    ("ddpm-eval", "--onnx", ["--data-dir", str(DATA_DIR), "--json", "OUT/r.json", "-n", "4", "--steps", "2"]),
    # one implementation, one batch, no full loop: a bench that finds the bad file late still ends in seconds
    (
        "ddpm-bench",
        "--latent-onnx",
        [
            "--quick",
            "--out-dir",
            "OUT",
            "--models",
            "latent",
            "--implementations",
            "ort",
            "--cpu-batches",
            "1",
            "--no-full-loop",
        ],
    ),
]


def latent_cases():
    """(command, option, others, damaged file, kind). ddpm-bench takes every kind on the U-Net and one on the
    decoder, which shows that it reads the decoder before timing: the decoder's checks themselves are one
    function (runtime/decoder.py), which the ddpm-run and ddpm-eval cases take through every kind."""
    cases = []
    for command, option, others in LATENT_OPTIONS:
        for target in ("unet", "decoder"):
            for kind in LATENT_KINDS:
                bench = command == "ddpm-bench"
                if bench and target == "decoder" and kind != "missing":
                    continue
                cases.append(
                    pytest.param(command, option, others, target, kind, id=f"{command}{option}-{target}-{kind}")
                )
    return cases


def damage_latent(unet, target: str, kind: str) -> tuple:
    """Damage one file of the latent pair around ``unet``; the file the error line must name, and what it must say."""
    decoder = unet.with_name("unet.decoder.onnx")
    path, other = (unet, decoder) if target == "unet" else (decoder, unet)
    good = path.read_bytes()
    path.unlink()
    if kind == "swapped":
        path.write_bytes(other.read_bytes())
        return path, (
            "is a latent model's decoder, not a U-Net"
            if target == "unet"
            else "is a U-Net, not a latent model's decoder"
        )
    if kind == "edited":
        path.write_bytes(good)
        if target == "decoder":
            import onnx

            model = onnx.load(str(path))
            model.doc_string = "edited"
            onnx.save(model, str(path))
        else:
            edit_onnx_metadata(path, "latent", lambda latent: {**latent, "decoder_sha256": "0" * 64})
        return decoder, "is not the file unet.onnx was exported with"
    if kind == "huge-number":
        path.write_bytes(good)
        if target == "decoder":
            edit_onnx_metadata(path, "scale_factor", lambda scale: 10**400)
        else:
            edit_onnx_metadata(path, "latent", lambda latent: {**latent, "scale_factor": 10**400})
        return path, "scale_factor 1000"
    if kind != "missing":
        make_bad(kind, path, good, foreign_onnx())
    return path, EXPECTED.get(kind)


@pytest.mark.parametrize("command, option, others, target, kind", latent_cases())
def test_bad_latent_files(invoke, tmp_path, latent_export, command, option, others, target, kind):
    unet = copy_latent(latent_export, tmp_path / "model")
    named, fragment = damage_latent(unet, target, kind)
    before = snapshot(tmp_path)
    args = [fill(a, {"OUT": str(tmp_path / "out")}) for a in others]
    result = invoke(MAINS[command], option, unet, *args)
    assert_one_line_error(result, str(named), *([fragment] if fragment else []))
    assert result.code == 1
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
    fragment = {
        "missing": "does not exist",
        "not_a_directory": "not a directory",
        "empty": "lacks the MNIST",
        "random": "not an IDX file",
        "truncated": "truncated",
        "foreign": "not an IDX file",
    }[kind]
    assert_one_line_error(result, fragment)
    assert snapshot(tmp_path) == before


def numeric_cases():
    """Every numeric option of every command: a word, and a value just outside its range."""
    cases = []
    for name, command in (
        ("ddpm-train", train_command),
        ("ddpm-export", export_command),
        ("ddpm-run", run_cli),
        ("ddpm-bench", bench_command),
        ("ddpm-eval", eval_command),
    ):
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
                below = (
                    low
                    if getattr(kind, "min_open", False)
                    else (low - 1 if isinstance(kind, click.types.IntParamType) else low - 0.5)
                )
                cases.append((name, option, str(below)))
            high = getattr(kind, "max", None)
            if high is not None:
                above = (
                    high
                    if getattr(kind, "max_open", False)
                    else (high + 1 if isinstance(kind, click.types.IntParamType) else high + 0.5)
                )
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
    replacements = {
        "OUT": str(tmp_path / "out"),
        "CKPT": str(tiny_export / "model.pt"),
        "ONNX": str(tiny_export / "unet.onnx"),
    }
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
    replacements = {
        "FILE": str(tmp_path / "file"),
        "DIR": str(tmp_path / "dir"),
        "CKPT": str(tiny_export / "model.pt"),
        "ONNX": str(tiny_export / "unet.onnx"),
    }
    extra = ["--preset", "tiny", "--data-dir", str(DATA_DIR), "--no-progress"] if command == "ddpm-train" else []
    before = snapshot(tmp_path)
    result = invoke(MAINS[command], *extra, *[fill(a, replacements) for a in args])
    assert_one_line_error(result, fragment)
    assert snapshot(tmp_path) == before
