"""view_diversity: identical views give MAE 0, SSIM 1 and full agreement; changed views lower them."""

from __future__ import annotations

import pytest
import torch

from monai_genaug.metrics.view_diversity import DIVERSITY_KEYS, hard_prediction, view_diversity


def _probs(labels: torch.Tensor) -> torch.Tensor:
    """Two-class probabilities (N, 2, H, W) from binary label maps (N, H, W)."""
    fg = labels.float() * 0.8 + 0.1
    return torch.stack([1 - fg, fg], dim=1)


def test_identical_views_are_not_diverse():
    image = torch.rand(1, 16, 16, generator=torch.Generator().manual_seed(0))
    views = image[None].repeat(3, 1, 1, 1)
    labels = (image[0] > 0.5)[None].repeat(3, 1, 1)
    d = view_diversity(image, views, _probs(labels), _probs(labels[:1])[0])
    assert set(d) == set(DIVERSITY_KEYS)
    assert d["view_mae"] == pytest.approx(0.0) and d["view_ssim"] == pytest.approx(1.0, abs=1e-4)
    assert d["view_agreement"] == 1.0 and d["view_pairwise_agreement"] == 1.0


def test_changed_views_and_predictions_lower_the_scores():
    image = torch.zeros(1, 8, 8)
    views = torch.zeros(2, 1, 8, 8)
    views[1, :, :4] = 1.0  # half of view 1 brightened by 1
    labels = torch.zeros(2, 8, 8, dtype=torch.bool)
    labels[1, :2] = True  # view 1's prediction differs on 16 of 64 pixels
    d = view_diversity(image, views, _probs(labels), _probs(torch.zeros(1, 8, 8))[0])
    assert d["view_mae"] == pytest.approx(0.25)  # (32 / 64) / 2 views
    assert d["view_ssim"] < 0.9
    assert d["view_agreement"] == pytest.approx(1 - 16 / 128)
    assert d["view_pairwise_agreement"] == pytest.approx(1 - 16 / 64)
    assert hard_prediction(_probs(labels), binary=False).shape == (2, 1, 8, 8)


def test_shape_mismatch_is_refused():
    with pytest.raises(ValueError, match="views must be"):
        view_diversity(torch.zeros(1, 8, 8), torch.zeros(2, 1, 4, 4), torch.zeros(2, 2, 8, 8), torch.zeros(2, 8, 8))
