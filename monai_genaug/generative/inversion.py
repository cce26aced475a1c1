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
"""Deterministic DDIM inversion and the direct jump between noise levels.

DDIM inversion (Song et al., arXiv:2010.02502; Mokady et al., "Null-text Inversion", arXiv:2211.09794) runs the
deterministic DDIM transition towards *more* noise, mapping a clean latent to the ``x_tau`` from which DDIM
denoising reproduces it. :func:`ddim_jump` moves from ``x_t`` to any level ``t'`` with a single noise estimate:
TTGA's identity path and its null-text loss (arXiv:2406.17608, spec A4/A5) jump from tau straight to 0.
Both go through the same guidance plug-ins and the same transition formula as :class:`DiffusionSampler`.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from tqdm.auto import tqdm

from monai_genaug.generative.ddim import alpha_bar, ddim_transition, to_epsilon_and_x0
from monai_genaug.generative.guidance import Guidance, NoGuidance
from monai_genaug.generative.latent_generator import LatentGenerator

__all__ = ["inversion_path", "ddim_invert", "predict_epsilon", "ddim_jump"]


def inversion_path(end_timestep: int, num_steps: int | None = None, stride: int | None = None) -> list[int]:
    """Ascending path ``[0, s, 2s, ..., end_timestep]`` (give ``stride`` as TTGA's ``Δf``, or ``num_steps``)."""
    if end_timestep < 1:
        raise ValueError(f"end_timestep must be >= 1, got {end_timestep}.")
    if (num_steps is None) == (stride is None):
        raise ValueError("give exactly one of num_steps or stride.")
    if stride is not None:
        if stride < 1:
            raise ValueError(f"stride must be >= 1, got {stride}.")
        path = list(range(0, end_timestep, stride)) + [end_timestep]
    else:
        if num_steps < 1:
            raise ValueError(f"num_steps must be >= 1, got {num_steps}.")
        path = sorted(set(torch.linspace(0, end_timestep, num_steps + 1).round().long().tolist()))
    return path


def predict_epsilon(
    generator: LatentGenerator,
    x_t: torch.Tensor,
    timestep: int,
    condition: Mapping[str, torch.Tensor] | None = None,
    guidance: Guidance | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(noise estimate, clean estimate) at ``timestep`` through ``guidance`` (gradients flow when enabled), in the
    dtype of ``x_t`` also when the UNet runs under autocast."""
    guidance = guidance if guidance is not None else NoGuidance()
    prepared = guidance.prepare(generator, condition, x_t.shape[0])
    out, _ = guidance.predict(generator, x_t, timestep, prepared)
    out = out.to(x_t.dtype)  # a UNet run under autocast answers in 16 bits; the DDIM arithmetic stays in x_t's dtype
    a_t = alpha_bar(generator.scheduler, timestep)
    prediction_type = getattr(generator.scheduler, "prediction_type", "epsilon")
    return to_epsilon_and_x0(out, x_t, a_t, getattr(prediction_type, "value", prediction_type))


@torch.no_grad()
def ddim_invert(
    generator: LatentGenerator,
    latents: torch.Tensor,
    end_timestep: int,
    condition: Mapping[str, torch.Tensor] | None = None,
    guidance: Guidance | None = None,
    num_steps: int | None = None,
    stride: int | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """Invert clean latents to noise level ``end_timestep`` with deterministic DDIM steps.

    The latents are taken to sit at timestep 0 (as in TTGA's code); each step evaluates the noise at the current
    level and moves up the path of :func:`inversion_path`. Denoising the result with :class:`DiffusionSampler` and
    ``eta = 0`` along the reversed path reconstructs the latents (closely; exactly only in the limit of small
    steps).

    Args:
        generator: the generator.
        latents: clean latents (B, C, *spatial), e.g. ``generator.encode(images)``.
        end_timestep: tau, the noise level to reach.
        condition: the condition used for the noise estimates (TTGA: the prompt, no CFG).
        guidance: guidance plug-in (default none).
        num_steps: number of inversion steps, or
        stride: distance between inversion steps (TTGA's ``Δf = 10``).
        progress: show a progress bar.
    """
    path = inversion_path(end_timestep, num_steps, stride)
    x = latents
    for t, t_next in tqdm(list(zip(path[:-1], path[1:])), desc="inverting", leave=False,
                          disable=None if progress else True):
        eps, x0 = predict_epsilon(generator, x, t, condition, guidance)
        x = ddim_transition(x0, eps, alpha_bar(generator.scheduler, t), alpha_bar(generator.scheduler, t_next))
    return x


def ddim_jump(
    generator: LatentGenerator, x_t: torch.Tensor, timestep: int, eps: torch.Tensor, target_timestep: int
) -> torch.Tensor:
    """Deterministic jump from ``x_t`` at ``timestep`` to ``target_timestep`` (any level, ``-1`` = clean) with one
    noise estimate ``eps``; differentiable, so TTGA's identity embedding can be optimised through it."""
    a_t = alpha_bar(generator.scheduler, timestep)
    a_to = alpha_bar(generator.scheduler, target_timestep)
    x0 = (x_t - (1.0 - a_t) ** 0.5 * eps) / a_t**0.5
    return ddim_transition(x0, eps, a_t, a_to)
