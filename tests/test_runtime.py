import json
import os
import subprocess
import sys

import imageio.v3 as iio
import numpy as np
import onnx
import pytest
import torch
from PIL import Image

from conftest import assert_one_line_error
from ddpm.runtime.cli import main as run_main
from ddpm.core.images import make_grid
from ddpm.runtime.pipeline import DDPM, default_model_path, frame_positions
from ddpm.train.config import preset
from ddpm.train.unet import UNet

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning", "ignore::DeprecationWarning")


@pytest.fixture
def tiny(tiny_export):
    return tiny_export


def test_numpy_loop_matches_torch_reference(tiny):
    """All 1000 steps: the runtime's loop around ONNX Runtime vs eq. 11 written out in torch."""
    checkpoint = torch.load(tiny / "model.pt", weights_only=True)
    model = UNet(preset("tiny")).eval()
    model.load_state_dict(checkpoint["ema"])
    run = DDPM.load(tiny / "unet.onnx", provider="cpu").generate(2, seed=11)

    rng = np.random.default_rng(11)
    shape = (2, 1, 32, 32)
    x = torch.from_numpy(rng.standard_normal(shape, dtype=np.float32)).double()
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
    alpha_bars = torch.cumprod(1 - betas, 0)
    with torch.no_grad():
        for t in reversed(range(1000)):
            eps = model(x.float(), torch.full((2,), t)).double()
            mean = (x - betas[t] / torch.sqrt(1 - alpha_bars[t]) * eps) / torch.sqrt(1 - betas[t])
            x = mean + torch.sqrt(betas[t]) * torch.from_numpy(rng.standard_normal(shape, dtype=np.float32)) if t > 0 else mean
    assert np.abs(run.samples - x.numpy()).max() <= 1e-4


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


def test_fixed_batch_model_gives_the_same_samples(tiny):
    runs = {}
    for name in ("unet.onnx", "unet.b3.onnx"):
        ddpm = DDPM.load(tiny / name, provider="cpu")
        runs[name] = ddpm.generate(4, ddpm.plan(steps=20), seed=2)
    dynamic, fixed = runs["unet.onnx"], runs["unet.b3.onnx"]  # the fixed batch: 3 + 1 padded
    assert fixed.settings.batch_size == 3
    assert np.abs(dynamic.samples - fixed.samples).max() < 1e-4


def test_gif_frames(invoke, tiny, tmp_path):
    result = invoke(run_main, "--onnx", tiny / "unet.onnx", "-n", "5", "--steps", "30", "--frames", "8", "--scale", "2",
                    "--gif", tmp_path / "out.gif", "--png", tmp_path / "out.png")
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


def test_frame_positions_are_dense_at_the_end():
    positions = frame_positions(1000, 40)
    assert positions[-1] == 999 and positions == sorted(set(positions))
    assert sum(p >= 900 for p in positions) > sum(p < 100 for p in positions)


def test_python_api(tiny):
    ddpm = DDPM.load(tiny / "unet.onnx", provider="cpu")
    images = ddpm.sample(2, seed=1, steps=10)
    assert images.shape == (2, 32, 32) and images.dtype == np.uint8
    frames = ddpm.animation(2, seed=1, frames=4, steps=10)
    assert np.array_equal(frames[-1], images)
    assert ddpm.provider == "CPUExecutionProvider"


def test_auto_provider_says_when_it_falls_back(invoke, tiny, tmp_path, monkeypatch):
    import ddpm.runtime.session as session_module

    monkeypatch.setattr(session_module, "gpu_present", lambda: False)
    result = invoke(run_main, "--onnx", tiny / "unet.onnx", "-n", "1", "--steps", "2", "--png", tmp_path / "o.png")
    assert result.code == 0
    notes = [line for line in result.err.splitlines() if "running on the CPU" in line]
    assert len(notes) == 1
    assert "on CPUExecutionProvider" in result.err
    quiet = invoke(run_main, "--onnx", tiny / "unet.onnx", "-n", "1", "--steps", "2", "--png", tmp_path / "o.png", "-q")
    assert quiet.code == 0 and quiet.err == ""


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
        [sys.executable, "-c", script, "--onnx", str(tiny / "unet.onnx"), "-n", "2", "--steps", "20", "--npz", str(out)],
        capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stderr
    assert np.load(out)["images"].shape == (2, 32, 32)


def _imported_modules(path):
    """Absolute names of what a source file imports, relative imports resolved against its layer."""
    import ast

    package = ["ddpm", path.parent.name]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            yield from ([module] if node.module else [f"{module}.{alias.name}" for alias in node.names])


@pytest.mark.parametrize("layer, forbidden", [
    ("runtime", {"torch", "torchvision", "onnx", "ddpm.train", "ddpm.export", "ddpm.benchmarks"}),
    ("core", {"torch", "torchvision", "onnx", "onnxruntime", "ddpm.runtime", "ddpm.train", "ddpm.export", "ddpm.benchmarks"}),
])
def test_layer_sources_import_nothing_above_them(layer, forbidden):
    import pathlib

    files = list(pathlib.Path(layer).glob("*.py"))
    assert files
    for path in files:
        for name in _imported_modules(path):
            parts = name.split(".")
            assert parts[0] not in forbidden and ".".join(parts[:2]) not in forbidden, (path, name)


def test_embedded_model_draws_digit_shaped_images():
    ddpm = DDPM.load(provider="cpu")
    assert default_model_path().stat().st_size < 20e6
    assert ddpm.info.source.get("preset") == "small" and ddpm.info.source.get("weights") == "ema"
    images = ddpm.sample(2, seed=0)  # the full 1000-step loop
    assert images.shape == (2, 32, 32) and images.dtype == np.uint8
    for image in images:
        # dark background, some bright strokes: not noise, not blank
        assert np.mean(image < 64) > 0.6
        assert 0.03 < np.mean(image > 128) < 0.4
        assert np.all(image[:2] < 64) and np.all(image[:, :2] < 64)  # the padding border stays background


# -- bad input ---------------------------------------------------------------------------------


def _foreign_onnx(path):
    from onnx import TensorProto, helper

    node = helper.make_node("Relu", ["input"], ["output"])
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 4])])
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
    assert_one_line_error(invoke(run_main, "--onnx", foreign, "--png", tmp_path / "o.png"), "inputs are ['input']", "expected")


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
