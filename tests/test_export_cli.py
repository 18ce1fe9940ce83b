"""ddpm-export (export/cli.py): ONNX, fixed-batch, fp16, fused-step and TorchScript files that match the
checkpoint and describe themselves, raw weights, labml state dicts, conditional models, and bad checkpoints,
options and outputs refused in one line with nothing written."""

import json
import os
import pickle
import subprocess
import sys

import numpy as np
import onnx
import pytest
import torch
from conftest import TINY_STEPS, assert_one_line_error

from ddpm.core.metadata import ModelInfo
from ddpm.core.schedule import make_schedule
from ddpm.export.cli import main as export_main
from ddpm.runtime.pipeline import DDPM
from ddpm.runtime.session import UNetSession
from ddpm.train.config import preset
from ddpm.train.unet import UNet
from tests_support import LABML_SMALL, session

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning", "ignore::DeprecationWarning")


def test_onnx_round_trip_dynamic_batch(tiny_export):
    checkpoint = torch.load(tiny_export / "model.pt", weights_only=True)
    model = UNet(preset("tiny")).eval()
    model.load_state_dict(checkpoint["ema"])
    sess = session(tiny_export / "unet.onnx")
    inputs = {i.name: (i.type, i.shape) for i in sess.get_inputs()}
    assert inputs == {"x": ("tensor(float)", ["batch", 1, 32, 32]), "t": ("tensor(int64)", ["batch"])}
    assert [o.name for o in sess.get_outputs()] == ["eps"]
    rng = np.random.default_rng(0)
    for batch in (1, 2, 5):
        x = rng.standard_normal((batch, 1, 32, 32), dtype=np.float32)
        t = rng.integers(0, 1000, size=batch)
        eps = sess.run(["eps"], {"x": x, "t": t})[0]
        with torch.no_grad():
            reference = model(torch.from_numpy(x), torch.from_numpy(t)).numpy()
        assert eps.shape == x.shape
        assert np.abs(eps - reference).max() < 1e-4


def test_onnx_file_is_single_checked_and_self_describing(tiny_export):
    proto = onnx.load(str(tiny_export / "unet.onnx"))
    onnx.checker.check_model(proto)
    assert 18 <= {o.domain: o.version for o in proto.opset_import}[""] <= 20
    assert not any(p.name.endswith(".data") for p in tiny_export.iterdir())
    props = {p.key: p.value for p in proto.metadata_props}
    for value in props.values():
        json.loads(value)
    info = ModelInfo.from_metadata(props)
    assert info.schedule == {"kind": "linear", "timesteps": 1000, "beta_start": 1e-4, "beta_end": 0.02}
    assert (info.image_size, info.image_channels, info.data_range) == (32, 1, (-1.0, 1.0))
    assert (info.prediction, info.variance, info.noise_at_last_step, info.num_classes) == ("eps", "beta", False, 0)
    assert info.model_config == preset("tiny").to_dict()
    assert info.source["sha256"] == __import__("hashlib").sha256((tiny_export / "model.pt").read_bytes()).hexdigest()
    assert info.source["weights"] == "ema" and info.source["step"] == TINY_STEPS
    assert info.versions["export"]["torch"] == str(torch.__version__)
    assert info.fixed_batch is None


def test_fixed_batch_copy(tiny_export):
    sess = session(tiny_export / "unet.b3.onnx")
    assert sess.get_inputs()[0].shape == [3, 1, 32, 32]
    assert json.loads(sess.get_modelmeta().custom_metadata_map["ddpm.fixed_batch"]) == 3
    x = np.zeros((3, 1, 32, 32), np.float32)
    t = np.array([0, 500, 999])
    assert np.allclose(
        sess.run(None, {"x": x, "t": t})[0],
        session(tiny_export / "unet.onnx").run(None, {"x": x, "t": t})[0],
        atol=1e-5,
    )


