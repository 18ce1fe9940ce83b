"""int8 copies of a latent model (``ddpm-export --int8``): the U-Net's, calibrated on noisy latents of
training digits, and the decoder's, on their clean latents; each checked against fp32 at export and at
load, where a copy that does not belong to its fp32 file (or strays) gives way to fp32 with a note."""

import hashlib
import json
import shutil
import sys

import numpy as np
import onnx
import pytest
from conftest import DATA_DIR, assert_one_line_error

import ddpm.export.pipeline as export_pipeline
import ddpm.runtime.decoder as decoder_module
from ddpm.core.metadata import PREFIX, DecoderInfo, ModelInfo, int8_decoder_source
from ddpm.export.cli import main as export_main
from ddpm.runtime import decoder_choice
from ddpm.runtime.pipeline import DDPM
from ddpm.runtime.precision import int8_copy
from tests_support import run_main

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(scope="module")
def int8_latent(latent_export, tmp_path_factory):
    """The tiny latent model exported with --int8: unet.onnx, unet.decoder.onnx and their int8 copies."""
    folder = tmp_path_factory.mktemp("latent-int8")
    shutil.copy(latent_export / "model.pt", folder / "model.pt")
    code = run_main(export_main, "--ckpt", folder / "model.pt", "--int8", "--data-dir", DATA_DIR, "--no-torchscript")
    assert code == 0
    return folder


def props(path):
    return {entry.key: entry.value for entry in onnx.load(path).metadata_props}


def with_props(source, target, **changed):
    """``source`` saved as ``target`` with its ddpm.* metadata entries ``changed`` (JSON values)."""
    model = onnx.load(source)
    for entry in model.metadata_props:
        if entry.key[len(PREFIX) :] in changed:
            entry.value = json.dumps(changed[entry.key[len(PREFIX) :]])
    onnx.save(model, target)


def test_both_copies_are_written_and_say_what_they_copy(int8_latent):
    decoder, copy = int8_latent / "unet.decoder.onnx", int8_latent / "unet.decoder.int8.onnx"
    assert int8_decoder_source(props(copy), "copy") == hashlib.sha256(decoder.read_bytes()).hexdigest()
    assert DecoderInfo.from_metadata(props(copy)) == DecoderInfo.from_metadata(props(decoder))
    with pytest.raises(Exception, match="not an int8 copy of a decoder"):
        int8_decoder_source(props(decoder), "decoder")  # the fp32 decoder carries no precision of its own
    unet = ModelInfo.from_metadata(props(int8_latent / "unet.int8.onnx"))
    assert unet.precision == "int8" and unet.latent == ModelInfo.from_metadata(props(int8_latent / "unet.onnx")).latent
    model = onnx.load(copy)
    convs = [node for node in model.graph.node if node.op_type == "Conv"]
    produced_by = {out: node.op_type for node in model.graph.node for out in node.output}
    assert produced_by.get(convs[0].input[1]) != "DequantizeLinear"  # the first and last convolutions stay float
    assert produced_by.get(convs[-1].input[1]) != "DequantizeLinear"
    assert sum(produced_by.get(conv.input[1]) == "DequantizeLinear" for conv in convs) >= 2  # the rest are int8


def test_the_int8_unet_runs_the_int8_decoder_and_draws_what_fp32_draws(int8_latent):
    fp32, int8 = (DDPM.load(int8_latent / name, provider="cpu") for name in ("unet.onnx", "unet.int8.onnx"))
    assert (fp32.decoder.precision, int8.decoder.precision) == ("fp32", "int8")
    assert int8.decoder.provider == "CPUExecutionProvider int8" and int8.note is None
    assert "the decoder's int8 copy unet.decoder.int8.onnx" in int8.decoder_files()
    a = fp32.generate(6, fp32.plan("ddim", steps=10), seed=3).images.astype(np.float64)
    b = int8.generate(6, int8.plan("ddim", steps=10), seed=3).images.astype(np.float64)
    assert 0 < np.abs(a - b).mean() < 12  # grey levels: another network, the same pictures


def int8_folder(int8_latent, tmp_path, copy_decoder=True):
    for name in ("unet.onnx", "unet.decoder.onnx", "unet.int8.onnx") + (("unet.decoder.int8.onnx",) * copy_decoder):
        shutil.copy(int8_latent / name, tmp_path / name)
    return tmp_path


def test_without_an_int8_decoder_beside_it_the_decoder_runs_in_fp32_and_says_so(int8_latent, tmp_path):
    ddpm = DDPM.load(int8_folder(int8_latent, tmp_path, copy_decoder=False) / "unet.int8.onnx", provider="cpu")
    assert ddpm.decoder.precision == "fp32" and ddpm.decoder.provider == "CPUExecutionProvider"
    assert "no int8 copy of it (unet.decoder.int8.onnx)" in ddpm.decoder.note


