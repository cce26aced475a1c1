"""LatentMappingNet: spatial size kept in 2D/3D, the paper's parameter count, deep-supervision heads, bad input."""

from __future__ import annotations

import pytest
import torch

from monai_genaug.networks.latent_mapping import LatentMappingNet, head_names

TINY = {"channels": 8, "channel_mult": (1, 2, 4, 4), "norm_num_groups": 4}


@pytest.mark.parametrize(
    "spatial_dims,shape,in_ch,out_ch",
    [(2, (2, 4, 7, 9), 4, 4), (2, (1, 3, 8, 8), 3, 6), (3, (1, 4, 4, 5, 6), 4, 8), (3, (2, 2, 3, 3, 3), 2, 2)],
)
def test_keeps_spatial_size(spatial_dims, shape, in_ch, out_ch):
    net = LatentMappingNet(spatial_dims, in_channels=in_ch, out_channels=out_ch, **TINY)
    x = torch.randn(*shape)
    y = net(x)
    assert y.shape == (shape[0], out_ch, *shape[2:])
    heads = net.forward_heads(x)
    for v in heads.values():
        assert v.shape == y.shape
    torch.testing.assert_close(heads["out"], y)


def test_paper_parameter_count():
    # spec B4: 1.560 M without the unused level3 head, 1.565 M with it; the paper says 1.5 M
    net = LatentMappingNet(2, in_channels=4, out_channels=4, channels=32)
    n = sum(p.numel() for p in net.parameters())
    assert abs(n - 1.560e6) < 0.005e6, n
    with_level3 = LatentMappingNet(2, channels=32, deep_supervision=("level3", "level2", "level1"))
    n3 = sum(p.numel() for p in with_level3.parameters())
    assert abs(n3 - 1.565e6) < 0.005e6 and n3 > n
    # no down-sampling anywhere: every conv has stride 1
    assert all(m.stride == (1, 1) for m in net.modules() if isinstance(m, torch.nn.Conv2d))


def test_deep_supervision_heads():
    assert head_names(4) == ("level3", "level2", "level1", "out")
    net = LatentMappingNet(2, **TINY)
    assert net.heads == ("level2", "level1", "out")
    assert set(net.forward_heads(torch.randn(1, 4, 4, 4))) == {"level2", "level1", "out"}
    assert set(net.forward_heads(torch.randn(1, 4, 4, 4), heads=("out",))) == {"out"}
    only_out = LatentMappingNet(2, deep_supervision=False, **TINY)
    assert only_out.heads == ("out",)
    assert sum(p.numel() for p in only_out.parameters()) < sum(p.numel() for p in net.parameters())
    two = LatentMappingNet(2, channels=8, channel_mult=(1, 2), norm_num_groups=4)
    assert two.heads == ("level1", "out")  # the paper's defaults that exist in a 2-stage net
    with pytest.raises(ValueError, match="were not built"):
        only_out.forward_heads(torch.randn(1, 4, 4, 4), heads=("level1",))
    with pytest.raises(ValueError, match="unknown deep-supervision heads"):
        LatentMappingNet(2, deep_supervision=("level7",), **TINY)


def test_heads_differ_and_get_gradients():
    net = LatentMappingNet(2, **TINY)
    heads = net.forward_heads(torch.randn(2, 4, 5, 5))
    assert not torch.allclose(heads["level1"], heads["out"])
    sum(h.square().mean() for h in heads.values()).backward()
    assert all(p.grad is not None for n, p in net.named_parameters() if "head_modules" in n)


def test_flash_attention_matches():
    torch.manual_seed(0)
    net = LatentMappingNet(3, **TINY).eval()
    flash = LatentMappingNet(3, use_flash_attention=True, **TINY).eval()
    flash.load_state_dict(net.state_dict())
    x = torch.randn(1, 4, 3, 4, 3)
    torch.testing.assert_close(flash(x), net(x), rtol=1e-4, atol=1e-4)


def test_attention_flags_and_bad_arguments():
    no_attn = LatentMappingNet(2, attention=False, **TINY)
    assert sum(p.numel() for p in no_attn.parameters()) < sum(p.numel() for p in LatentMappingNet(2, **TINY).parameters())
    LatentMappingNet(2, attention=[False] * 4 + [True] * 4, **TINY)  # decoder-only attention
    with pytest.raises(ValueError, match="needs 8 flags"):
        LatentMappingNet(2, attention=[True] * 3, **TINY)
    with pytest.raises(ValueError, match="norm_num_groups"):
        LatentMappingNet(2, channels=12, norm_num_groups=8)
    with pytest.raises(ValueError, match="spatial_dims"):
        LatentMappingNet(1)
    with pytest.raises(ValueError, match="channel_mult"):
        LatentMappingNet(2, channel_mult=(1,))
    net = LatentMappingNet(2, **TINY)
    with pytest.raises(ValueError, match=r"expects a \(B, 4, H, W\)"):
        net(torch.randn(1, 3, 4, 4))
    with pytest.raises(ValueError, match="2D"):
        net(torch.randn(1, 4, 4, 4, 4))
