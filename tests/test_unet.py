"""The U-Net (train/unet.py): labml's layout and parameter count, shapes, attention, and the time and class
embeddings."""

import math

import pytest
import torch

from ddpm.train.config import PRESETS, preset
from ddpm.train.unet import AttentionBlock, TimeEmbedding, UNet, count_parameters

LABML_SHAPES = {
    "image_proj.weight": (64, 1, 3, 3),
    "time_emb.lin1.weight": (256, 64),
    "time_emb.lin2.weight": (256, 256),
    "down.0.res.norm1.weight": (64,),
    "down.0.res.time_emb.weight": (64, 256),
    "down.2.conv.weight": (64, 64, 3, 3),
    "down.3.res.shortcut.weight": (128, 64, 1, 1),
    "down.6.attn.projection.weight": (768, 256),
    "down.6.attn.norm.weight": (256,),
    "down.9.attn.projection.weight": (3072, 1024),
    "down.9.attn.output.weight": (1024, 1024),
    "middle.res1.conv1.weight": (1024, 1024, 3, 3),
    "middle.attn.projection.weight": (3072, 1024),
    "up.0.res.conv1.weight": (1024, 2048, 3, 3),
    "up.2.res.conv1.weight": (256, 1280, 3, 3),
    "up.3.conv.weight": (256, 256, 4, 4),
    "up.14.res.shortcut.weight": (64, 128, 1, 1),
    "norm.weight": (64,),
    "final.weight": (1, 64, 3, 3),
}


@pytest.fixture(scope="module")
def labml_meta():
    with torch.device("meta"):
        return UNet(preset("labml"))


def test_labml_parameter_count(labml_meta):
    assert count_parameters(labml_meta) == 168_896_705


def test_labml_state_dict_layout(labml_meta):
    shapes = {key: tuple(value.shape) for key, value in labml_meta.state_dict().items()}
    for key, shape in LABML_SHAPES.items():
        assert shapes.get(key) == shape, key
    # 11 down modules (2 blocks x 4 levels + 3 downsamples), 15 up modules (3 x 4 + 3 upsamples).
    assert max(int(k.split(".")[1]) for k in shapes if k.startswith("down.")) == 10
    assert max(int(k.split(".")[1]) for k in shapes if k.startswith("up.")) == 14
    assert not any("frequencies" in key for key in shapes)  # only labml's tensors are saved
    assert len(shapes) == 338
    # attention only at the two lowest resolutions (levels 2 and 3)
    assert not any(k.startswith(("down.0.attn", "down.1.attn", "down.3.attn", "down.4.attn")) for k in shapes)


@pytest.mark.parametrize("name", sorted(PRESETS))
@pytest.mark.parametrize("batch", [1, 3])
def test_forward_shapes(name, batch):
    torch.manual_seed(0)
    model = UNet(preset(name)).eval()
    x = torch.randn(batch, 1, 32, 32)
    t = torch.randint(0, 1000, (batch,))
    with torch.no_grad():
        out = model(x, t)
    assert out.shape == x.shape
    assert torch.isfinite(out).all()


def test_output_depends_on_timestep():
    torch.manual_seed(0)
    model = UNet(preset("tiny")).eval()
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        a = model(x, torch.tensor([0, 0]))
        b = model(x, torch.tensor([500, 500]))
    assert not torch.allclose(a, b)


def test_attention_matches_labml_formulation():
    """Single head, d_k = C, q/k/v taken as consecutive thirds of the projection, softmax over keys."""
    torch.manual_seed(0)
    block = AttentionBlock(16, groups=4)
    x = torch.randn(2, 16, 4, 4)
    b, c, h, w = x.shape
    seq = x.view(b, c, -1).permute(0, 2, 1)
    qkv = block.projection(seq).view(b, -1, 1, 3 * c)
    q, k, v = torch.chunk(qkv, 3, dim=-1)
    attn = (torch.einsum("bihd,bjhd->bijh", q, k) * c**-0.5).softmax(dim=2)
    res = torch.einsum("bijh,bjhd->bihd", attn, v).reshape(b, -1, c)
    expected = (block.output(res) + seq).permute(0, 2, 1).reshape(b, c, h, w)
    assert torch.allclose(block(x), expected, atol=1e-5)


def test_time_embedding_formula():
    embedding = TimeEmbedding(256)
    t = torch.tensor([0, 7, 999])
    half = 32
    freqs = torch.exp(torch.arange(half) * -(math.log(10000) / (half - 1)))
    angles = t[:, None].float() * freqs[None]
    sinusoid = torch.cat([angles.sin(), angles.cos()], dim=1)
    expected = embedding.lin2(torch.nn.functional.silu(embedding.lin1(sinusoid)))
    assert torch.allclose(embedding(t), expected, atol=1e-6)


def test_class_embedding_changes_eps_and_none_means_no_class():
    torch.manual_seed(0)
    model = UNet(preset("tiny", num_classes=10)).eval()
    with torch.no_grad():
        model.class_emb.weight.normal_()  # an untrained embedding would be random anyway; make it count
        x, t = torch.randn(2, 1, 32, 32), torch.tensor([10, 500])
        none = model(x, t)
        null = model(x, t, torch.tensor([10, 10]))
        three = model(x, t, torch.tensor([3, 3]))
    torch.testing.assert_close(none, null)
    assert (three - null).abs().max() > 1e-3
    assert "class_emb.weight" in model.state_dict() and "class_emb.weight" not in UNet(preset("tiny")).state_dict()
