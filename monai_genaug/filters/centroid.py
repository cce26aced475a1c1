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
"""Centroid-based selective filtering of class-conditional synthetic samples (HistoDiffusion's stage 5).

Ye et al., "Synthetic Augmentation with Large-scale Unconditional Pre-training", MICCAI 2023, arXiv:2308.04020.
Features of real labelled images (from any feature extractor; the paper uses a self-supervised ViT-S/16 teacher's
CLS embedding) are L2-normalised and averaged per class into centroids (not re-normalised). A synthetic sample
generated for class ``y`` is kept only if its nearest centroid is ``y``; the survivors of each class are ranked by
their distance to their own centroid and at most ``max_per_class`` (or ``ratio_to_real`` x the class's real count)
are kept. The distance is the mean squared difference over the feature dimensions (``"mse"``, the original) or
``1 - cosine`` similarity (``"cosine"``).

Fixes relative to the released code: the cap is exact (the original's ``cnt <= 500`` lets 501 through); centroids
come from the real reference set by default (the release computed them over a folder mixing real and synthetic
images; ``centroid_source="real+synthetic"`` reproduces that); ties are broken by sample index, so the result is
deterministic.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from monai_genaug.filters.base import (
    FeatureFilter,
    FilterResult,
    Samples,
    _candidates,
    as_label_tensor,
    num_samples,
)

__all__ = ["CentroidFilter", "class_centroids"]


def class_centroids(
    features: torch.Tensor, labels: torch.Tensor, num_classes: int | None = None, normalize: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-class means of (optionally L2-normalised) features.

    Args:
        features: ``(N, D)`` features.
        labels: ``(N,)`` class indices.
        num_classes: number of classes K (default ``max(labels) + 1``).
        normalize: L2-normalise each feature vector before averaging (the centroids themselves are not re-normalised).

    Returns:
        ``(centroids (K, D), counts (K,))``; classes without samples have a NaN centroid and count 0.
    """
    if features.ndim != 2 or features.shape[0] != labels.numel():
        raise ValueError(f"features must be (N, D) with N = {labels.numel()} labels, got {tuple(features.shape)}.")
    k = int(num_classes) if num_classes is not None else int(labels.max()) + 1
    f = F.normalize(features.float(), dim=1) if normalize else features.float()
    sums = torch.zeros(k, f.shape[1]).index_add_(0, labels, f)
    counts = torch.bincount(labels, minlength=k)[:k]
    centroids = sums / counts.clamp(min=1)[:, None]
    centroids[counts == 0] = float("nan")
    return centroids, counts


