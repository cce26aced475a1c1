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
"""Sequence filters: temporal consistency (frame-to-frame latent similarity, k-means midpoints) and near-duplicates.

Ctrl-GenAug's sequential filters (Zhou et al., arXiv:2409.17091):

- **inner-sequence** (:class:`TemporalConsistencyFilter`): the temporal-consistency score of a clip is
  ``100 x`` the mean cosine similarity of consecutive frames' features (the paper's "VAE-Seq" with its fine-tuned
  VAE's latents; any frame encoder here, or the pixels). A 1-D k-means (``k = 4``, seed 3407) over the scores of the
  clips being filtered gives sorted centroids ``c1 < ... < c4``; clips with ``(c1 + c2) / 2 <= score <= (c3 + c4) / 2``
  are kept, which removes both jittery and near-static clips. Thresholds taken from the generated clips alone keep the
  generated middle, however unlike real clips it is; ``calibration="reference"`` takes them from the score range of
  the *real* clips the filter is fitted on instead (quantiles, optional margin), so only real-like clips are kept.
- **inter-sequence** (:class:`NearDuplicateFilter`): within each group (clips generated from the same real clip),
  clips are kept greedily in order, dropping a clip whose mean per-frame cosine similarity to an already kept clip is
  ``>= threshold`` (0.98; the release writes ``98`` against a cosine, so it never fires).

Clips are ``(N, C, F, H, W)`` tensors (or sequences / datalists of ``(C, F, H, W)`` arrays).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from monai_genaug.filters.base import (
    FilterResult,
    NotFittedError,
    Samples,
    SyntheticFilter,
    _candidates,
    iterate_sample_batches,
    num_samples,
)
from monai_genaug.filters.semantic import sample_groups

__all__ = [
    "NearDuplicateFilter",
    "TemporalConsistencyFilter",
    "clip_frame_features",
    "kmeans_1d",
    "temporal_consistency",
]

FrameEncoder = Callable[[torch.Tensor], torch.Tensor]


@torch.no_grad()
def clip_frame_features(
    samples: Samples, feature_fn: FrameEncoder | None = None, batch_size: int = 16, image_key: str = "image"
) -> torch.Tensor:
    """Per-frame features ``(N, F, D)`` of clips: ``feature_fn(frames (b*F, C, H, W))`` flattened (the pixels when
    ``feature_fn`` is None, e.g. an autoencoder's ``encode`` for latents)."""
    out = []
    module = feature_fn if isinstance(feature_fn, nn.Module) else None
    if module is not None:
        module.eval()
    for batch in iterate_sample_batches(samples, batch_size, image_key=image_key):
        if batch.ndim != 5:
            raise ValueError(
                f"clips must be (N, C, F, H, W) (or (C, F, H, W) each), got a batch of shape {tuple(batch.shape)}."
            )
        b, c, nf = batch.shape[:3]
        frames = batch.transpose(1, 2).reshape(b * nf, c, *batch.shape[3:])
        if feature_fn is not None:
            p = next(module.parameters(), None) if module is not None else None
            f = feature_fn(frames.to(p.device) if p is not None else frames)
            f = f[0] if isinstance(f, (tuple, list)) else f
            frames = torch.as_tensor(f).float().cpu()
        out.append(frames.reshape(b, nf, -1).float())
    return torch.cat(out) if out else torch.zeros(0, 0, 0)


def temporal_consistency(
    samples: Samples, feature_fn: FrameEncoder | None = None, batch_size: int = 16, image_key: str = "image"
) -> torch.Tensor:
    """``(N,)`` temporal-consistency scores: ``100 x`` mean cosine similarity of consecutive frames' features."""
    feats = clip_frame_features(samples, feature_fn, batch_size, image_key)
    if feats.shape[1] < 2:
        raise ValueError(f"temporal consistency needs clips of >= 2 frames, got {feats.shape[1]}.")
    return 100.0 * F.cosine_similarity(feats[:, 1:], feats[:, :-1], dim=-1, eps=1e-8).mean(dim=1)


def kmeans_1d(values: torch.Tensor | np.ndarray | Sequence[float], k: int = 4, seed: int = 3407,
              iterations: int = 100) -> np.ndarray:
    """Sorted centroids of a 1-D k-means (k-means++ initialisation from ``seed``, Lloyd iterations).

    Raises:
        ValueError: fewer distinct values than ``k``.
    """
    x = np.asarray(values, dtype=np.float64).reshape(-1)
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}.")
    if np.unique(x).size < k:
        raise ValueError(f"k-means with k={k} needs at least {k} distinct values, got {np.unique(x).size}.")
    rng = np.random.default_rng(seed)
    centers = [x[rng.integers(x.size)]]
    for _ in range(1, k):
        d2 = np.min((x[:, None] - np.asarray(centers)[None]) ** 2, axis=1)
        centers.append(x[rng.choice(x.size, p=d2 / d2.sum())] if d2.sum() > 0 else x[rng.integers(x.size)])
    c = np.sort(np.asarray(centers))
    for _ in range(iterations):
        assign = np.argmin(np.abs(x[:, None] - c[None]), axis=1)
        new = np.array([x[assign == j].mean() if np.any(assign == j) else c[j] for j in range(k)])
        if np.allclose(new, c):
            break
        c = new
    return np.sort(c)


