"""The two training stages of a latent model: ddpm-autoencoder (its loss falls, checkpoints resume,
reconstructions are drawn) and ddpm-train --autoencoder (the U-Net learns the scaled latents and
carries its autoencoder), with the mix-ups refused in one line."""

import json

import pytest
import torch
from conftest import assert_one_line_error

from ddpm.core.files import file_sha256
from ddpm.train.autoencoder import Autoencoder, autoencoder_loss
from ddpm.train.autoencoder_cli import main as autoencoder_main
from ddpm.train.checkpoint import load_checkpoint
from ddpm.train.cli import main as train_main
from ddpm.train.config import AUTOENCODER_PRESETS, AutoencoderConfig
from ddpm.train.latent import build_autoencoder, encode, scale_factor

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def ae_args(data_dir, out, *extra):
    return [
        "--preset",
        "ae-tiny",
        "--data-dir",
        str(data_dir),
        "--out",
        str(out),
        "--no-progress",
        "--no-samples",
        "--max-images",
        "128",
        "--batch-size",
        "32",
        "--threads",
        "1",
        *map(str, extra),
    ]


def latent_args(data_dir, out, autoencoder, *extra):
    return [
        "--preset",
        "tiny",
        "--autoencoder",
        str(autoencoder),
        "--conditional",
        "--data-dir",
        str(data_dir),
        "--out",
        str(out),
        "--no-progress",
        "--no-samples",
        "--max-images",
        "64",
        "--batch-size",
        "16",
        "--threads",
        "1",
        *map(str, extra),
    ]


@pytest.fixture(scope="module")
def autoencoder(tmp_path_factory, data_dir):
    """A tiny autoencoder trained for a few steps, written by the command itself."""
    out = tmp_path_factory.mktemp("ae")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("sys.argv", ["ddpm-autoencoder", *ae_args(data_dir, out, "--max-steps", "8")])
        with pytest.raises(SystemExit) as exit_info:
            autoencoder_main()
    assert exit_info.value.code in (0, None)
    return out / "model.pt"


