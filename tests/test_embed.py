"""Embedding a model in the package (export/embed.py): a conditional model ships for use with and without
--digit, with its model card."""

import sys

from ddpm.runtime.pipeline import DDPM


def test_embed_ships_a_conditional_model_for_both_uses(conditional, tmp_path, monkeypatch):
    from ddpm.export import embed

    out = tmp_path / "models"
    monkeypatch.setattr(
        sys,
        "argv",
        [
            "embed",
            "--ckpt",
            str(conditional / "model.pt"),
            "--out-dir",
            str(out),
            "--command",
            "ddpm-train --preset tiny --conditional",
            "--hardware",
            "a test",
            "--grid-steps",
            "20",
        ],
    )
    embed.main()
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "default.onnx", "digits.png", "samples.png"]
    assert DDPM.load(out / "default.onnx", provider="cpu").info.num_classes == 10
    card = (out / "README.md").read_text()
    assert (
        "with and without `--digit`" in card
        and "digits.png" in card
        and "ddpm-train --preset tiny --conditional" in card
    )
    assert "respaced to 20 steps" in card and "--steps 20 --png samples.png" in card


def test_embed_ships_a_latent_model_with_its_decoder(latent_export, tmp_path, monkeypatch):
    from ddpm.export import embed

    out = tmp_path / "models"
    monkeypatch.setattr(
        sys,
        "argv",
        [
            "embed",
            "--ckpt",
            str(latent_export / "model.pt"),
            "--out-dir",
            str(out),
            "--name",
            "latent",
            "--command",
            "ddpm-train --preset tiny --autoencoder ae.pt",
            "--hardware",
            "a test",
            "--grid-steps",
            "5",
        ],
    )
    embed.main()
    assert sorted(p.name for p in out.iterdir()) == [
        "latent-digits.png",
        "latent-samples.png",
        "latent.decoder.onnx",
        "latent.md",
        "latent.onnx",
    ]
    ddpm = DDPM.load(out / "latent.onnx", provider="cpu")
    assert ddpm.decoder.path == out / "latent.decoder.onnx"
    card = (out / "latent.md").read_text()
    assert card.startswith("# Embedded model 'latent'") and "ddpm-run --model latent" in card
    assert "`latent.decoder.onnx` decodes each finished sample to 32x32" in card
