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
"""Ignite handlers of validation: run an evaluator every few epochs (:class:`PeriodicValidation`) and keep the best
model by a validation metric, saved atomically (:class:`BestModelSaver`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
import os
from pathlib import Path
from typing import Any

from ignite.engine import Events
from monai.engines import SupervisedEvaluator
import numpy as np
import torch


__all__ = [
    "BestModelSaver",
    "PeriodicValidation",
]

logger = logging.getLogger(__name__)


class PeriodicValidation:
    """Run an evaluator every ``interval`` epochs inside ``torch.random.fork_rng``, so that validating never changes
    the training's random stream (an interrupted and resumed run equals an uninterrupted one). The metrics are kept
    on the trainer as ``latest_val_metrics`` and logged to the trainer's MLflow run at the trainer's epoch.

    Args:
        evaluator: a MONAI evaluator.
        interval: epochs between validations.
        mlflow_handler: the trainer's MLflow handler, or None.
    """

    def __init__(self, evaluator: SupervisedEvaluator, interval: int = 1, mlflow_handler: Any | None = None) -> None:
        if interval < 1:
            raise ValueError(f"val_interval must be >= 1 epoch, got {interval}.")
        self.evaluator = evaluator
        self.interval = int(interval)
        self.mlflow_handler = mlflow_handler

    def attach(self, engine) -> None:
        """Register on every ``interval``-th ``EPOCH_COMPLETED``."""
        engine.latest_val_metrics = {}
        engine.add_event_handler(Events.EPOCH_COMPLETED(every=self.interval), self)

    def __call__(self, engine) -> None:
        cuda = torch.cuda.is_available() and torch.cuda.is_initialized()
        with torch.random.fork_rng(devices=list(range(torch.cuda.device_count())) if cuda else []):
            self.evaluator.run(engine.state.epoch)
        engine.latest_val_metrics = dict(self.evaluator.state.metrics)
        if self.mlflow_handler is not None:
            self.mlflow_handler.log_metrics(engine.latest_val_metrics, step=engine.state.epoch)
        logger.info(f"epoch {engine.state.epoch}: validation {engine.latest_val_metrics}")


class BestModelSaver:
    """Save a model atomically whenever an evaluator's metric improves (a validation split, never the test split).

    Args:
        save_fn: called with the destination path (e.g. ``segmenter.save``).
        path: destination file.
        metric_name: key of ``evaluator.state.metrics``.
        greater_is_better: True for Dice, False for losses.
        trainer: the trainer whose epoch is recorded (optional).

    The best value survives a resume when this handler is in the checkpoint's ``save_dict``
    (``state_dict`` / ``load_state_dict``).
    """

    def __init__(
        self,
        save_fn: Callable[[str], Any],
        path: str | os.PathLike,
        metric_name: str = "val_mean_dice",
        greater_is_better: bool = True,
        trainer: Any | None = None,
    ) -> None:
        self.save_fn = save_fn
        self.path = Path(path)
        self.metric_name = metric_name
        self.greater_is_better = greater_is_better
        self.trainer = trainer
        self.best: float | None = None
        self.best_epoch: int | None = None

    def attach(self, engine) -> None:
        engine.add_event_handler(Events.COMPLETED, self)

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "best_epoch": self.best_epoch}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        self.best = state_dict.get("best")
        self.best_epoch = state_dict.get("best_epoch")

    def __call__(self, engine) -> None:
        value = engine.state.metrics.get(self.metric_name)
        if value is None or not np.isfinite(float(value)):
            return
        value = float(value)
        better = self.best is None or (value > self.best if self.greater_is_better else value < self.best)
        if not better:
            return
        self.best = value
        self.best_epoch = int(self.trainer.state.epoch) if self.trainer is not None else int(engine.state.epoch)
        self.save_fn(str(self.path))
        logger.info(f"new best {self.metric_name}={value:.4f} (epoch {self.best_epoch}); saved '{self.path}'.")
