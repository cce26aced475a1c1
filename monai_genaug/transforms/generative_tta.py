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
"""Generative test-time augmentation as a MONAI random transform: one TTGA view per call.

Ma et al., "Test-Time Generative Augmentation for Medical Image Segmentation", arXiv:2406.17608. The transform
wraps a :class:`~monai_genaug.methods.ttga.TTGAAugmenter`: every call draws a seed from ``self.R`` (so
``set_random_state`` / ``monai.utils.set_determinism`` make it reproducible), seeds a ``torch.Generator`` with it
and generates one view. The augmenter caches the per-image inversion and identity embedding, so repeated calls on
the same image (as :class:`monai.data.TestTimeAugmentation` makes) pay only for the sampling steps.

The view changes intensities, never geometry: the transform records itself with ``push_transform`` (extra info:
seed, ``lambda_i``, ``tau``) and its ``inverse`` only pops that record, so ``TestTimeAugmentation``, ``Invertd`` and
MONAI Label's inversion treat it as a no-op. MetaTensor meta data and affine are kept; the dtype is the input's.

Generators are heavy networks: use ``num_workers=0`` (or a ``ThreadDataLoader``) when the transform runs inside a
data loader, or prefer :class:`~monai_genaug.inferers.generative_tta.GenerativeTTAInferer`, which batches the views.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection, NdarrayOrTensor
from monai.data import MetaTensor
from monai.data.meta_obj import get_track_meta
from monai.transforms import InvertibleTransform, MapTransform, RandomizableTransform
from monai.utils import TransformBackends, convert_to_dst_type, convert_to_tensor


from monai_genaug.generative.protocols import ViewGenerator

__all__ = [
    "RandGenerativeTTA",
    "RandGenerativeTTAd",
    "RandGenerativeTTAD",
    "RandGenerativeTTADict",
]


def _check_lambda(lambda_i: float | Sequence[float] | None) -> float | tuple[float, float] | None:
    if lambda_i is None or isinstance(lambda_i, (int, float)):
        return None if lambda_i is None else float(lambda_i)
    values = tuple(float(v) for v in lambda_i)
    if len(values) != 2 or values[1] < values[0]:
        raise ValueError(f"lambda_i must be a float or a (low, high) range to draw from, got {lambda_i}.")
    return values


class RandGenerativeTTA(RandomizableTransform, InvertibleTransform):
    """Replace a channel-first image (2D or 3D) by one TTGA view, with probability ``prob``.

    Args:
        augmenter: the :class:`TTGAAugmenter` (its generator, prompt, tau, mask scheme, intensity range...).
        prob: probability of generating a view (otherwise the image is returned unchanged).
        lambda_i: identity weight of the view: ``None`` uses the augmenter's (one of its values at random when it
            is a per-view sweep), a float, or a ``(low, high)`` range drawn uniformly per call (TTGA's demo sweeps
            0.5-1.5 across views).

    Example::

        tta = RandGenerativeTTA(TTGAAugmenter(generator, prompt=0), lambda_i=(0.5, 1.5)).set_random_state(0)
        view = tta(image)      # same shape, dtype, meta and affine as image
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(
        self, augmenter: ViewGenerator, prob: float = 1.0, lambda_i: float | Sequence[float] | None = None
    ) -> None:
        if not isinstance(augmenter, ViewGenerator):
            raise TypeError(
                "augmenter must be a view generator such as monai_genaug.methods.ttga.TTGAAugmenter (callable with "
                f"num_views, lambda_i and tau attributes), got {type(augmenter).__name__}."
            )
        RandomizableTransform.__init__(self, prob)
        self.augmenter = augmenter
        self.lambda_i = _check_lambda(lambda_i)
        self._seed = 0
        self._lambda: float | None = None

    def randomize(self, data: Any | None = None) -> None:
        """Decide whether to transform, and draw the seed (and ``lambda_i`` from its range) from ``self.R``."""
        super().randomize(None)
        if not self._do_transform:
            return
        self._seed = int(self.R.randint(0, 2**31 - 1))
        if isinstance(self.lambda_i, tuple):
            self._lambda = float(self.R.uniform(*self.lambda_i))
        elif self.lambda_i is None:
            # the augmenter's value; from a per-view sweep, one of its values at random
            values = torch.as_tensor(self.augmenter.lambda_i, dtype=torch.float32).reshape(-1)
            self._lambda = float(values[self.R.randint(values.numel())]) if values.numel() > 1 else None
        else:
            self._lambda = self.lambda_i

    def _info(self) -> dict[str, Any]:
        lam = self._lambda if self._lambda is not None else self.augmenter.lambda_i
        lam = lam.tolist() if isinstance(lam, torch.Tensor) else lam
        return {"seed": self._seed, "lambda_i": lam, "tau": self.augmenter.tau}

    def __call__(self, img: NdarrayOrTensor, randomize: bool = True) -> NdarrayOrTensor:
        """Generate one view of ``img`` (C, *spatial); ``randomize=False`` replays the last draw."""
        if randomize:
            self.randomize(None)
        img_t = convert_to_tensor(img, track_meta=get_track_meta())
        if self._do_transform:
            plain = img_t.as_tensor() if isinstance(img_t, MetaTensor) else img_t
            rng = torch.Generator().manual_seed(self._seed)
            view = self.augmenter(plain, num_views=1, rng=rng, lambda_i=self._lambda)[0]
            out, *_ = convert_to_dst_type(view, img_t, dtype=img_t.dtype)
        else:
            out = img_t
        self.push_transform(out, extra_info=self._info() if self._do_transform else {})
        if isinstance(img, np.ndarray):
            out = out.detach().cpu().numpy() if isinstance(out, torch.Tensor) else out
        return out

    def inverse(self, data: NdarrayOrTensor) -> NdarrayOrTensor:
        """Intensity-only transform: pop the record and return the data unchanged."""
        if isinstance(data, MetaTensor) and get_track_meta():
            self.pop_transform(data)
        return data


