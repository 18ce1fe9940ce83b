"""ddpm-export of a latent model: the decoder is written beside the U-Net, both verified against
PyTorch, the U-Net's metadata names the decoder by file name and SHA-256, and the metadata contract
keeps U-Nets and decoders apart."""

import hashlib

import numpy as np
import pytest
import torch
from conftest import assert_one_line_error

from ddpm.core.errors import DDPMError
from ddpm.core.metadata import DecoderInfo, ModelInfo, latent_problems
from ddpm.export.cli import main as export_main
from ddpm.export.load import load_for_export
from ddpm.runtime.onnx_check import read_outline
from tests_support import session

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def metadata(path):
    return read_outline(path.read_bytes(), str(path)).metadata


def test_the_unet_names_its_decoder_by_name_and_hash(latent_export):
    info = ModelInfo.from_metadata(metadata(latent_export / "unet.onnx"))
    decoder = latent_export / "unet.decoder.onnx"
    assert info.latent["decoder_file"] == "unet.decoder.onnx"
    assert info.latent["decoder_sha256"] == hashlib.sha256(decoder.read_bytes()).hexdigest()
    assert (info.image_channels, info.image_size) == (2, 16)  # the U-Net works on the latent
    assert (info.output_channels, info.output_size) == (1, 32)
    checkpoint = torch.load(latent_export / "model.pt", weights_only=True)
    assert info.latent["autoencoder_sha256"] == checkpoint["autoencoder"]["sha256"]
    assert info.latent["scale_factor"] == pytest.approx(checkpoint["autoencoder"]["scale_factor"])
    assert (latent_export / "unet.decoder.ts.pt").is_file()


def test_the_decoder_file_decodes_like_pytorch(latent_export):
    source = load_for_export(latent_export / "model.pt")
    z = torch.randn(5, 2, 16, 16, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = source.decoder(z).numpy()
        # the graph divides by the scale itself: the autoencoder's decoder of z / scale
        unscaled = source.decoder.decoder(z / source.info.latent["scale_factor"]).numpy()
    got = session(latent_export / "unet.decoder.onnx").run(["image"], {"z": z.numpy()})[0]
    assert got.shape == (5, 1, 32, 32)
    assert np.abs(got - expected).max() < 1e-4
    np.testing.assert_array_equal(expected, unscaled)
    info = DecoderInfo.from_metadata(metadata(latent_export / "unet.decoder.onnx"))
    assert (info.latent_channels, info.latent_size, info.image_size) == (2, 16, 32)


def test_the_latent_unet_runs_like_pytorch(latent_export):
    source = load_for_export(latent_export / "model.pt")
    x = torch.randn(3, 2, 16, 16)
    t, y = torch.tensor([0, 500, 999]), torch.tensor([1, 2, 10])
    with torch.no_grad():
        expected = source.model(x, t, y).numpy()
    got = session(latent_export / "unet.onnx").run(["eps"], {"x": x.numpy(), "t": t.numpy(), "y": y.numpy()})[0]
    assert np.abs(got - expected).max() < 1e-4


def test_a_decoder_is_not_a_unet_and_a_unet_not_a_decoder(latent_export, tiny_export):
    with pytest.raises(DDPMError, match="is a latent model's decoder, not a U-Net"):
        ModelInfo.from_metadata(metadata(latent_export / "unet.decoder.onnx"), "d.onnx")
    with pytest.raises(DDPMError, match="is a U-Net, not a latent model's decoder"):
        DecoderInfo.from_metadata(metadata(tiny_export / "unet.onnx"), "u.onnx")


@pytest.mark.parametrize(
    "change, fragment",
    [
        ({"decoder_file": "../elsewhere.onnx"}, "decoder_file"),
        ({"decoder_sha256": "abc"}, "decoder_sha256"),
        ({"scale_factor": -1.0}, "scale_factor"),
        ({"image_channels": 9}, "image_channels"),
    ],
)
def test_impossible_latent_metadata_is_named(latent_export, change, fragment):
    latent = {**ModelInfo.from_metadata(metadata(latent_export / "unet.onnx")).latent, **change}
    assert any(fragment in problem for problem in latent_problems(latent))


def test_an_autoencoder_checkpoint_is_not_exported_alone(invoke, latent_export, tmp_path):
    result = invoke(export_main, "--ckpt", latent_export / "ae" / "model.pt", "--out-dir", tmp_path / "out")
    assert_one_line_error(result, "is an autoencoder; export the latent U-Net")
    assert not (tmp_path / "out").exists()


def test_an_existing_decoder_is_not_overwritten(invoke, latent_export, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "unet.decoder.onnx").write_bytes(b"mine")
    result = invoke(export_main, "--ckpt", latent_export / "model.pt", "--out-dir", out)
    assert_one_line_error(result, "unet.decoder.onnx exists", "--overwrite")
    assert (out / "unet.decoder.onnx").read_bytes() == b"mine"
    assert not (out / "unet.onnx").exists()
