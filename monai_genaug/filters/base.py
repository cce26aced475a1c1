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
"""One interface for synthetic-sample filters: fit on reference data, score samples, keep a mask, chain filters.

Synthetic augmentation methods generate more samples than they keep (HistoDiffusion's centroid filter, Ctrl-GenAug's
semantic and sequential filters). Every filter here follows the same three steps::

    flt = CentroidFilter(feature_fn, max_per_class=100).fit(real_images, real_labels)   # reference data
    result = flt(synthetic_images, intended_labels)                                       # FilterResult
    result.keep, result.scores, result.order                                              # mask, scores, ranking
    kept = result.select(synthetic_datalist)                                              # kept items, best first

and filters chain with :class:`FilterChain` (or ``flt_a >> flt_b``): each filter sees only the survivors of the
previous ones, so a per-class cap at the end counts survivors only. Scores are always returned next to the mask, so a
user can re-threshold without recomputing features.

**Samples** are any of: a ``(N, C, *spatial)`` tensor, a sequence of ``(C, *spatial)`` tensors / arrays, or a
datalist (sequence of dicts) whose ``image_key`` entries are loaded by ``transform`` (e.g.
``monai_genaug.data.pipelines.classification_2d_transforms()``). **Labels** are a sequence / tensor of class indices,
or, for datalists, read from ``label_key``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

__all__ = [
    "FeatureFilter",
    "FilterChain",
    "FilterResult",
    "NotFittedError",
    "SyntheticFilter",
    "as_label_tensor",
    "iterate_sample_batches",
    "num_samples",
]

Samples = Any  # torch.Tensor | Sequence[torch.Tensor | np.ndarray] | Sequence[Mapping[str, Any]]


class NotFittedError(ValueError, AttributeError):
    """A filter was used before :meth:`SyntheticFilter.fit`."""


@dataclass
class FilterResult:
    """What a filter returns.

    Attributes:
        keep: ``(N,)`` bool mask of the kept samples.
        scores: ``(N,)`` float scores (``(N, F)`` for a chain of F filters).
        order: indices of the kept samples, best first (for ranked filters; input order otherwise).
        lower_is_better: how to read ``scores``.
        details: filter-specific tensors (e.g. the distances to every centroid).
    """

    keep: torch.Tensor
    scores: torch.Tensor
    order: torch.Tensor
    lower_is_better: bool = True
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def num_kept(self) -> int:
        """Number of kept samples."""
        return int(self.keep.sum())

    def indices(self) -> list[int]:
        """Indices of the kept samples, best first."""
        return [int(i) for i in self.order]

    def select(self, items: Sequence[Any]) -> list[Any]:
        """The kept entries of ``items`` (same length as the filtered samples), best first."""
        if len(items) != self.keep.numel():
            raise ValueError(f"select() got {len(items)} items for a result over {self.keep.numel()} samples.")
        return [items[i] for i in self.indices()]


def num_samples(samples: Samples) -> int:
    """Number of samples of a tensor batch, a sequence of arrays or a datalist."""
    if isinstance(samples, torch.Tensor):
        return int(samples.shape[0])
    if isinstance(samples, np.ndarray):
        return int(samples.shape[0])
    if isinstance(samples, Sequence) and not isinstance(samples, (str, bytes)):
        return len(samples)
    try:
        return len(samples)
    except TypeError as e:
        raise TypeError(
            f"samples must be a (N, C, ...) tensor, a sequence of arrays or a datalist, got {type(samples).__name__}."
        ) from e


def as_label_tensor(
    samples: Samples, labels: Sequence[int] | torch.Tensor | np.ndarray | int | None, label_key: str = "label"
) -> torch.Tensor:
    """Class indices of ``samples`` as a ``(N,)`` long tensor: ``labels`` as given (one int: all the same), or the
    ``label_key`` entries of a datalist.

    Raises:
        ValueError: no labels, a wrong number of labels, or non-integer labels.
    """
    n = num_samples(samples)
    if labels is None:
        if n and isinstance(samples, Sequence) and all(isinstance(s, Mapping) for s in samples):
            missing = [i for i, s in enumerate(samples) if label_key not in s]
            if missing:
                raise ValueError(f"datalist entries {missing[:5]} have no '{label_key}'; pass labels= explicitly.")
            labels = [int(np.asarray(s[label_key]).reshape(-1)[0]) for s in samples]
        else:
            raise ValueError("labels are needed: pass the class index of every sample (or a datalist with labels).")
    if isinstance(labels, (int, np.integer)):
        return torch.full((n,), int(labels), dtype=torch.long)
    t = torch.as_tensor(np.asarray(labels) if not isinstance(labels, torch.Tensor) else labels).reshape(-1)
    if t.is_floating_point() and not torch.equal(t, t.round()):
        raise ValueError(f"labels must be integer class indices, got {t.tolist()[:10]}.")
    if t.numel() != n:
        raise ValueError(f"got {t.numel()} labels for {n} samples; give one class index per sample.")
    return t.long().cpu()


def iterate_sample_batches(
    samples: Samples,
    batch_size: int = 32,
    transform: Callable[[Any], Any] | None = None,
    image_key: str = "image",
    indices: Sequence[int] | None = None,
) -> Iterator[torch.Tensor]:
    """Yield ``(b, C, *spatial)`` float tensors of ``samples`` (optionally only ``indices``), ``batch_size`` at a time.

    Args:
        samples: a tensor batch, a sequence of ``(C, *spatial)`` arrays, or a datalist of dicts.
        batch_size: samples per yielded batch.
        transform: applied to each datalist entry (must return a dict with ``image_key``) or each array.
        image_key: key of the image in datalist entries.
        indices: which samples, default all.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
    n = num_samples(samples)
    idx = list(range(n)) if indices is None else [int(i) for i in indices]
    for start in range(0, len(idx), batch_size):
        chunk = idx[start : start + batch_size]
        if isinstance(samples, torch.Tensor) and transform is None:
            yield samples[chunk].float()
            continue
        items = []
        for i in chunk:
            item = samples[i]
            if isinstance(item, Mapping):
                if transform is not None:
                    item = transform(dict(item))
                if image_key not in item:
                    raise KeyError(f"sample {i} has no '{image_key}' (keys: {sorted(item)}); set image_key.")
                item = item[image_key]
                if isinstance(item, str):
                    raise TypeError(
                        f"sample {i} holds a path ('{item}') but no transform loads it; pass transform=, e.g. "
                        "classification_2d_transforms()."
                    )
            elif transform is not None:
                item = transform(item)
            items.append(torch.as_tensor(np.asarray(item) if not isinstance(item, torch.Tensor) else item).float())
        shapes = {tuple(t.shape) for t in items}
        if len(shapes) > 1:
            raise ValueError(f"samples in one batch have different shapes {sorted(shapes)}; resize them first.")
        yield torch.stack(items)


