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
"""Random corruption of label maps (dilation / erosion per class, dropped or added components), array and dictionary
versions: robustness studies of mask-conditioned synthesis with noisy pseudo-labels (AdaptDiff, Xu et al.,
arXiv:2410.04648).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from monai.config import KeysCollection
from monai.transforms import MapTransform, RandomizableTransform

from monai_genaug.utils.labels import check_label_map

__all__ = [
    "RandLabelCorruption",
    "RandLabelCorruptiond",
]


def _as_range(value: int | Sequence[int], name: str) -> tuple[int, int]:
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        lo = hi = int(value)
    else:
        lo, hi = (int(v) for v in value)
    if lo < 0 or hi < lo:
        raise ValueError(f"{name} must be an int >= 0 or a (low, high) range with 0 <= low <= high, got {value!r}.")
    return lo, hi


def _morph(onehot: torch.Tensor, steps: int, dilate: bool) -> torch.Tensor:
    """Binary dilation (max-pool) or erosion (min-pool) of ``(K, *spatial)`` float masks, 3^d neighbourhood."""
    pool = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}[onehot.ndim - 1]
    x = onehot[None]
    for _ in range(steps):
        x = pool(x, 3, stride=1, padding=1) if dilate else 1.0 - pool(1.0 - x, 3, stride=1, padding=1)
    return x[0]


class RandLabelCorruption(RandomizableTransform):
    """Corrupt a label map for robustness studies of mask-conditioned synthesis (how noisy may pseudo-labels be?).

    In this order, each part off by default: ``erosion`` / ``dilation`` steps of every foreground class (3^d
    neighbourhood; dilation grows classes into the background only), ``dropout``: every ``block_size``-sized block
    holding foreground is erased (set to background) with this probability (missed segments), and the release's
    ``add_false_positives_negatives``: each background pixel becomes foreground with probability ``fp_rate`` and each
    foreground pixel background with probability ``fn_rate``. Random draws come from the transform's seeded state
    (``set_random_state(seed)``), so corrupted sets are reproducible.

    Args:
        prob: probability of corrupting a label map at all.
        erosion: erosion steps, an int or a ``(low, high)`` range drawn uniformly per call.
        dilation: dilation steps, an int or a ``(low, high)`` range.
        dropout: probability of erasing each foreground block.
        block_size: edge length of the dropout blocks in pixels.
        fp_rate: probability of a background pixel turning foreground (class 1).
        fn_rate: probability of a foreground pixel turning background.
        num_classes: foreground classes K (label values ``0..K`` are checked).
    """

    def __init__(
        self,
        prob: float = 1.0,
        erosion: int | Sequence[int] = 0,
        dilation: int | Sequence[int] = 0,
        dropout: float = 0.0,
        block_size: int = 4,
        fp_rate: float = 0.0,
        fn_rate: float = 0.0,
        num_classes: int = 1,
    ) -> None:
        super().__init__(prob)
        for name, v in (("dropout", dropout), ("fp_rate", fp_rate), ("fn_rate", fn_rate)):
            if not 0.0 <= float(v) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {v}.")
        if int(block_size) < 1:
            raise ValueError(f"block_size must be >= 1, got {block_size}.")
        self.erosion = _as_range(erosion, "erosion")
        self.dilation = _as_range(dilation, "dilation")
        self.dropout = float(dropout)
        self.block_size = int(block_size)
        self.fp_rate = float(fp_rate)
        self.fn_rate = float(fn_rate)
        self.num_classes = int(num_classes)

    def randomize(self, data: Any = None) -> None:
        super().randomize(None)
        self._erode = int(self.R.randint(self.erosion[0], self.erosion[1] + 1))
        self._dilate = int(self.R.randint(self.dilation[0], self.dilation[1] + 1))

    def __call__(self, label: Any, randomize: bool = True) -> torch.Tensor:
        """Corrupt a channel-first ``(1, *spatial)`` label map; returns a long tensor of the same shape."""
        x = torch.as_tensor(label)
        lab = check_label_map(x[None], self.num_classes, name="label map to corrupt")[0]
        if randomize:
            self.randomize()
        if not self._do_transform:
            return lab
        spatial = lab.shape[1:]
        out = lab[0]
        if self._erode or self._dilate:
            onehot = F.one_hot(out, self.num_classes + 1).movedim(-1, 0)[1:].float()
            if self._erode:
                onehot = _morph(onehot, self._erode, dilate=False)
            if self._dilate:
                grown = _morph(onehot, self._dilate, dilate=True)
                keep = onehot.amax(0) > 0
                onehot = torch.where(keep[None], onehot, grown)
            fg = onehot.amax(0) > 0
            out = torch.where(fg, onehot.argmax(0) + 1, torch.zeros_like(out))
        if self.dropout > 0:
            b = self.block_size
            grid = [int(np.ceil(s / b)) for s in spatial]
            drop = torch.from_numpy(self.R.random_sample(grid) < self.dropout)
            for d in range(len(spatial)):
                drop = drop.repeat_interleave(b, dim=d)
            drop = drop[tuple(slice(0, s) for s in spatial)]
            out = torch.where(drop, torch.zeros_like(out), out)
        if self.fp_rate > 0 or self.fn_rate > 0:
            u = torch.from_numpy(self.R.random_sample(tuple(spatial))).float()
            fg = out > 0
            out = torch.where(fg & (u < self.fn_rate), torch.zeros_like(out), out)
            out = torch.where(~fg & (u < self.fp_rate), torch.ones_like(out), out)
        return out[None].long()


class RandLabelCorruptiond(RandomizableTransform, MapTransform):
    """Dictionary version of :class:`RandLabelCorruption` (all keys share one draw per call).

    Args:
        keys: keys of the label maps.
        prob: see :class:`RandLabelCorruption`.
        erosion: see :class:`RandLabelCorruption`.
        dilation: see :class:`RandLabelCorruption`.
        dropout: see :class:`RandLabelCorruption`.
        block_size: see :class:`RandLabelCorruption`.
        fp_rate: see :class:`RandLabelCorruption`.
        fn_rate: see :class:`RandLabelCorruption`.
        num_classes: see :class:`RandLabelCorruption`.
        allow_missing_keys: don't raise when a key is missing.
    """

    def __init__(
        self,
        keys: KeysCollection,
        prob: float = 1.0,
        erosion: int | Sequence[int] = 0,
        dilation: int | Sequence[int] = 0,
        dropout: float = 0.0,
        block_size: int = 4,
        fp_rate: float = 0.0,
        fn_rate: float = 0.0,
        num_classes: int = 1,
        allow_missing_keys: bool = False,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, 1.0)
        self.corrupt = RandLabelCorruption(prob, erosion, dilation, dropout, block_size, fp_rate, fn_rate, num_classes)

    def set_random_state(self, seed: int | None = None, state: np.random.RandomState | None = None):
        super().set_random_state(seed, state)
        self.corrupt.set_random_state(seed, state)
        return self

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        first = True
        for key in self.key_iterator(d):
            d[key] = self.corrupt(d[key], randomize=first)
            first = False
        return d