VARIANTS = [
    "unet.onnx",
    "unet.b3.onnx",
    "unet.fp16.onnx",
    "unet.fp16.b3.onnx",
    "unet.step.onnx",
    "unet.step.b3.onnx",
    "unet.step.fp16.onnx",
    "unet.step.fp16.b3.onnx",
]


def test_export_writes_every_variant_with_its_metadata(variants):
    assert sorted(p.name for p in variants.glob("*.onnx")) == sorted(VARIANTS)
    for name in VARIANTS:
        info = UNetSession(variants / name, provider="cpu").info
        assert info.graph == ("fused-step" if ".step" in name else "eps")
        assert info.precision == ("fp16" if ".fp16" in name else "fp32")
        assert info.fixed_batch == (3 if ".b3" in name else None)
        model = onnx.load(str(variants / name))
        inputs = {i.name: i.type.tensor_type for i in model.graph.input}
        assert set(inputs) == ({"x", "t", "noise"} if ".step" in name else {"x", "t"})
        assert inputs["x"].elem_type == onnx.TensorProto.FLOAT  # fp32 at the boundary, always
        assert [o.name for o in model.graph.output] == (["x_prev"] if ".step" in name else ["eps"])
        batch = inputs["x"].shape.dim[0]
        assert (batch.dim_value == 3) if ".b3" in name else bool(batch.dim_param)


def test_export_writes_the_onnx_path_as_given(invoke, tiny_export, tmp_path):
    target = tmp_path / "model.bin"
    result = invoke(
        export_main, "--ckpt", tiny_export / "model.pt", "--onnx", target, "--no-torchscript", "--fixed-batch", 2
    )
    assert result.code == 0, result.err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.b2.bin", "model.bin"]


