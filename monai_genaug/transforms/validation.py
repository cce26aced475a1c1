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
"""Dictionary transforms for bundle pipelines: input validation with clear messages, and output splitting.

- :class:`ValidateImaged` stops a bad image at load time with a message naming the file: wrong number of spatial
  dimensions (a 2D image into a 3D bundle or the reverse), wrong channel count, NaN / Inf values, a constant image,
  or an image smaller than the generator's autoencoder factor.
- :class:`ValidateLabeld` refuses label values the model cannot predict (its output channels do not cover them) and,
  with ``spatial_dims``, label maps of the wrong shape or with non-integer values (``CheckLabelMapd`` is its
  deprecated alias).
- :class:`SplitChannelsd` splits a channel-stacked network output (e.g. ``GenerativeTTAInferer(output="concat")``)
  into named keys that keep the meta data, so ``Invertd`` and ``SaveImaged`` handle each map.
- :class:`ForegroundProbabilityd` turns class probabilities into one foreground-probability channel for pictures.
"""

from __future__ import annotations

import warnings
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform
from monai.utils import convert_to_tensor
import torch

from monai_genaug.utils.labels import check_label_map

__all__ = [
    "ForegroundProbabilityd",
    "SplitChannelsd",
    "ValidateImaged",
    "ValidateLabeld",
    "SEGMENTER_LABEL_HINT",
    "source_name",
    "CheckLabelMapd",
]


def source_name(x: Any, fallback: str = "the image") -> str:
    """The file a (Meta)tensor was loaded from, for error messages."""
    meta = getattr(x, "meta", None) or {}
    name = meta.get("filename_or_obj")
    if isinstance(name, (list, tuple)):
        name = name[0] if name else None
    return f"'{name}'" if name else fallback


class ValidateImaged(MapTransform):
    """Check channel-first images right after loading; raise ``ValueError`` naming the file and the fix.

    Args:
        keys: image keys.
        spatial_dims: spatial dimensions the bundle takes (2 or 3).
        num_channels: channels the networks take (None: any).
        min_size: smallest spatial size accepted along every axis (e.g. the generator's autoencoder factor: an image
            smaller than that is less than one latent cell).
        allow_constant: accept constant images (by default they are refused: TTGA's identity optimisation and the
            segmenter get no content, and intensity scaling of a constant image is undefined).
        config_name: the bundle config named in messages (e.g. ``"configs/inference.json"``).
        allow_missing_keys: don't raise when a key is missing.
    """

    def __init__(
        self,
        keys: KeysCollection,
        spatial_dims: int,
        num_channels: int | None = None,
        min_size: int = 1,
        allow_constant: bool = False,
        config_name: str = "this bundle",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}.")
        self.spatial_dims = int(spatial_dims)
        self.num_channels = None if num_channels is None else int(num_channels)
        self.min_size = int(min_size)
        self.allow_constant = bool(allow_constant)
        self.config_name = config_name

    def check(self, img: Any) -> None:
        """Raise on a bad channel-first image (see the class docstring)."""
        name = source_name(img)
        t = convert_to_tensor(img, track_meta=False)
        sd = t.ndim - 1
        if sd != self.spatial_dims:
            other = "configs/inference.json + configs/inference_3d.json" if sd == 3 else "configs/inference.json"
            what = {2: "a 2D image", 3: "a 3D volume"}.get(sd, f"a {sd}-dimensional array of shape {tuple(t.shape)}")
            raise ValueError(
                f"{name} is {what} (channel-first shape {tuple(t.shape)}), but {self.config_name} is "
                f"{self.spatial_dims}D; use the {sd}D config ({other}) or convert the data."
                if sd in (2, 3)
                else f"{name} is {what}; {self.config_name} takes {self.spatial_dims}D images."
            )
        if self.num_channels is not None and t.shape[0] != self.num_channels:
            raise ValueError(
                f"{name} has {t.shape[0]} channel(s) but the networks of {self.config_name} take {self.num_channels}; "
                "convert the image (RGB / grey, or one file per modality listed in modality_keys) or use networks "
                "trained for this channel count."
            )
        small = [s for s in t.shape[1:] if s < self.min_size]
        if small:
            raise ValueError(
                f"{name} has spatial size {tuple(t.shape[1:])}, smaller than {self.min_size} (the generator's "
                "autoencoder factor: less than one latent cell); use larger images."
            )
        tf = t.float()
        if not torch.isfinite(tf).all():
            n = int((~torch.isfinite(tf)).sum())
            raise ValueError(f"{name} contains {n} NaN/Inf value(s); clean the file (e.g. numpy.nan_to_num).")
        if not self.allow_constant and t.numel() and float(tf.max() - tf.min()) == 0.0:
            raise ValueError(
                f"{name} is constant (every value is {float(tf.flatten()[0]):.4g}); there is nothing to segment or "
                "augment. Remove it from the data set (or set allow_constant=True)."
            )

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            self.check(d[key])
        return d


