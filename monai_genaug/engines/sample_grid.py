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
"""An Ignite handler that writes a PNG grid of generated samples during training (and logs it to MLflow).

The handler only needs a ``sample_fn`` returning a batch of images, so it serves diffusion samples, autoencoder
reconstructions and sequences alike. Sampling runs under ``torch.no_grad()``, optionally with the EMA weights
swapped in, and inside ``torch.random.fork_rng`` so that it never changes the training's random stream (a resumed
training draws the same numbers whether or not grids were written).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from monai_genaug.utils.images import save_image_grid

__all__ = ["SampleGridHandler"]

logger = logging.getLogger(__name__)


class SampleGridHandler:
    """Save a grid of ``sample_fn()`` every ``interval`` epochs (or iterations) to ``output_dir``.

    Files are named ``<file_prefix>_epoch0003.png`` (``_iter000120`` when ``epoch_level`` is False).

    Args:
        sample_fn: callable with no argument returning a batch of images (B, C, H, W[, D]) or sequences.
        output_dir: folder of the PNG files.
        interval: write every this many epochs (or iterations).
        epoch_level: count epochs (True) or iterations (False).
        nrow: tiles per grid row (see :func:`~monai_genaug.utils.images.save_image_grid`).
        normalise: min-max scale every tile.
        sequence_dim: frame dimension for sequence batches; None for 2D/3D images.
        file_prefix: file name prefix.
        ema: an :class:`~monai_genaug.engines.ema.EMAHandler`; its weights are used while sampling.
        network: put into eval mode while sampling (its mode is restored afterwards).
        mlflow_handler: a :class:`~monai_genaug.engines.tracking.SafeMLFlowHandler` (or MONAI ``MLFlowHandler``);
            each grid is logged as an artifact under ``artifact_path``.
        artifact_path: folder of the grids inside the MLflow run.
        on_completed: also write a grid when training completes.
    """

    def __init__(
        self,
        sample_fn: Callable[[], torch.Tensor],
        output_dir: str | os.PathLike,
        interval: int = 1,
        epoch_level: bool = True,
        nrow: int | None = None,
        normalise: bool = True,
        sequence_dim: int | None = None,
        file_prefix: str = "samples",
        ema: Any | None = None,
        network: nn.Module | None = None,
        mlflow_handler: Any | None = None,
        artifact_path: str = "samples",
        on_completed: bool = False,
    ) -> None:
        if not callable(sample_fn):
            raise TypeError(f"sample_fn must be callable and return a batch of images, got {type(sample_fn).__name__}.")
        if interval < 1:
            raise ValueError(f"interval must be >= 1, got {interval}.")
        self.sample_fn = sample_fn
        self.output_dir = Path(output_dir)
        self.interval = interval
        self.epoch_level = epoch_level
        self.nrow = nrow
        self.normalise = normalise
        self.sequence_dim = sequence_dim
        self.file_prefix = file_prefix
        self.ema = ema
        self.network = network
        self.mlflow_handler = mlflow_handler
        self.artifact_path = artifact_path
        self.on_completed = on_completed
        self.paths: list[Path] = []

    def attach(self, engine) -> None:
        """Register on ``EPOCH_COMPLETED`` (or ``ITERATION_COMPLETED``) every ``interval``."""
        from ignite.engine import Events

        event = Events.EPOCH_COMPLETED if self.epoch_level else Events.ITERATION_COMPLETED
        engine.add_event_handler(event(every=self.interval), self)
        if self.on_completed:
            engine.add_event_handler(Events.COMPLETED, self)

    def sample(self) -> torch.Tensor:
        """Run ``sample_fn`` without gradients, with EMA weights when given, without touching the global RNG."""
        was_training = self.network.training if self.network is not None else None
        devices = (
            list(range(torch.cuda.device_count())) if torch.cuda.is_available() and torch.cuda.is_initialized() else []
        )
        try:
            if self.network is not None:
                self.network.eval()
            with torch.random.fork_rng(devices=devices), torch.no_grad():
                if self.ema is not None:
                    with self.ema.use_ema_weights():
                        samples = self.sample_fn()
                else:
                    samples = self.sample_fn()
        finally:
            if self.network is not None and was_training is not None:
                self.network.train(was_training)
        if not isinstance(samples, torch.Tensor):
            raise TypeError(f"sample_fn must return a torch.Tensor batch, got {type(samples).__name__}.")
        return samples

    def __call__(self, engine) -> Path:
        """Sample, write the grid, log it to MLflow; returns the PNG path."""
        count = engine.state.epoch if self.epoch_level else engine.state.iteration
        name = (
            f"{self.file_prefix}_epoch{count:04d}.png"
            if self.epoch_level
            else f"{self.file_prefix}_iter{count:06d}.png"
        )
        path = save_image_grid(
            self.sample(),
            self.output_dir / name,
            nrow=self.nrow,
            normalise=self.normalise,
            sequence_dim=self.sequence_dim,
        )
        self.paths.append(path)
        logger.info(f"saved sample grid '{path}'.")
        if self.mlflow_handler is not None:
            if hasattr(self.mlflow_handler, "log_artifact"):
                self.mlflow_handler.log_artifact(path, self.artifact_path)
            elif getattr(self.mlflow_handler, "cur_run", None) is not None:
                self.mlflow_handler.client.log_artifact(
                    self.mlflow_handler.cur_run.info.run_id, str(path), self.artifact_path
                )
        return path
