"""Embedding a model in the package (export/embed.py): a conditional model ships for use with and without
--digit, with its model card."""

import sys

from ddpm.runtime.pipeline import DDPM


def test_embed_ships_a_conditional_model_for_both_uses(conditional, tmp_path, monkeypatch):
    from ddpm.export import embed

    out = tmp_path / "models"
    monkeypatch.setattr(sys, "argv", ["embed", "--ckpt", str(conditional / "model.pt"), "--out-dir", str(out),
                                      "--command", "ddpm-train --preset tiny --conditional", "--hardware", "a test",
                                      "--grid-steps", "20"])
    embed.main()
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "default.onnx", "digits.png", "samples.png"]
    assert DDPM.load(out / "default.onnx", provider="cpu").info.num_classes == 10
    card = (out / "README.md").read_text()
    assert "with and without `--digit`" in card and "digits.png" in card and "ddpm-train --preset tiny --conditional" in card
    assert "respaced to 20 steps" in card and "--steps 20 --png samples.png" in card
