"""What a user meets in a first run: fresh seeds that can be repeated, GPU choice, the animation."""

import json
import re

import numpy as np
import pytest
from PIL import Image

from conftest import DATA_DIR, assert_one_line_error
from ddpm.runtime.cli import main as run_main
from ddpm.runtime.eval_cli import main as eval_main


def run(invoke, model, out, *extra):
    result = invoke(run_main, "--onnx", model / "unet.onnx", "-n", 2, "--steps", 3, "--npz", out.with_suffix(".npz"),
                    "--png", out.with_suffix(".png"), *extra)
    assert result.code == 0, result.err
    return result


def test_fresh_seed_by_default_and_repeatable(invoke, tiny_export, tmp_path):
    first = run(invoke, tiny_export, tmp_path / "a")
    second = run(invoke, tiny_export, tmp_path / "b")
    seed = int(re.search(r"seed (\d+) \(--seed \1 repeats it\)", first.err).group(1))
    a, b = np.load(tmp_path / "a.npz"), np.load(tmp_path / "b.npz")
    assert int(a["seed"]) == seed and json.loads(str(a["settings"]))["seed"] == seed
    assert int(b["seed"]) != seed and not np.array_equal(a["images"], b["images"])
    text = Image.open(tmp_path / "a.png").text
    assert text["ddpm.seed"] == str(seed) and json.loads(text["ddpm.settings"])["seed"] == seed
    run(invoke, tiny_export, tmp_path / "c", "--seed", seed)
    np.testing.assert_array_equal(np.load(tmp_path / "c.npz")["images"], a["images"])


def test_seed_out_of_range(invoke, tiny_export, tmp_path):
    for bad in ("-1", str(2**63)):
        result = invoke(run_main, "--onnx", tiny_export / "unet.onnx", "--png", tmp_path / "o.png", "--seed", bad)
        assert_one_line_error(result, "--seed")
    assert not (tmp_path / "o.png").exists()


@pytest.mark.parametrize("main", [run_main, eval_main])
def test_device_id_past_the_device_count(invoke, tiny_export, tmp_path, main):
    result = invoke(main, "--onnx", tiny_export / "unet.onnx", "--device-id", 3, "--png" if main is run_main else "-n",
                    tmp_path / "o.png" if main is run_main else 4, "--data-dir" if main is eval_main else "-q",
                    *([DATA_DIR] if main is eval_main else []))
    assert_one_line_error(result, "CUDA device 3 does not exist")
    assert not (tmp_path / "o.png").exists()


def test_device_id_reaches_the_cuda_provider_options(tiny_export, monkeypatch):
    from ddpm.runtime import session

    monkeypatch.setattr(session, "cuda_device_count", lambda: 2)
    opened = session.UNetSession(tiny_export / "unet.onnx", provider="cpu", device_id=1)
    providers = opened._gpu_providers("cuda")
    assert providers[0][1]["device_id"] == "1"
    with pytest.raises(session.DDPMError, match="CUDA device 2 does not exist: this machine has 2"):
        session.UNetSession(tiny_export / "unet.onnx", provider="cuda", device_id=2)


def test_show_x0_and_both(tiny_export):
    from ddpm.runtime.pipeline import DDPM

    ddpm = DDPM.load(tiny_export / "unet.onnx", provider="cpu")
    xt = ddpm.generate(2, ddpm.plan(steps=12, frames=4, sampler="ddim"), seed=1)
    x0 = ddpm.generate(2, ddpm.plan(steps=12, frames=4, sampler="ddim", show="x0"), seed=1)
    both = ddpm.generate(2, ddpm.plan(steps=12, frames=4, sampler="ddim", show="both"), seed=1)
    np.testing.assert_array_equal(xt.samples, x0.samples)  # what is shown does not change the sampling
    assert [f.shape for f in both.frames] == [(2, 32, 64)] * len(xt.frames)
    for a, b, pair in zip(xt.frames, x0.frames, both.frames):
        np.testing.assert_array_equal(pair[..., :32], a)
        np.testing.assert_array_equal(pair[..., 32:], b)
    first = np.unique(x0.frames[0])
    assert len(first) == 1 and 126 <= first[0] <= 129  # before the first prediction: mid-grey
    assert np.abs(x0.frames[1].astype(int) - xt.frames[1].astype(int)).mean() > 20  # x̂_0 is not the noisy x_t
    # The last step of DDIM (η = 0) lands on its own x̂_0 prediction.
    np.testing.assert_array_equal(x0.frames[-1], xt.frames[-1])


@pytest.mark.parametrize("suffix", [".mp4", ".webm"])
def test_video_output(invoke, tiny_export, tmp_path, suffix):
    import imageio.v3 as iio

    out = tmp_path / f"d{suffix}"
    result = invoke(run_main, "--onnx", tiny_export / "unet.onnx", "-n", 4, "--steps", 6, "--frames", 5, "--fps", 10,
                    "--hold", 0.5, "--video", out, "--show", "both", "--seed", 1)
    assert result.code == 0, result.err
    frames = iio.imread(out, plugin="FFMPEG")
    assert len(frames) == 5 + 5  # x_T and 4 kept steps, then 0.5 s of the last frame at 10 fps
    assert frames.shape[2] > frames.shape[1]  # pairs side by side make the grid wider than tall
    assert [p.name for p in tmp_path.iterdir()] == [out.name]


@pytest.mark.parametrize("args, fragment", [
    (["--video", "d.avi"], ".mp4 or .webm"),
    (["--show", "x0", "--png", "d.png"], "add --gif or --video"),
    (["--show", "x1", "--gif", "d.gif"], "--show"),
])
def test_video_and_show_bad_input(invoke, tiny_export, tmp_path, args, fragment):
    args = [str(tmp_path / a) if a.startswith("d.") else a for a in args]
    assert_one_line_error(invoke(run_main, "--onnx", tiny_export / "unet.onnx", *args), fragment)
    assert list(tmp_path.iterdir()) == []


def test_video_without_ffmpeg_names_the_extra(invoke, tiny_export, tmp_path, monkeypatch):
    from ddpm.runtime import cli

    monkeypatch.setattr(cli, "video_available", lambda: False)
    result = invoke(run_main, "--onnx", tiny_export / "unet.onnx", "--video", tmp_path / "d.mp4")
    assert_one_line_error(result, 'pip install "ddpm-mnist[video]"')
    assert list(tmp_path.iterdir()) == []
