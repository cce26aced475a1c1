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
"""Exponential moving average of the trained weights, as an Ignite handler that can be checkpointed.

Diffusion models are sampled with an EMA of their weights (Ho et al., "Denoising Diffusion Probabilistic Models",
arXiv:2006.11239; Nichol & Dhariwal, arXiv:2102.09672). This reuses ``ignite.handlers.EMAHandler`` and adds what
training here needs: the usual ``decay`` parameterisation, ``state_dict`` / ``load_state_dict`` for resumable
checkpoints, and :meth:`EMAHandler.use_ema_weights`, which swaps the averaged weights into the live network for
sampling or saving and swaps them back afterwards.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
from ignite.handlers import EMAHandler as _IgniteEMAHandler
from torch import nn

__all__ = ["EMAHandler"]


class EMAHandler(_IgniteEMAHandler):
    """EMA of a network's weights, updated after every training iteration.

    ``ema = decay * ema + (1 - decay) * live``. Attach with ``handler.attach(trainer)`` (or list it in a MONAI
    trainer's ``train_handlers``). For a :class:`~monai_genaug.generative.latent_generator.LatentGenerator`, pass only
    the trained parts, e.g. ``nn.ModuleDict({"unet": generator.unet})``, so that the frozen autoencoder is not copied.

    Args:
        model: the live network (its trainable parts).
        decay: EMA decay after warm-up, in (0, 1); 0.999-0.9999 is usual for diffusion models.
        warmup_decay: decay at the first iteration, ramped linearly to ``decay`` over ``warmup_iters``; None for none.
        warmup_iters: length of the warm-up in iterations.
        handle_buffers: how buffers follow the live model: "copy", "update" (averaged) or "ema_train"
            (see ``ignite.handlers.EMAHandler``).
    """

    def __init__(
        self,
        model: nn.Module,
        decay: float = 0.999,
        warmup_decay: float | None = None,
        warmup_iters: int | None = None,
        handle_buffers: str = "copy",
    ) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay}; e.g. 0.999.")
        if (warmup_decay is None) != (warmup_iters is None):
            raise ValueError("give both warmup_decay and warmup_iters, or neither.")
        if warmup_decay is not None and not 0.0 <= warmup_decay < 1.0:
            raise ValueError(f"warmup_decay must be in [0, 1), got {warmup_decay}.")
        super().__init__(
            model,
            momentum=1.0 - decay,
            momentum_warmup=None if warmup_decay is None else 1.0 - warmup_decay,
            warmup_iters=warmup_iters,
            handle_buffers=handle_buffers,
        )
        for p in self.ema_model.parameters():
            p.requires_grad_(False)
        self.decay = decay

    def attach(self, engine, name: str = "ema_momentum", warn_if_exists: bool = False, event=None) -> None:
        """Register the EMA update on ``engine`` (every ``ITERATION_COMPLETED`` unless ``event`` is given).

        Args:
            engine: the trainer.
            name: ``engine.state`` attribute holding the current momentum (1 - decay).
            warn_if_exists: warn when that attribute exists already (e.g. after loading a state dict).
            event: the Ignite event that triggers an update.
        """
        from ignite.engine import Events

        super().attach(engine, name=name, warn_if_exists=warn_if_exists, event=event or Events.ITERATION_COMPLETED)

    def state_dict(self) -> dict[str, Any]:
        """EMA weights (and the warm-up counter) as a weights-only checkpoint entry."""
        state: dict[str, Any] = {"ema_model": self.ema_model.state_dict()}
        scheduler = getattr(self, "momentum_scheduler", None)
        if scheduler is not None:
            state["momentum_scheduler"] = {"event_index": int(scheduler.event_index)}
        return state

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        self.ema_model.load_state_dict(state_dict["ema_model"])
        scheduler = getattr(self, "momentum_scheduler", None)
        if scheduler is not None and "momentum_scheduler" in state_dict:
            scheduler.event_index = int(state_dict["momentum_scheduler"]["event_index"])

    @contextmanager
    def use_ema_weights(self) -> Iterator[nn.Module]:
        """Temporarily load the EMA weights into the live network (in place); restore the live weights on exit.

        Example::

            with ema.use_ema_weights():
                samples = sample_fn()       # the generator now runs with EMA weights
                generator.save("ema.pt")
        """
        backup = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        with torch.no_grad():
            self.model.load_state_dict(self.ema_model.state_dict())
        try:
            yield self.model
        finally:
            with torch.no_grad():
                self.model.load_state_dict(backup)
