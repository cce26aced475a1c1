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
"""Semantic (class-misalignment) filter: classifier loss of each synthetic sample against its group's mean.

Ctrl-GenAug's first filter stage (Zhou et al., arXiv:2409.17091): a classifier trained on **real** data scores every
synthetic sample with the cross-entropy of its intended label; samples are grouped by the real sample whose
conditions generated them (same condition, different seeds), and a sample is kept when its loss is at most
``alpha`` x the mean loss of its group (``alpha = 1``). Works for any sample shape the classifier takes (clips
``(N, C, F, H, W)``, images, volumes).

The group-relative rule keeps about half of every group even when the whole group is off-class (a group of clips that
all look like the wrong class still has a "better half"); ``min_confidence`` adds an absolute floor: the classifier's
probability of the intended class must also reach it (loss ``<= -log(min_confidence)``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from monai_genaug.filters.base import (
    FilterResult,
    Samples,
    SyntheticFilter,
    _candidates,
    as_label_tensor,
    iterate_sample_batches,
    num_samples,
)

import math

__all__ = ["SemanticLossFilter", "sample_groups"]


def sample_groups(samples: Samples, groups: Sequence[Any] | None, group_key: str = "source") -> list[Any]:
    """The group of every sample: ``groups`` as given, else the ``group_key`` entries of a datalist, else one group.

    Raises:
        ValueError: ``groups`` has the wrong length.
    """
    n = num_samples(samples)
    if groups is not None:
        groups = list(groups)
        if len(groups) != n:
            raise ValueError(
                f"got {len(groups)} group ids for {n} samples; give the source (real sample id) of every sample."
            )
        return groups
    if n and isinstance(samples, Sequence) and all(isinstance(s, Mapping) and group_key in s for s in samples):
        return [s[group_key] for s in samples]
    return [0] * n


class SemanticLossFilter(SyntheticFilter):
    """Keep a synthetic sample when its classifier loss is <= ``alpha`` x the mean loss of its group.

    Args:
        classifier: a classifier trained on real data, ``classifier(batch) -> logits``.
        alpha: the factor of the group mean (1.0 in the paper).
        min_confidence: absolute floor on the classifier's probability of the intended class, in (0, 1) (None: the
            paper's group-relative rule alone; 0.5 for two classes keeps only samples the classifier assigns to their
            intended class).
        groups: group (source) id of every sample to be filtered; None reads ``group_key`` from a datalist, else one
            group for all.
        group_key: datalist key of the group id.
        transform: applied to each loaded batch before the classifier (e.g. the classifier's normalisation).
        batch_size: samples per classifier call.
        image_key: datalist key of the sample.
        label_key: datalist key of the intended label.
        device: device of the classifier (default: its parameters').
        name: see :class:`SyntheticFilter`.

    The mean of a group is taken over the candidates still in play (all samples when used alone).
    """

    requires_fit = False

    def __init__(
        self,
        classifier: nn.Module | Callable[[torch.Tensor], torch.Tensor],
        alpha: float = 1.0,
        groups: Sequence[Any] | None = None,
        group_key: str = "source",
        min_confidence: float | None = None,
        transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
        batch_size: int = 32,
        image_key: str = "image",
        label_key: str = "label",
        device: str | torch.device | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__(name=name)
        if not callable(classifier):
            raise TypeError(f"classifier must be a module or callable returning logits, got {classifier!r}.")
        if alpha <= 0:
            raise ValueError(f"alpha must be > 0, got {alpha}.")
        if min_confidence is not None and not 0.0 < float(min_confidence) < 1.0:
            raise ValueError(f"min_confidence is a probability in (0, 1), got {min_confidence}; None disables the floor.")
        self.min_confidence = None if min_confidence is None else float(min_confidence)
        self.classifier = classifier
        self.alpha = float(alpha)
        self.groups = groups
        self.group_key = group_key
        self.transform = transform
        self.batch_size = int(batch_size)
        self.image_key = image_key
        self.label_key = label_key
        self.device = device

    def _device(self) -> torch.device:
        if self.device is not None:
            return torch.device(self.device)
        p = next(self.classifier.parameters(), None) if isinstance(self.classifier, nn.Module) else None
        return p.device if p is not None else torch.device("cpu")

    @torch.no_grad()
    def score(self, samples: Samples, labels: Sequence[int] | torch.Tensor | int | None = None) -> torch.Tensor:
        """``(N,)`` cross-entropy of every sample's intended label (lower is better)."""
        target = as_label_tensor(samples, labels, self.label_key)
        device = self._device()
        module = self.classifier if isinstance(self.classifier, nn.Module) else None
        was_training = module.training if module is not None else False
        if module is not None:
            module.eval()
        losses, start = [], 0
        try:
            for batch in iterate_sample_batches(samples, self.batch_size, image_key=self.image_key):
                x = batch.to(device)
                if self.transform is not None:
                    x = self.transform(x)
                logits = torch.as_tensor(self.classifier(x)).float()
                y = target[start : start + x.shape[0]].to(logits.device)
                if logits.ndim != 2 or logits.shape[0] != x.shape[0]:
                    raise ValueError(f"classifier must return (batch, classes) logits, got {tuple(logits.shape)}.")
                if int(y.max()) >= logits.shape[1]:
                    raise ValueError(f"label {int(y.max())} is out of range for {logits.shape[1]} classifier outputs.")
                losses.append(F.cross_entropy(logits, y, reduction="none").cpu())
                start += x.shape[0]
        finally:
            if module is not None:
                module.train(was_training)
        return torch.cat(losses) if losses else torch.zeros(0)

    def filter(
        self,
        samples: Samples,
        labels: Sequence[int] | torch.Tensor | int | None = None,
        candidates: torch.Tensor | None = None,
    ) -> FilterResult:
        n = num_samples(samples)
        cand = _candidates(candidates, n)
        groups = sample_groups(samples, self.groups, self.group_key)
        scores = self.score(samples, labels).float()
        keep = torch.zeros(n, dtype=torch.bool)
        thresholds = torch.full((n,), float("nan"))
        floor = math.inf if self.min_confidence is None else -math.log(self.min_confidence)
        for g in dict.fromkeys(groups):
            idx = torch.tensor([i for i, gi in enumerate(groups) if gi == g and bool(cand[i])], dtype=torch.long)
            if idx.numel() == 0:
                continue
            limit = min(self.alpha * float(scores[idx].mean()), floor)
            thresholds[idx] = limit
            keep[idx] = scores[idx] <= limit + 1e-12
        order = torch.nonzero(keep).reshape(-1)
        details = {"thresholds": thresholds, "groups": groups, "loss_floor": floor}
        return FilterResult(keep, scores, order, True, details=details)
