"""ddpm-run draws fresh noise unless given --seed, and says (and stores) which seed it used."""

import json
import re

import numpy as np
from PIL import Image

from conftest import assert_one_line_error
from ddpm.runtime.cli import main as run_main


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
