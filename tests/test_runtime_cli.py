"""ddpm-run (runtime/cli.py): fresh and repeated seeds, the npz, PNG, GIF and video outputs, the embedded
model with and without --digit, solvers and engines from the command line, running without torch, and bad
models, options and outputs refused in one line with nothing written."""

import json
import os
import re
import subprocess
import sys

import imageio.v3 as iio
import numpy as np
import onnx
import pytest
from conftest import assert_one_line_error
from PIL import Image

from ddpm.core.images import make_grid
from ddpm.core.plan import DEFAULT_GUIDANCE
from ddpm.runtime.cli import main as run_main
from ddpm.runtime.pipeline import DDPM, frame_positions

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning", "ignore::DeprecationWarning")


def run(invoke, model, out, *extra):
    result = invoke(
        run_main,
        "--onnx",
        model / "unet.onnx",
        "-n",
        2,
        "--steps",
        3,
        "--npz",
        out.with_suffix(".npz"),
        "--png",
        out.with_suffix(".png"),
        *extra,
    )
    assert result.code == 0, result.err
    return result


def test_fresh_seed_by_default_and_repeatable(invoke, tiny_export, tmp_path):
    first = run(invoke, tiny_export, tmp_path / "a")
    run(invoke, tiny_export, tmp_path / "b")
    seed = int(re.search(r"seed (\d+) \(--seed \1 repeats it\)", first.err).group(1))
    a, b = np.load(tmp_path / "a.npz"), np.load(tmp_path / "b.npz")
    assert int(a["seed"]) == seed and json.loads(str(a["settings"]))["seed"] == seed
    assert int(b["seed"]) != seed and not np.array_equal(a["images"], b["images"])
    text = Image.open(tmp_path / "a.png").text
    assert text["ddpm.seed"] == str(seed) and json.loads(text["ddpm.settings"])["seed"] == seed
    run(invoke, tiny_export, tmp_path / "c", "--seed", seed)
    np.testing.assert_array_equal(np.load(tmp_path / "c.npz")["images"], a["images"])


def test_same_seed_same_npz_and_batch_size_does_not_matter(invoke, tiny, tmp_path):
    common = ("--onnx", tiny / "unet.onnx", "-n", "3", "--steps", "50", "--quiet")
    assert invoke(run_main, *common, "--seed", "5", "--npz", tmp_path / "a.npz").code == 0
    assert invoke(run_main, *common, "--seed", "5", "--npz", tmp_path / "b.npz").code == 0
    assert invoke(run_main, *common, "--seed", "6", "--npz", tmp_path / "c.npz").code == 0
    assert invoke(run_main, *common, "--seed", "5", "--batch-size", "1", "--npz", tmp_path / "d.npz").code == 0
    a, b, c, d = (np.load(tmp_path / f"{name}.npz") for name in "abcd")
    assert a["images"].shape == (3, 32, 32) and a["images"].dtype == np.uint8
    assert np.array_equal(a["images"], b["images"])
    assert not np.array_equal(a["images"], c["images"])
    assert np.abs(a["images"].astype(int) - d["images"].astype(int)).max() <= 1
    settings = json.loads(str(a["settings"]))
    assert settings["seed"] == 5 and int(a["seed"]) == 5 and settings["steps"] == 50 and settings["num_samples"] == 3


def test_gif_frames(invoke, tiny, tmp_path):
    result = invoke(
        run_main,
        "--onnx",
        tiny / "unet.onnx",
        "-n",
        "5",
        "--steps",
        "30",
        "--frames",
        "8",
        "--scale",
        "2",
        "--gif",
        tmp_path / "out.gif",
        "--png",
        tmp_path / "out.png",
    )
    assert result.code == 0, result.err
    expected_frames = 1 + len(frame_positions(30, 8))  # pure noise, then the kept steps
    grid = make_grid(np.zeros((5, 32, 32), np.uint8), scale=2)
    with Image.open(tmp_path / "out.gif") as gif:
        assert gif.n_frames == expected_frames
        assert (gif.height, gif.width) == grid.shape
        assert gif.info.get("loop") == 0
        durations = []
        for index in range(gif.n_frames):
            gif.seek(index)
            durations.append(gif.info["duration"])
    assert durations[-1] >= 2000 > durations[0]  # the final frame is held
    final = iio.imread(tmp_path / "out.png")
    assert final.shape[:2] == grid.shape
    assert "wrote" in result.out and "per sample" in result.err


