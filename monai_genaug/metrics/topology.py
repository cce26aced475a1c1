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
"""Connectivity of tubular structures (vessels): the soft skeleton and centerline Dice (clDice).

Shit, Paetzold, Sekuboyina, Ezhov, Unger, Zhylka, Pluim, Bauer, Menze, "clDice - a Novel Topology-Preserving Loss
Function for Tubular Structure Segmentation", CVPR 2021, arXiv:2003.07311.

clDice is the harmonic mean of the *topology precision* (the fraction of the predicted skeleton inside the true mask)
and the *topology sensitivity* (the fraction of the true skeleton inside the predicted mask). A vessel cut in two
loses sensitivity although its Dice barely moves; a prediction one pixel too thick keeps clDice 1 while its Dice
drops. Skeletons are the paper's soft skeleton (iterated min / max pooling, no scikit-image needed), which on binary
masks gives a thin centreline.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["soft_skeleton", "cl_dice"]


def _erode(x: torch.Tensor) -> torch.Tensor:
    if x.ndim == 4:
        a = -F.max_pool2d(-x, (3, 1), 1, (1, 0))
        b = -F.max_pool2d(-x, (1, 3), 1, (0, 1))
        return torch.minimum(a, b)
    a = -F.max_pool3d(-x, (3, 1, 1), 1, (1, 0, 0))
    b = -F.max_pool3d(-x, (1, 3, 1), 1, (0, 1, 0))
    c = -F.max_pool3d(-x, (1, 1, 3), 1, (0, 0, 1))
    return torch.minimum(torch.minimum(a, b), c)


def _dilate(x: torch.Tensor) -> torch.Tensor:
    return F.max_pool2d(x, 3, 1, 1) if x.ndim == 4 else F.max_pool3d(x, 3, 1, 1)


def soft_skeleton(mask: torch.Tensor, iterations: int = 10) -> torch.Tensor:
    """The soft skeleton of (probability or binary) masks, ``(B, C, H, W)`` or ``(B, C, H, W, D)``, values in [0, 1].

    Iterated morphological thinning with min / max pooling (Shit et al. 2021, Algorithm 1): at each step the pixels
    that an opening removes are added to the skeleton, then the mask is eroded. ``iterations`` must reach the largest
    half-width of the structures (in pixels).
    """
    if mask.ndim not in (4, 5):
        raise ValueError(f"mask must be (B, C, H, W) or (B, C, H, W, D), got shape {tuple(mask.shape)}.")
    if int(iterations) < 1:
        raise ValueError(f"iterations must be >= 1, got {iterations}.")
    x = mask.float()
    skel = F.relu(x - _dilate(_erode(x)))
    for _ in range(int(iterations)):
        x = _erode(x)
        delta = F.relu(x - _dilate(_erode(x)))
        skel = skel + F.relu(delta - skel * delta)
    return skel


def cl_dice(pred: torch.Tensor, truth: torch.Tensor, iterations: int = 10, return_parts: bool = False):
    """Centerline Dice of binary masks, one value per image: ``2 Tprec Tsens / (Tprec + Tsens)``.

    Args:
        pred: ``(B, 1, *spatial)`` predicted masks (> 0 is foreground).
        truth: reference masks, same shape.
        iterations: soft-skeleton iterations (the largest vessel half-width in pixels).
        return_parts: also return the topology precision and sensitivity.

    Returns:
        ``(B,)`` clDice (1 where both masks are empty, 0 where only one is), or with ``return_parts`` the tuple
        ``(cl_dice, precision, sensitivity)``.
    """
    if pred.shape != truth.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and truth {tuple(truth.shape)} must have the same shape.")
    p, t = (pred > 0).float(), (truth > 0).float()
    sp, st = soft_skeleton(p, iterations), soft_skeleton(t, iterations)
    dims = tuple(range(1, p.ndim))
    prec = (sp * t).sum(dims) / sp.sum(dims).clamp_min(1e-8)
    sens = (st * p).sum(dims) / st.sum(dims).clamp_min(1e-8)
    cl = 2 * prec * sens / (prec + sens).clamp_min(1e-8)
    empty_p, empty_t = p.sum(dims) == 0, t.sum(dims) == 0
    cl = torch.where(empty_p & empty_t, torch.ones_like(cl), cl)
    cl = torch.where(empty_p ^ empty_t, torch.zeros_like(cl), cl)
    return (cl, prec, sens) if return_parts else cl
