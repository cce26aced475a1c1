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
"""A resumable training checkpoint: everything a killed run needs to end where an uninterrupted run ends.

:class:`ResumableCheckpointHandler` writes ``<save_dir>/checkpoint_last.pt`` atomically at the end of every epoch:
the state dicts of networks, optimisers, LR schedulers, EMA, grad scaler and prepare-batch objects, the values of
``torch.Generator`` objects (data-loader shuffling, noise), the global RNG states (torch, CUDA, numpy, random) and
the engine counters. On ``STARTED`` it loads the file (``weights_only=True``) when ``resume`` is on and the file
exists; otherwise it seeds the global RNGs. It first removes the temporary files (``.checkpoint_last.pt.*.tmp``) that
a run killed during a save left behind. It never overwrites the last good checkpoint with non-finite weights.

Checkpoints are taken at epoch boundaries only: a run killed mid-epoch restarts that epoch from its beginning, with
the same data order and the same random draws, so the final weights equal those of an uninterrupted run. To make the
data order a function of the saved state only, the handler starts a fresh data-loader iterator at every epoch start
(Ignite would otherwise advance the previous epoch's iterator once more, which draws from the shuffling generator in
an uninterrupted run but not in a resumed one). Random MONAI transforms run in the main process
(``num_workers=0``) keep their own random states, which are not checkpointed; use ``num_workers > 0`` (MONAI seeds
the workers from the loader's generator) when augmentations must resume exactly.
"""

from __future__ import annotations

import logging
import os
import random
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.utils import set_determinism
from torch import nn

from monai_genaug.utils.checkpoint import (
    register_checkpoint_format,
    CheckpointMismatchError,
    atomic_save,
    check_state_dict_compatible,
    load_checkpoint,
    remove_stale_temporaries,
)

__all__ = [
    "CHECKPOINT_FORMAT",
    "get_rng_state",
    "set_rng_state",
    "AttributeState",
    "find_non_finite",
    "loader_generators",
    "ResumableCheckpointHandler",
]

logger = logging.getLogger(__name__)

#: value of the ``format`` entry of a training checkpoint
CHECKPOINT_FORMAT = register_checkpoint_format(
    "monai_genaug.training_checkpoint.v1",
    "monai_genaug training",
    "delete it or pass resume=False to start a new training",
)