@pytest.mark.parametrize("suffix", [".mp4", ".webm"])
def test_video_output(invoke, tiny_export, tmp_path, suffix):
    import imageio.v3 as iio

    out = tmp_path / f"d{suffix}"
    result = invoke(
        run_main,
        "--onnx",
        tiny_export / "unet.onnx",
        "-n",
        4,
        "--steps",
        6,
        "--frames",
        5,
        "--fps",
        10,
        "--hold",
        0.5,
        "--video",
        out,
        "--show",
        "both",
        "--seed",
        1,
    )
    assert result.code == 0, result.err
    frames = iio.imread(out, plugin="FFMPEG")
    assert len(frames) == 5 + 5  # x_T and 4 kept steps, then 0.5 s of the last frame at 10 fps
    assert frames.shape[2] > frames.shape[1]  # pairs side by side make the grid wider than tall
    assert [p.name for p in tmp_path.iterdir()] == [out.name]


def test_the_embedded_model_serves_with_and_without_digits(invoke, tmp_path):
    assert DDPM.load(provider="cpu").info.num_classes == 10
    for args, labels in ((["--digit", "7"], [7, 7]), ([], None)):
        out = tmp_path / f"{len(args)}.npz"
        result = invoke(run_main, *args, "-n", 2, "--sampler", "ddim", "--steps", 3, "--npz", out, "--provider", "cpu")
        assert result.code == 0, result.err
        settings = json.loads(str(np.load(out)["settings"]))
        if labels:
            assert settings["labels"] == labels and settings["guidance"] == DEFAULT_GUIDANCE
        else:  # every digit equally often: two samples, two different digits
            assert len(set(settings["labels"])) == 2 and settings["guidance"] == 0.0


def test_run_cli_with_solver(invoke, tiny_export, tmp_path):
    out = tmp_path / "s.npz"
    result = invoke(
        run_main,
        "--onnx",
        tiny_export / "unet.onnx",
        "--sampler",
        "dpm++2m-sde",
        "-n",
        3,
        "--npz",
        out,
        "--gif",
        tmp_path / "s.gif",
        "--frames",
        5,
    )
    assert result.code == 0, result.err
    settings = json.loads(str(np.load(out)["settings"]))
    assert (settings["sampler"], settings["steps"], settings["spacing"]) == ("dpm++2m-sde", 20, "logsnr")
    assert "x 20 steps" in result.err + result.out


def test_run_engines_give_the_same_digits(invoke, variants, tmp_path):
    outputs = {}
    for engine in ("plain", "iobinding", "auto"):
        target = tmp_path / f"{engine}.npz"
        result = invoke(
            run_main,
            "--onnx",
            variants / "unet.onnx",
            "-n",
            2,
            "--steps",
            20,
            "--npz",
            target,
            "--engine",
            engine,
            "--provider",
            "cpu",
            "--seed",
            0,
        )
        assert result.code == 0, result.err
        outputs[engine] = np.load(target)["images"]
    assert "engine auto (plain)" in result.err
    np.testing.assert_array_equal(outputs["plain"], outputs["iobinding"])
    np.testing.assert_array_equal(outputs["plain"], outputs["auto"])


def test_runtime_works_without_torch(tiny, tmp_path):
    """ddpm-run in a process where importing torch, onnx or the other layers fails."""
    script = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        top = name.split('.')[0]\n"
        "        if top in ('torch', 'torchvision', 'onnx') or name.startswith(('ddpm.train', 'ddpm.export')):\n"
        "            raise ImportError(f'{name} is blocked in this test')\n"
        "sys.meta_path.insert(0, Block())\n"
        "from ddpm.runtime.cli import main\n"
        "main()\n"
    )
    out = tmp_path / "out.npz"
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            script,
            "--onnx",
            str(tiny / "unet.onnx"),
            "-n",
            "2",
            "--steps",
            "20",
            "--npz",
            str(out),
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert np.load(out)["images"].shape == (2, 32, 32)


# -- bad input ---------------------------------------------------------------------------------


def _foreign_onnx(path):
    from onnx import TensorProto, helper

    node = helper.make_node("Relu", ["input"], ["output"])
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 4])],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9), str(path))


def _with_metadata(source, path, **changes):
    model = onnx.load(str(source))
    for prop in model.metadata_props:
        key = prop.key.removeprefix("ddpm.")
        if key in changes:
            prop.value = changes[key]
    onnx.save(model, str(path))