def test_an_int8_decoder_of_another_decoder_file_gives_way_to_fp32(int8_latent, tmp_path):
    folder = int8_folder(int8_latent, tmp_path)
    with_props(int8_latent / "unet.decoder.int8.onnx", folder / "unet.decoder.int8.onnx", fp32_sha256="a" * 64)
    ddpm = DDPM.load(folder / "unet.int8.onnx", provider="cpu")
    assert ddpm.decoder.precision == "fp32" and "quantized from another decoder file" in ddpm.decoder.note


def test_an_int8_decoder_past_its_tolerance_gives_way_to_fp32(int8_latent, monkeypatch):
    monkeypatch.setattr(decoder_module, "DECODER_INT8_TOLERANCE", 0.0)
    ddpm = DDPM.load(int8_latent / "unet.int8.onnx", provider="cpu")
    assert ddpm.decoder.precision == "fp32" and "grey levels on average (tolerance 0)" in ddpm.decoder.note


def test_an_int8_unet_naming_another_decoder_is_not_a_copy_of_the_fp32_one(int8_latent, tmp_path):
    latent = ModelInfo.from_metadata(props(int8_latent / "unet.int8.onnx")).latent
    other = {**latent, "decoder_sha256": "b" * 64}
    with_props(int8_latent / "unet.int8.onnx", tmp_path / "unet.int8.onnx", latent=other)
    reference = DDPM.load(int8_latent / "unet.onnx", provider="cpu").session
    path, refusal = int8_copy(reference, tmp_path / "unet.int8.onnx")
    assert path is None and "latent differ" in refusal
    assert int8_copy(reference, int8_latent / "unet.int8.onnx") == (int8_latent / "unet.int8.onnx", None)


def test_auto_times_the_int8_decoder_beside_the_others(int8_latent, monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert decoder_choice.candidates("cpu", int8=True) == [("onnxruntime", "fp32"), ("onnxruntime", "int8")]
    timed = []

    def time_decoders(decoders, info):
        timed.append([(d.backend, d.precision) for d in decoders])
        return {(d.backend, d.precision): 1.0 if d.precision == "int8" else 2.0 for d in decoders}

    monkeypatch.setattr(decoder_choice, "time_decoders", time_decoders)
    session = DDPM.load(int8_latent / "unet.onnx", provider="cpu").session
    decoder, note = decoder_choice.fastest_decoder(session, session.info, "cpu", None)
    assert timed == [[("onnxruntime", "fp32"), ("onnxruntime", "int8")]]
    assert (decoder.backend, decoder.precision) == ("onnxruntime", "int8") and "ONNX Runtime int8: 2.00x" in note


def test_an_int8_decoder_past_the_export_tolerance_writes_nothing(invoke, latent_export, tmp_path, monkeypatch):
    monkeypatch.setattr(export_pipeline, "DECODER_INT8_TOLERANCE", 0.0)
    args = ("--ckpt", latent_export / "model.pt", "--out-dir", tmp_path, "--int8", "--data-dir", DATA_DIR)
    result = invoke(export_main, *args, "--no-torchscript")
    assert_one_line_error(result, "unet.decoder.int8.onnx", "grey levels", "nothing written")
    assert list(tmp_path.iterdir()) == []


def test_embed_ships_the_int8_copies_with_a_line_on_the_card(latent_export, tmp_path, monkeypatch):
    from ddpm.export import embed

    out = tmp_path / "models"
    argv = ["embed", "--ckpt", str(latent_export / "model.pt"), "--out-dir", str(out), "--name", "latent"]
    argv += ["--command", "ddpm-train ...", "--hardware", "a test", "--grid-steps", "5", "--int8", str(DATA_DIR)]
    monkeypatch.setattr(sys, "argv", argv)
    embed.main()
    shipped = sorted(p.name for p in out.iterdir() if p.suffix == ".onnx")
    assert shipped == ["latent.decoder.int8.onnx", "latent.decoder.onnx", "latent.int8.onnx", "latent.onnx"]
    card = (out / "latent.md").read_text()
    assert "- int8: `latent.int8.onnx`" in card and "`latent.decoder.int8.onnx`, whose images are" in card
    ddpm = DDPM.load(out / "latent.int8.onnx", provider="cpu")
    assert ddpm.decoder.precision == "int8" and ddpm.decoder.path == out / "latent.decoder.onnx"