def get_rng_state() -> dict[str, Any]:
    """Global RNG states (torch CPU, CUDA when initialised, numpy legacy, python ``random``) as weights-only data."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "random": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore what :func:`get_rng_state` returned."""
    torch.set_rng_state(state["torch"].cpu())
    np_state = state["numpy"]
    np.random.set_state(
        (
            "MT19937",
            np_state["keys"].numpy().astype(np.uint32),
            np_state["pos"],
            np_state["has_gauss"],
            np_state["cached_gaussian"],
        )
    )
    rnd = state["random"]
    random.setstate((rnd[0], tuple(rnd[1]), rnd[2]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class AttributeState:
    """Checkpoint ``getattr(owner, name)`` as it is at save / load time (e.g. a trainer's GradScaler, created in run()).

    Args:
        owner: the object holding the attribute.
        name: the attribute name; a missing or None attribute saves an empty dict and loads nothing.
    """

    def __init__(self, owner: Any, name: str) -> None:
        self.owner = owner
        self.name = name

    def state_dict(self) -> dict[str, Any]:
        obj = getattr(self.owner, self.name, None)
        return {} if obj is None else obj.state_dict()

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        obj = getattr(self.owner, self.name, None)
        if obj is not None and state_dict:
            obj.load_state_dict(state_dict)


def find_non_finite(save_dict: Mapping[str, Any]) -> list[str]:
    """Names of the networks in ``save_dict`` with a NaN/inf weight or buffer, as ``"<name>.<first bad key>"``."""
    bad = []
    for name, obj in save_dict.items():
        if isinstance(obj, nn.Module):
            for key, value in obj.state_dict().items():
                if torch.is_floating_point(value) and not torch.isfinite(value).all():
                    bad.append(f"{name}.{key}")
                    break
    return bad


def loader_generators(loader: Any) -> dict[str, torch.Generator]:
    """The ``torch.Generator`` objects that drive a data loader's shuffling (to checkpoint them)."""
    found: dict[str, torch.Generator] = {}
    for name, owner in (("loader_generator", loader), ("sampler_generator", getattr(loader, "sampler", None))):
        gen = getattr(owner, "generator", None)
        if isinstance(gen, torch.Generator) and all(gen is not g for g in found.values()):
            found[name] = gen
    return found


class ResumableCheckpointHandler:
    """Save and restore a full training state every ``save_interval`` epochs, so a killed run can resume exactly.

    Why not MONAI's ``CheckpointSaver`` / ``CheckpointLoader``: they save and load the ``state_dict`` of the objects
    in ``save_dict`` (and the engine's counters) and nothing else. An exact resume also needs what they cannot hold:
    ``torch.Generator`` values (data-loader shuffling, diffusion noise), the global torch / CUDA / numpy / random
    states, a fresh loader iterator at every epoch start (so the data order is a function of the saved state), the
    AMP scaler created lazily by the trainer (:class:`AttributeState`), a refusal to overwrite the last good
    checkpoint with non-finite weights, ``weights_only=True`` loading with a clear mismatch error, and a check that
    the saved epoch length and epoch count fit the run. Final and best-model files still use MONAI's handlers.

    Args:
        save_dir: folder of the checkpoint file.
        save_dict: name -> object to save: anything with ``state_dict()`` / ``load_state_dict()`` (networks,
            optimisers, LR schedulers, :class:`~monai_genaug.handlers.ema.EMAHandler`, GradScaler, prepare-batch
            objects) or a ``torch.Generator``.
        filename: checkpoint file name.
        save_interval: save every this many epochs (and at the end of training).
        resume: on ``STARTED``, load the checkpoint when it exists.
        strict: a missing or mismatched entry raises instead of being skipped with a warning.
        seed: when the run starts fresh (nothing resumed), seed the global RNGs with ``monai.utils.set_determinism``;
            None leaves them alone.
        fresh_epoch_iterator: start a new data-loader iterator at every epoch start (needed for an exact resume; with
            an ``epoch_length`` shorter than the loader every epoch then starts at the loader's beginning).

    Raises (when resuming):
        CheckpointMismatchError: a network in the checkpoint does not fit the network being trained.
        ValueError: the checkpoint was written with another epoch length, or has more epochs than ``max_epochs``.
    """

    def __init__(
        self,
        save_dir: str | os.PathLike,
        save_dict: Mapping[str, Any],
        filename: str = "checkpoint_last.pt",
        save_interval: int = 1,
        resume: bool = True,
        strict: bool = True,
        seed: int | None = None,
        fresh_epoch_iterator: bool = True,
    ) -> None:
        if save_interval < 1:
            raise ValueError(f"save_interval must be >= 1 epoch, got {save_interval}.")
        for name, obj in save_dict.items():
            if not isinstance(obj, torch.Generator) and not (
                hasattr(obj, "state_dict") and hasattr(obj, "load_state_dict")
            ):
                raise TypeError(
                    f"save_dict['{name}'] ({type(obj).__name__}) has no state_dict/load_state_dict and is not a "
                    "torch.Generator; it cannot be checkpointed."
                )
        self.save_dir = Path(save_dir)
        self.path = self.save_dir / filename
        self.save_dict = dict(save_dict)
        self.save_interval = save_interval
        self.resume = resume
        self.strict = strict
        self.seed = seed
        self.fresh_epoch_iterator = fresh_epoch_iterator
        self.resumed_from: dict[str, int] | None = None
        self._last_saved_iteration: int | None = None

    def attach(self, engine) -> None:
        """Load on ``STARTED``; save every ``save_interval`` epochs and when training completes."""
        from ignite.engine import Events

        engine.add_event_handler(Events.STARTED, self.start)
        if self.fresh_epoch_iterator:
            engine.add_event_handler(Events.EPOCH_STARTED, self._fresh_iterator)
        engine.add_event_handler(Events.EPOCH_COMPLETED(every=self.save_interval), self.save)
        engine.add_event_handler(Events.COMPLETED, self.completed)

    @staticmethod
    def _fresh_iterator(engine) -> None:
        if engine.state.dataloader is not None:
            engine.set_data(engine.state.dataloader)

    # ------------------------------------------------------------------ saving
    def state_dict(self, engine) -> dict[str, Any]:
        """The checkpoint content for the engine's current state."""
        objects: dict[str, Any] = {}
        for name, obj in self.save_dict.items():
            objects[name] = obj.get_state() if isinstance(obj, torch.Generator) else obj.state_dict()
        return {
            "format": CHECKPOINT_FORMAT,
            "engine": {
                "epoch": int(engine.state.epoch),
                "iteration": int(engine.state.iteration),
                "epoch_length": None if engine.state.epoch_length is None else int(engine.state.epoch_length),
                "max_epochs": None if engine.state.max_epochs is None else int(engine.state.max_epochs),
            },
            "objects": objects,
            "rng": get_rng_state(),
        }

    def save(self, engine) -> Path | None:
        """Write the checkpoint atomically; skipped (with a warning) when any saved network is non-finite."""
        if getattr(engine.state, "nan_detected", False):
            warnings.warn(f"not saving '{self.path}': a non-finite loss was detected in this run.", stacklevel=2)
            return None
        bad = find_non_finite(self.save_dict)
        if bad:
            warnings.warn(
                f"not saving '{self.path}': non-finite weights in {', '.join(bad)}; the last good checkpoint is kept.",
                stacklevel=2,
            )
            return None
        atomic_save(self.state_dict(engine), self.path)
        self._last_saved_iteration = int(engine.state.iteration)
        logger.info(f"saved training checkpoint '{self.path}' (epoch {engine.state.epoch}).")
        return self.path

    def completed(self, engine) -> None:
        """Save once more when training finished normally and the last epoch was not saved yet."""
        state = engine.state
        finished = (
            state.epoch_length is not None
            and state.max_epochs is not None
            and (state.iteration >= state.epoch_length * state.max_epochs)
        )
        if finished and self._last_saved_iteration != state.iteration:
            self.save(engine)

    # ----------------------------------------------------------------- loading
    def start(self, engine) -> None:
        """Remove temporaries of an interrupted save; resume from the checkpoint when it exists and ``resume`` is
        on; otherwise seed the global RNGs."""
        if not (torch.distributed.is_available() and torch.distributed.is_initialized()) or (
            torch.distributed.get_rank() == 0
        ):
            for tmp in remove_stale_temporaries(self.path):
                logger.info(f"removed '{tmp}', left by an interrupted checkpoint save.")
        if self.resume and self.path.is_file():
            self.load(engine)
        elif self.seed is not None:
            set_determinism(seed=self.seed)

    def load(self, engine, path: str | os.PathLike | None = None) -> dict[str, int]:
        """Restore objects, RNG states and engine counters from ``path`` (default: this handler's file)."""
        path = Path(path) if path is not None else self.path
        ckpt = load_checkpoint(path, expected_format=CHECKPOINT_FORMAT)
        meta = ckpt["engine"]
        state = engine.state
        if (
            state.epoch_length is not None
            and meta["epoch_length"] is not None
            and meta["epoch_length"] != state.epoch_length
        ):
            raise ValueError(
                f"checkpoint '{path}' was written with {meta['epoch_length']} iterations per epoch but this trainer "
                f"runs "
                f"{state.epoch_length}; resume with the same data loader (batch size, data set) or pass resume=False."
            )
        if state.max_epochs is not None and meta["epoch"] > state.max_epochs:
            raise ValueError(
                f"checkpoint '{path}' is at epoch {meta['epoch']}, beyond this trainer's "
                f"max_epochs={state.max_epochs}; "
                "raise max_epochs to continue training."
            )
        objects = ckpt["objects"]
        for name, obj in self.save_dict.items():
            if name not in objects:
                msg = f"checkpoint '{path}' has no entry '{name}' (it has: {sorted(objects)})."
                if self.strict:
                    raise CheckpointMismatchError(msg + " Pass strict=False to resume without it.")
                warnings.warn(msg, stacklevel=2)
                continue
            if isinstance(obj, torch.Generator):
                obj.set_state(objects[name])
                continue
            if isinstance(obj, nn.Module) and self.strict:
                check_state_dict_compatible(obj, objects[name], name=name)
            obj.load_state_dict(objects[name])
        set_rng_state(ckpt["rng"])
        state.epoch = int(meta["epoch"])
        state.iteration = int(meta["iteration"])
        self._last_saved_iteration = state.iteration
        self.resumed_from = {"epoch": state.epoch, "iteration": state.iteration}
        logger.info(f"resumed training from '{path}' at epoch {state.epoch}, iteration {state.iteration}.")
        return self.resumed_from
