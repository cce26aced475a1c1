# Copyright (c) monai_genaug contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.
"""Tests for monai_genaug.networks.lora on tiny 2D and 3D MONAI diffusion UNets."""

from __future__ import annotations

import pytest
import torch
from monai.networks.nets import DiffusionModelUNet, SPADEDiffusionModelUNet
from torch import nn

from monai_genaug.networks.lora import (
    DEFAULT_LORA_TARGETS,
    apply_lora,
    count_trainable_parameters,
    get_lora_config,
    has_lora,
    load_lora,
    lora_disabled,
    lora_parameters,
    lora_state_dict,
    merge_lora,
    remove_lora,
    resolve_lora_targets,
    save_lora,
    set_lora_enabled,
    set_lora_scale,
)
from monai_genaug.utils.checkpoint import (
    CheckpointMismatchError,
    atomic_save,
    load_checkpoint,
)

# 4 transformer blocks (down level 1, middle, 2 x up level 0), each with attn1 (4 projections) and attn2 (4)
N_BLOCKS = 4
ATTN_SUFFIXES = ("attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.out_proj") + (
    "attn2.to_q",
    "attn2.to_k",
    "attn2.to_v",
    "attn2.out_proj",
)


def _unet(spatial_dims: int, seed: int = 0, **kwargs) -> DiffusionModelUNet:
    torch.manual_seed(seed)
    args = dict(
        spatial_dims=spatial_dims,
        in_channels=1,
        out_channels=1,
        channels=(8, 16),
        attention_levels=(False, True),
        num_res_blocks=1,
        norm_num_groups=8,
        num_head_channels=8,
        with_conditioning=True,
        cross_attention_dim=8,
    )
    args.update(kwargs)
    return _unzero(DiffusionModelUNet(**args), seed)


def _unzero(net: nn.Module, seed: int = 0) -> nn.Module:
    """MONAI zero-initialises the output conv, proj_out and resnet conv2: the fresh net outputs exactly 0.

    Draw those weights at random so that outputs (and the attention layers' effect) are non-trivial.
    """
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            if p.dim() > 1 and not p.any():
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
    return net.eval()


