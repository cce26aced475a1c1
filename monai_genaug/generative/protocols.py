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
  its denoising network, its conditions, its latent scale and its training schedule. :class:`~monai_genaug.generative.latent_generator.
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
    """What the sampler, the guidance plug-ins and the inversion need from a diffusion model.

    ``model(x_t, t, condition)`` returns the network output for noisy samples ``x_t`` at timestep(s) ``t`` under a
    condition dict; ``resolve_condition`` turns a user condition into the tensors the network takes (missing entries
    become null), ``null_condition`` gives the unconditional branch of classifier-free guidance (Ho & Salimans,
    arXiv:2207.12598); ``scale_factor`` is the latent scale (Rombach et al., arXiv:2112.10752), a buffer whose device
    is the model's; ``scheduler`` is the training noise schedule, used when no other scheduler is handed to the
    sampler or the inversion (as in diffusers, the schedule to sample on is an argument, not part of the model).
    """

    scheduler: Any
    scale_factor: torch.Tensor

    def __call__(
        self, x_t: torch.Tensor, timesteps: torch.Tensor | int, condition: Mapping[str, torch.Tensor] | None = None
    ) -> torch.Tensor: ...

    def resolve_condition(
        self, condition: Mapping[str, torch.Tensor] | None, batch_size: int | None = None
    ) -> dict[str, torch.Tensor]: ...

    def null_condition(self, condition: Mapping[str, torch.Tensor] | None, batch_size: int) -> dict[str, torch.Tensor]: ...


@runtime_checkable
class ViewGenerator(Protocol):
    """A test-time view generator: ``generator(image, num_views=N, rng=..., lambda_i=...)`` returns ``N`` views of
    ``image`` (``(N, C, *spatial)``, the input's geometry and intensity range); ``num_views``, ``lambda_i`` and ``tau``
    are its defaults (number of views, identity weight, inversion depth)."""

    num_views: int
    lambda_i: Any
    tau: Any

    def __call__(self, image: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor: ...
