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
"""Prepare-batch for (latent, conditional) diffusion training with a plain MONAI ``SupervisedTrainer``.

:class:`LatentDiffusionPrepareBatch` extends ``monai.engines.DiffusionPrepareBatch`` (same ``get_noise`` /
``get_timesteps`` / ``get_target`` hooks) to a :class:`~monai_genaug.generative.latent_generator.LatentGenerator`:
it encodes the images with the frozen autoencoder (or takes pre-computed latents), draws noise and timesteps from
its own seeded ``torch.Generator``, noises the latents with the generator's scheduler, gathers the conditions from
the batch, applies condition dropout for classifier-free guidance (Ho & Salimans, arXiv:2207.12598) and returns::

    (x_t, target, (timesteps,), {"condition": condition})

so that ``SupervisedTrainer(network=generator, inferer=SimpleInferer(), loss_function=MSELoss())`` computes
``loss = mse(generator(x_t, timesteps, condition=condition), target)``. The target follows the scheduler's
``prediction_type``: noise for "epsilon", ``scheduler.get_velocity(x0, noise, t)`` for "v_prediction" (Salimans &
Ho, arXiv:2202.00512), ``x0`` for "sample".
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from monai.engines import DiffusionPrepareBatch
from torch import nn

from monai_genaug.generative.ddim import prediction_type_of
from monai_genaug.generative.latent_generator import CONDITION_KEYS

__all__ = ["LatentDiffusionPrepareBatch"]


class LatentDiffusionPrepareBatch(DiffusionPrepareBatch):
    """Turn a batch dict into a noised (latent) diffusion training pair for a ``LatentGenerator``.

    Args:
        generator: the ``LatentGenerator`` being trained (its autoencoder, scheduler and ``drop_condition`` are used).
        condition_keys: condition name -> batch key, e.g. ``{"class_labels": "label", "seg": "mask"}``; a list of
            names uses each name as its batch key. Names: "prompt", "context", "class_labels", "seg", "concat".
        condition_dropout: probability of replacing an item's condition by the null condition (classifier-free
            guidance training); 0 disables it.
        image_key: batch key of the images.
        latent_key: batch key of pre-computed latents (already scaled by ``scale_factor``); used instead of encoding
            when present in the batch.
        sample_posterior: encode with a sample of the autoencoder posterior (True) or its mean (False).
        seed: seed of the generator that draws noise, timesteps, posterior samples and condition dropout.
        num_train_timesteps: timesteps are drawn from [0, num_train_timesteps); defaults to the scheduler's.

    Raises:
        ValueError: ``condition_dropout`` is outside [0, 1] or a condition name is unknown.
    """

    def __init__(
        self,
        generator: nn.Module,
        condition_keys: Mapping[str, str] | Sequence[str] | None = None,
        condition_dropout: float = 0.0,
        image_key: str = "image",
        latent_key: str = "latent",
        sample_posterior: bool = True,
        seed: int = 0,
        num_train_timesteps: int | None = None,
    ) -> None:
        scheduler = generator.scheduler
        super().__init__(num_train_timesteps=int(num_train_timesteps or scheduler.num_train_timesteps))
        if not 0.0 <= condition_dropout <= 1.0:
            raise ValueError(f"condition_dropout must be in [0, 1], got {condition_dropout}.")
        if condition_keys is None:
            condition_keys = {}
        elif isinstance(condition_keys, str):
            condition_keys = {condition_keys: condition_keys}
        elif not isinstance(condition_keys, Mapping):
            condition_keys = {k: k for k in condition_keys}
        unknown = sorted(set(condition_keys) - set(CONDITION_KEYS))
        if unknown:
            raise ValueError(
                f"unknown condition name(s) {unknown} in condition_keys; use {list(CONDITION_KEYS)} "
                "mapped to batch keys, e.g. {'class_labels': 'label'}."
            )
        self.generator = generator
        self.scheduler = scheduler
        self.condition_keys = dict(condition_keys)
        self.condition_dropout = float(condition_dropout)
        self.image_key = image_key
        self.latent_key = latent_key
        self.sample_posterior = sample_posterior
        self.seed = seed
        self.rng = torch.Generator().manual_seed(seed)

    # ------------------------------------------------------------ RNG plumbing
    def reset(self) -> None:
        """Re-seed the generator (e.g. at the start of every validation run)."""
        self.rng.manual_seed(self.seed)

    def state_dict(self) -> dict[str, Any]:
        """The generator state, for resumable checkpoints."""
        return {"rng": self.rng.get_state()}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        self.rng.set_state(state_dict["rng"])

    def _rng_on(self, device: torch.device) -> torch.Generator:
        """The CPU generator, or a generator on ``device`` seeded from it (so one state drives every draw)."""
        if device.type == "cpu":
            return self.rng
        seed = int(torch.randint(0, 2**62, (1,), generator=self.rng).item())
        return torch.Generator(device=device).manual_seed(seed)

    # ---------------------------------------------------------- overridable hooks
    def get_noise(self, images: torch.Tensor) -> torch.Tensor:
        """Standard normal noise shaped like ``images`` (the latents), drawn from the seeded generator."""
        return torch.randn(images.shape, generator=self.rng, dtype=images.dtype).to(images.device)

    def get_timesteps(self, images: torch.Tensor) -> torch.Tensor:
        """One integer timestep per item in [0, num_train_timesteps), from the seeded generator."""
        return torch.randint(0, self.num_train_timesteps, (images.shape[0],), generator=self.rng).to(images.device)

    def get_target(self, images: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """Regression target for the scheduler's ``prediction_type``: noise, velocity or the clean sample."""
        prediction_type = prediction_type_of(self.scheduler)  # raises on an unsupported type
        if prediction_type == "epsilon":
            return noise
        if prediction_type == "v_prediction":
            return self.scheduler.get_velocity(images, noise, timesteps)
        return images

    def get_latents(
        self, batchdata: Mapping[str, Any], device: torch.device | str | None, non_blocking: bool, **kwargs: Any
    ) -> torch.Tensor:
        """Clean latents ``x0``: ``batch[latent_key]`` when present, else the images encoded without gradients."""
        if self.latent_key in batchdata:
            return torch.as_tensor(batchdata[self.latent_key]).to(device=device, non_blocking=non_blocking, **kwargs)
        if self.image_key not in batchdata:
            raise KeyError(
                f"the batch has neither '{self.image_key}' nor '{self.latent_key}' (keys: {sorted(batchdata)}); "
                "set image_key / latent_key to the batch keys of the images or pre-computed latents."
            )
        images = torch.as_tensor(batchdata[self.image_key]).to(device=device, non_blocking=non_blocking, **kwargs)
        autoencoder = getattr(self.generator, "autoencoder", None)
        if autoencoder is not None:
            autoencoder.eval()  # frozen during diffusion training
        with torch.no_grad():
            if autoencoder is None:
                return self.generator.encode(images)
            return self.generator.encode(images, sample=self.sample_posterior, generator=self._rng_on(images.device))

    def get_condition(
        self, batchdata: Mapping[str, Any], device: torch.device | str | None = None, non_blocking: bool = False
    ) -> dict[str, torch.Tensor] | None:
        """Gather the conditions from the batch and move them to ``device``; None when there are none."""
        if not self.condition_keys:
            return None
        missing = [key for key in self.condition_keys.values() if key not in batchdata]
        if missing:
            raise KeyError(
                f"condition batch key(s) {missing} are missing from the batch (keys: {sorted(batchdata)}); "
                f"condition_keys maps condition names to batch keys: {self.condition_keys}."
            )
        condition = {}
        for name, key in self.condition_keys.items():
            value = torch.as_tensor(batchdata[key])
            if name in ("prompt", "class_labels"):
                value = value.reshape(value.shape[0], -1)[:, 0].long() if value.ndim > 1 else value.long()
            condition[name] = value.to(device=device, non_blocking=non_blocking)
        return condition

    def drop_condition(self, condition: dict[str, torch.Tensor] | None) -> dict[str, torch.Tensor] | None:
        """Apply condition dropout through ``generator.drop_condition`` (a no-op for ``condition_dropout=0``).

        The dropout mask is drawn from the CPU generator (``LatentGenerator.drop_condition`` draws on the CPU and
        moves the mask to the conditions' device).
        """
        if condition is None or self.condition_dropout <= 0.0:
            return condition
        return self.generator.drop_condition(condition, self.condition_dropout, generator=self.rng)

    def __call__(
        self,
        batchdata: Mapping[str, Any],
        device: str | torch.device | None = None,
        non_blocking: bool = False,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, torch.Tensor, tuple, dict]:
        """Return ``(x_t, target, (timesteps,), {"condition": condition})`` on ``device``."""
        if not isinstance(batchdata, Mapping):
            raise TypeError(
                f"LatentDiffusionPrepareBatch expects a dict batch with '{self.image_key}' (and condition keys), "
                f"got {type(batchdata).__name__}."
            )
        x0 = self.get_latents(batchdata, device, non_blocking, **kwargs)
        noise = self.get_noise(x0)
        timesteps = self.get_timesteps(x0)
        noisy = self.scheduler.add_noise(original_samples=x0, noise=noise, timesteps=timesteps)
        target = self.get_target(x0, noise, timesteps)
        condition = self.drop_condition(self.get_condition(batchdata, device, non_blocking))
        return noisy, target, (timesteps,), ({} if condition is None else {"condition": condition})
