"""NoisyLatentClassifier: 2D / 3D shapes, attention-pool head sized from (and adapting to) the input, timestep
conditioning, gradients for guidance, checkpoints, bad input."""

from __future__ import annotations

import pytest
import torch

from monai_genaug.networks.noisy_classifier import (
    AttentionPool,
    NoisyLatentClassifier,
    classifier_config,
)
from monai_genaug.utils.checkpoint import (
    CheckpointMismatchError,
    check_state_dict_compatible,
)


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Every test of this file on one torch thread."""


def _tiny(spatial_dims: int = 2, input_shape=(16, 16), **kw) -> NoisyLatentClassifier:
    torch.manual_seed(0)
    return NoisyLatentClassifier.from_preset(
        "tiny", spatial_dims=spatial_dims, in_channels=2, num_classes=3, input_shape=input_shape, **kw
    )


@pytest.mark.parametrize("spatial_dims, shape", [(2, (16, 16)), (3, (8, 8, 8))])
def test_shapes_2d_3d(spatial_dims, shape):
    clf = _tiny(spatial_dims, shape)
    x = torch.randn(4, 2, *shape)
    logits = clf(x, torch.tensor([0, 10, 500, 999]))
    assert logits.shape == (4, 3)
    assert clf.features(x, 0).shape == (4, 32)  # last level of the tiny preset
    # the positional embedding is sized from input_shape: one level of down-sampling halves it
    assert tuple(clf.pool.pos_grid.shape[2:]) == tuple(s // 2 for s in shape)


@pytest.mark.parametrize("spatial_dims, built, other", [(2, (16, 16), (24, 12)), (3, (8, 8, 8), (4, 8, 12))])
def test_head_adapts_to_other_input_sizes(spatial_dims, built, other):
    clf = _tiny(spatial_dims, built).eval()
    logits = clf(torch.randn(2, 2, *other), 5)
    assert logits.shape == (2, 3) and torch.isfinite(logits).all()
    assert tuple(clf.pool.positional_grid([s // 2 for s in other]).shape[2:]) == tuple(s // 2 for s in other)
    # at the size it was built for, the embedding is used as is (no interpolation)
    assert clf.pool.positional_grid(clf.pool.grid_shape) is clf.pool.pos_grid


def test_paper_preset_grid_is_2x2_for_64px_latents():
    # the paper's 6-level encoder (5 down-samplings) gives the original's fixed 2 x 2 grid at 64 x 64 latents;
    # narrow channels keep the test cheap
    cfg = classifier_config("paper", 2, 3, 9, (64, 64), channels=[8] * 6, num_head_channels=8, norm_num_groups=8)
    clf = NoisyLatentClassifier.from_config(cfg)
    assert clf.pool.grid_shape == (2, 2)
    assert clf.grid_shape((128, 96)) == (4, 3)


def test_timestep_conditioning_and_input_gradient():
    clf = _tiny().eval()
    with torch.no_grad():  # MONAI zero-initialises the residual branches' last conv: give them weights
        for p in clf.parameters():
            if p.ndim > 1 and not p.any():
                p.normal_(0.0, 0.05)
    x = torch.randn(2, 2, 16, 16, requires_grad=True)
    a, b = clf(x, 0), clf(x, 900)
    assert not torch.allclose(a, b)  # the timestep embedding changes the prediction
    torch.log_softmax(a, dim=1)[:, 1].sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0  # classifier guidance needs d log p / d x


def test_attention_pool_standalone_2d_3d():
    pool = AttentionPool(3, channels=16, out_channels=5, grid_shape=(2, 2, 2), num_head_channels=8)
    assert pool(torch.randn(3, 16, 2, 2, 2)).shape == (3, 5)
    assert pool(torch.randn(3, 16, 3, 1, 2)).shape == (3, 5)
    with pytest.raises(ValueError, match="divisible"):
        AttentionPool(2, channels=12, out_channels=2, grid_shape=(2, 2), num_head_channels=8)


def test_save_load_roundtrip(tmp_path):
    clf = _tiny().eval()
    path = tmp_path / "clf.pt"
    clf.save(path, extra={"class_names": ["a", "b", "c"]})
    loaded = NoisyLatentClassifier.load(path).eval()
    x = torch.randn(2, 2, 16, 16)
    assert torch.equal(clf(x, 3), loaded(x, 3))
    assert NoisyLatentClassifier.read_extra(path)["class_names"] == ["a", "b", "c"]
    torch.save({"format": "something else"}, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="not a NoisyLatentClassifier checkpoint"):
        NoisyLatentClassifier.load(tmp_path / "bad.pt")
    other = NoisyLatentClassifier.from_preset("tiny", spatial_dims=2, in_channels=2, num_classes=4)
    ckpt = torch.load(path, weights_only=True)
    with pytest.raises(CheckpointMismatchError):
        check_state_dict_compatible(other, ckpt["state_dict"])


def test_bad_input():
    clf = _tiny()
    with pytest.raises(ValueError, match="channels"):
        clf(torch.randn(1, 3, 16, 16), 0)
    with pytest.raises(ValueError, match="2D"):
        clf(torch.randn(1, 2, 16, 16, 16), 0)
    with pytest.raises(ValueError, match="timesteps"):
        clf(torch.randn(2, 2, 16, 16), torch.tensor([1, 2, 3]))
    with pytest.raises(ValueError, match="smaller than"):
        NoisyLatentClassifier(2, 2, 3, channels=(8, 8, 8), attention_levels=(False,) * 3, norm_num_groups=8)(
            torch.randn(1, 2, 2, 2), 0
        )
    with pytest.raises(ValueError, match="num_classes"):
        NoisyLatentClassifier(2, 2, 1)
    with pytest.raises(ValueError, match="attention_levels"):
        NoisyLatentClassifier(2, 2, 3, channels=(8, 16), attention_levels=(False,), norm_num_groups=8)
    with pytest.raises(ValueError, match="norm_num_groups"):
        NoisyLatentClassifier(2, 2, 3, channels=(12, 16), attention_levels=(False, False), norm_num_groups=8)
    with pytest.raises(ValueError, match="unknown classifier preset"):
        classifier_config("huge")
