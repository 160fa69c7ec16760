"""ViT and FiT (seed 003): registry contract, any image size, FiT's mixer is FourierMix."""

import pytest
import torch
import torch.nn.functional as F

from largekernel.models import create_model, list_models
from largekernel.models.vit import VisionTransformer
from largekernel.nn import FourierMix
from largekernel.optim import param_groups

NAMES = ["vit_tiny", "vit_small", "fit_tiny", "fit_small"]


def test_registered():
    assert set(NAMES) <= set(list_models())


@pytest.mark.parametrize("name", NAMES)
def test_forward_backward_at_several_sizes(name):
    model = create_model(name, img_size=32, patch_size=8, num_classes=7, depth=1)
    for size in [(32, 32), (16, 40)]:
        x = torch.randn(2, 3, *size, requires_grad=True)
        y = model(x)
        assert y.shape == (2, 7)
        y.sum().backward()
        assert x.grad is not None and torch.isfinite(x.grad).all()
        assert model.pos_embed.grad is not None


def test_default_input_is_32px():
    model = create_model("fit_tiny", num_classes=10, depth=1)
    assert model.img_size == (32, 32) and model.patch_size == 4
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 10)


def test_fit_block_is_fourier_mixing_and_vit_block_is_attention():
    fit = create_model("fit_tiny", depth=1, num_classes=3)
    vit = create_model("vit_tiny", depth=1, num_classes=3)
    assert isinstance(fit.blocks[0].mixer, FourierMix)
    assert not any(isinstance(m, FourierMix) for m in vit.modules())
    assert sum(p.numel() for p in fit.parameters()) < sum(p.numel() for p in vit.parameters())
    assert fit.cls_token is None and vit.cls_token is not None  # FiT: mean pooling, FFT-friendly token count
    # FiT block = x + Re(fft2(LN(x))), then the MLP sublayer
    block = fit.blocks[0].eval()
    x = torch.randn(2, 9, 192)
    h = x + torch.fft.fft2(block.norm1(x)).real
    torch.testing.assert_close(block(x), h + block.mlp(block.norm2(h)), rtol=1e-4, atol=1e-4)


def test_attention_matches_explicit_softmax():
    vit = create_model("vit_tiny", depth=1, num_classes=3).eval()
    attn = vit.blocks[0].mixer
    x = torch.randn(2, 5, 192)
    q, k, v = attn.qkv(x).view(2, 5, 3, 3, 64).permute(2, 0, 3, 1, 4)
    weights = torch.softmax(q @ k.transpose(-2, -1) / 8.0, dim=-1)
    expected = attn.proj((weights @ v).transpose(1, 2).reshape(2, 5, 192))
    torch.testing.assert_close(attn(x), expected, rtol=1e-4, atol=1e-5)


def test_positional_embedding_interpolation():
    """At the size it is made for the model adds its position embeddings as they are; at another size (a 6x2 grid
    of patches against 4x4) resampled bicubically: the tokens equal a by-hand computation with ``F.interpolate``."""
    model = create_model("vit_tiny", img_size=16, patch_size=4, depth=1).eval()

    def by_hand(x, pos):
        tokens = model.patch_embed(x).flatten(2).transpose(1, 2) + pos
        tokens = torch.cat([model.cls_token.expand(x.shape[0], -1, -1), tokens], dim=1)
        return model.norm(model.blocks(tokens))

    with torch.no_grad():
        x = torch.randn(2, 3, 16, 16)
        torch.testing.assert_close(model.forward_features(x), by_hand(x, model.pos_embed), rtol=0, atol=0)
        x = torch.randn(2, 3, 24, 8)
        grid = model.pos_embed.reshape(1, 4, 4, -1).permute(0, 3, 1, 2)
        pos = F.interpolate(grid, size=(6, 2), mode="bicubic", align_corners=False).flatten(2).transpose(1, 2)
        torch.testing.assert_close(model.forward_features(x), by_hand(x, pos))


def test_registry_contract():
    model = create_model("fit_small", num_classes=5, in_chans=1, depth=1, global_pool="avg")
    assert model.cls_token is None
    x = torch.randn(2, 1, 32, 32)
    feats = model.forward_features(x)
    assert feats.shape == (2, 64, 384)
    torch.testing.assert_close(model.forward_head(feats), model(x))
    assert model.forward_head(feats, pre_logits=True).shape == (2, 384)
    model.reset_classifier(11)
    assert model(x).shape == (2, 11)
    assert {"pos_embed", "cls_token"} == model.no_weight_decay()
    groups = param_groups(model, lr=1e-3, weight_decay=0.05)
    no_decay = [n for g in groups if g["weight_decay"] == 0 for n in g["names"]]
    assert "pos_embed" in no_decay


def test_bad_inputs():
    model = create_model("vit_tiny", depth=1)
    with pytest.raises(ValueError, match="multiples of patch_size=4"):
        model(torch.randn(1, 3, 30, 32))
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        model(torch.randn(1, 1, 32, 32))
    with pytest.raises(ValueError, match="mixer"):
        VisionTransformer(mixer="mlp")
    with pytest.raises(ValueError, match="img_size"):
        VisionTransformer(img_size=30, patch_size=4)
