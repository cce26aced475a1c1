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
"""Random contrast inversion (``low + high - x``), array and dictionary versions: a contrast-agnostic augmentation of a
source-modality segmenter meant to transfer to a contrast-inverted target modality (AdaptDiff, Xu et al.,
arXiv:2410.04648).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

from monai.config import KeysCollection, NdarrayOrTensor
from monai.transforms import MapTransform, RandomizableTransform
from monai.utils import TransformBackends

__all__ = [
    "RandIntensityInversion",
    "RandIntensityInversiond",
]


class RandIntensityInversion(RandomizableTransform):
    """Invert the intensities of an image (``low + high - x``) with probability ``prob``.

    A contrast-agnostic augmentation for a segmenter that must transfer to a modality showing the structure with the
    opposite contrast (dark vessels in one modality, bright in the other). :meth:`invert` is the deterministic twin.

    Args:
        prob: probability of inverting.
        value_range: ``(low, high)`` intensity range of the images.
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(self, prob: float = 0.5, value_range: Sequence[float] = (0.0, 1.0)) -> None:
        RandomizableTransform.__init__(self, prob)
        if len(value_range) != 2 or float(value_range[1]) <= float(value_range[0]):
            raise ValueError(f"value_range must be (low, high) with low < high, got {tuple(value_range)}.")
        self.total = float(value_range[0]) + float(value_range[1])

    def invert(self, img: NdarrayOrTensor) -> NdarrayOrTensor:
        """``low + high - img`` (no randomness)."""
        return self.total - img

    def __call__(self, img: NdarrayOrTensor, randomize: bool = True) -> NdarrayOrTensor:
        if randomize:
            self.randomize(None)
        return self.invert(img) if self._do_transform else img


class RandIntensityInversiond(RandomizableTransform, MapTransform):
    """Invert the intensities (``low + high - x``) with probability ``prob``: a contrast-agnostic augmentation.

    Used for the **source** segmenter when the target modality may show the structure with the opposite contrast
    (dark vessels in one modality, bright in the other). Without it a segmenter of bright vessels labels nothing
    useful on dark-vessel images, and pseudo-labels carry no information.

    Args:
        keys: keys of the images.
        prob: probability of inverting.
        value_range: ``(low, high)`` intensity range of the images.
        allow_missing_keys: don't raise when a key is missing.
    """

    def __init__(
        self,
        keys: KeysCollection,
        prob: float = 0.5,
        value_range: Sequence[float] = (0.0, 1.0),
        allow_missing_keys: bool = False,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, prob)
        self.inversion = RandIntensityInversion(prob=1.0, value_range=value_range)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        self.randomize(None)
        if not self._do_transform:
            return d
        for key in self.key_iterator(d):
            d[key] = self.inversion.invert(d[key])
        return d
