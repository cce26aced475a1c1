"""Temporal-consistency (k-means midpoints) and near-duplicate filters keep / reject planted clips."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from monai_genaug.filters.base import FilterChain, NotFittedError
from monai_genaug.filters.temporal import (
    NearDuplicateFilter,
    TemporalConsistencyFilter,
    kmeans_1d,
    temporal_consistency,
)


def _clip(kind: str, seed: int, frames: int = 4, size: int = 16) -> torch.Tensor:
    """A textured frame plus a flickering pattern of a planted amplitude: none (static), small (smooth), medium
    (moderate) or large (jittery), scores about 100, 95, 83 and 45; ``seed`` varies the amplitude slightly and the
    base a little."""
    g = torch.Generator().manual_seed(0)
    base = torch.rand(size, size, generator=g) + 0.5
    pattern = torch.rand(size, size, generator=g) - 0.5
    amount = {"static": 0.0, "smooth": 0.4, "moderate": 0.8, "jitter": 2.0}[kind] * (1 + 0.01 * seed)
    return torch.stack([base + 0.001 * seed + amount * (-1) ** t * pattern for t in range(frames)])[None]


def test_kmeans_midpoints_and_score():
    x = np.array([1.0, 1.1, 0.9, 5.0, 5.2, 9.0, 9.1, 20.0, 20.2])
    c = kmeans_1d(x, 4, seed=3407)
    assert np.allclose(c, [1.0, 5.1, 9.05, 20.1], atol=1e-6)
    assert np.allclose(c, kmeans_1d(x, 4, seed=3407))  # deterministic
    with pytest.raises(ValueError, match="distinct"):
        kmeans_1d([1.0, 1.0, 2.0], 4)
    clips = torch.stack([_clip("static", 0), _clip("jitter", 1)])
    s = temporal_consistency(clips)
    assert torch.isclose(s[0], torch.tensor(100.0)) and s[1] < s[0]


def test_temporal_filter_rejects_static_and_jittery_clips():
    kinds = ["static"] * 3 + ["jitter"] * 3 + ["smooth"] * 3 + ["moderate"] * 3
    clips = torch.stack([_clip(k, i) for i, k in enumerate(kinds)])
    flt = TemporalConsistencyFilter(k=4, seed=3407)
    result = flt(clips)
    keep = dict(zip(range(12), result.keep.tolist()))
    assert not any(keep[i] for i in range(6))  # static and jittery rejected
    assert all(keep[i] for i in range(6, 12))  # plausible motion kept
    assert result.details["low"] < result.details["high"]
    c = result.details["centroids"]
    assert np.isclose(result.details["low"], (c[0] + c[1]) / 2) and np.isclose(result.details["high"], (c[2] + c[3]) / 2)
    # too few distinct scores: nothing can be fitted, all candidates kept, and the reason is reported
    few = TemporalConsistencyFilter()(clips[:2])
    assert few.keep.all() and "fewer than" in few.details["reason"]
    with pytest.raises(ValueError, match="frames"):
        temporal_consistency(torch.rand(2, 1, 1, 8, 8))


def test_near_duplicates_removed_within_groups_only():
    a, b = _clip("smooth", 0), torch.rand(1, 4, 16, 16, generator=torch.Generator().manual_seed(3)) - 0.5
    dup = a + 0.001 * torch.rand(a.shape, generator=torch.Generator().manual_seed(5))
    clips = torch.stack([a, dup, b, a])
    groups = ["s1", "s1", "s1", "s2"]
    result = NearDuplicateFilter(threshold=0.98, groups=groups)(clips)
    assert result.keep.tolist() == [True, False, True, True]  # the copy in another group is another source's sample
    assert result.scores[1] >= 0.98 and result.scores[0] == -1.0
    # the original's threshold (98) against a cosine can never fire; it is refused with the fix
    with pytest.raises(ValueError, match="0.98"):
        NearDuplicateFilter(threshold=98)
    chain = FilterChain([TemporalConsistencyFilter(), NearDuplicateFilter(groups=groups)])
    assert chain(clips).scores.shape == (4, 2)


def test_reference_calibration_keeps_real_like_clips_only():
    # real clips are smooth (scores ~95); generated ones: static, smooth, moderate, jittery. k-means thresholds from
    # the generated clips keep their middle (moderate included); thresholds from the real range keep the smooth ones
    real = torch.stack([_clip("smooth", s) for s in range(4)])
    gen = torch.stack([_clip(k, s) for k in ("static", "smooth", "moderate", "jitter") for s in range(3)])
    kinds = [k for k in ("static", "smooth", "moderate", "jitter") for _ in range(3)]
    kmeans = TemporalConsistencyFilter()(gen)
    assert any(k == "moderate" and bool(keep) for k, keep in zip(kinds, kmeans.keep))
    flt = TemporalConsistencyFilter(calibration="reference", margin=0.5)
    with pytest.raises(NotFittedError, match="fit\\(real_clips\\)"):
        flt(gen)
    result = flt.fit(real)(gen)
    assert [k for k, keep in zip(kinds, result.keep) if keep] == ["smooth"] * 3
    ref = flt.reference_scores
    assert result.details["low"] == pytest.approx(float(ref.min()) - 0.5)
    assert result.details["high"] == pytest.approx(float(ref.max()) + 0.5)
    with pytest.raises(ValueError, match="reference_quantiles"):
        TemporalConsistencyFilter(calibration="reference", reference_quantiles=(0.9, 0.1))