@pytest.mark.parametrize(
    "kind, fragments",
    [
        ("missing", ["does not exist"]),
        ("empty", ["is empty"]),
        ("truncated", ["is not an ONNX model"]),
        ("random", ["is not an ONNX model"]),
        ("directory", ["is a directory"]),
        ("foreign", ["not a ddpm-mnist export"]),
        ("bad_size", ["impossible metadata", "image_size"]),
        ("bad_variance", ["impossible metadata", "variance"]),
        ("bad_schedule", ["impossible metadata", "schedule"]),
        ("bad_range", ["impossible metadata", "data_range"]),
        ("bad_json", ["not valid JSON"]),
    ],
)
def test_bad_models(invoke, tiny, tmp_path, kind, fragments):
    path = tmp_path / "model.onnx"
    good = tiny / "unet.onnx"
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "truncated":
        path.write_bytes(good.read_bytes()[:5000])
    elif kind == "random":
        path.write_bytes(os.urandom(3000))
    elif kind == "directory":
        path.mkdir()
    elif kind == "foreign":
        _foreign_onnx(path)
    elif kind == "bad_size":
        _with_metadata(good, path, image_size="-3")
    elif kind == "bad_variance":
        _with_metadata(good, path, variance='"wild"')
    elif kind == "bad_schedule":
        _with_metadata(good, path, schedule='{"kind": "linear", "timesteps": 1000, "beta_start": 0.5, "beta_end": 2.0}')
    elif kind == "bad_range":
        _with_metadata(good, path, data_range="[1, -1]")
    elif kind == "bad_json":
        _with_metadata(good, path, image_size="{32")
    out = tmp_path / "out.png"
    result = invoke(run_main, "--onnx", path, "--png", out, "-n", "1", "--steps", "2")
    assert_one_line_error(result, *fragments)
    assert not out.exists()


def test_wrong_graph_inputs(invoke, tiny, tmp_path):
    """A graph whose inputs differ from the contract, even with our metadata."""
    model = onnx.load(str(tiny / "unet.onnx"))
    foreign = tmp_path / "foreign.onnx"
    _foreign_onnx(foreign)
    other = onnx.load(str(foreign))
    other.metadata_props.extend(model.metadata_props)
    onnx.save(other, str(foreign))
    assert_one_line_error(
        invoke(run_main, "--onnx", foreign, "--png", tmp_path / "o.png"), "inputs are ['input']", "expected"
    )


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["-n", "0"], "--num-samples"),
        (["--seed", "-1"], "--seed"),
        (["--batch-size", "0"], "--batch-size"),
        (["--batch-size", "-2"], "--batch-size"),
        (["--steps", "0"], "--steps"),
        (["--steps", "1001"], "--steps"),
        (["--frames", "1"], "--frames"),
        (["--fps", "0"], "--fps"),
        (["--provider", "metal"], "--provider"),
        (["--provider", "cuda"], "provider 'cuda'"),
        ([], "nothing to write"),
    ],
)
def test_bad_options(invoke, tiny, tmp_path, args, fragment):
    outputs = [] if not args else ["--png", tmp_path / "o.png"]
    result = invoke(run_main, "--onnx", tiny / "unet.onnx", *outputs, *args)
    assert_one_line_error(result, fragment)
    assert list(tmp_path.iterdir()) == []


def test_seed_out_of_range(invoke, tiny_export, tmp_path):
    for bad in ("-1", str(2**63)):
        result = invoke(run_main, "--onnx", tiny_export / "unet.onnx", "--png", tmp_path / "o.png", "--seed", bad)
        assert_one_line_error(result, "--seed")
    assert not (tmp_path / "o.png").exists()


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--video", "d.avi"], ".mp4 or .webm"),
        (["--show", "x0", "--png", "d.png"], "add --gif or --video"),
        (["--show", "x1", "--gif", "d.gif"], "--show"),
    ],
)
def test_video_and_show_bad_input(invoke, tiny_export, tmp_path, args, fragment):
    args = [str(tmp_path / a) if a.startswith("d.") else a for a in args]
    assert_one_line_error(invoke(run_main, "--onnx", tiny_export / "unet.onnx", *args), fragment)
    assert list(tmp_path.iterdir()) == []


def test_video_without_ffmpeg_names_the_extra(invoke, tiny_export, tmp_path, monkeypatch):
    from ddpm.runtime import run_outputs

    monkeypatch.setattr(run_outputs, "video_available", lambda: False)
    result = invoke(run_main, "--onnx", tiny_export / "unet.onnx", "--video", tmp_path / "d.mp4")
    assert_one_line_error(result, 'pip install "ddpm-mnist[video]"')
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--engine", "cudagraph", "--provider", "cpu"], "cudagraph"),
        (["--engine", "cudagraph"], "CUDA provider"),  # auto falls back to the CPU here
        (["--engine", "warp"], "warp"),
        (["--onnx", "STEP", "--steps", "10"], "cannot respace"),
    ],
)
def test_run_engine_errors(invoke, variants, tmp_path, args, fragment):
    args = [str(variants / "unet.step.onnx") if a == "STEP" else a for a in args]
    if "--onnx" not in args:
        args = ["--onnx", str(variants / "unet.b3.onnx"), *args]
    result = invoke(run_main, *args, "--npz", tmp_path / "out.npz", "-q")
    assert_one_line_error(result, fragment)
    assert not (tmp_path / "out.npz").exists()


