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
"""Stop training on a non-finite loss, before the bad gradients reach the weights.

MONAI trainers fire ``IterationEvents.LOSS_COMPLETED`` after the loss and before ``backward()``; the guard checks
the loss there, so the weights (and the next checkpoint) stay finite. It checks every ``*loss*`` entry of the output
again at ``ITERATION_COMPLETED`` (e.g. a discriminator loss computed after the generator step).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from monai.engines import IterationEvents

__all__ = ["NonFiniteLossError", "NaNGuard"]

logger = logging.getLogger(__name__)


class NonFiniteLossError(RuntimeError):
    """Raised by :class:`NaNGuard` when a training loss is NaN or infinite."""


def _scalar_losses(output: Any, keys: Sequence[str] | None) -> dict[str, float]:
    if isinstance(output, Sequence) and not isinstance(output, (str, torch.Tensor)) and len(output) > 0:
        output = output[0]  # decollated output: the loss is replicated in every item
    if isinstance(output, torch.Tensor):
        return {"loss": float(output.detach().float().mean())} if output.numel() > 0 else {}
    if not isinstance(output, Mapping):
        return {}
    found = {}
    for k, v in output.items():
        name = str(k)
        if (keys is not None and name not in keys) or (keys is None and "loss" not in name.lower()):
            continue
        if isinstance(v, torch.Tensor) and v.numel() == 1:
            found[name] = float(v.detach().float())
        elif isinstance(v, (int, float)):
            found[name] = float(v)
    return found


class NaNGuard:
    """Stop an Ignite trainer with a clear message when a loss becomes NaN or infinite.

    Args:
        checkpoint_path: the trainer's last checkpoint, named in the message (it is kept as it is: checkpoint
            handlers never overwrite it with non-finite weights).
        loss_keys: output keys to check; None checks ``loss`` before backward and every key containing "loss" after
            the iteration.
        raise_error: raise :class:`NonFiniteLossError` (training stops before ``backward``; ``trainer.run()`` raises).
            When False the engine is terminated and the message is logged; the failing iteration then still runs its
            optimiser step, so the live weights may be non-finite (no checkpoint is written from them).
    """

    def __init__(
        self,
        checkpoint_path: str | os.PathLike | None = None,
        loss_keys: Sequence[str] | None = None,
        raise_error: bool = True,
    ) -> None:
        self.checkpoint_path = checkpoint_path
        self.loss_keys = loss_keys
        self.raise_error = raise_error
        self.tripped = False
        self.message: str | None = None

    def attach(self, engine) -> None:
        """Check after the loss (``IterationEvents.LOSS_COMPLETED``) and after every iteration."""
        from ignite.engine import Events

        try:  # MONAI workflows register IterationEvents; a plain Ignite engine only gets the post-iteration check
            engine.add_event_handler(IterationEvents.LOSS_COMPLETED, self._check_before_backward)
        except ValueError:
            pass
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._check_after_iteration)

    def _check_before_backward(self, engine) -> None:
        self._check(engine, self.loss_keys or ("loss",), "before backward")

    def _check_after_iteration(self, engine) -> None:
        self._check(engine, self.loss_keys, "after the iteration")

    def _check(self, engine, keys: Sequence[str] | None, when: str) -> None:
        if self.tripped:
            return
        bad = {k: v for k, v in _scalar_losses(engine.state.output, keys).items() if not math.isfinite(v)}
        if not bad:
            return
        state = engine.state
        in_epoch = (state.iteration - 1) % state.epoch_length + 1 if state.epoch_length else state.iteration
        where = (
            f"the last good checkpoint is kept at '{self.checkpoint_path}'"
            if self.checkpoint_path is not None and os.path.exists(self.checkpoint_path)
            else "no checkpoint had been written yet"
        )
        self.message = (
            f"non-finite training loss ({', '.join(f'{k}={v}' for k, v in bad.items())}) at epoch {state.epoch}, "
            f"iteration {state.iteration} (iteration {in_epoch} of the epoch), detected {when}; training stopped and "
            f"{where}. Lower the learning rate, turn AMP off, or check the inputs for NaN/inf values, then resume."
        )
        self.tripped = True
        state.nan_detected = True
        logger.error(self.message)
        engine.terminate()
        if self.raise_error:
            raise NonFiniteLossError(self.message)