class TemporalConsistencyFilter(SyntheticFilter):
    """Keep clips whose temporal-consistency score lies between the k-means midpoints ``(c1+c2)/2`` and
    ``(c_{k-1}+c_k)/2`` of the scores of the clips being filtered.

    Args:
        feature_fn: frame encoder ``(b, C, H, W) -> features`` (a VAE's encoder in the paper); None: pixels.
        k: clusters of the 1-D k-means (4).
        seed: k-means seed (3407).
        low: fixed lower threshold instead of the fitted one (e.g. from a previous run's ``details``).
        high: fixed upper threshold instead of the fitted one.
        calibration: ``"kmeans"`` (the paper: thresholds from the scores being filtered) or ``"reference"``
            (thresholds from the scores of the real clips given to :meth:`fit`).
        reference_quantiles: ``(low, high)`` quantiles of the real scores used as thresholds (``(0, 1)``: the real
            range).
        margin: widens the reference thresholds by this many score points on each side.
        batch_size: clips per encoder call.
        image_key: datalist key of the clip.
        name: see :class:`SyntheticFilter`.

    With fewer than ``k`` distinct candidate scores no thresholds can be fitted and every candidate is kept
    (``details["reason"]`` says so). ``fit(real_clips)`` records the real clips' scores in ``reference_scores``;
    ``calibration="reference"`` requires it.
    """

    lower_is_better = False
    requires_fit = False

    def __init__(
        self,
        feature_fn: FrameEncoder | None = None,
        k: int = 4,
        seed: int = 3407,
        low: float | None = None,
        high: float | None = None,
        batch_size: int = 16,
        image_key: str = "image",
        name: str | None = None,
        calibration: str = "kmeans",
        reference_quantiles: Sequence[float] = (0.0, 1.0),
        margin: float = 0.0,
    ) -> None:
        super().__init__(name=name)
        if k < 2:
            raise ValueError(f"k must be >= 2 (low and high midpoints), got {k}.")
        if calibration not in ("kmeans", "reference"):
            raise ValueError(f"calibration must be 'kmeans' or 'reference', got {calibration!r}.")
        q = tuple(float(v) for v in reference_quantiles)
        if len(q) != 2 or not 0.0 <= q[0] < q[1] <= 1.0:
            raise ValueError(f"reference_quantiles must be (low, high) with 0 <= low < high <= 1, got {reference_quantiles}.")
        self.calibration = calibration
        self.reference_quantiles = q
        self.margin = float(margin)
        self.feature_fn = feature_fn
        self.k = int(k)
        self.seed = int(seed)
        self.low = low
        self.high = high
        self.batch_size = int(batch_size)
        self.image_key = image_key
        self.reference_scores: torch.Tensor | None = None

    def _fit(self, reference: Samples, labels: Any) -> None:
        self.reference_scores = self.score(reference)

    def score(self, samples: Samples, labels: Any = None) -> torch.Tensor:
        """``(N,)`` temporal-consistency scores (higher: smoother)."""
        return temporal_consistency(samples, self.feature_fn, self.batch_size, self.image_key)

    def thresholds(self, scores: torch.Tensor) -> tuple[float, float, np.ndarray]:
        """``(low, high, centroids)`` from the k-means of ``scores`` (fixed ``low`` / ``high`` take precedence)."""
        centroids = kmeans_1d(scores.numpy(), self.k, self.seed)
        low = float((centroids[0] + centroids[1]) / 2) if self.low is None else float(self.low)
        high = float((centroids[-2] + centroids[-1]) / 2) if self.high is None else float(self.high)
        return low, high, centroids

    def filter(self, samples: Samples, labels: Any = None, candidates: torch.Tensor | None = None) -> FilterResult:
        n = num_samples(samples)
        cand = _candidates(candidates, n)
        scores = self.score(samples).float()
        details: dict[str, Any] = {}
        pool = scores[cand]
        if self.low is not None and self.high is not None:
            low, high = float(self.low), float(self.high)
        elif self.calibration == "reference":
            if self.reference_scores is None:
                raise NotFittedError(
                    "calibration='reference' takes the thresholds from real clips: call fit(real_clips) first."
                )
            ref = self.reference_scores.double()
            low = float(torch.quantile(ref, self.reference_quantiles[0])) - self.margin
            high = float(torch.quantile(ref, self.reference_quantiles[1])) + self.margin
            low = low if self.low is None else float(self.low)
            high = high if self.high is None else float(self.high)
        elif np.unique(pool.numpy()).size < self.k:
            details["reason"] = f"fewer than k={self.k} distinct scores among the candidates; all kept"
            keep = cand.clone()
            return FilterResult(keep, scores, torch.nonzero(keep).reshape(-1), False, details)
        else:
            low, high, centroids = self.thresholds(pool)
            details["centroids"] = centroids.tolist()
        details.update(low=low, high=high)
        keep = cand & (scores >= low) & (scores <= high)
        return FilterResult(keep, scores, torch.nonzero(keep).reshape(-1), False, details)