def test_torchscript_loads_without_the_project(tiny_export, tmp_path):
    script = (
        "import sys, json\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'ddpm' or name.startswith('ddpm.'):\n"
        "            raise ImportError('the project is not available here')\n"
        "sys.meta_path.insert(0, Block())\n"
        "import torch\n"
        "files = {'ddpm_metadata.json': ''}\n"
        f"m = torch.jit.load({str(tiny_export / 'unet.ts.pt')!r}, _extra_files=files)\n"
        "for b in (1, 4):\n"
        "    out = m(torch.randn(b, 1, 32, 32), torch.randint(0, 1000, (b,)))\n"
        "    assert out.shape == (b, 1, 32, 32)\n"
        "meta = json.loads(files['ddpm_metadata.json'])\n"
        "print(json.loads(meta['ddpm.image_size']))\n"
        "assert not any(name == 'ddpm' or name.startswith('ddpm.') for name in sys.modules)\n"
    )
    env = {**os.environ, "PYTHONPATH": ""}
    result = subprocess.run([sys.executable, "-I", "-c", script], capture_output=True, text=True, cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "32"


def test_raw_weights_differ_from_ema(invoke, tiny_export, tmp_path):
    assert (
        invoke(export_main, "--ckpt", tiny_export / "model.pt", "--out-dir", tmp_path, "--raw", "--no-torchscript").code
        == 0
    )
    assert not (tmp_path / "unet.ts.pt").exists()
    x, t = np.ones((1, 1, 32, 32), np.float32), np.array([10])
    raw = session(tmp_path / "unet.onnx").run(None, {"x": x, "t": t})[0]
    ema = session(tiny_export / "unet.onnx").run(None, {"x": x, "t": t})[0]
    assert not np.allclose(raw, ema)
    assert (
        json.loads(session(tmp_path / "unet.onnx").get_modelmeta().custom_metadata_map["ddpm.source"])["weights"]
        == "raw"
    )


def test_labml_state_dict_exports_and_matches(invoke, tmp_path):
    torch.manual_seed(3)
    labml_like = UNet(preset("labml", **LABML_SMALL)).eval()
    state_path = tmp_path / "model.pt"
    torch.save(labml_like.state_dict(), state_path)  # what users of the labml code hold
    result = invoke(export_main, "--ckpt", state_path, "--no-torchscript")
    assert result.code == 0, result.err
    assert "labml state dict" in result.out and "verified" in result.out
    sess = session(tmp_path / "unet.onnx")
    info = ModelInfo.from_metadata(sess.get_modelmeta().custom_metadata_map)
    assert info.data_range == (0.0, 1.0) and info.variance == "beta" and info.noise_at_last_step
    assert info.source["kind"] == "labml"
    x = np.random.default_rng(0).standard_normal((2, 1, 32, 32), dtype=np.float32)
    t = np.array([0, 999])
    with torch.no_grad():
        reference = labml_like(torch.from_numpy(x), torch.from_numpy(t)).numpy()
    assert np.abs(sess.run(None, {"x": x, "t": t})[0] - reference).max() < 1e-4


def test_conditional_checkpoint_and_export(conditional):
    checkpoint = torch.load(conditional / "model.pt", map_location="cpu", weights_only=False)
    assert checkpoint["model_config"]["num_classes"] == 10
    assert checkpoint["schedule"]["kind"] == "cosine"
    assert checkpoint["train"]["label_dropout"] == 0.1
    model = onnx.load(str(conditional / "unet.onnx"))
    inputs = {i.name: i.type.tensor_type for i in model.graph.input}
    assert set(inputs) == {"x", "t", "y"}
    assert inputs["y"].elem_type == onnx.TensorProto.INT64 and inputs["y"].shape.dim[0].dim_param
    metadata = {p.key: json.loads(p.value) for p in model.metadata_props}
    assert metadata["ddpm.num_classes"] == 10
    assert metadata["ddpm.schedule"]["kind"] == "cosine"
    ddpm = DDPM.load(conditional / "unet.onnx", provider="cpu")
    np.testing.assert_allclose(ddpm.schedule.betas, make_schedule("cosine", 1000).betas)


def test_fused_step_export_refuses_conditional_models(invoke, conditional, tmp_path):
    result = invoke(export_main, "--ckpt", conditional / "model.pt", "--fused-step", "--out-dir", tmp_path)
    assert_one_line_error(result, "unconditional")
    assert list(tmp_path.iterdir()) == []


# -- bad input ---------------------------------------------------------------------------------


def _write_bad(kind, path, good):
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "not_a_checkpoint":
        path.write_text("hello, I am a text file\n" * 20)
    elif kind == "random":
        path.write_bytes(os.urandom(2048))
    elif kind == "truncated":
        path.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    elif kind == "code":

        class Exploit:
            def __reduce__(self):
                return (os.system, (f"touch {path.parent / 'pwned'}",))

        path.write_bytes(pickle.dumps({"model": Exploit()}, protocol=2))
    elif kind == "other_network":
        torch.save(
            torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 1)).state_dict(), path
        )
    elif kind == "foreign_dict":
        torch.save({"epoch": 3, "weights": [1, 2, 3]}, path)
    elif kind == "labml_wrong_shapes":
        state = UNet(preset("labml", **LABML_SMALL)).state_dict()
        state["middle.res1.conv1.weight"] = torch.zeros(64, 64, 3, 3)
        torch.save(state, path)


@pytest.mark.parametrize(
    "kind, fragments",
    [
        ("missing", ["does not exist"]),
        ("empty", ["is empty"]),
        ("not_a_checkpoint", ["not a readable PyTorch checkpoint"]),
        ("random", ["not a readable PyTorch checkpoint"]),
        ("truncated", ["not a readable PyTorch checkpoint"]),
        ("code", ["refused", "would run code", "weights_only=True"]),
        ("other_network", ["state dict of another network", "image_proj.weight"]),
        ("foreign_dict", ["neither a ddpm-mnist checkpoint", "nor a labml U-Net state dict"]),
        ("labml_wrong_shapes", ["weights do not fit", "middle.res1.conv1.weight"]),
    ],
)
def test_bad_checkpoints(invoke, tiny_export, tmp_path, kind, fragments):
    path = tmp_path / "model.pt"
    _write_bad(kind, path, tiny_export / "model.pt")
    result = invoke(export_main, "--ckpt", path)
    assert_one_line_error(result, *fragments)
    assert sorted(p.name for p in tmp_path.iterdir()) == ([] if kind == "missing" else ["model.pt"])