def _inputs(spatial_dims: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(123)
    size = (16, 16) if spatial_dims == 2 else (8, 8, 8)
    x = torch.randn((2, 1) + size, generator=g)
    t = torch.tensor([10, 700])
    context = torch.randn(2, 3, 8, generator=g)
    return x, t, context


def _randomise_lora(model: nn.Module, seed: int = 7) -> None:
    """Give B non-zero values so the adapters change the output (as training would)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in lora_parameters(model):
            p.copy_(0.3 * torch.randn(p.shape, generator=g))


def _base_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items() if "lora_" not in k}


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_apply_keeps_output_class_and_freezes(spatial_dims):
    net = _unet(spatial_dims)
    x, t, c = _inputs(spatial_dims)
    with torch.no_grad():
        before = net(x, t, context=c)
    assert before.abs().mean() > 1e-2  # the comparison below is not between two zero tensors
    expected = sum(
        4 * (m.in_features + m.out_features)
        for n, m in net.named_modules()
        if isinstance(m, nn.Linear) and n.endswith(ATTN_SUFFIXES)
    )
    out = apply_lora(net, generator=torch.Generator().manual_seed(0))
    assert out is net and type(net) is DiffusionModelUNet and has_lora(net)
    with torch.no_grad():
        after = net(x, t, context=c)
    assert torch.equal(before, after)  # B = 0 at init
    trainable = [n for n, p in net.named_parameters() if p.requires_grad]
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    assert len(trainable) == 2 * N_BLOCKS * len(ATTN_SUFFIXES)
    # rank 4: A (4 x in) + B (out x 4) per layer; attn2.to_k/to_v read the 8-dim context
    assert count_trainable_parameters(net) == expected == N_BLOCKS * 4 * (4 * 32 + 32 + 24 + 24 + 32)
    assert sum(p.numel() for p in lora_parameters(net)) == expected
    assert get_lora_config(net) == {"rank": 4, "alpha": 4, "dropout": 0.0, "target_modules": list(DEFAULT_LORA_TARGETS)}
    # B is zero, A is not
    state = lora_state_dict(net)
    assert all(v.abs().sum() == 0 for k, v in state.items() if ".lora_B." in k)
    assert all(v.abs().sum() > 0 for k, v in state.items() if ".lora_A." in k)


def test_target_selection():
    net = _unet(2)
    self_names = resolve_lora_targets(net, "self_attention")
    cross_names = resolve_lora_targets(net, "cross_attention")
    all_names = resolve_lora_targets(net)
    assert len(self_names) == len(cross_names) == 4 * N_BLOCKS
    assert all(".attn1." in n for n in self_names) and all(".attn2." in n for n in cross_names)
    assert sorted(all_names) == sorted(self_names + cross_names)
    kv = [n for n in cross_names if "to_k" in n or "to_v" in n]
    assert resolve_lora_targets(net, ["attn2.to_k", "attn2.to_v"]) == kv
    assert resolve_lora_targets(net, r"middle_block\..*\.attn1\.to_q") == [
        "middle_block.attention.transformer_blocks.0.attn1.to_q"
    ]
    # combined qkv projection: qkv is targeted, the nn.Identity left at to_q/to_k/to_v is not
    combined = _unet(2, use_combined_linear=True)
    names = resolve_lora_targets(combined)
    assert sum(n.endswith("attn1.qkv") for n in names) == N_BLOCKS
    assert not any(n.endswith("attn1.to_q") for n in names)
    x, t, c = _inputs(2)
    with torch.no_grad():
        ref = combined(x, t, context=c)
        apply_lora(combined, rank=2)
        assert torch.equal(ref, combined(x, t, context=c))
    assert count_trainable_parameters(combined) == N_BLOCKS * 2 * ((16 + 48) + 32 + 32 + 24 + 24 + 32)


def test_conv_targets_and_generic_module():
    net = _unet(2)
    x, t, c = _inputs(2)
    with torch.no_grad():
        ref = net(x, t, context=c)
    apply_lora(net, rank=2, target_modules=["proj_in.conv", "proj_out.conv"])
    # 1x1 convs 16 -> 16: A (2, 16, 1, 1) + B (16, 2, 1, 1), two per block
    assert count_trainable_parameters(net) == N_BLOCKS * 2 * 2 * (16 + 16)
    _randomise_lora(net)
    with torch.no_grad():
        adapted = net(x, t, context=c)
    assert not torch.allclose(adapted, ref)
    merge_lora(net)
    with torch.no_grad():
        assert torch.allclose(net(x, t, context=c), adapted, atol=1e-5)

    class Toy(nn.Module):
        def __init__(self):
            super().__init__()
            self.to_q, self.to_k, self.to_v, self.out_proj = (nn.Linear(6, 6) for _ in range(4))
            self.mha = nn.MultiheadAttention(6, 2, batch_first=True)

        def forward(self, x):
            q, k, v = self.to_q(x), self.to_k(x), self.to_v(x)
            w = torch.softmax(q @ k.transpose(1, 2), -1)
            return self.out_proj(w @ v) + self.mha(x, x, x)[0]

    with pytest.warns(UserWarning, match="MultiheadAttention"):
        toy = apply_lora(Toy())
    assert sorted(resolve_lora_targets(Toy(), ["to_q", "to_k", "to_v"])) == ["to_k", "to_q", "to_v"]
    assert count_trainable_parameters(toy) == 4 * 4 * 12


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_training_reduces_loss_and_keeps_base(spatial_dims):
    net = apply_lora(_unet(spatial_dims), generator=torch.Generator().manual_seed(0))
    base = _base_state(net)
    x, t, c = _inputs(spatial_dims)
    target = torch.randn(x.shape, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        start = net(x, t, context=c)
    net.train()
    opt = torch.optim.Adam(lora_parameters(net), lr=1e-2)
    losses = []
    for _ in range(12):
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(net(x, t, context=c), target)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    net.eval()
    assert losses[-1] < 0.95 * losses[0]
    with torch.no_grad():
        assert not torch.allclose(net(x, t, context=c), start, atol=1e-4)
    after = _base_state(net)
    assert after.keys() == base.keys() and all(torch.equal(after[k], base[k]) for k in base)
    assert all(p.grad is None for n, p in net.named_parameters() if "lora_" not in n)


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_save_load_roundtrip(tmp_path, spatial_dims):
    net = apply_lora(_unet(spatial_dims), rank=2, alpha=3.0, target_modules="cross_attention")
    _randomise_lora(net)
    x, t, c = _inputs(spatial_dims)
    with torch.no_grad():
        expected = net(x, t, context=c)
    path = save_lora(net, tmp_path / "sub" / "lora.pt", config={"spatial_dims": spatial_dims, "channels": (8, 16)})
    ckpt = load_checkpoint(path)
    assert set(ckpt) == {"lora", "lora_config", "config"}
    assert ckpt["lora_config"] == {"rank": 2, "alpha": 3.0, "dropout": 0.0, "target_modules": "cross_attention"}
    assert ckpt["config"] == {"spatial_dims": spatial_dims, "channels": [8, 16]}
    assert set(ckpt["lora"]) == set(lora_state_dict(net))
    assert all(".lora_A." in k or ".lora_B." in k for k in ckpt["lora"])
    assert not any(".default." in k for k in ckpt["lora"])  # keys carry no adapter name
    full = atomic_save({"state": _unet(spatial_dims).state_dict()}, tmp_path / "full.pt")
    assert path.stat().st_size < 0.25 * full.stat().st_size

    fresh = _unet(spatial_dims)  # same base weights, no adapters: the stored config is applied
    with torch.no_grad():
        assert not torch.allclose(fresh(x, t, context=c), expected)
    load_lora(fresh, path)
    assert type(fresh) is DiffusionModelUNet
    assert get_lora_config(fresh) == ckpt["lora_config"]
    with torch.no_grad():
        assert torch.equal(fresh(x, t, context=c), expected)
    # a network that already has adapters of the same config loads too (another adapter name)
    again = apply_lora(_unet(spatial_dims), rank=2, alpha=3.0, target_modules="cross_attention", adapter_name="dom")
    load_lora(again, path)
    with torch.no_grad():
        assert torch.equal(again(x, t, context=c), expected)


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_merge_matches_and_gives_plain_unet(spatial_dims):
    net = apply_lora(_unet(spatial_dims))
    _randomise_lora(net)
    x, t, c = _inputs(spatial_dims)
    with torch.no_grad():
        adapted = net(x, t, context=c)
        base_out = _unet(spatial_dims)(x, t, context=c)
    assert not torch.allclose(adapted, base_out, atol=1e-4)
    out = merge_lora(net)
    assert out is net and not has_lora(net) and get_lora_config(net) is None
    assert type(net.middle_block.attention.transformer_blocks[0].attn2.to_k) is nn.Linear
    with torch.no_grad():
        merged = net(x, t, context=c)
    assert torch.allclose(merged, adapted, atol=1e-5)
    plain = _unet(spatial_dims, seed=99)
    assert list(net.state_dict()) == list(plain.state_dict())
    plain.load_state_dict(net.state_dict())
    with torch.no_grad():
        assert torch.allclose(plain(x, t, context=c), adapted, atol=1e-5)
    # after a merge a new adapter can be stacked
    apply_lora(net, rank=2)
    assert count_trainable_parameters(net) == sum(p.numel() for p in lora_parameters(net))


def test_spade_unet():
    torch.manual_seed(0)
    kw = dict(
        spatial_dims=2,
        in_channels=1,
        out_channels=1,
        label_nc=3,
        channels=(8, 16),
        attention_levels=(False, True),
        num_res_blocks=1,
        norm_num_groups=8,
        num_head_channels=8,
        with_conditioning=True,
        cross_attention_dim=8,
    )
    net = _unzero(SPADEDiffusionModelUNet(**kw))
    x, t, c = _inputs(2)
    seg = torch.zeros(2, 3, 16, 16)
    seg[:, 0, :8] = 1
    seg[:, 1, 8:] = 1
    with torch.no_grad():
        ref = net(x, t, seg, context=c)
        apply_lora(net)
        assert type(net) is SPADEDiffusionModelUNet
        assert torch.equal(net(x, t, seg, context=c), ref)
        _randomise_lora(net)
        adapted = net(x, t, seg, context=c)
        merge_lora(net)
        assert torch.allclose(net(x, t, seg, context=c), adapted, atol=1e-5)
    torch.manual_seed(0)
    assert list(net.state_dict()) == list(SPADEDiffusionModelUNet(**kw).state_dict())


def test_scale_enable_and_remove():
    net = apply_lora(_unet(2))
    _randomise_lora(net)
    x, t, c = _inputs(2)
    with torch.no_grad():
        base_out = _unet(2)(x, t, context=c)
        adapted = net(x, t, context=c)
        with lora_disabled(net):
            assert torch.equal(net(x, t, context=c), base_out)
        assert torch.equal(net(x, t, context=c), adapted)
        assert all(p.requires_grad for p in lora_parameters(net))
        set_lora_enabled(net, False)
        assert torch.equal(net(x, t, context=c), base_out)
        with pytest.raises(ValueError, match="disabled"):
            merge_lora(net)
        set_lora_enabled(net, True)
        set_lora_scale(net, 0.0)
        assert torch.allclose(net(x, t, context=c), base_out, atol=1e-6)
        set_lora_scale(net, 0.5)
        half = net(x, t, context=c)
        assert not torch.allclose(half, adapted) and not torch.allclose(half, base_out)
        set_lora_scale(net, 1.0)
        assert torch.allclose(net(x, t, context=c), adapted, atol=1e-6)
        remove_lora(net)
        assert not has_lora(net)
        assert torch.equal(net(x, t, context=c), base_out)
    assert list(net.state_dict()) == list(_unet(2).state_dict())


def test_reproducible_init():
    a = lora_state_dict(apply_lora(_unet(2), generator=torch.Generator().manual_seed(3)))
    b = lora_state_dict(apply_lora(_unet(2), generator=torch.Generator().manual_seed(3)))
    c = lora_state_dict(apply_lora(_unet(2), generator=torch.Generator().manual_seed(4)))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a if ".lora_A." in k)


def test_errors(tmp_path):
    net = _unet(2)
    with pytest.raises(ValueError, match=r"matches no nn.Linear.*attn1\.to_q"):
        apply_lora(net, target_modules=["not_a_layer"])
    with pytest.raises(ValueError, match="matches no"):
        apply_lora(net, target_modules=r"time_embed\.1")  # an activation, not a Linear
    with pytest.raises(ValueError, match="not a valid regular expression"):
        apply_lora(net, target_modules="attn(")
    with pytest.raises(ValueError, match="rank"):
        apply_lora(net, rank=0)
    with pytest.raises(ValueError, match="dropout"):
        apply_lora(net, dropout=1.0)
    with pytest.raises(TypeError, match="target_modules"):
        apply_lora(net, target_modules=[1, 2])
    assert not has_lora(net)
    for fn in (lora_state_dict, merge_lora, remove_lora):
        with pytest.raises(ValueError, match="no LoRA"):
            fn(net)
    with pytest.raises(ValueError, match="no LoRA"):
        save_lora(net, tmp_path / "x.pt")
    apply_lora(net)
    with pytest.raises(ValueError, match="already has LoRA"):
        apply_lora(net)

    rank2 = apply_lora(_unet(2), rank=2)
    save_lora(rank2, tmp_path / "rank2.pt")
    shape_msg = r"shape mismatches: .*lora_A\.weight: file \(2, 16\) vs model \(4, 16\)"
    with pytest.raises(CheckpointMismatchError, match=shape_msg):
        load_lora(net, tmp_path / "rank2.pt")

    cross = apply_lora(_unet(2), target_modules="cross_attention")
    save_lora(cross, tmp_path / "cross.pt")
    missing_msg = r"missing keys: .*attn1\.(to_q|to_k|to_v|out_proj)\.lora_A\.weight"
    with pytest.raises(CheckpointMismatchError, match=missing_msg):
        load_lora(net, tmp_path / "cross.pt")
    # non-strict: loads the cross-attention half and warns about the rest
    _randomise_lora(cross)
    save_lora(cross, tmp_path / "cross.pt")
    with pytest.warns(UserWarning, match="missing keys"):
        load_lora(net, tmp_path / "cross.pt", strict=False)
    own, stored = lora_state_dict(net), lora_state_dict(cross)
    assert all(torch.equal(own[k], stored[k]) for k in stored)

    alpha8 = apply_lora(_unet(2), alpha=8)
    save_lora(alpha8, tmp_path / "alpha8.pt")
    with pytest.raises(CheckpointMismatchError, match="alpha=8 vs model rank=4 alpha=4"):
        load_lora(net, tmp_path / "alpha8.pt")

    with pytest.raises(ValueError, match="cannot apply the LoRA config stored in"):
        load_lora(nn.Sequential(nn.Linear(3, 3)), tmp_path / "cross.pt")
    missing = tmp_path / "nope" / "lora.pt"
    with pytest.raises(FileNotFoundError, match="nope"):
        load_lora(_unet(2), missing)
    atomic_save({"state_dict": _unet(2).state_dict()}, tmp_path / "full.pt")
    with pytest.raises(ValueError, match="not a LoRA checkpoint"):
        load_lora(_unet(2), tmp_path / "full.pt")