class NearDuplicateFilter(SyntheticFilter):
    """Drop clips nearly identical to an already kept clip of the same group (greedy, in order).

    The similarity of two clips is the mean over frames of the cosine similarity of their frame features; the score
    of a clip is its highest similarity to an earlier kept clip of its group (-1 for the first).

    Args:
        feature_fn: frame encoder; None: pixels.
        threshold: drop a clip whose score is ``>= threshold`` (0.98).
        groups: group (source) id of every clip; None reads ``group_key`` from a datalist, else one group.
        group_key: datalist key of the group id.
        batch_size: clips per encoder call.
        image_key: datalist key of the clip.
        name: see :class:`SyntheticFilter`.
    """

    requires_fit = False

    def __init__(
        self,
        feature_fn: FrameEncoder | None = None,
        threshold: float = 0.98,
        groups: Sequence[Any] | None = None,
        group_key: str = "source",
        batch_size: int = 16,
        image_key: str = "image",
        name: str | None = None,
    ) -> None:
        super().__init__(threshold=threshold, name=name)
        if not -1.0 <= threshold <= 1.0:
            raise ValueError(
                f"threshold is a cosine similarity in [-1, 1], got {threshold} (the original's 98 never fires; use 0.98)."
            )
        self.feature_fn = feature_fn
        self.groups = groups
        self.group_key = group_key
        self.batch_size = int(batch_size)
        self.image_key = image_key

    def _greedy(self, samples: Samples, cand: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feats = F.normalize(clip_frame_features(samples, self.feature_fn, self.batch_size, self.image_key), dim=-1)
        groups = sample_groups(samples, self.groups, self.group_key)
        n = feats.shape[0]
        scores = torch.full((n,), -1.0)
        keep = torch.zeros(n, dtype=torch.bool)
        kept: dict[Any, list[int]] = {}
        for i in range(n):
            prev = kept.get(groups[i], [])
            if prev:
                sims = torch.einsum("fd,kfd->kf", feats[i], feats[prev]).mean(dim=1)
                scores[i] = float(sims.max())
            if bool(cand[i]) and float(scores[i]) < self.threshold:
                keep[i] = True
                kept.setdefault(groups[i], []).append(i)
        return scores, keep

    def score(self, samples: Samples, labels: Any = None) -> torch.Tensor:
        """``(N,)`` highest similarity to an earlier kept clip of the same group (lower is better)."""
        return self._greedy(samples, torch.ones(num_samples(samples), dtype=torch.bool))[0]

    def filter(self, samples: Samples, labels: Any = None, candidates: torch.Tensor | None = None) -> FilterResult:
        cand = _candidates(candidates, num_samples(samples))
        scores, keep = self._greedy(samples, cand)
        return FilterResult(keep, scores, torch.nonzero(keep).reshape(-1), True, {"threshold": self.threshold})