@pytest.mark.parametrize("name", sorted(AUTOENCODER_PRESETS))
def test_presets_reach_their_latent_shape(name):
    config = AUTOENCODER_PRESETS[name]
    side = 64 if name == "ae64" else 32
    model = Autoencoder(config)
    images = torch.randn(2, 1, side, side)
    mean, log_variance = model.encoder(images)
    assert mean.shape == log_variance.shape == (2, config.latent_channels, side // config.factor, side // config.factor)
    assert model.decoder(mean).shape == images.shape


def test_kl_weight_weighs_the_kl_term():
    torch.manual_seed(0)
    model = Autoencoder(AUTOENCODER_PRESETS["ae-tiny"])
    x, noise = torch.randn(4, 1, 32, 32), torch.randn(4, 2, 16, 16)
    reconstruction, kl = model(x, noise)
    plain = autoencoder_loss(model, x, noise, 0.0)
    weighted = autoencoder_loss(model, x, noise, 0.5)
    assert torch.allclose(plain, (x - reconstruction).abs().flatten(1).sum(1).mean())
    assert torch.allclose(weighted - plain, 0.5 * kl.mean())
    assert (kl > 0).all()


def test_autoencoder_loss_falls_and_resumes(invoke, data_dir, tmp_path):
    out = tmp_path / "ae"
    steps = ("--max-steps", "40", "--epochs", "20", "--log-every", "5", "--lr-warmup-steps", "0", "--lr", "3e-3")
    result = invoke(autoencoder_main, *ae_args(data_dir, out, *steps))
    assert result.code == 0, result.err
    losses = [json.loads(line)["loss"] for line in (out / "log.jsonl").read_text().splitlines()]
    assert losses[-1] < 0.7 * losses[0], losses
    checkpoint = load_checkpoint(out / "model.pt")
    assert checkpoint["kind"] == "autoencoder" and checkpoint["progress"]["step"] == 40
    assert checkpoint["model_config"]["widths"] == [8, 8]
    again = invoke(autoencoder_main, *ae_args(data_dir, out, "--max-steps", "44", "--epochs", "20", "--resume", "auto"))
    assert again.code == 0, again.err
    assert load_checkpoint(out / "model.pt")["progress"]["step"] == 44


def test_reconstruction_grid_is_drawn(invoke, data_dir, tmp_path):
    out = tmp_path / "ae"
    args = [arg for arg in ae_args(data_dir, out, "--max-steps", "4", "--max-images", "32") if arg != "--no-samples"]
    result = invoke(autoencoder_main, *args, "--sample-count", "4")
    assert result.code == 0, result.err
    assert (out / "reconstructions-epoch001.png").is_file()


def test_latent_unet_learns_scaled_latents_and_carries_its_autoencoder(invoke, data_dir, tmp_path, autoencoder):
    out = tmp_path / "latent"
    result = invoke(train_main, *latent_args(data_dir, out, autoencoder, "--max-steps", "3"))
    assert result.code == 0, result.err
    assert "latents 2x16x16 of autoencoder" in result.err
    checkpoint = load_checkpoint(out / "model.pt")
    record = checkpoint["autoencoder"]
    assert record["sha256"] == file_sha256(autoencoder)
    assert checkpoint["model_config"]["image_channels"] == 2
    assert checkpoint["model"]["image_proj.weight"].shape[1] == 2
    source = load_checkpoint(autoencoder)
    for name, tensor in source["ema"].items():
        assert torch.equal(record["weights"][name], tensor)
    # the recorded scale gives the training latents unit variance
    from ddpm.train.config import DataConfig
    from ddpm.train.data import load_training_images

    images = load_training_images(data_dir, DataConfig(), max_images=64)
    latents = encode(build_autoencoder(record), images) * record["scale_factor"]
    assert abs(float(latents.std()) - 1.0) < 1e-4
    assert record["scale_factor"] == pytest.approx(scale_factor(encode(build_autoencoder(record), images)))


def test_latent_run_resumes_with_its_own_scale(invoke, data_dir, tmp_path, autoencoder):
    out = tmp_path / "latent"
    assert invoke(train_main, *latent_args(data_dir, out, autoencoder, "--max-steps", "2")).code == 0
    scale = load_checkpoint(out / "model.pt")["autoencoder"]["scale_factor"]
    # a resumed run is given a different slice of data: the scale stays the recorded one
    result = invoke(train_main, *latent_args(data_dir, out, autoencoder, "--max-steps", "4", "--resume", "auto"))
    assert result.code == 0, result.err
    assert load_checkpoint(out / "model.pt")["autoencoder"]["scale_factor"] == scale


def test_latent_preset_needs_an_autoencoder(invoke, data_dir, tmp_path):
    result = invoke(train_main, "--preset", "latent", "--data-dir", data_dir, "--out", tmp_path / "x", "--dry-run")
    assert_one_line_error(result, "--preset latent", "--autoencoder")
    assert result.code == 2
    assert not (tmp_path / "x").exists()


def test_a_unet_checkpoint_is_not_an_autoencoder(invoke, data_dir, tmp_path, autoencoder):
    unet = tmp_path / "unet"
    assert invoke(train_main, *latent_args(data_dir, unet, autoencoder, "--max-steps", "1")).code == 0
    result = invoke(train_main, *latent_args(data_dir, tmp_path / "x", unet / "model.pt", "--max-steps", "1"))
    assert_one_line_error(result, "is a U-Net checkpoint, not an autoencoder")
    assert not (tmp_path / "x").exists()


def test_data_options_must_agree_with_the_autoencoder(invoke, data_dir, tmp_path, autoencoder):
    result = invoke(train_main, *latent_args(data_dir, tmp_path / "x", autoencoder, "--image-size", "64"))
    assert_one_line_error(result, "--image-size 64 differs from the autoencoder's (32)")


def test_resuming_with_another_autoencoder_is_refused(invoke, data_dir, tmp_path, autoencoder):
    out = tmp_path / "latent"
    assert invoke(train_main, *latent_args(data_dir, out, autoencoder, "--max-steps", "1")).code == 0
    other = tmp_path / "other"
    assert invoke(autoencoder_main, *ae_args(data_dir, other, "--max-steps", "1", "--seed", "5")).code == 0
    result = invoke(train_main, *latent_args(data_dir, out, other / "model.pt", "--max-steps", "2", "--resume", "auto"))
    assert_one_line_error(result, "--autoencoder of sha256")
    assert load_checkpoint(out / "model.pt")["progress"]["step"] == 1


def test_each_command_resumes_only_its_own_checkpoints(invoke, data_dir, tmp_path, autoencoder):
    result = invoke(train_main, *latent_args(data_dir, tmp_path / "x", autoencoder, "--resume", autoencoder))
    assert_one_line_error(result, "is a checkpoint of ddpm-autoencoder")
    unet = tmp_path / "unet"
    assert invoke(train_main, *latent_args(data_dir, unet, autoencoder, "--max-steps", "1")).code == 0
    result = invoke(autoencoder_main, *ae_args(data_dir, tmp_path / "y", "--resume", unet / "model.pt"))
    assert_one_line_error(result, "ddpm-autoencoder: error:", "is a checkpoint of ddpm-train")


def test_a_damaged_carried_autoencoder_is_refused(data_dir, tmp_path, autoencoder, invoke):
    out = tmp_path / "latent"
    assert invoke(train_main, *latent_args(data_dir, out, autoencoder, "--max-steps", "1")).code == 0
    checkpoint = torch.load(out / "model.pt", weights_only=True)
    checkpoint["autoencoder"]["config"]["widths"] = [8, 8, 8]
    del checkpoint["checksum"]
    torch.save(checkpoint, tmp_path / "bad.pt")
    with pytest.raises(Exception, match="autoencoder"):
        load_checkpoint(tmp_path / "bad.pt")


def test_autoencoder_config_problems():
    assert AutoencoderConfig(widths=(8,)).problems()
    assert AutoencoderConfig(widths=(8, 12), norm_groups=8).problems()
    assert not AUTOENCODER_PRESETS["ae32"].problems()


def test_the_64x64_preset_resizes_digits_to_64(invoke, data_dir, tmp_path):
    result = invoke(
        autoencoder_main,
        "--preset",
        "ae64",
        "--data-dir",
        data_dir,
        "--out",
        tmp_path / "x",
        "--dry-run",
        "--batch-size",
        "16",
        "--max-images",
        "32",
    )
    assert result.code == 0, result.err
    assert "64x64x1 -> 8x8x4 (f = 8)" in result.err and "(resize to 64)" in result.err
    given = invoke(
        autoencoder_main,
        "--preset",
        "ae64",
        "--image-size",
        "128",
        "--data-dir",
        data_dir,
        "--out",
        tmp_path / "x",
        "--dry-run",
        "--max-images",
        "32",
        "--batch-size",
        "16",
    )
    assert "128x128x1 -> 16x16x4" in given.err


def test_a_latent_runs_preview_grid_shows_decoded_digits(invoke, data_dir, tmp_path, autoencoder):
    from PIL import Image

    out = tmp_path / "latent"
    args = [
        arg
        for arg in latent_args(
            data_dir,
            out,
            autoencoder,
            "--max-steps",
            "4",
            "--epochs",
            "1",
            "--sample-steps",
            "3",
            "--sample-count",
            "4",
        )
        if arg != "--no-samples"
    ]
    assert invoke(train_main, *args).code == 0
    with Image.open(out / "samples-epoch001.png") as grid:  # 2x2 digits of 32x32 (not 16x16 latents), scaled 2x
        assert grid.size == (2 * (2 * 34 + 2), 2 * (2 * 34 + 2))