def test_unwritable_outputs(invoke, tiny_export, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert_one_line_error(
        invoke(export_main, "--ckpt", tiny_export / "model.pt", "--out-dir", blocker), "not a directory"
    )
    assert_one_line_error(
        invoke(export_main, "--ckpt", tiny_export / "model.pt", "--onnx", blocker / "u.onnx"), "not a directory"
    )
    assert_one_line_error(
        invoke(export_main, "--ckpt", tiny_export / "model.pt", "--onnx", blocker / "d" / "u.onnx"), "cannot write"
    )
    assert_one_line_error(invoke(export_main, "--ckpt", tiny_export / "model.pt", "--onnx", tmp_path), "is a directory")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_failed_verification_leaves_nothing(invoke, tiny_export, tmp_path):
    result = invoke(export_main, "--ckpt", tiny_export / "model.pt", "--out-dir", tmp_path, "--atol", "1e-30")
    assert_one_line_error(result, "verification failed", "nothing written")
    assert list(tmp_path.iterdir()) == []


def test_nan_weights_fail_verification(invoke, tiny_export, tmp_path):
    """All-NaN weights give NaN everywhere; the difference must not read as 0."""
    checkpoint = torch.load(tiny_export / "model.pt", map_location="cpu", weights_only=True)
    for key in ("model", "ema"):
        checkpoint[key] = {
            name: torch.full_like(value, float("nan")) if value.is_floating_point() else value
            for name, value in checkpoint[key].items()
        }
    from ddpm.train.checkpoint import tensor_checksum

    checkpoint["checksum"] = {"sha256": tensor_checksum(checkpoint)}  # NaNs saved on purpose, not damage
    path = tmp_path / "nan.pt"
    torch.save(checkpoint, path)
    out = tmp_path / "out"
    result = invoke(export_main, "--ckpt", path, "--out-dir", out)
    assert_one_line_error(result, "verification failed", "NaN or infinite", "nothing written")
    assert not out.exists() or list(out.iterdir()) == []


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--opset", "21"], "--opset"),
        (["--fixed-batch", "0"], "--fixed-batch"),
        (["--atol", "-1"], "--atol"),
        (["--norm-groups", "4"], "labml state dicts only"),
    ],
)
def test_bad_options(invoke, tiny_export, tmp_path, args, fragment):
    result = invoke(export_main, "--ckpt", tiny_export / "model.pt", "--out-dir", tmp_path, *args)
    assert_one_line_error(result, fragment)
    assert list(tmp_path.iterdir()) == []


def test_existing_outputs_are_refused_without_overwrite_as_ddpm_train_does(invoke, tiny_export, tmp_path):
    """One rule for ddpm-export and ddpm-train: what a run wrote before is replaced only with --overwrite."""
    before = {path: path.read_bytes() for path in (tiny_export / "unet.onnx", tiny_export / "unet.ts.pt")}
    result = invoke(export_main, "--ckpt", tiny_export / "model.pt")  # beside the checkpoint, where the fixture wrote
    assert_one_line_error(result, f"{tiny_export / 'unet.onnx'} exists (and 1 more outputs)", "--overwrite")
    assert "read " not in result.out  # refused before the checkpoint is loaded
    assert {path: path.read_bytes() for path in before} == before
    out = tmp_path / "out"
    out.mkdir()
    (out / "unet.onnx").write_bytes(b"an older export")
    result = invoke(
        export_main, "--ckpt", tiny_export / "model.pt", "--out-dir", out, "--no-torchscript", "--overwrite"
    )
    assert result.code == 0, result.err
    props = {prop.key: prop.value for prop in onnx.load(out / "unet.onnx").metadata_props}
    assert ModelInfo.from_metadata(props).image_size == 32  # the old bytes replaced by a whole export
