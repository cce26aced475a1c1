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
"""Inputs of a mask-conditioned diffusion model from an (image, label map) pair: the image in the diffusion range
[-1, 1] and the one-hot SPADE condition of the label map (Park et al., arXiv:1903.07291; AdaptDiff, Xu et al.,
arXiv:2410.04648), array and dictionary versions.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import torch
from monai.transforms import MapTransform, Transform
from monai.utils import TransformBackends

from monai_genaug.utils.images import to_unit_range
from monai_genaug.utils.labels import labels_to_seg

__all__ = [
    "MaskConditionedInput",
    "MaskConditionedInputd",
]


class MaskConditionedInput(Transform):
    """``(image, label map) -> (image in [-1, 1], one-hot condition)``: the input of a mask-conditioned diffusion model.

    The image is mapped from ``value_range`` to [-1, 1] (the diffusion space); the ``(1, *spatial)`` label map
    (values ``0..K``, checked) becomes the one-hot ``(K + 1, *spatial)`` SPADE condition. With ``minmax=True`` the
    image is min-max scaled to ``value_range`` first (the AdaptDiff release's per-patch normalisation).

    Args:
        num_classes: foreground classes K.
        value_range: intensity range of the images.
        minmax: min-max scale each image to ``value_range`` first.
    """

    backend = [TransformBackends.TORCH]

    def __init__(self, num_classes: int = 1, value_range: Sequence[float] = (0.0, 1.0), minmax: bool = False) -> None:
        self.num_classes = int(num_classes)
        self.value_range = (float(value_range[0]), float(value_range[1]))
        self.minmax = minmax

    def __call__(self, image: Any, label: Any) -> tuple[torch.Tensor, torch.Tensor]:
        image = torch.as_tensor(image).float()
        label = torch.as_tensor(label)
        if tuple(label.shape[1:]) != tuple(image.shape[1:]):
            raise ValueError(
                f"image {tuple(image.shape)} and label map {tuple(label.shape)} differ in spatial size; resize the "
                "label with nearest interpolation."
            )
        if self.minmax:
            lo, hi = image.min(), image.max()
            image = (image - lo) / (hi - lo).clamp_min(1e-8) * (self.value_range[1] - self.value_range[0])
            image = image + self.value_range[0]
        return to_unit_range(image, self.value_range), labels_to_seg(label[None], self.num_classes)[0]


class MaskConditionedInputd(MapTransform):
    """Turn an ``(image, label map)`` pair into the input of a mask-conditioned diffusion model.

    ``d[image_key]`` is mapped from ``value_range`` to [-1, 1] (the diffusion space); ``d[seg_key]`` becomes the
    one-hot ``(K + 1, *spatial)`` SPADE condition of ``d[label_key]`` (checked: values ``0..K``). With
    ``minmax=True`` every image is min-max scaled first (the release's per-patch normalisation).

    Args:
        image_key: key of the channel-first image.
        label_key: key of the ``(1, *spatial)`` label map.
        seg_key: key written with the one-hot condition.
        num_classes: foreground classes K.
        value_range: intensity range of the images.
        minmax: min-max scale each image to ``value_range`` first.
    """

    def __init__(
        self,
        image_key: str = "image",
        label_key: str = "label",
        seg_key: str = "seg",
        num_classes: int = 1,
        value_range: Sequence[float] = (0.0, 1.0),
        minmax: bool = False,
    ) -> None:
        super().__init__(keys=[image_key, label_key])
        self.image_key, self.label_key, self.seg_key = image_key, label_key, seg_key
        self.converter = MaskConditionedInput(num_classes, value_range, minmax)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in (self.image_key, self.label_key):
            if key not in d:
                raise KeyError(f"the item has no '{key}' (keys: {sorted(map(str, d))}); pseudo-label it first.")
        d[self.image_key], d[self.seg_key] = self.converter(d[self.image_key], d[self.label_key])
        return d
