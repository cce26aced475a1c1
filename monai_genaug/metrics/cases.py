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
"""Per-case evaluation shared by the bundles and the benchmarks: Dice, HD95, error-estimation AUC, flip TTA.

- :func:`case_metrics`: foreground Dice and HD95 (MONAI ``compute_dice`` / ``compute_hausdorff_distance``) of a
  label map against the truth, and the ROC AUC with which an uncertainty map detects the wrong pixels
  (:func:`monai_genaug.metrics.uncertainty.error_estimation_auc`).
- :func:`flip_tta_probabilities`: the classic test-time augmentation baseline, random flips through MONAI's
  ``TestTimeAugmentation`` (inverted back before averaging).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from monai.data import MetaTensor, TestTimeAugmentation
from monai.metrics import compute_dice, compute_hausdorff_distance
from monai.networks.utils import one_hot
from monai.transforms import Compose, RandFlipd

from monai_genaug.metrics.uncertainty import error_estimation_auc

__all__ = ["case_metrics", "flip_tta_probabilities"]


def _plain(x: Any) -> torch.Tensor:
    t = torch.as_tensor(x)
    return t.as_tensor() if isinstance(t, MetaTensor) else t


def case_metrics(
    pred: torch.Tensor,
    label: torch.Tensor,
    num_classes: int,
    uncertainty: torch.Tensor | None = None,
    spacing: Sequence[float] | None = None,
) -> dict[str, float]:
    """Dice, HD95 and error-estimation AUC of one case.

    Args:
        pred: predicted label map (1, *spatial) with values in ``0..num_classes``.
        label: ground truth, same shape.
        num_classes: foreground classes K (metrics average over classes 1..K).
        uncertainty: one value per pixel (e.g. entropy (1, *spatial)); gives ``error_auc``.
        spacing: pixel spacing for HD95 (None: pixel units).

    Returns:
        ``dice`` (1 when truth and prediction are both empty), ``hd95`` (NaN when either is empty) and, with
        ``uncertainty``, ``error_auc`` (NaN when the prediction is entirely right) and ``error_fraction``.
    """
    p, y = _plain(pred).long().cpu(), _plain(label).long().cpu()
    if p.shape != y.shape:
        raise ValueError(f"prediction {tuple(p.shape)} and label {tuple(y.shape)} must have the same shape.")
    k = int(num_classes) + 1
    p1, y1 = one_hot(p[None], k), one_hot(y[None], k)
    dice = compute_dice(p1, y1, include_background=False, ignore_empty=False)
    out: dict[str, float] = {"dice": float(dice.nanmean())}
    if p1[:, 1:].sum() > 0 and y1[:, 1:].sum() > 0:
        hd = compute_hausdorff_distance(p1, y1, include_background=False, percentile=95, spacing=spacing)
        hd = hd[torch.isfinite(hd)]
        out["hd95"] = float(hd.mean()) if hd.numel() else math.nan
    else:
        out["hd95"] = math.nan
    if uncertainty is not None:
        u = _plain(uncertainty).float().cpu()
        out["error_auc"] = float(error_estimation_auc(u, p, y))
        out["error_fraction"] = float((p != y).float().mean())
    return out


def flip_tta_probabilities(
    network: Callable[[torch.Tensor], torch.Tensor],
    image: torch.Tensor,
    num_examples: int = 8,
    spatial_axes: Sequence[int] | None = None,
    activation: str = "softmax",
    seed: int = 0,
    device: str | torch.device | None = None,
) -> torch.Tensor:
    """Probabilities of ``network`` on ``num_examples`` randomly flipped copies of ``image``, flipped back.

    MONAI's ``TestTimeAugmentation`` with one ``RandFlipd(prob=0.5)`` per spatial axis; the inverse flips bring every
    prediction back to the image's frame. Returns (num_examples, C, *spatial) probabilities; average them for the
    flip-TTA prediction and pass them to :func:`monai_genaug.metrics.uncertainty.uncertainty_maps` for its
    uncertainty.

    Args:
        network: the segmenter (logits out).
        image: one channel-first image (C, *spatial).
        num_examples: flipped copies.
        spatial_axes: axes to flip (default all).
        activation: ``"softmax"`` or ``"sigmoid"``.
        seed: seed of the flips.
        device: where the network runs (default: the image's device).
    """
    img = image if isinstance(image, MetaTensor) else MetaTensor(torch.as_tensor(image))
    sd = img.ndim - 1
    axes = list(range(sd)) if spatial_axes is None else list(spatial_axes)
    transform = Compose([RandFlipd(keys="image", prob=0.5, spatial_axis=a) for a in axes])
    transform.set_random_state(seed)
    act = (lambda x: torch.softmax(x, 1)) if activation == "softmax" else torch.sigmoid
    dev = torch.device(device) if device is not None else img.device

    def infer(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return act(network(x.to(dev)).float())

    tta = TestTimeAugmentation(
        transform, batch_size=num_examples, num_workers=0, inferrer_fn=infer, device=dev, orig_key="image",
        nearest_interp=False, return_full_data=True, progress=False,
    )
    out = tta({"image": img.detach().clone()}, num_examples=num_examples)
    return _plain(out).float()