class SyntheticFilter:
    """Base class of synthetic-sample filters: ``fit`` on reference data, ``score`` samples, ``filter`` to a result.

    Subclasses implement :meth:`_fit` and :meth:`score`; the default :meth:`filter` keeps the candidates whose
    score passes ``threshold`` (all candidates when it is None). Ranked or capped filters override :meth:`filter`.

    Args:
        threshold: keep samples with ``score <= threshold`` (``>=`` when ``lower_is_better`` is False); None: no
            threshold.
        name: a name for chain results (default: the class name).
    """

    lower_is_better: bool = True
    requires_fit: bool = True

    def __init__(self, threshold: float | None = None, name: str | None = None) -> None:
        self.threshold = threshold
        self.name = name or type(self).__name__
        self._fitted = False

    @property
    def is_fitted(self) -> bool:
        """Whether :meth:`fit` was called (always True for filters that need no reference)."""
        return self._fitted or not self.requires_fit

    def _check_fitted(self) -> None:
        if not self.is_fitted:
            raise NotFittedError(f"{self.name} is not fitted; call .fit(reference_samples, reference_labels) first.")

    def fit(self, reference: Samples, labels: Sequence[int] | torch.Tensor | None = None) -> SyntheticFilter:
        """Learn what the filter needs from reference (real) data; returns ``self``."""
        self._fit(reference, labels)
        self._fitted = True
        return self

    def _fit(self, reference: Samples, labels: Sequence[int] | torch.Tensor | None) -> None:
        """Subclass hook of :meth:`fit`."""

    def score(self, samples: Samples, labels: Sequence[int] | torch.Tensor | int | None = None) -> torch.Tensor:
        """``(N,)`` float scores of ``samples`` (see ``lower_is_better``)."""
        raise NotImplementedError

    def filter(
        self,
        samples: Samples,
        labels: Sequence[int] | torch.Tensor | int | None = None,
        candidates: torch.Tensor | None = None,
    ) -> FilterResult:
        """Score ``samples`` and decide which to keep.

        Args:
            samples: the synthetic samples.
            labels: their intended class indices (when the filter uses them).
            candidates: ``(N,)`` bool mask of the samples still in play (from earlier filters of a chain); the others
                are never kept.
        """
        self._check_fitted()
        n = num_samples(samples)
        cand = _candidates(candidates, n)
        scores = self.score(samples, labels).float().cpu().reshape(-1)
        if scores.numel() != n:
            raise ValueError(f"{self.name}.score returned {scores.numel()} scores for {n} samples.")
        keep = cand.clone()
        if self.threshold is not None:
            passed = scores <= self.threshold if self.lower_is_better else scores >= self.threshold
            keep &= passed
        return FilterResult(keep, scores, torch.nonzero(keep).reshape(-1), self.lower_is_better)

    def keep(self, samples: Samples, labels: Sequence[int] | torch.Tensor | int | None = None) -> torch.Tensor:
        """The ``(N,)`` bool keep mask of :meth:`filter`."""
        return self.filter(samples, labels).keep

    def __call__(
        self,
        samples: Samples,
        labels: Sequence[int] | torch.Tensor | int | None = None,
        candidates: torch.Tensor | None = None,
    ) -> FilterResult:
        return self.filter(samples, labels, candidates)

    def __rshift__(self, other: SyntheticFilter) -> FilterChain:
        """``a >> b`` is ``FilterChain([a, b])``: ``b`` filters the survivors of ``a``."""
        return FilterChain([self, other])


