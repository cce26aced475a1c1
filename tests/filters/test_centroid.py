"""Filter API and the centroid filter: planted faithful / mislabelled samples, ranking and caps, determinism,
chains, datalist input, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from monai_genaug.filters.base import (
    FeatureFilter,
    FilterChain,
    NotFittedError,
    SyntheticFilter,
)
from monai_genaug.filters.centroid import CentroidFilter, class_centroids


def flat(x: torch.Tensor) -> torch.Tensor:
    """Feature extractor of the constructed cases: the image itself, flattened."""
    return x.flatten(1)


def _vec(*v: float) -> torch.Tensor:
    return torch.tensor(v, dtype=torch.float32).view(1, 1, 1, -1)  # a (1, C=1, H=1, W=D) "image"


def _reference():
    # class 0 around direction e0, class 1 around e1, class 2 around e2 (3-D features)
    ref = torch.cat(
        [_vec(1, 0.1, 0), _vec(1, 0, 0.1), _vec(0.1, 1, 0), _vec(0, 1, 0.1), _vec(0, 0.1, 1), _vec(0.1, 0, 1)]
    )
    return ref, [0, 0, 1, 1, 2, 2]


def test_keeps_faithful_rejects_mislabelled():
    ref, labels = _reference()
    flt = CentroidFilter(flat).fit(ref, labels)
    samples = torch.cat([_vec(2, 0.1, 0.1), _vec(0.1, 3, 0), _vec(0, 0.2, 1)])  # all look like 0, 1, 2
    intended = [0, 0, 2]  # the second one was generated for class 0 but looks like class 1
    result = flt(samples, intended)
    assert result.keep.tolist() == [True, False, True]
    assert result.details["nearest"].tolist() == [0, 1, 2]
    assert result.details["reason"].tolist() == [0, 2, 0]
    assert result.indices() == [0, 2]
    assert result.select(["a", "b", "c"]) == ["a", "c"]
    # the score is the distance to the intended class: the mislabelled sample is far from class 0
    assert result.scores[1] > result.scores[0]
    # centroids are means of L2-normalised features, not re-normalised
    c, counts = class_centroids(flat(ref), torch.tensor(labels), 3)
    assert torch.allclose(flt.centroids, c) and counts.tolist() == [2, 2, 2]
    assert float(flt.centroids[0].norm()) < 1.0


def test_rank_and_cap_per_class_deterministic():
    ref, labels = _reference()
    flt = CentroidFilter(flat, max_per_class=2).fit(ref, labels)
    # four faithful class-0 samples at growing angles from e0, in shuffled order, plus a tie
    s = torch.cat([_vec(1, 0.3, 0), _vec(1, 0.05, 0.05), _vec(1, 0.5, 0), _vec(1, 0.1, 0.1), _vec(1, 0.05, 0.05)])
    r1 = flt(s, 0)
    r2 = flt(s, 0)
    assert r1.num_kept == 2  # exact cap (the original's `cnt <= 500` let one more through)
    assert r1.indices() == [1, 4]  # the two closest; the tie is broken by sample index
    assert torch.equal(r1.keep, r2.keep) and torch.equal(r1.order, r2.order) and torch.equal(r1.scores, r2.scores)
    assert r1.details["rank"].tolist() == [-1, 0, -1, -1, 1]
    assert r1.details["reason"].tolist() == [4, 0, 4, 4, 0]
    # without a cap every faithful sample is kept, ranked by distance
    all_kept = CentroidFilter(flat).fit(ref, labels)(s, 0)
    assert all_kept.indices() == [1, 4, 3, 0, 2]


def test_ratio_to_real_cap_and_threshold():
    ref, labels = _reference()
    s = torch.cat([_vec(1, 0.1 * i, 0) for i in range(5)])
    flt = CentroidFilter(flat, ratio_to_real=1.5).fit(ref, labels)  # 2 real per class -> cap 3
    assert flt.caps().tolist() == [3, 3, 3]
    assert flt(s, 0).num_kept == 3
    both = CentroidFilter(flat, ratio_to_real=1.5, max_per_class=1).fit(ref, labels)
    assert both.caps().tolist() == [1, 1, 1]
    far = CentroidFilter(flat, max_distance=0.01).fit(ref, labels)(s, 0)
    assert far.num_kept < 5 and set(far.details["reason"][~far.keep].tolist()) == {3}


def test_cosine_metric_and_real_plus_synthetic_centroids():
    ref, labels = _reference()
    s = torch.cat([_vec(1, 0.2, 0), _vec(0.6, 0.5, 0)])  # second one is borderline between 0 and 1
    cos = CentroidFilter(flat, metric="cosine").fit(ref, labels)(s, 0)
    assert cos.keep[0] and cos.scores[0] < cos.scores[1]
    real = CentroidFilter(flat).fit(ref, labels)
    mixed = CentroidFilter(flat, centroid_source="real+synthetic").fit(ref, labels)
    d_real = real(s, [0, 0]).details["distances"]
    d_mixed = mixed(s, [0, 0]).details["distances"]
    assert not torch.allclose(d_real[:, 0], d_mixed[:, 0])  # class-0 centroid moved towards the samples
    assert torch.allclose(d_real[:, 2], d_mixed[:, 2])  # class 2 got no synthetic sample


def test_datalist_input_with_transform_and_labels_from_items():
    ref, labels = _reference()
    reference = [{"img": ref[i].numpy(), "y": labels[i]} for i in range(len(labels))]

    def load(item):
        return {**item, "img": torch.as_tensor(item["img"]) * 1.0}

    flt = CentroidFilter(flat, image_key="img", label_key="y", transform=load, batch_size=4).fit(reference)
    samples = [{"img": _vec(2, 0, 0)[0].numpy(), "y": 0}, {"img": _vec(0, 2, 0)[0].numpy(), "y": 0}]
    assert flt(samples).keep.tolist() == [True, False]


def test_filter_chain_caps_only_survivors():
    ref, labels = _reference()

    class NormFilter(SyntheticFilter):
        """Keeps samples whose feature norm is at most the threshold (no fit needed)."""

        requires_fit = False

        def score(self, samples, labels=None):
            return samples.flatten(1).norm(dim=1)

    s = torch.cat([_vec(5, 0, 0), _vec(1, 0.01, 0), _vec(1, 0.2, 0), _vec(1, 0.4, 0)])
    chain = NormFilter(threshold=2.0) >> CentroidFilter(flat, max_per_class=2)
    assert isinstance(chain, FilterChain)
    with pytest.raises(NotFittedError):
        chain(s, 0)
    result = chain.fit(ref, labels)(s, 0)
    # sample 0 is the closest in direction but fails the norm filter: the cap of 2 goes to samples 1 and 2
    assert result.keep.tolist() == [False, True, True, False]
    assert result.indices() == [1, 2]
    assert result.scores.shape == (4, 2)
    assert result.details["names"] == ["NormFilter", "CentroidFilter"]
    assert chain.score(s, 0).shape == (4, 2)


def test_feature_maps_are_pooled_and_modules_restored():
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 1), torch.nn.Dropout(0.5))
    net.train()
    flt = FeatureFilter(net)
    feats = flt.features(torch.randn(3, 1, 4, 4))
    assert feats.shape == (3, 4)
    assert net.training  # features are computed in eval mode, the mode is restored


def test_bad_input():
    ref, labels = _reference()
    with pytest.raises(ValueError, match="empty"):
        CentroidFilter(flat).fit(torch.zeros(0, 1, 1, 3), [])
    with pytest.raises(ValueError, match="no reference sample"):
        CentroidFilter(flat, num_classes=4).fit(ref, labels)
    with pytest.raises(NotFittedError, match="not fitted"):
        CentroidFilter(flat)(ref, labels)
    flt = CentroidFilter(flat).fit(ref, labels)
    with pytest.raises(ValueError, match="feature dimension mismatch"):
        flt(torch.zeros(2, 1, 1, 4), [0, 1])
    with pytest.raises(ValueError, match="outside the fitted classes"):
        flt(ref[:2], [0, 3])
    with pytest.raises(ValueError, match="labels"):
        flt(ref[:2], [0, 1, 2])
    with pytest.raises(ValueError, match="labels are needed"):
        flt(ref[:2])
    with pytest.raises(ValueError, match="metric"):
        CentroidFilter(flat, metric="l1")
    with pytest.raises(ValueError, match="max_per_class"):
        CentroidFilter(flat, max_per_class=-1)
    with pytest.raises(ValueError, match="centroid_source"):
        CentroidFilter(flat, centroid_source="synthetic")
    with pytest.raises(ValueError, match="select"):
        flt(ref[:2], [0, 1]).select([1, 2, 3])
    with pytest.raises(TypeError, match="transform"):
        flt([{"image": "/some/file.png"}], [0])
    with pytest.raises(TypeError, match="feature_fn"):
        CentroidFilter(np.zeros(3))
