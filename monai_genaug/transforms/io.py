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
* :class:`ScaleIntensityByDtype` / :class:`ScaleIntensityByDtyped`: intensities to [0, 1] by the range of the file's
  storage type (8-bit / 255, 16-bit PNG or TIFF / 65535, ...), logging which scaling was used. A fixed
  ``ScaleIntensityRange(a_max=255, clip=True)`` turns a 16-bit image white.
* :class:`LabelToRegions` / :class:`LabelToRegionsd`: a multi-class label map becomes one binary
  channel per region (a set of label values), e.g. the BRATS 2013 regions whole tumour / tumour
  core / enhancing tumour (:data:`BRATS2013_REGIONS`). MONAI's
  ``ConvertToMultiChannelBasedOnBratsClasses`` hard-codes the BRATS 2018+ label values (1, 2, 4) and
  misses label 3 (non-enhancing tumour) of BRATS 2013.

All transforms accept numpy arrays and torch tensors, return the input's type, and keep a
``MetaTensor``'s meta data and affine.
"""

from __future__ import annotations

import logging
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
    "ScaleIntensityByDtype",
    "ScaleIntensityByDtyped",
    "ScaleIntensityByDtypeD",
    "ScaleIntensityByDtypeDict",
    "intensity_range_of",
]

logger = logging.getLogger(__name__)

#: BRATS 2013 label values (0 background, 1 necrosis, 2 oedema, 3 non-enhancing tumour, 4 enhancing tumour)
#: grouped into the three evaluation regions: whole tumour, tumour core, enhancing tumour.
BRATS2013_REGIONS: dict[str, tuple[int, ...]] = {
    "whole_tumour": (1, 2, 3, 4),
    "tumour_core": (1, 3, 4),
    "enhancing_tumour": (4,),
}

_REDUCTIONS = ("max", "mean", "first")

#: PIL modes stored with 8 bits per channel
_PIL_8BIT = ("L", "P", "RGB", "RGBA", "LA", "PA", "RGBX", "RGBa", "La", "CMYK", "YCbCr", "LAB", "HSV")
_PIL_16BIT = ("I;16", "I;16B", "I;16L", "I;16N", "I;16S")


def intensity_range_of(img: NdarrayOrTensor) -> tuple[float, float, str]:
    """The intensity range of an image's storage type: ``(low, high, description)``.

    The PIL mode recorded by ``PILReader`` (``meta["mode"]``) wins over the array's dtype, since ``LoadImage`` turns
    a 16-bit PNG into int32 or float32. Rules: 8-bit modes and ``uint8`` -> (0, 255); 16-bit modes and
    ``uint16`` -> (0, 65535); PIL ``"I"`` / ``int32`` with values in 0..65535 -> (0, 65535) (16-bit PNGs of older
    Pillow versions), other integer types -> their ``numpy.iinfo`` range; ``bool`` / mode ``"1"`` -> (0, 1); float data
    already in [0, 1] -> (0, 1); other float data -> the image's own (min, max).

    Args:
        img: an image as loaded (numpy array, tensor or ``MetaTensor``).
    """
    meta = getattr(img, "meta", None) or {}
    mode = meta.get("mode")
    mode = mode[0] if isinstance(mode, (list, tuple)) and mode else mode
    x = convert_to_tensor(img, track_meta=False)
    dtype = img.dtype if isinstance(img, np.ndarray) else None
    if mode == "1" or x.dtype == torch.bool or dtype == np.bool_:
        return 0.0, 1.0, "binary image kept as 0/1"
    if mode in _PIL_8BIT or x.dtype == torch.uint8 or dtype == np.uint8:
        return 0.0, 255.0, "8-bit image / 255"
    if mode in _PIL_16BIT or dtype == np.uint16 or x.dtype == torch.uint16:
        return 0.0, 65535.0, "16-bit image / 65535"
    lo, hi = (float(x.min()), float(x.max())) if x.numel() else (0.0, 1.0)
    if mode == "I" or not (torch.is_floating_point(x) or mode == "F"):
        if lo >= 0 and hi <= 65535:
            return 0.0, 65535.0, "integer image with values in 0..65535 read as 16-bit / 65535"
        info = np.iinfo(dtype if dtype is not None else str(x.dtype).replace("torch.", ""))
        return float(info.min), float(info.max), f"{info.bits}-bit integer image scaled by its type's range"
    if lo >= 0.0 and hi <= 1.0:
        return 0.0, 1.0, "floating-point image already in [0, 1], kept"
    return lo, hi, "floating-point image outside [0, 1]: per-image min-max scaling"


class ScaleIntensityByDtype(Transform):
    """Scale an image to [0, 1] by the range of its storage type (see :func:`intensity_range_of`) and log which
    scaling was used (once per kind of scaling).

    An 8-bit PNG is divided by 255 as before; a 16-bit PNG or TIFF is divided by 65535 instead of being clipped to
    white by a fixed 0..255 window. Use it right after ``LoadImage`` + ``EnsureChannelFirst``: the PIL mode that
    ``PILReader`` records survives the float conversion of ``LoadImage``.

    Args:
        channels: when given and the image has one channel, repeat it to this many channels (a grey 16-bit image
            into an RGB network, as PIL's ``convert("RGB")`` does for 8-bit grey images).
        dtype: output data type.
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(self, channels: int | None = None, dtype: DtypeLike | torch.dtype = torch.float32) -> None:
        if channels is not None and int(channels) < 1:
            raise ValueError(f"channels must be >= 1 or None, got {channels}.")
        self.channels = None if channels is None else int(channels)
        self.dtype = dtype
        self._logged: set[str] = set()

    def __call__(self, img: NdarrayOrTensor) -> NdarrayOrTensor:
        """
        Args:
            img: channel-first image, shape (C, spatial...).
        """
        lo, hi, how = intensity_range_of(img)
        if how not in self._logged:
            self._logged.add(how)
            meta = getattr(img, "meta", None) or {}
            logger.info(f"intensity scaling: {how} (first seen in {meta.get('filename_or_obj', 'an image')}).")
        x = convert_to_tensor(img, track_meta=False).to(torch.float32)
        out = (x - lo) / (hi - lo) if hi > lo else torch.zeros_like(x)
        if self.channels is not None and out.shape[0] == 1 and self.channels > 1:
            out = out.repeat(self.channels, *([1] * (out.ndim - 1)))
        dtype = get_equivalent_dtype(self.dtype, type(img))
        return convert_to_dst_type(out, dst=img, dtype=dtype)[0]


class ScaleIntensityByDtyped(MapTransform):
    """Dictionary-based wrapper of :class:`ScaleIntensityByDtype`.

    Args:
        keys: keys of the images to scale.
        channels: see :class:`ScaleIntensityByDtype`.
        dtype: see :class:`ScaleIntensityByDtype`.
        allow_missing_keys: don't raise an exception when a key is missing.
    """

    backend = ScaleIntensityByDtype.backend

    def __init__(
        self,
        keys: KeysCollection,
        channels: int | None = None,
        dtype: DtypeLike | torch.dtype = torch.float32,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.scaler = ScaleIntensityByDtype(channels=channels, dtype=dtype)

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.scaler(d[key])
        return d


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
ScaleIntensityByDtypeD = ScaleIntensityByDtypeDict = ScaleIntensityByDtyped
