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
"""Pseudo-labels of unlabelled images from a frozen segmenter, as a callable on batches (:class:`PseudoLabeler`) and
as a dictionary transform of a data pipeline (:class:`PseudoLabeld`).

AdaptDiff (Xu et al., "AdaptDiff: Cross-Modality Domain Adaptation via Weak Conditional Semantic Diffusion for
Retinal Vessel Segmentation", arXiv:2410.04648) labels the target modality this way before training its
mask-conditioned generator.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any

import numpy as np
import torch
from monai.inferers import Inferer, SimpleInferer
from monai.transforms import MapTransform
from torch import nn

__all__ = [
    "PseudoLabeler",
    "PseudoLabeld",
    "area_matched_threshold",
]


def area_matched_threshold(
    foreground_probability: torch.Tensor, area_fraction: float, region: torch.Tensor | None = None
) -> float:
    """The threshold at which ``foreground_probability > threshold`` covers ``area_fraction`` of the pixels.

    A calibration of pseudo-labels that needs no target label: a source segmenter applied to another domain is
    often under- or over-confident, so the argmax (0.5) labels far fewer (or more) pixels than the structure covers.
    Matching the area to a known prior (e.g. the foreground fraction of the source labels) fixes the label amount.

    Args:
        foreground_probability: ``(B, 1, *spatial)`` (or any shape) probabilities of the foreground.
        area_fraction: wanted foreground fraction in (0, 1).
        region: boolean mask of the same shape; only its pixels count (e.g. a field of view); None: all pixels.

    Returns:
        the threshold, clipped to [1e-4, 1 - 1e-4] (a valid :class:`PseudoLabeler` threshold).
    """
    if not 0.0 < float(area_fraction) < 1.0:
        raise ValueError(f"area_fraction must be in (0, 1), got {area_fraction}.")
    p = torch.as_tensor(foreground_probability).float()
    if region is not None:
        region = torch.as_tensor(region).bool()
        if region.shape != p.shape:
            raise ValueError(f"region {tuple(region.shape)} must have the probabilities' shape {tuple(p.shape)}.")
        p = p[region]
        if p.numel() == 0:
            raise ValueError("the region holds no pixel; nothing to calibrate the threshold on.")
    q = torch.quantile(p.reshape(-1)[:: max(1, p.numel() // 4_000_000)], 1.0 - float(area_fraction))
    return float(q.clamp(1e-4, 1.0 - 1e-4))


# ----------------------------------------------------------------------------------------------------------------
# (b) pseudo-labels
# ----------------------------------------------------------------------------------------------------------------
class PseudoLabeler:
    """Label maps of unlabelled images from a frozen segmenter: foreground where ``1 - p(background) > threshold``.

    The label of a foreground pixel is the most probable foreground class, so for a binary segmenter the rule is
    ``p(vessel) > threshold`` (the release: argmax, i.e. 0.5).

    Args:
        segmenter: returns ``num_classes + 1`` logits (background first); it is used in eval mode without gradients.
        num_classes: foreground classes K.
        threshold: foreground probability threshold in (0, 1).
        inferer: MONAI inferer (default ``SimpleInferer``; ``SlidingWindowInferer`` for large volumes).
        normalize: min-max scale every image to [0, 1] first (the release normalises each patch; use it when the
            segmenter was trained that way).
        device: device of the segmenter.
        batch_size: images per segmenter call.
    """

    def __init__(
        self,
        segmenter: nn.Module,
        num_classes: int = 1,
        threshold: float = 0.5,
        inferer: Inferer | None = None,
        normalize: bool = False,
        device: str | torch.device = "cpu",
        batch_size: int = 16,
    ) -> None:
        if not 0.0 < float(threshold) < 1.0:
            raise ValueError(f"threshold must be in (0, 1), got {threshold}.")
        if int(num_classes) < 1:
            raise ValueError(f"num_classes counts foreground classes and must be >= 1, got {num_classes}.")
        self.device = torch.device(device)
        self.segmenter = segmenter.to(self.device).eval()
        self.num_classes = int(num_classes)
        self.threshold = float(threshold)
        self.inferer = inferer or SimpleInferer()
        self.normalize = normalize
        self.batch_size = int(batch_size)

    @torch.no_grad()
    def probabilities(self, images: torch.Tensor) -> torch.Tensor:
        """Softmax class probabilities ``(B, K + 1, *spatial)``."""
        if not isinstance(images, torch.Tensor) or images.ndim < 3:
            raise ValueError(
                f"images must be a (B, C, *spatial) tensor, got {type(images).__name__} {tuple(np.shape(images))}."
            )
        self.segmenter.eval()
        out = []
        for i in range(0, images.shape[0], self.batch_size):
            x = torch.as_tensor(images[i : i + self.batch_size]).float().to(self.device)
            if self.normalize:
                dims = tuple(range(1, x.ndim))
                lo, hi = x.amin(dims, keepdim=True), x.amax(dims, keepdim=True)
                x = (x - lo) / (hi - lo).clamp_min(1e-8)
            logits = self.inferer(x, self.segmenter)
            if logits.shape[1] != self.num_classes + 1:
                raise ValueError(
                    f"the segmenter returns {logits.shape[1]} channels; a {self.num_classes}-class pseudo-labeler needs "
                    f"{self.num_classes + 1} (background first)."
                )
            out.append(torch.softmax(logits.float(), dim=1))
        return torch.cat(out, dim=0)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """Label maps ``(B, 1, *spatial)`` (long, values ``0..K``) of ``(B, C, *spatial)`` images."""
        probs = self.probabilities(images)
        fg = (1.0 - probs[:, :1]) > self.threshold
        cls = probs[:, 1:].argmax(dim=1, keepdim=True) + 1
        return torch.where(fg, cls, torch.zeros_like(cls)).long()


class PseudoLabeld(MapTransform):
    """On-the-fly pseudo-labels in a data pipeline: ``d[label_key] = labeler(d[image_key])`` for one item.

    Put it after random crops so every crop gets the label of what it shows (the release re-labels every patch of
    every step). The segmenter runs in the data-loading process: use ``num_workers=0`` or a CPU segmenter.

    Args:
        labeler: the :class:`PseudoLabeler`.
        image_key: key of the channel-first image.
        label_key: key written with the ``(1, *spatial)`` label map.
    """

    def __init__(self, labeler: PseudoLabeler, image_key: str = "image", label_key: str = "label") -> None:
        super().__init__(keys=[image_key])
        self.labeler = labeler
        self.image_key = image_key
        self.label_key = label_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        image = torch.as_tensor(d[self.image_key])
        d[self.label_key] = self.labeler(image[None])[0].cpu()
        return d
