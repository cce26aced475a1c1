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
"""Label transforms the loading pipelines need and MONAI lacks, in array and dictionary variants.

MONAI already covers loading (``LoadImaged``), channels (``EnsureChannelFirstd``), intensity
(``ScaleIntensityd``, ``ScaleIntensityRangePercentilesd``, ``NormalizeIntensityd``), geometry
(``Resized``, ``Spacingd``, ``Orientationd``), value maps (``MapLabelValued``) and thresholding at
``>=`` (``AsDiscreted(threshold=...)``). What is added here:

* :class:`BinarizeLabel` / :class:`BinarizeLabeld`: a mask stored as RGB JPEG (Kvasir-SEG), 8-bit
  0/255 PNG, 0/1 PNG or a multi-class map becomes one channel of 0/1: optional channel reduction
  (``max`` keeps coloured masks, e.g. pure red), strict ``>`` threshold (``threshold=0`` gives
  "any label", e.g. BRATS whole tumour), an ``"auto"`` threshold for masks of unknown scaling.
* :class:`LabelToRegions` / :class:`LabelToRegionsd`: a multi-class label map becomes one binary
  channel per region (a set of label values), e.g. the BRATS 2013 regions whole tumour / tumour
  core / enhancing tumour (:data:`BRATS2013_REGIONS`). MONAI's
  ``ConvertToMultiChannelBasedOnBratsClasses`` hard-codes the BRATS 2018+ label values (1, 2, 4) and
  misses label 3 (non-enhancing tumour) of BRATS 2013.

All transforms accept numpy arrays and torch tensors, return the input's type, and keep a
``MetaTensor``'s meta data and affine.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.config import DtypeLike, KeysCollection, NdarrayOrTensor
from monai.transforms import MapTransform, Transform
from monai.utils import TransformBackends, convert_to_dst_type, convert_to_tensor
from monai.utils.type_conversion import get_equivalent_dtype

__all__ = [
    "BRATS2013_REGIONS",
    "BinarizeLabel",
    "BinarizeLabeld",
    "BinarizeLabelD",
    "BinarizeLabelDict",
    "LabelToRegions",
    "LabelToRegionsd",
    "LabelToRegionsD",
    "LabelToRegionsDict",
]

#: BRATS 2013 label values (0 background, 1 necrosis, 2 oedema, 3 non-enhancing tumour, 4 enhancing tumour)
#: grouped into the three evaluation regions: whole tumour, tumour core, enhancing tumour.
BRATS2013_REGIONS: dict[str, tuple[int, ...]] = {
    "whole_tumour": (1, 2, 3, 4),
    "tumour_core": (1, 3, 4),
    "enhancing_tumour": (4,),
}

_REDUCTIONS = ("max", "mean", "first")


class BinarizeLabel(Transform):
    """Turn a channel-first mask into one channel (or per-channel) binary 0/1 values: ``out = value > threshold``.

    Typical uses: Kvasir-SEG's RGB JPEG masks (``threshold=127, channel_reduction="max"``), BRATS whole tumour
    from a multi-class map (``threshold=0``), a soft prediction (``threshold=0.5``).
    Unlike ``monai.transforms.AsDiscrete(threshold=t)`` (which keeps ``value >= t`` and works per channel),
    the comparison is strict and channels can be reduced first.

    Args:
        threshold: foreground is ``value > threshold``; ``"auto"`` uses 127 when the (reduced) mask's maximum
            is above 127 (8-bit 0/255 or JPEG masks) and 0.5 otherwise (0/1 masks, small label values).
        channel_reduction: how to merge several channels before thresholding: ``"max"`` (any channel bright;
            right for grey and coloured masks), ``"mean"`` (grey level), ``"first"``, or None to threshold each
            channel. A single-channel input is left as it is.
        dtype: output data type (the values are 0 and 1).
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(
        self,
        threshold: float | str = 0.5,
        channel_reduction: str | None = None,
        dtype: DtypeLike | torch.dtype = torch.float32,
    ) -> None:
        if isinstance(threshold, str):
            if threshold != "auto":
                raise ValueError(f"threshold must be a number or 'auto', got {threshold!r}.")
        elif isinstance(threshold, bool) or not isinstance(threshold, (int, float, np.number)):
            raise TypeError(f"threshold must be a number or 'auto', got {type(threshold).__name__} {threshold!r}.")
        if channel_reduction is not None and channel_reduction not in _REDUCTIONS:
            raise ValueError(f"channel_reduction must be one of {_REDUCTIONS} or None, got {channel_reduction!r}.")
        self.threshold = threshold
        self.channel_reduction = channel_reduction
        self.dtype = dtype

    def __call__(self, img: NdarrayOrTensor) -> NdarrayOrTensor:
        """
        Args:
            img: channel-first mask, shape (C, spatial...).
        """
        if img.ndim < 2:
            raise ValueError(
                f"BinarizeLabel expects a channel-first array (C, spatial...), got shape {tuple(img.shape)}."
            )
        x = convert_to_tensor(img, track_meta=False)
        if not torch.is_floating_point(x):
            x = x.to(torch.float32)
        if x.shape[0] > 1 and self.channel_reduction is not None:
            if self.channel_reduction == "max":
                x = x.amax(dim=0, keepdim=True)
            elif self.channel_reduction == "mean":
                x = x.mean(dim=0, keepdim=True)
            else:
                x = x[:1]
        threshold = self.threshold
        if threshold == "auto":
            threshold = 127.0 if x.numel() and float(x.max()) > 127 else 0.5
        out = x > float(threshold)
        dtype = get_equivalent_dtype(self.dtype, type(img))
        return convert_to_dst_type(out, dst=img, dtype=dtype)[0]