class RandGenerativeTTAd(RandomizableTransform, MapTransform, InvertibleTransform):
    """Dictionary version of :class:`RandGenerativeTTA`: all ``keys`` get a view drawn with the same seed.

    Args:
        keys: keys of the images to augment.
        augmenter: the :class:`TTGAAugmenter`.
        prob: probability of generating views (one draw for all keys).
        lambda_i: identity weight (float, ``(low, high)`` range, or ``None`` for the augmenter's).
        allow_missing_keys: don't raise when a key is missing.
    """

    backend = RandGenerativeTTA.backend

    def __init__(
        self,
        keys: KeysCollection,
        augmenter: ViewGenerator,
        prob: float = 1.0,
        lambda_i: float | Sequence[float] | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, prob)
        self.tta = RandGenerativeTTA(augmenter, prob=1.0, lambda_i=lambda_i)

    def set_random_state(
        self, seed: int | None = None, state: np.random.RandomState | None = None
    ) -> RandGenerativeTTAd:
        super().set_random_state(seed, state)
        self.tta.set_random_state(seed, state)
        return self

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        self.randomize(None)
        if self._do_transform:
            self.tta.randomize(None)
        for key in self.key_iterator(d):
            if self._do_transform:
                with self.tta.trace_transform(False):
                    d[key] = self.tta(d[key], randomize=False)
            else:
                d[key] = convert_to_tensor(d[key], track_meta=get_track_meta())
            self.push_transform(d[key], extra_info=self.tta._info() if self._do_transform else {})
        return d

    def inverse(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        """Pop the records; the data are returned unchanged."""
        d = dict(data)
        for key in self.key_iterator(d):
            if isinstance(d[key], MetaTensor) and get_track_meta():
                self.pop_transform(d[key])
        return d


RandGenerativeTTAD = RandGenerativeTTADict = RandGenerativeTTAd