#: the fix :class:`ValidateLabeld` suggests by default (a bundle segmenter with ``num_classes + 1`` outputs)
SEGMENTER_LABEL_HINT = (
    "use label_mode 'binary', or train a segmenter for these classes (configs/train_segmenter.json with --num_classes)."
)


class ValidateLabeld(MapTransform):
    """Check loaded label maps against the classes ``0..num_classes`` a model predicts, with a message that names the
    file and the fix. Missing labels are allowed by default (unlabelled images).

    Two depths, one transform:

    - ``spatial_dims=None``: the values only (integers in ``0..num_classes``, any shape), e.g. for a segmenter with
      ``num_classes + 1`` output channels;
    - ``spatial_dims=2`` or ``3``: the full :func:`~monai_genaug.utils.labels.check_label_map` of the channel-first
      map (one channel, ``spatial_dims`` spatial axes, finite integer values ``0..num_classes``; its messages say how
      to binarise 0/255 masks, merge one-hot masks or remap labels).

    Args:
        keys: label keys.
        num_classes: foreground classes K of the model.
        spatial_dims: None (values only) or the spatial dimensions of the full check.
        hint: the fix appended to the error message (default :data:`SEGMENTER_LABEL_HINT`).
        allow_missing_keys: don't raise when a key is missing (unlabelled data).
    """

    def __init__(
        self,
        keys: KeysCollection,
        num_classes: int,
        spatial_dims: int | None = None,
        hint: str = SEGMENTER_LABEL_HINT,
        allow_missing_keys: bool = True,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if isinstance(num_classes, bool) or int(num_classes) < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}.")
        if spatial_dims is not None and int(spatial_dims) not in (1, 2, 3):
            raise ValueError(f"spatial_dims must be None (values only), 1, 2 or 3, got {spatial_dims}.")
        self.num_classes = int(num_classes)
        self.spatial_dims = None if spatial_dims is None else int(spatial_dims)
        self.hint = hint

    def check(self, label: Any, key: Hashable = "label") -> None:
        """Raise a ``ValueError`` (naming the file and :attr:`hint`) when ``label`` is not a valid label map."""
        if self.spatial_dims is not None:
            name = f"label file {source_name(label, repr(str(key)))}"
            x = convert_to_tensor(label, track_meta=False)
            try:
                check_label_map(x[None], self.num_classes, self.spatial_dims, name=name)
            except ValueError as e:
                raise ValueError(f"{e} {self.hint}") from e
            return
        t = convert_to_tensor(label, track_meta=False)
        if t.numel() == 0:
            return
        lo, hi = float(t.min()), float(t.max())
        if lo < 0 or hi > self.num_classes or not torch.equal(t.float(), t.float().round()):
            raise ValueError(
                f"label {source_name(label, 'of an item')} has values in [{lo:g}, {hi:g}] but the model has "
                f"{self.num_classes + 1} output channels (classes 0..{self.num_classes}); {self.hint}"
            )

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            self.check(d[key], key)
        return d