class BinarizeLabeld(MapTransform):
    """Dictionary-based wrapper of :class:`BinarizeLabel`.

    Args:
        keys: keys of the masks to binarise.
        threshold: see :class:`BinarizeLabel`.
        channel_reduction: see :class:`BinarizeLabel`.
        dtype: see :class:`BinarizeLabel`.
        allow_missing_keys: don't raise an exception when a key is missing.
    """

    backend = BinarizeLabel.backend

    def __init__(
        self,
        keys: KeysCollection,
        threshold: float | str = 0.5,
        channel_reduction: str | None = None,
        dtype: DtypeLike | torch.dtype = torch.float32,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.binarize = BinarizeLabel(threshold=threshold, channel_reduction=channel_reduction, dtype=dtype)

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.binarize(d[key])
        return d


class LabelToRegions(Transform):
    """Turn a single-channel label map into one binary channel per region, a region being a set of label values.

    ``LabelToRegions(BRATS2013_REGIONS.values())`` maps BRATS 2013 labels to (whole tumour, tumour core,
    enhancing tumour). Regions may overlap.

    Args:
        regions: one sequence of label values per output channel (a mapping's values are used in order).
        dtype: output data type (the values are 0 and 1).
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(
        self,
        regions: Sequence[Sequence[int]] | Mapping[str, Sequence[int]],
        dtype: DtypeLike | torch.dtype = torch.float32,
    ) -> None:
        values = list(regions.values()) if isinstance(regions, Mapping) else list(regions)
        if not values:
            raise ValueError("regions is empty; give one sequence of label values per output channel.")
        parsed = []
        for i, r in enumerate(values):
            r = (r,) if isinstance(r, (int, np.integer)) else tuple(r)
            if not r or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in r):
                raise ValueError(f"region {i} must be a non-empty sequence of integer label values, got {r!r}.")
            parsed.append(tuple(int(v) for v in r))
        self.regions = tuple(parsed)
        self.dtype = dtype

    def __call__(self, img: NdarrayOrTensor) -> NdarrayOrTensor:
        """
        Args:
            img: label map with one channel, shape (1, spatial...).
        """
        if img.ndim < 2 or img.shape[0] != 1:
            raise ValueError(
                f"LabelToRegions expects a single-channel label map (1, spatial...), got shape {tuple(img.shape)}; "
                "add EnsureChannelFirst before it or merge channels first."
            )
        x = convert_to_tensor(img, track_meta=False)[0]
        x = torch.round(x) if torch.is_floating_point(x) else x
        out = torch.stack([torch.isin(x, torch.tensor(r, dtype=x.dtype, device=x.device)) for r in self.regions])
        dtype = get_equivalent_dtype(self.dtype, type(img))
        return convert_to_dst_type(out, dst=img, dtype=dtype)[0]


class LabelToRegionsd(MapTransform):
    """Dictionary-based wrapper of :class:`LabelToRegions`.

    Args:
        keys: keys of the label maps to convert.
        regions: see :class:`LabelToRegions`.
        dtype: see :class:`LabelToRegions`.
        allow_missing_keys: don't raise an exception when a key is missing.
    """

    backend = LabelToRegions.backend

    def __init__(
        self,
        keys: KeysCollection,
        regions: Sequence[Sequence[int]] | Mapping[str, Sequence[int]],
        dtype: DtypeLike | torch.dtype = torch.float32,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.converter = LabelToRegions(regions=regions, dtype=dtype)

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.converter(d[key])
        return d


BinarizeLabelD = BinarizeLabelDict = BinarizeLabeld
LabelToRegionsD = LabelToRegionsDict = LabelToRegionsd