def _candidates(candidates: torch.Tensor | None, n: int) -> torch.Tensor:
    if candidates is None:
        return torch.ones(n, dtype=torch.bool)
    c = torch.as_tensor(candidates).reshape(-1).cpu()
    if c.numel() != n:
        raise ValueError(f"candidates mask has {c.numel()} entries for {n} samples.")
    return c.bool()


class FeatureFilter(SyntheticFilter):
    """A filter that works on features ``feature_fn(images) -> (b, D)`` of the samples (base of centroid-type filters).

    Feature maps with spatial axes, ``(b, C, *spatial)``, are global-average pooled to ``(b, C)``.

    Args:
        feature_fn: any module or callable mapping an image batch to features (e.g. a ViT's CLS embedding,
            ``monai.networks.nets.DenseNet121`` features, or
            :class:`~monai_genaug.methods.histodiffusion.LatentFeatures`).
        batch_size: images per feature call.
        transform: loads datalist entries / arrays (see :func:`iterate_sample_batches`).
        image_key: key of the image in datalist entries.
        label_key: key of the class index in datalist entries.
        device: device of the feature computation (default: the module's device, else CPU).
        threshold: see :class:`SyntheticFilter`.
        name: see :class:`SyntheticFilter`.
    """

    def __init__(
        self,
        feature_fn: nn.Module | Callable[[torch.Tensor], torch.Tensor],
        batch_size: int = 32,
        transform: Callable[[Any], Any] | None = None,
        image_key: str = "image",
        label_key: str = "label",
        device: str | torch.device | None = None,
        threshold: float | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__(threshold=threshold, name=name)
        if not callable(feature_fn):
            raise TypeError(f"feature_fn must be a module or callable mapping images to features, got {feature_fn!r}.")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
        self.feature_fn = feature_fn
        self.batch_size = int(batch_size)
        self.transform = transform
        self.image_key = image_key
        self.label_key = label_key
        self.device = device

    def _device(self) -> torch.device:
        if self.device is not None:
            return torch.device(self.device)
        if isinstance(self.feature_fn, nn.Module):
            p = next(self.feature_fn.parameters(), None)
            if p is not None:
                return p.device
        return torch.device("cpu")

    @torch.no_grad()
    def features(self, samples: Samples, indices: Sequence[int] | None = None) -> torch.Tensor:
        """``(N, D)`` float features of ``samples`` on the CPU (feature modules run in eval mode)."""
        device = self._device()
        module = self.feature_fn if isinstance(self.feature_fn, nn.Module) else None
        was_training = module.training if module is not None else False
        if module is not None:
            module.eval()
        out = []
        try:
            for batch in iterate_sample_batches(samples, self.batch_size, self.transform, self.image_key, indices):
                f = self.feature_fn(batch.to(device))
                if isinstance(f, (tuple, list)):
                    f = f[0]
                f = torch.as_tensor(f)
                if f.ndim > 2:
                    f = f.flatten(2).mean(dim=2)
                if f.ndim != 2 or f.shape[0] != batch.shape[0]:
                    raise ValueError(
                        f"feature_fn must return (batch, D) features, got shape {tuple(f.shape)} for a batch of "
                        f"{batch.shape[0]}."
                    )
                out.append(f.float().cpu())
        finally:
            if module is not None:
                module.train(was_training)
        if not out:
            return torch.zeros(0, 0)
        return torch.cat(out)


class FilterChain(SyntheticFilter):
    """Apply filters one after another; each sees only the survivors of the previous ones.

    ``fit`` fits every filter on the same reference data. Every filter scores every sample (so scores can be
    re-thresholded later), but keeps only among the survivors of the previous filters. The result's ``scores`` is
    ``(N, F)`` (one column per filter), ``order`` is the last filter's ranking of the final survivors and
    ``details["results"]`` holds every filter's own :class:`FilterResult` (``details["names"]`` their names).

    Args:
        filters: the filters, applied in order.
        name: a name for nested chains.
    """

    requires_fit = False

    def __init__(self, filters: Sequence[SyntheticFilter], name: str | None = None) -> None:
        super().__init__(name=name)
        filters = list(filters)
        if not filters:
            raise ValueError("FilterChain needs at least one filter.")
        bad = [f for f in filters if not isinstance(f, SyntheticFilter)]
        if bad:
            raise TypeError(f"FilterChain takes SyntheticFilter objects, got {[type(f).__name__ for f in bad]}.")
        self.filters = filters

    @property
    def is_fitted(self) -> bool:
        return all(f.is_fitted for f in self.filters)

    def _check_fitted(self) -> None:
        for f in self.filters:
            f._check_fitted()

    def fit(self, reference: Samples, labels: Sequence[int] | torch.Tensor | None = None) -> FilterChain:
        for f in self.filters:
            f.fit(reference, labels)
        return self

    def score(self, samples: Samples, labels: Sequence[int] | torch.Tensor | int | None = None) -> torch.Tensor:
        """``(N, F)`` scores of every filter on every sample."""
        self._check_fitted()
        return torch.stack([f.score(samples, labels).float().cpu().reshape(-1) for f in self.filters], dim=1)

    def filter(
        self,
        samples: Samples,
        labels: Sequence[int] | torch.Tensor | int | None = None,
        candidates: torch.Tensor | None = None,
    ) -> FilterResult:
        self._check_fitted()
        n = num_samples(samples)
        keep = _candidates(candidates, n)
        results = []
        for f in self.filters:
            r = f.filter(samples, labels, candidates=keep)
            keep = keep & r.keep
            results.append(r)
        columns = []
        for r in results:
            s = r.scores.float().reshape(n, -1)[:, 0] if r.scores.ndim > 1 else r.scores.float()
            columns.append(s)
        scores = torch.stack(columns, dim=1)
        last = results[-1]
        order = torch.tensor([int(i) for i in last.order if keep[int(i)]], dtype=torch.long)
        return FilterResult(
            keep,
            scores,
            order,
            last.lower_is_better,
            details={"results": results, "names": [f.name for f in self.filters]},
        )

    def __rshift__(self, other: SyntheticFilter) -> FilterChain:
        return FilterChain([*self.filters, other])
