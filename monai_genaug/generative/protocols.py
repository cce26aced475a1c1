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
"""Structural types of the generative core, so the layers below ``methods/`` never import a method.

- :class:`DiffusionModel`: what the sampler, the guidance and the inversion need from a (latent) diffusion model:
  its denoising network, its conditions and its latent scale. :class:`~monai_genaug.generative.latent_generator.
  LatentGenerator` (2D / 3D images) and :class:`~monai_genaug.generative.sequence_generator.SequenceGenerator`
  (2D + t clips, Ctrl-GenAug) both satisfy it.
- :class:`ViewGenerator`: what the generative TTA transform and inferer need from a test-time view generator
  (:class:`~monai_genaug.methods.ttga.TTGAAugmenter` satisfies it).

Both are ``typing.Protocol`` classes (checked with ``isinstance`` at construction, as MONAI checks its inputs).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol, runtime_checkable

import torch

__all__ = ["DiffusionModel", "ViewGenerator"]


@runtime_checkable
class DiffusionModel(Protocol):
    """A diffusion model the core samples from: ``predict(x_t, t, conditions)`` gives the network output for the
    noisy latents ``x_t`` at timesteps ``t`` under ``conditions`` (``None`` entries: the null condition), in the
    parameterisation named by ``prediction_type``; ``scale_factor`` scales latents to unit variance (Rombach et al.,
    arXiv:2112.10752) and ``latent_shape`` gives the latent grid of an input size.

    The noise scheduler is *not* part of the model: it is handed to the sampler and the inversion (as in diffusers),
    so one model can be sampled on several schedules.
    """

    scale_factor: torch.Tensor

    @property
    def prediction_type(self) -> str: ...

    def predict(
        self, x_t: torch.Tensor, t: torch.Tensor, conditions: Mapping[str, Any] | None = None, **kwargs: Any
    ) -> torch.Tensor: ...


@runtime_checkable
class ViewGenerator(Protocol):
    """A test-time view generator: ``generator(image, num_views=N, rng=..., lambda_i=...)`` returns ``N`` views of
    ``image`` (``(N, C, *spatial)``, the input's geometry and intensity range); ``num_views``, ``lambda_i`` and ``tau``
    are its defaults (number of views, identity weight, inversion depth)."""

    num_views: int
    lambda_i: Any
    tau: Any

    def __call__(self, image: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor: ...