class SplitChannelsd(MapTransform):
    """Split a channel-stacked tensor into named keys, e.g. TTGA's ``[mean prob | entropy | MI | variance | ...]``.

    Each piece is a ``MetaTensor`` with the source's meta data and applied operations, so ``Invertd`` inverts it
    like the image. The sizes must add up to the source's channels.

    Args:
        keys: the stacked key(s).
        names: output key names, in channel order.
        sizes: channels of every piece (same length as ``names``).
        delete_original: remove the stacked key afterwards (unless it is one of ``names``).
        allow_missing_keys: don't raise when a key is missing.
    """

    def __init__(
        self,
        keys: KeysCollection,
        names: Sequence[str],
        sizes: Sequence[int],
        delete_original: bool = False,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if len(names) != len(sizes) or not names:
            raise ValueError(f"names {list(names)} and sizes {list(sizes)} must be non-empty and of equal length.")
        if any(int(s) < 1 for s in sizes):
            raise ValueError(f"sizes must be >= 1, got {list(sizes)}.")
        self.names = [str(n) for n in names]
        self.sizes = [int(s) for s in sizes]
        self.delete_original = bool(delete_original)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            x = d[key]
            if x.shape[0] != sum(self.sizes):
                raise ValueError(
                    f"'{key}' has {x.shape[0]} channels but the split {dict(zip(self.names, self.sizes))} needs "
                    f"{sum(self.sizes)}; check num_classes against the segmenter's output channels."
                )
            start = 0
            for name, size in zip(self.names, self.sizes):
                piece = x[start : start + size]
                if isinstance(x, MetaTensor):
                    piece = MetaTensor(piece.as_tensor().clone(), meta=dict(x.meta),
                                       applied_operations=list(x.applied_operations))
                d[name] = piece
                start += size
            if self.delete_original and key not in self.names:
                del d[key]
        return d


class ForegroundProbabilityd(MapTransform):
    """One-channel foreground probability ``1 - p(background)`` from class probabilities (channel 0 background).

    Args:
        keys: probability keys (C >= 2 channels, or one channel already holding the foreground probability).
        output_keys: where to write the results (default: overwrite ``keys``).
        allow_missing_keys: don't raise when a key is missing.
    """

    def __init__(
        self, keys: KeysCollection, output_keys: KeysCollection | None = None, allow_missing_keys: bool = False
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        out = self.keys if output_keys is None else ([output_keys] if isinstance(output_keys, str) else output_keys)
        if len(out) != len(self.keys):
            raise ValueError(f"output_keys {list(out)} must match keys {list(self.keys)} one to one.")
        self.output_keys = list(out)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key, out in zip(self.keys, self.output_keys):
            if key not in d:
                if self.allow_missing_keys:
                    continue
                raise KeyError(f"key '{key}' is missing.")
            x = d[key]
            d[out] = x if x.shape[0] == 1 else (1.0 - x[:1]).clamp(0.0, 1.0)
        return d


class CheckLabelMapd(ValidateLabeld):
    """Deprecated alias (kept for one release) of ``ValidateLabeld(key, num_classes, spatial_dims=spatial_dims)``: the
    full label-map check of one key; use :class:`ValidateLabeld` with ``spatial_dims`` (and a ``hint``)."""

    def __init__(self, key: str, num_classes: int, spatial_dims: int, hint: str = "use a model trained for these "
                 "classes (--num_classes) or remap the labels.") -> None:
        warnings.warn(
            "CheckLabelMapd is deprecated and will be removed in the next release; use "
            f"ValidateLabeld({key!r}, num_classes={num_classes}, spatial_dims={spatial_dims}, hint=...).",
            DeprecationWarning,
            stacklevel=2,
        )
        super().__init__(key, num_classes, spatial_dims=spatial_dims, hint=hint)
