"""No command writes over its own input, and no two outputs of one command are the same file."""

import os

import pytest
from conftest import DATA_DIR, assert_one_line_error

from ddpm.export.cli import main as export_main
from ddpm.runtime.cli import main as run_main
from ddpm.runtime.eval_cli import main as eval_main
from tests_support import copy_latent


def copy(src, dst):
    dst.write_bytes(src.read_bytes())
    return dst


def test_export_refuses_to_overwrite_its_checkpoint(invoke, tiny_export, tmp_path):
    ckpt = copy(tiny_export / "model.pt", tmp_path / "x.pt")
    before = ckpt.read_bytes()
    result = invoke(export_main, "--ckpt", ckpt, "--torchscript", ckpt)
    assert_one_line_error(result, "--torchscript", "input --ckpt")
    assert ckpt.read_bytes() == before


@pytest.mark.parametrize("option", ["--png", "--gif", "--npz"])
def test_run_refuses_to_overwrite_its_model(invoke, tiny_export, tmp_path, option):
    model = copy(tiny_export / "unet.onnx", tmp_path / "m.onnx")
    before = model.read_bytes()
    result = invoke(run_main, "--onnx", model, option, model, "--steps", 2)
    assert_one_line_error(result, option, "input --onnx")
    assert model.read_bytes() == before


def test_run_refuses_two_outputs_on_one_file(invoke, tiny_export, tmp_path):
    result = invoke(
        run_main, "--onnx", tiny_export / "unet.onnx", "--gif", tmp_path / "o", "--png", tmp_path / "o", "--steps", 2
    )
    assert_one_line_error(result, "--gif and --png are the same file")
    assert not (tmp_path / "o").exists()


def test_same_file_through_a_link_is_caught(invoke, tiny_export, tmp_path):
    model = copy(tiny_export / "unet.onnx", tmp_path / "m.onnx")
    os.link(model, tmp_path / "hard.onnx")
    before = model.read_bytes()
    result = invoke(run_main, "--onnx", model, "--png", tmp_path / "hard.onnx", "--steps", 2)
    assert_one_line_error(result, "input --onnx")
    assert model.read_bytes() == before


@pytest.mark.parametrize(
    "command, option, link",
    [
        ("ddpm-run", "--png", "symbolic"),
        ("ddpm-run", "--gif", "symbolic"),
        ("ddpm-run", "--npz", "symbolic"),
        ("ddpm-run", "--png", "hard"),
        ("ddpm-eval", "--json", "symbolic"),
    ],
)
def test_a_latent_models_decoder_is_an_input_too(invoke, latent_export, tmp_path, command, option, link):
    """The decoder is read as surely as the U-Net: an output that is it, through a link, is refused as --onnx is."""
    unet = copy_latent(latent_export, tmp_path / "model")
    decoder = unet.with_name("unet.decoder.onnx")
    target = tmp_path / f"out.{option[2:]}"
    if link == "symbolic":
        target.symlink_to(decoder)
    else:
        os.link(decoder, target)
    before = decoder.read_bytes()
    if command == "ddpm-run":
        result = invoke(run_main, "--onnx", unet, option, target, "--steps", 2, "-n", 1, "-q")
    else:
        result = invoke(eval_main, "--onnx", unet, option, target, "--steps", 2, "-n", 4, "--data-dir", DATA_DIR, "-q")
    assert decoder.read_bytes() == before
    assert_one_line_error(result, option, "decoder")


def test_latent_export_refuses_a_decoder_output_that_is_its_checkpoint(invoke, latent_export, tmp_path):
    """The decoder's name is made from --onnx's (m.onnx → m.decoder.onnx); a link there to the checkpoint is refused."""
    ckpt = copy(latent_export / "model.pt", tmp_path / "model.pt")
    (tmp_path / "m.decoder.onnx").symlink_to(ckpt)
    before = ckpt.read_bytes()
    result = invoke(export_main, "--ckpt", ckpt, "--onnx", tmp_path / "m.onnx", "--no-torchscript", "--overwrite")
    assert_one_line_error(result, "decoder", "input --ckpt")
    assert ckpt.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.decoder.onnx", "model.pt"]


def test_eval_refuses_to_overwrite_its_archive(invoke, tiny_export, tmp_path):
    archive = tmp_path / "s.npz"
    assert (
        invoke(run_main, "--onnx", tiny_export / "unet.onnx", "-n", 4, "--steps", 2, "--npz", archive, "-q").code == 0
    )
    before = archive.read_bytes()
    result = invoke(eval_main, "--npz", archive, "--json", archive, "--data-dir", DATA_DIR)
    assert_one_line_error(result, "--json", "input --npz")
    assert archive.read_bytes() == before