def test_precision_with_onnx_is_a_usage_error(invoke, int8_export, tmp_path):
    result = invoke(run_main, "--onnx", int8_export / "unet.onnx", "--precision", "int8", "--png", tmp_path / "o.png")
    assert_one_line_error(
        result, "--precision int8 picks a copy of the embedded model", "with --onnx give fp32, auto or bf16"
    )
    assert result.code == 2


def test_unwritable_outputs(invoke, tiny, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert_one_line_error(invoke(run_main, "--onnx", tiny / "unet.onnx", "--gif", blocker / "o.gif"), "not a directory")
    assert_one_line_error(invoke(run_main, "--onnx", tiny / "unet.onnx", "--png", tmp_path), "is a directory")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_interrupted_run_leaves_no_output(invoke, tiny, tmp_path, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(DDPM, "generate", interrupted)
    result = invoke(run_main, "--onnx", tiny / "unet.onnx", "--gif", tmp_path / "o.gif", "--npz", tmp_path / "o.npz")
    assert result.code == 130 and "interrupted" in result.err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "option, name", [("--gif", "x.png"), ("--png", "x.gif"), ("--npz", "x.png"), ("--png", "x.jpg")]
)
def test_an_extension_of_another_format_is_refused_up_front(invoke, tmp_path, option, name):
    result = invoke(run_main, option, tmp_path / name)
    assert result.code == 2 and f"{option} writes" in result.err and not (tmp_path / name).exists()


def test_model_names_an_embedded_model(invoke):
    result = invoke(run_main, "--model", "pixel", "--info")
    assert result.code == 0, result.err
    assert json.loads(result.out)["model"].endswith("default.onnx")


def test_the_embedded_64x64_model_samples_8x8_latents_and_decodes_64x64_digits(invoke, tmp_path):
    info = json.loads(invoke(run_main, "--model", "latent64", "--info").out)
    assert info["ddpm.image_size"] == 8 and info["ddpm.latent"]["image_size"] == 64
    assert info["ddpm.latent"]["decoder_file"] == "latent64.decoder.onnx"
    args = ("--model", "latent64", "--sampler", "unipc", "--steps", 2, "-n", 2, "--seed", 0, "--provider", "cpu")
    result = invoke(run_main, *args, "--precision", "fp32", "--npz", tmp_path / "s.npz")
    assert result.code == 0, result.err
    with np.load(tmp_path / "s.npz") as archive:
        assert archive["images"].shape == (2, 64, 64)


def test_the_consistency_sampler_alone_runs_the_default_models_student_in_two_calls(invoke, tmp_path):
    result = invoke(run_main, "--sampler", "consistency", "-n", "2", "--seed", "0", "--png", tmp_path / "s.png")
    assert result.code == 0, result.err
    # the student's fp32 file or its int8 copy, as this CPU's timing chose
    assert re.search(r"model pixel-student(\.int8)?\.onnx", result.err) and "x 2 steps" in result.err
    for student, teacher in (("pixel-student", "pixel"), ("latent-student", "latent")):
        info = json.loads(invoke(run_main, "--model", student, "--info").out)
        assert info["ddpm.student"]["timesteps"][0] == 999 and len(info["ddpm.student"]["timesteps"]) >= 2
        taught = json.loads(invoke(run_main, "--model", teacher, "--info").out)
        assert info["ddpm.image_size"] == taught["ddpm.image_size"]  # a student of its own kind of model
    refused = invoke(run_main, "--model", "latent", "--sampler", "consistency", "--png", tmp_path / "t.png")
    assert_one_line_error(refused, "few-step students")
    assert not (tmp_path / "t.png").exists()


def test_onnx_and_model_are_one_choice(invoke, tiny, tmp_path):
    result = invoke(run_main, "--onnx", tiny / "unet.onnx", "--model", "pixel", "--png", tmp_path / "x.png")
    assert_one_line_error(result, "--onnx and --model both name the model")
    assert result.code == 2 and not (tmp_path / "x.png").exists()


def test_model_help_describes_every_embedded_model(invoke):
    from ddpm.runtime.choice import DESCRIPTIONS, EMBEDDED

    result = invoke(run_main, "--help")
    text = " ".join(result.out.split())
    for name in EMBEDDED:
        assert f"'{name}': {DESCRIPTIONS[name]}" in text
