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
"""Label-map checks shared by every segmentation-style model of the package (GMS, the AdaptDiff and TTGA segmenters):
a label map is ``(B, 1, *spatial)`` integers ``0..K``, and a bad one is refused with the fix in the message."""

from __future__ import annotations

import ast

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

__all__ = ["check_label_map", "class_indices", "labels_to_seg"]


def check_label_map(
    labels: torch.Tensor, num_classes: int, spatial_dims: int | None = None, name: str = "label"
) -> torch.Tensor:
    """Check that ``labels`` is a ``(B, 1, *spatial)`` map of integers ``0..num_classes``; return it as long.

    Args:
        labels: the label map (a tensor or MetaTensor).
        num_classes: foreground classes K.
        spatial_dims: expected spatial dims (None: any).
        name: how the message calls the tensor (e.g. a batch key or file).

    Raises:
        TypeError: not a tensor.
        ValueError: wrong shape, NaN / non-integer values, or labels outside ``0..num_classes``; the message says how
            to fix it (binarise 0/255 masks, merge one-hot masks, remap labels).
    """
    if not isinstance(labels, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor label map, got {type(labels).__name__}.")
    x = labels.as_tensor() if hasattr(labels, "as_tensor") else labels
    nd = x.ndim - 2
    if x.ndim < 3 or x.shape[1] != 1 or (spatial_dims is not None and nd != spatial_dims):
        want = f"(B, 1, {', '.join('HWD'[: spatial_dims or 2])})"
        raise ValueError(
            f"{name} must be a {want} label map with values 0..{num_classes}, got shape {tuple(x.shape)}; merge one-hot "
            "masks with argmax(dim=1, keepdim=True) and add the channel axis (EnsureChannelFirstd)."
        )
    if torch.is_floating_point(x):
        if not torch.isfinite(x).all():
            raise ValueError(f"{name} holds NaN or infinite values.")
        rounded = torch.round(x)
        off = (rounded - x).abs() > 1e-3
        if off.any():
            raise ValueError(
                f"{name} holds non-integer values (e.g. {float(x[off][0]):.4g}); it must be a label map. Binarise soft "
                "or resampled masks first (monai_genaug.transforms.io.BinarizeLabeld, or nearest interpolation)."
            )
        x = rounded
    x = x.long()
    values = torch.unique(x)
    bad = values[(values < 0) | (values > num_classes)].tolist()
    if bad:
        if num_classes == 1 and all(v > 1 for v in bad):
            raise ValueError(
                f"{name} holds values {sorted(values.tolist())} but the model is binary (num_classes=1, labels 0/1). "
                "Binarise the mask (BinarizeLabeld(threshold=127) for 0/255 masks, threshold=0 for 'any label') or "
                f"use num_classes={max(values.tolist())} for a multi-class model."
            )
        raise ValueError(
            f"{name} holds labels {bad} outside the declared labels 0..{num_classes} (num_classes={num_classes} "
            "foreground classes); remap the label values (monai.transforms.MapLabelValued) or raise num_classes."
        )
    return x


def class_indices(classes: Any, class_names: Sequence[str]) -> list[int]:
    """Class indices from indices and / or class names (e.g. ``["tumour", 0]`` or ``"['ADI']"``), checked.

    Args:
        classes: one class or a sequence of classes; each an index (int or digit string) or a name of
            ``class_names``. A string that looks like a list (``"['ADI', 'TUM']"``, as a command line passes it) is
            parsed first.
        class_names: the names of the classes, in index order.

    Raises:
        ValueError: an unknown name or an index out of range, naming the valid classes.
    """
    names = [str(n) for n in class_names]
    if isinstance(classes, str):
        text = classes.strip()
        if text.startswith(("[", "(")):
            try:
                classes = ast.literal_eval(text)
            except (ValueError, SyntaxError):
                raise ValueError(f"classes {classes!r} is not a list; write e.g. \"['{names[0]}']\" or \"[0, 1]\".")
        else:
            classes = [text]
    if isinstance(classes, (int, str)) or not hasattr(classes, "__iter__"):
        classes = [classes]
    valid = ", ".join(f"{i} = {n!r}" for i, n in enumerate(names))
    out = []
    for c in classes:
        if isinstance(c, str) and c.strip() in names:
            out.append(names.index(c.strip()))
            continue
        try:
            index = int(c)
            if isinstance(c, float) and c != index:
                raise ValueError
        except (TypeError, ValueError):
            raise ValueError(f"unknown class {c!r}; give class names or indices: {valid}.") from None
        if not 0 <= index < len(names):
            raise ValueError(f"class index {index} is out of range; give class names or indices: {valid}.")
        out.append(index)
    return out


# ----------------------------------------------------------------------------------------------------------------
# masks, checks, intensity
# ----------------------------------------------------------------------------------------------------------------
def labels_to_seg(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """One-hot SPADE condition ``(B, K + 1, *spatial)`` (background first) of a ``(B, 1, *spatial)`` label map.

    Raises:
        ValueError: the label map has unexpected values (see
            :func:`~monai_genaug.utils.labels.check_label_map`).
    """
    x = check_label_map(labels, num_classes, name="mask")
    return F.one_hot(x[:, 0], int(num_classes) + 1).movedim(-1, 1).float()
