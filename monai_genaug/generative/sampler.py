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
"""The one sampling loop of monai_genaug: DDPM / DDIM steps with pluggable guidance.

Every method (TTGA's view generation, HistoDiffusion's guided synthesis, AdaptDiff's mask-conditioned synthesis,
Ctrl-GenAug's clips) samples through :class:`DiffusionSampler`. Per step it makes one batched UNet call over the
guidance branches (:mod:`monai_genaug.generative.guidance`), converts the output to noise and clean estimates,
lets the guidance correct the noise estimate, and applies the DDIM transition
(:func:`~monai_genaug.generative.ddim.ddim_transition`; ``eta = 1`` with all T steps is DDPM). A per-step callback
may replace the next sample (TTGA's region merging); optional clamping of the predicted clean sample and of every
intermediate sample (AdaptDiff) is built in.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from tqdm.auto import tqdm

from monai_genaug.generative.ddim import (
    CLEAN,
    alpha_bar,
    ddim_transition,
    prediction_type_of,
    timestep_path,
    to_epsilon_and_x0,
)
from monai_genaug.generative.guidance import Guidance, NoGuidance
from monai_genaug.generative.protocols import DiffusionModel
from monai_genaug.utils.options import check_finite, tqdm_disable

__all__ = ["SamplerStep", "DiffusionSampler"]


@dataclass
class SamplerStep:
    """What a per-step callback sees. Return a tensor from the callback to replace ``x_next``.

    Attributes:
        index: step number, 0 for the first.
        timestep: the noise level the UNet was evaluated at.
        next_timestep: the level the step moves to (``-1`` = clean).
        x_t: the sample at ``timestep``.
        x_next: the proposed sample at ``next_timestep``.
        x0: the clean estimate.
        eps: the (guided) noise estimate.
        branch_outputs: raw UNet outputs of every guidance branch.
        a_t: cumulative alpha at ``timestep``.
        a_next: cumulative alpha at ``next_timestep``.
    """

    index: int
    timestep: int
    next_timestep: int
    x_t: torch.Tensor
    x_next: torch.Tensor
    x0: torch.Tensor
    eps: torch.Tensor
    branch_outputs: list[torch.Tensor] = field(default_factory=list)
    a_t: float = 1.0
    a_next: float = 1.0


class DiffusionSampler:
    """DDPM / DDIM sampling with guidance plug-ins, partial denoising, callbacks and clamping.

    Args:
        num_inference_steps: UNet evaluations per run (DDPM: ``T`` with ``eta = 1``; DDIM: a few tens).
        eta: DDIM stochasticity, 0 deterministic, 1 DDPM-equivalent noise.
        clip_x0: optional ``(min, max)`` clamp of every clean estimate (MONAI's ``clip_sample``).
        clamp: optional ``(min, max)`` clamp of every intermediate sample (AdaptDiff clamps ``x_t`` to [-1, 1]).
        progress: show a tqdm progress bar over the steps (on a terminal); None: the process-wide setting
            (:func:`monai_genaug.utils.options.set_progress`, on unless ``--progress false``).
        autocast_dtype: e.g. ``torch.bfloat16`` to run the UNet under autocast (CUDA / CPU), ``None`` for full
            precision.

    Example::

        sampler = DiffusionSampler(num_inference_steps=20)
        z = sampler(gen, shape=(4, *gen.latent_shape((64, 64))), condition={"prompt": ids},
                    guidance=ClassifierFreeGuidance(3.0), rng=torch.Generator().manual_seed(0))
        images = gen.decode(z)
    """

    def __init__(
        self,
        num_inference_steps: int = 50,
        eta: float = 0.0,
        clip_x0: tuple[float, float] | None = None,
        clamp: tuple[float, float] | None = None,
        progress: bool | None = None,
        autocast_dtype: torch.dtype | None = None,
    ) -> None:
        check_finite(type(self).__name__, eta=eta, clip_x0=clip_x0, clamp=clamp)
        if num_inference_steps < 1:
            raise ValueError(f"num_inference_steps must be >= 1, got {num_inference_steps}.")
        if eta < 0:
            raise ValueError(f"eta must be >= 0, got {eta}.")
        self.num_inference_steps = int(num_inference_steps)
        self.eta = float(eta)
        self.clip_x0 = clip_x0
        self.clamp = clamp
        self.progress = progress
        self.autocast_dtype = autocast_dtype

    def timesteps(
        self, generator: DiffusionModel, start_timestep: int | None = None, scheduler: Any | None = None
    ) -> list[int]:
        """The descending timestep path of a run (see :func:`~monai_genaug.generative.ddim.timestep_path`) on
        ``scheduler`` (default: the model's training schedule)."""
        scheduler = generator.scheduler if scheduler is None else scheduler
        return timestep_path(scheduler.num_train_timesteps, self.num_inference_steps, start_timestep)

    def autocast(self, device: torch.device):
        """The autocast context of ``autocast_dtype`` on ``device``'s type (a no-op context when it is ``None``); UNet
        calls made outside the sampler with the same precision (e.g. TTGA's inversion) use it too."""
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=device.type, dtype=self.autocast_dtype)

    @torch.no_grad()
    def __call__(
        self,
        generator: DiffusionModel,
        x: torch.Tensor | None = None,
        shape: Sequence[int] | None = None,
        condition: Mapping[str, torch.Tensor] | None = None,
        guidance: Guidance | None = None,
        start_timestep: int | None = None,
        timesteps: Sequence[int] | None = None,
        rng: torch.Generator | None = None,
        callback: Callable[[SamplerStep], torch.Tensor | None] | None = None,
        eta: float | None = None,
        scheduler: Any | None = None,
    ) -> torch.Tensor:
        """Denoise ``x`` (or fresh noise of ``shape``) down the timestep path; returns the final sample (latents).

        Args:
            generator: the diffusion model (:class:`~monai_genaug.generative.protocols.DiffusionModel`: a
                :class:`~monai_genaug.generative.latent_generator.LatentGenerator` or a sequence generator).
            x: the starting sample at ``start_timestep`` (partial denoising), or ``None`` to start from noise.
            shape: shape of the starting noise when ``x`` is ``None``, e.g. ``(N, *generator.latent_shape(size))``.
            condition: the condition (see :meth:`LatentGenerator.forward`), shared by all samples of the batch.
            guidance: a guidance plug-in, default :class:`NoGuidance`.
            start_timestep: noise level of ``x`` (default ``T - 1``).
            timesteps: an explicit descending path ``[t_0, ..., t_K]`` (the UNet runs at all but ``t_K``; ``-1``
                is the clean end), overriding ``num_inference_steps`` / ``start_timestep``.
            rng: the ``torch.Generator`` for the starting noise and the stochastic steps.
            callback: called after every step with a :class:`SamplerStep`; a returned tensor replaces ``x_next``.
            eta: override the sampler's eta for this call.
            scheduler: the noise schedule to sample on (its ``alphas_cumprod``, ``num_train_timesteps`` and
                ``prediction_type``; any MONAI scheduler), as diffusers hands a scheduler to its pipelines; default the
                model's training schedule. A schedule other than the training one is e.g. TTGA's legacy table.
        """
        guidance = guidance if guidance is not None else NoGuidance()
        check_finite(type(self).__name__, eta=eta)
        eta = self.eta if eta is None else float(eta)
        device = generator.scale_factor.device
        if x is None:
            if shape is None:
                raise ValueError("give the starting sample x or the shape of the starting noise.")
            x = torch.randn(tuple(shape), generator=rng, device="cpu" if rng is None else rng.device).to(device)
        scheduler = generator.scheduler if scheduler is None else scheduler
        path = list(timesteps) if timesteps is not None else self.timesteps(generator, start_timestep, scheduler)
        if len(path) < 2 or any(a <= b for a, b in zip(path[:-1], path[1:])) or path[-1] < CLEAN:
            raise ValueError(f"timesteps must be a strictly descending path ending at >= -1, got {path}.")
        prediction_type = prediction_type_of(scheduler)
        prepared = guidance.prepare(generator, condition, x.shape[0])
        alphas = [alpha_bar(scheduler, t) for t in path]
        steps = range(len(path) - 1)
        for i in tqdm(steps, desc="sampling", disable=tqdm_disable(self.progress), leave=False):
            t, t_next, a_t, a_next = path[i], path[i + 1], alphas[i], alphas[i + 1]
            with self.autocast(x.device):
                out, branch_outputs = guidance.predict(generator, x, t, prepared)
            eps, x0 = to_epsilon_and_x0(out.to(x.dtype), x, a_t, prediction_type)
            corrected = guidance.correct(eps, x, t, a_t, generator)
            if corrected is not eps:
                eps = corrected
                x0 = (x - (1.0 - a_t) ** 0.5 * eps) / a_t**0.5
            if self.clip_x0 is not None:
                x0 = x0.clamp(*self.clip_x0)
            noise = None
            if eta > 0 and a_next < 1.0:  # the clean end (a = 1) adds no noise
                noise = torch.randn(x.shape, generator=rng, device="cpu" if rng is None else rng.device).to(x)
            x_next = ddim_transition(x0, eps, a_t, a_next, eta=eta, noise=noise)
            if self.clamp is not None:
                x_next = x_next.clamp(*self.clamp)
            if callback is not None:
                replaced = callback(SamplerStep(i, t, t_next, x, x_next, x0, eps, branch_outputs, a_t, a_next))
                if replaced is not None:
                    x_next = replaced
            x = x_next
        return x
