"""SequenceDiffusionUNet: identity temporal attention at initialisation, key-frame attention, trainable selection."""

from __future__ import annotations

import pytest
import torch
from monai.networks.nets import DiffusionModelUNet

from monai_genaug.networks.sequence_unet import (
    ImagePriorTokenizer,
    SequenceDiffusionUNet,
    TemporalAttention,
    set_trainable_modules,
)

KW = dict(channels=(8, 16), attention_levels=(False, True), num_res_blocks=1, norm_num_groups=4, num_head_channels=8,
          with_conditioning=True, cross_attention_dim=8, num_class_embeds=3)


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Every test of this file on one torch thread."""


def _inputs(frames=4):
    g = torch.Generator().manual_seed(0)
    return (torch.randn(2, 1, frames, 16, 16, generator=g), torch.tensor([5, 900]), torch.randn(2, 3, 8, generator=g),
            torch.tensor([0, 2]))


def _pretrained_image_unet():
    """An image UNet with every zero-initialised weight (output conv, attention projections) made non-zero, as after
    training, so that the comparisons below are not trivially between zeros."""
    torch.manual_seed(0)
    unet = DiffusionModelUNet(2, 1, 1, **KW).eval()
    with torch.no_grad():
        for p in unet.parameters():
            if float(p.abs().sum()) == 0:
                p.normal_(std=0.2)
    reference = DiffusionModelUNet(2, 1, 1, **KW).eval()
    reference.load_state_dict(unet.state_dict())
    return unet, reference


def _per_frame(unet2d, x, t, ctx, cl):
    return torch.stack([unet2d(x[:, :, i], t, context=ctx, class_labels=cl) for i in range(x.shape[2])], dim=2)


@torch.no_grad()
def test_temporal_attention_is_identity_at_init():
    image_unet, reference = _pretrained_image_unet()
    seq = SequenceDiffusionUNet.from_image_unet(image_unet, key_frame_attention=False).eval()
    x, t, ctx, cl = _inputs()
    expected = _per_frame(reference, x, t, ctx, cl)
    assert expected.abs().mean() > 1e-2
    assert torch.allclose(seq(x, t, ctx, cl), expected, atol=1e-5)
    temporal = seq.temporal_modules()
    assert temporal and all(float(m.out_proj.weight.abs().sum()) == 0 for m in temporal)
    # a trained (non-zero) output projection mixes frames: the output is no longer per-frame
    for m in temporal:
        torch.nn.init.normal_(m.out_proj.weight, std=0.5)
    assert not torch.allclose(seq(x, t, ctx, cl), _per_frame(reference, x, t, ctx, cl), atol=1e-4)
    tm = TemporalAttention(8)
    y = torch.randn(6, 8, 4, 4)
    assert torch.equal(tm(y, 3), y) and torch.equal(tm(y, 1), y)


@torch.no_grad()
def test_key_frame_attention_single_frame_and_causality():
    image_unet, reference = _pretrained_image_unet()
    seq = SequenceDiffusionUNet.from_image_unet(image_unet).eval()
    x, t, ctx, cl = _inputs()
    # one frame: key-frame attention reduces to plain self-attention, so the image UNet is reproduced
    assert torch.allclose(seq(x[:, :, :1], t, ctx, cl), _per_frame(reference, x[:, :, :1], t, ctx, cl), atol=1e-5)
    out = seq(x, t, ctx, cl)
    assert out.shape == x.shape
    # sparse-causal: frame 0 only sees itself, so changing a later frame leaves frame 0 unchanged
    x2 = x.clone()
    x2[:, :, 3] += 1.0
    out2 = seq(x2, t, ctx, cl)
    assert torch.allclose(out[:, :, 0], out2[:, :, 0], atol=1e-5) and not torch.allclose(out[:, :, 3], out2[:, :, 3])
    # the 2D weights keep their names: an image UNet state dict loads with only temporal keys missing
    missing = seq.unet.load_state_dict(reference.state_dict(), strict=False).missing_keys
    assert missing and all(".temporal." in k for k in missing)


def test_trainable_selection_and_errors():
    seq = SequenceDiffusionUNet(2, 1, 1, **KW)
    names = set_trainable_modules(seq)
    assert any("temporal" in n for n in names) and any("attn1" in n for n in names)
    assert not any("resnets" in n for n in names)
    assert not any(p.requires_grad for n, p in seq.named_parameters() if "resnets" in n)
    with pytest.raises(ValueError, match="no parameter name"):
        set_trainable_modules(seq, ["does_not_exist"])
    with pytest.raises(ValueError, match=r"clips \(B, C, F, H, W\)"):
        seq(torch.randn(2, 1, 16, 16), torch.tensor([1, 2]))
    # the middle block always has attention, so even attention_levels=(False, False) gets temporal attention
    plain = SequenceDiffusionUNet(2, 1, 1, channels=(8, 16), attention_levels=(False, False), norm_num_groups=4,
                                  num_res_blocks=1)
    assert len(plain.temporal_modules()) == 1
    with pytest.raises(ValueError, match="spatial_dims"):
        SequenceDiffusionUNet(3, 1, 1, **KW)
    tok = ImagePriorTokenizer(2, 8)
    assert tok(torch.randn(3, 2, 4, 4)).shape == (3, 4, 8)
    with pytest.raises(ValueError, match="image prior must be"):
        tok(torch.randn(3, 5, 4, 4))
