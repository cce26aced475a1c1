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
"""The one latent scale-factor estimate of the package: ``1 / std`` of the autoencoder's latents (Rombach et al.,
*High-Resolution Image Synthesis with Latent Diffusion Models*, arXiv:2112.10752, Sec. 4.3 / App. G: latents are
rescaled to unit variance before diffusion), streamed over a tensor or a data loader.

``LatentGenerator.estimate_scale_factor(_from_loader)`` (the generators of TTGA, HistoDiffusion, AdaptDiff) and
``GMSSegmenter.estimate_scale_factor`` both call :func:`latent_scale_factor`.

The std is the **sample** standard deviation (``N - 1`` in the denominator, ``torch.std``'s default and what the LDM
reference computes with ``1 / z.flatten().std()``). GMS used the population std (``N``) before: its factor is now
larger by ``sqrt(N / (N - 1))``, i.e. by less than 1e-5 relative for any real latent set (N > 5e4 values) and about 1 %
for a 48-value toy tensor. The moments are accumulated per batch in float64 and merged with the pairwise update of
Chan, Golub & LeVeque (1979), so a loader of many batches gives the same value as one concatenated tensor.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch

__all__ = ["latent_scale_factor"]


@torch.no_grad()
def latent_scale_factor(
    encode: Callable[[torch.Tensor], torch.Tensor],
    data: torch.Tensor | Iterable[Any],
    image_key: str = "image",
    max_batches: int | None = None,
    device: torch.device | str | None = None,
) -> float:
    """``1 / std`` (sample std, float64) of ``encode(images)`` over ``data``.

    Args:
        encode: images ``(B, C, *spatial)`` -> unscaled latents (e.g. the posterior means of an ``AutoencoderKL``).
        data: an image tensor, or an iterable of image tensors or of dicts with ``image_key`` (a data loader).
        image_key: key of the images in dict batches.
        max_batches: stop after this many batches (None: all).
        device: move the images there before encoding (None: as they come).

    Raises:
        ValueError: no batch / no latent value, a dict batch without ``image_key``, or latents of zero variance.
    """
    if max_batches is not None and int(max_batches) < 1:
        raise ValueError(f"max_batches must be >= 1 or None, got {max_batches}.")
    batches = [data] if isinstance(data, torch.Tensor) else data
    count, mean, m2 = 0, 0.0, 0.0
    for i, batch in enumerate(batches):
        if max_batches is not None and i >= max_batches:
            break
        if isinstance(batch, Mapping):
            if image_key not in batch:
                raise ValueError(f"the batches have no '{image_key}' key (keys: {sorted(batch)}); set image_key.")
            batch = batch[image_key]
        images = torch.as_tensor(batch).float()
        z = encode(images if device is None else images.to(device)).detach().double().flatten()
        n = z.numel()
        if n == 0:
            continue
        batch_mean = float(z.mean())
        batch_m2 = float(((z - batch_mean) ** 2).sum())
        delta, total = batch_mean - mean, count + n
        mean += delta * n / total
        m2 += batch_m2 + delta * delta * count * n / total
        count = total
    if count < 2:
        raise ValueError(
            "no batch of images to estimate the latent scale factor from; pass an image tensor or a non-empty loader."
        )
    std = math.sqrt(m2 / (count - 1))
    if not std > 0:
        raise ValueError("latents have zero variance; train the autoencoder before estimating the scale factor.")
    return 1.0 / std