class CentroidFilter(FeatureFilter):
    """Keep a synthetic sample only if its nearest class centroid (from real data) is its intended class.

    Args:
        feature_fn: image batch -> ``(b, D)`` features (any backbone; feature maps are global-average pooled).
        max_per_class: keep at most this many samples per class (the closest to their centroid); None: no cap.
        ratio_to_real: alternatively cap each class at ``ceil(ratio_to_real x`` its number of reference samples``)``
            (HistoDiffusion's 50 % / 100 % / 300 % variants); combined with ``max_per_class`` the smaller cap wins.
        require_nearest: keep only samples whose nearest centroid is their class (True); False only ranks and caps.
        metric: ``"mse"`` (mean over dimensions of the squared difference, the original) or ``"cosine"``
            (``1 - cos``).
        normalize: L2-normalise the features (True, the original).
        centroid_source: ``"real"`` (centroids of the reference set, default) or ``"real+synthetic"`` (reference and
            the samples being filtered, with their intended labels, as the released script did).
        num_classes: number of classes; default: ``max(reference labels) + 1``. Every class must have reference
            samples.
        max_distance: also drop samples farther than this from their own centroid (None: no threshold).
        batch_size: images per feature call.
        transform: loads datalist entries (see :class:`~monai_genaug.filters.base.FeatureFilter`).
        image_key: key of the image in datalist entries.
        label_key: key of the class index in datalist entries.
        device: device of the feature computation.

    The result's ``scores`` are the distances to the intended class's centroid (lower is better); ``details`` holds
    ``distances`` ``(N, K)``, ``nearest`` ``(N,)``, ``rank`` (position within its class among the kept, -1 when
    dropped) and ``reason`` (0 kept, 1 not a candidate, 2 nearest centroid is another class, 3 over
    ``max_distance``, 4 over the cap).

    Example::

        flt = CentroidFilter(feature_fn, max_per_class=50).fit(real_images, real_labels)
        result = flt(synthetic_images, intended_labels)
        kept_items = result.select(synthetic_datalist)
    """

    REASONS: ClassVar[dict[int, str]] = {
        0: "kept",
        1: "not a candidate",
        2: "nearest centroid is another class",
        3: "too far",
        4: "over cap",
    }

    def __init__(
        self,
        feature_fn: nn.Module | Callable[[torch.Tensor], torch.Tensor],
        max_per_class: int | None = None,
        ratio_to_real: float | None = None,
        require_nearest: bool = True,
        metric: str = "mse",
        normalize: bool = True,
        centroid_source: str = "real",
        num_classes: int | None = None,
        max_distance: float | None = None,
        batch_size: int = 32,
        transform: Callable[[Any], Any] | None = None,
        image_key: str = "image",
        label_key: str = "label",
        device: str | torch.device | None = None,
    ) -> None:
        super().__init__(
            feature_fn,
            batch_size=batch_size,
            transform=transform,
            image_key=image_key,
            label_key=label_key,
            device=device,
        )
        if max_per_class is not None and int(max_per_class) < 0:
            raise ValueError(f"max_per_class must be >= 0 or None, got {max_per_class}.")
        if ratio_to_real is not None and not float(ratio_to_real) >= 0:
            raise ValueError(f"ratio_to_real must be >= 0 or None, got {ratio_to_real}.")
        if metric not in ("mse", "cosine"):
            raise ValueError(f"metric must be 'mse' or 'cosine', got {metric!r}.")
        if centroid_source not in ("real", "real+synthetic"):
            raise ValueError(f"centroid_source must be 'real' or 'real+synthetic', got {centroid_source!r}.")
        if num_classes is not None and int(num_classes) < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}.")
        self.max_per_class = None if max_per_class is None else int(max_per_class)
        self.ratio_to_real = None if ratio_to_real is None else float(ratio_to_real)
        self.require_nearest = bool(require_nearest)
        self.metric = metric
        self.normalize = bool(normalize)
        self.centroid_source = centroid_source
        self.num_classes = None if num_classes is None else int(num_classes)
        self.max_distance = max_distance
        self.reference_features: torch.Tensor | None = None
        self.reference_labels: torch.Tensor | None = None
        self.centroids: torch.Tensor | None = None
        self.class_counts: torch.Tensor | None = None

    # ------------------------------------------------------------------ fit
    def _fit(self, reference: Samples, labels: Sequence[int] | torch.Tensor | None) -> None:
        n = num_samples(reference)
        if n == 0:
            raise ValueError("the reference set is empty; fit the centroid filter on real labelled samples.")
        ref_labels = as_label_tensor(reference, labels, self.label_key)
        if int(ref_labels.min()) < 0:
            raise ValueError(f"reference labels must be >= 0, got {sorted(set(ref_labels.tolist()))}.")
        k = self.num_classes if self.num_classes is not None else int(ref_labels.max()) + 1
        if int(ref_labels.max()) >= k:
            raise ValueError(
                f"reference labels {sorted(set(ref_labels.tolist()))} exceed num_classes={k}; fix the labels or "
                "num_classes."
            )
        feats = self.features(reference)
        if feats.shape[1] == 0:
            raise ValueError("feature_fn returned 0-dimensional features.")
        centroids, counts = class_centroids(feats, ref_labels, k, self.normalize)
        empty = [c for c in range(k) if counts[c] == 0]
        if empty:
            raise ValueError(
                f"class(es) {empty} have no reference sample, so they have no centroid; give real samples of every "
                f"class (counts per class: {counts.tolist()}) or lower num_classes."
            )
        self.reference_features = feats
        self.reference_labels = ref_labels
        self.centroids = centroids
        self.class_counts = counts

    # ------------------------------------------------------------------ scoring
    def _normalised(self, feats: torch.Tensor) -> torch.Tensor:
        return F.normalize(feats, dim=1) if self.normalize else feats

    def distances(self, features: torch.Tensor, centroids: torch.Tensor | None = None) -> torch.Tensor:
        """``(N, K)`` distances of (un-normalised) ``features`` to the centroids."""
        self._check_fitted()
        c = self.centroids if centroids is None else centroids
        if features.ndim != 2 or features.shape[1] != c.shape[1]:
            raise ValueError(
                f"feature dimension mismatch: the samples' features are {tuple(features.shape)} but the centroids "
                f"were fitted with D = {c.shape[1]}; use the same feature_fn (and input size) for reference and "
                "samples."
            )
        f = self._normalised(features.float())
        if self.metric == "mse":
            return ((f[:, None, :] - c[None]) ** 2).mean(dim=2)
        return 1.0 - F.cosine_similarity(f[:, None, :], c[None], dim=2)

    def _check_labels(self, labels: torch.Tensor) -> None:
        k = self.centroids.shape[0]
        bad = sorted({int(v) for v in labels.tolist() if not 0 <= int(v) < k})
        if bad:
            raise ValueError(f"sample labels {bad} are outside the fitted classes [0, {k - 1}].")

    def score(self, samples: Samples, labels: Sequence[int] | torch.Tensor | int | None = None) -> torch.Tensor:
        """Distance of every sample to the centroid of its intended class (lower is better)."""
        return self.filter(samples, labels).scores

    def caps(self) -> torch.Tensor:
        """Per-class caps ``(K,)`` (-1 = no cap) from ``max_per_class`` and ``ratio_to_real``."""
        self._check_fitted()
        k = self.centroids.shape[0]
        caps = torch.full((k,), -1, dtype=torch.long)
        for c in range(k):
            limits = []
            if self.max_per_class is not None:
                limits.append(self.max_per_class)
            if self.ratio_to_real is not None:
                limits.append(math.ceil(self.ratio_to_real * int(self.class_counts[c]) - 1e-9))
            if limits:
                caps[c] = min(limits)
        return caps

    def filter(
        self,
        samples: Samples,
        labels: Sequence[int] | torch.Tensor | int | None = None,
        candidates: torch.Tensor | None = None,
    ) -> FilterResult:
        self._check_fitted()
        n = num_samples(samples)
        labels = as_label_tensor(samples, labels, self.label_key)
        self._check_labels(labels)
        cand = _candidates(candidates, n)
        k = self.centroids.shape[0]
        if n == 0:
            empty = torch.zeros(0)
            return FilterResult(torch.zeros(0, dtype=torch.bool), empty, torch.zeros(0, dtype=torch.long))
        feats = self.features(samples)
        centroids = self.centroids
        if self.centroid_source == "real+synthetic":
            if feats.shape[1] != self.reference_features.shape[1]:
                self.distances(feats)  # raises the dimension-mismatch error
            centroids, _ = class_centroids(
                torch.cat([self.reference_features, feats]),
                torch.cat([self.reference_labels, labels]),
                k,
                self.normalize,
            )
        dist = self.distances(feats, centroids)
        own = dist.gather(1, labels[:, None])[:, 0]
        nearest = dist.argmin(dim=1)
        reason = torch.zeros(n, dtype=torch.long)
        reason[~cand] = 1
        if self.require_nearest:
            reason[(reason == 0) & (nearest != labels)] = 2
        if self.max_distance is not None:
            reason[(reason == 0) & (own > float(self.max_distance))] = 3
        rank = torch.full((n,), -1, dtype=torch.long)
        caps = self.caps()
        order = []
        for c in range(k):
            idx = torch.nonzero((labels == c) & (reason == 0)).reshape(-1)
            if idx.numel() == 0:
                continue
            # stable sort by distance: ties keep the sample order, so the result is deterministic
            idx = idx[torch.sort(own[idx], stable=True).indices]
            if caps[c] >= 0:
                reason[idx[int(caps[c]) :]] = 4
                idx = idx[: int(caps[c])]
            rank[idx] = torch.arange(idx.numel())
            order.append(idx)
        keep = reason == 0
        order_t = torch.cat(order) if order else torch.zeros(0, dtype=torch.long)
        return FilterResult(
            keep,
            own,
            order_t,
            lower_is_better=True,
            details={"distances": dist, "nearest": nearest, "rank": rank, "reason": reason, "labels": labels},
        )