@pytest.mark.parametrize("special", ["fifo", "dev-null", "link-to-dev-null"])
def test_special_files_are_never_replaced(invoke, tiny_export, tmp_path, special):
    target = tmp_path / "out.png"
    if special == "fifo":
        os.mkfifo(target)
    elif special == "dev-null":
        target = "/dev/null"
    else:
        target.symlink_to("/dev/null")
    result = invoke(run_main, "--onnx", tiny_export / "unet.onnx", "--png", target, "--steps", 2, "-q")
    assert_one_line_error(result, "not a regular file")
    assert os.path.exists("/dev/null") and not os.path.isfile("/dev/null")
    if special == "fifo":
        assert not os.path.isfile(target) and os.path.exists(target)
    if special == "link-to-dev-null":
        assert os.path.islink(target)


def test_eval_refuses_a_special_json_target_before_sampling(invoke, tiny_export, tmp_path):
    fifo = tmp_path / "report.json"
    os.mkfifo(fifo)
    result = invoke(eval_main, "--onnx", tiny_export / "unet.onnx", "--json", fifo, "--data-dir", DATA_DIR, "-n", 1000)
    assert_one_line_error(result, "not a regular file")
    assert "sample" not in result.err  # refused where the option entered, not after 1000 samples
    assert not os.path.isfile(fifo)


# Files a command reads without being told: the installed models and judge, the CPU cache, the MNIST files.


@pytest.mark.parametrize(
    "option, name",
    [
        ("--npz", "default.onnx"),
        ("--png", "default.int8.onnx"),
        ("--gif", "judge.onnx"),
        ("--png", "check-digits.npz"),
        ("--npz", "latent.decoder.onnx"),
    ],
)
def test_run_never_writes_over_an_installed_file(invoke, package_copy, option, name):
    target = package_copy / name
    before = target.read_bytes()
    result = invoke(run_main, option, target, "--steps", 2)
    assert_one_line_error(result, option, f"is the installed {name}")
    assert target.read_bytes() == before


def test_run_never_writes_over_the_cpu_cache(invoke, tmp_path, monkeypatch):
    from ddpm.runtime import cpu_batch

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    cache = cpu_batch.cache_file()
    cache.parent.mkdir(parents=True)
    cache.write_text("{}\n")
    result = invoke(run_main, "--png", cache, "--steps", 2)
    assert_one_line_error(result, "--png", "is the CPU measurement cache")
    assert cache.read_text() == "{}\n"


@pytest.mark.parametrize("target", ["judge", "data"])
def test_eval_never_writes_over_the_judge_or_its_data(invoke, package_copy, tmp_path, target):
    import shutil

    data = tmp_path / "mnist"
    shutil.copytree(DATA_DIR, data)
    path = package_copy / "judge.onnx" if target == "judge" else data / "t10k-images-idx3-ubyte.gz"
    before = path.read_bytes()
    result = invoke(eval_main, "-n", 2, "--steps", 2, "--data-dir", data, "--json", path)
    assert_one_line_error(result, "--json", "judge.onnx" if target == "judge" else "the MNIST test file")
    assert path.read_bytes() == before


def test_export_int8_never_writes_over_its_training_data(invoke, tiny_export, tmp_path):
    import shutil

    data = tmp_path / "mnist"
    shutil.copytree(DATA_DIR, data)
    images = data / "train-images-idx3-ubyte.gz"
    before = images.read_bytes()
    result = invoke(
        export_main,
        "--ckpt",
        tiny_export / "model.pt",
        "--int8",
        "--data-dir",
        data,
        "--onnx",
        images,
        "--no-torchscript",
    )
    assert_one_line_error(result, "--onnx", "the MNIST train file train-images-idx3-ubyte.gz in --data-dir")
    assert images.read_bytes() == before


def test_export_int8_names_the_data_option_before_loading_anything(invoke, tmp_path):
    ckpt = tmp_path / "model.pt"
    ckpt.write_bytes(b"not a checkpoint: loading it would fail first")
    result = invoke(
        export_main, "--ckpt", ckpt, "--int8", "--data-dir", tmp_path / "nowhere", "--out-dir", tmp_path / "out"
    )
    assert_one_line_error(result, "--int8 calibrates on MNIST training digits", "--data-dir or DDPM_DATA_DIR")
