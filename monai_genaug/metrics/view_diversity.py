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
"""How different test-time augmentation views are from their image, and from each other's predictions.

Ma et al., "Test-Time Generative Augmentation for Medical Image Segmentation", arXiv:2406.17608, fuse the segmenter's
predictions on N generated views; the ensemble can only add information when the views differ. Reported next to the
Dice, these numbers make a degenerate ensemble visible (views that equal the input give MAE 0, SSIM 1 and agreement 1,
so "TTGA = the segmenter alone"):

- ``view_mae``: mean absolute intensity difference between each view and the image (image units);
- ``view_ssim``: mean structural similarity of each view to the image (MONAI ``SSIMMetric``; the window shrinks to fit
  small images);
- ``view_agreement``: mean fraction of pixels whose hard prediction on a view equals the prediction on the image;
- ``view_pairwise_agreement``: the same between every pair of views (1 for a single view).
"""

from __future__ import annotations

import torch
from monai.metrics import SSIMMetric

__all__ = ["DIVERSITY_KEYS", "hard_prediction", "view_diversity"]

#: the keys :func:`view_diversity` returns
DIVERSITY_KEYS = ("view_mae", "view_ssim", "view_agreement", "view_pairwise_agreement")


def hard_prediction(probs: torch.Tensor, binary: bool) -> torch.Tensor:
    """Label maps from probabilities (K, C, *spatial): per-channel ``> 0.5`` when ``binary`` (or one channel), else
    the argmax over channels (K, 1, *spatial)."""
    if binary or probs.shape[1] == 1:
        return probs > 0.5
    return probs.argmax(dim=1, keepdim=True)


def _ssim(views: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
    spatial = views.shape[2:]
    win = min(7, *spatial)
    win = win if win % 2 == 1 else win - 1
    data_range = float((image.max() - image.min()).clamp_min(1e-6))
    metric = SSIMMetric(spatial_dims=len(spatial), data_range=data_range, win_size=max(win, 1))
    ref = image.expand_as(views).float()
    return metric(views.float(), ref).mean()


def view_diversity(
    image: torch.Tensor,
    views: torch.Tensor,
    view_probs: torch.Tensor,
    image_probs: torch.Tensor,
    binary: bool = False,
) -> dict[str, float]:
    """Diversity of N views of one image and agreement of the segmenter's predictions on them.

    Args:
        image: the image (C, *spatial).
        views: its views (N, C, *spatial), same geometry.
        view_probs: the segmenter's probabilities on the views (N, K, *spatial).
        image_probs: the segmenter's probabilities on the image (K, *spatial).
        binary: per-channel (sigmoid) predictions instead of an argmax over channels.

    Returns:
        ``{name: value}`` for every name of :data:`DIVERSITY_KEYS`.
    """
    if views.ndim != image.ndim + 1 or views.shape[1:] != image.shape:
        raise ValueError(f"views must be (N, *{tuple(image.shape)}), got {tuple(views.shape)}.")
    if view_probs.shape[0] != views.shape[0] or view_probs.shape[1:] != image_probs.shape:
        raise ValueError(
            f"view_probs must be (N={views.shape[0]}, *{tuple(image_probs.shape)}), got {tuple(view_probs.shape)}."
        )
    image = image.to(views)
    labels = hard_prediction(view_probs.float(), binary)
    reference = hard_prediction(image_probs[None].float(), binary)
    n = labels.shape[0]
    if n > 1:
        flat = labels.reshape(n, -1)
        same = [(flat[i] == flat[j]).float().mean() for i in range(n) for j in range(i + 1, n)]
        pairwise = torch.stack(same).mean()
    else:
        pairwise = torch.tensor(1.0)
    return {
        "view_mae": float((views - image[None]).abs().mean()),
        "view_ssim": float(_ssim(views, image[None])),
        "view_agreement": float((labels == reference).float().mean()),
        "view_pairwise_agreement": float(pairwise),
    }
