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
"""Validation pieces shared by the segmentation-style trainers: a mean-Dice ``SupervisedEvaluator`` and a handler that
keeps the best model of a validation split."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from typing import Any

import torch
from monai.engines import SupervisedEvaluator
from monai.handlers import MeanDice, from_engine
from monai.inferers import SimpleInferer
from monai.transforms import AsDiscreted, Compose
from torch import nn

from monai_genaug.handlers.validation import BestModelSaver
from monai_genaug.handlers.savers import FinalModelHandler
from monai_genaug.handlers.validation import PeriodicValidation

__all__ = [
    "create_dice_evaluator",
    "attach_model_selection",
]

logger = logging.getLogger(__name__)


def _onehot_post(num_classes: int, argmax: bool = True) -> Compose:
    return Compose(
        [
            AsDiscreted(keys="pred", argmax=argmax, to_onehot=num_classes + 1),
            AsDiscreted(keys="label", to_onehot=num_classes + 1),
        ]
    )


def create_dice_evaluator(
    network: nn.Module,
    val_loader: Any,
    num_classes: int,
    device: str | torch.device = "cpu",
    inferer: Any | None = None,
    prepare_batch: Callable | None = None,
    metric_name: str = "val_mean_dice",
    val_handlers: Sequence[Any] | None = None,
    amp: bool = False,
) -> SupervisedEvaluator:
    """A ``SupervisedEvaluator`` computing the mean foreground Dice of class probabilities (B, K + 1, *spatial).

    Args:
        network: any network returning K + 1 class probabilities / logits (e.g. a GMS segmenter, a MONAI UNet).
        val_loader: loader of ``{"image", "label"}`` dicts (label maps 0..K).
        num_classes: foreground classes K.
        device: device.
        inferer: MONAI inferer (default ``SimpleInferer``; ``SlidingWindowInferer`` for large 3D volumes).
        prepare_batch: MONAI prepare-batch (default: ``image`` and ``label``).
        metric_name: name of the key metric.
        val_handlers: more evaluator handlers.
        amp: automatic mixed precision (CUDA).
    """
    kwargs = {"prepare_batch": prepare_batch} if prepare_batch is not None else {}
    return SupervisedEvaluator(
        device=torch.device(device),
        val_data_loader=val_loader,
        network=network,
        inferer=inferer or SimpleInferer(),
        postprocessing=_onehot_post(num_classes),
        key_val_metric={metric_name: MeanDice(include_background=False, output_transform=from_engine(["pred", "label"]))},
        val_handlers=list(val_handlers or []),
        amp=amp,
        **kwargs,
    )


def attach_model_selection(
    trainer: Any,
    network: nn.Module,
    save_fn: Callable[[str], Any],
    model_path: str | os.PathLike,
    num_classes: int,
    val_loader: Any | None = None,
    val_interval: int = 1,
    device: str | torch.device = "cpu",
    inferer: Any | None = None,
    prepare_batch: Callable | None = None,
    mlflow_handler: Any | None = None,
    amp: bool = False,
    what: str = "model",
) -> tuple[SupervisedEvaluator | None, BestModelSaver | None]:
    """Which model a segmentation-style trainer leaves in ``model_path``: the best of a validation split (mean
    foreground Dice, every ``val_interval`` epochs), or the final model when there is no validation split or it never
    ran (``val_interval`` > epochs). Returns the evaluator and the best-model saver (None without validation); put the
    saver in the checkpoint's ``save_dict`` so the best value survives a resume.

    Args:
        trainer: the trainer.
        network: the trained network (returns ``num_classes + 1`` probabilities / logits).
        save_fn: writes the model to the path it receives.
        model_path: destination file.
        num_classes: foreground classes K.
        val_loader: a **validation** loader (never the test split), or None.
        val_interval: epochs between validations.
        device: device of the evaluator.
        inferer: inferer of the evaluator (default ``SimpleInferer``).
        prepare_batch: batch parser of the evaluator.
        mlflow_handler: the trainer's MLflow handler (validation metrics are logged to its run), or None.
        amp: automatic mixed precision (CUDA).
        what: name of the model in messages.
    """
    evaluator = best_saver = None
    if val_loader is not None:
        best_saver = BestModelSaver(save_fn, model_path, "val_mean_dice", trainer=trainer)
        evaluator = create_dice_evaluator(
            network,
            val_loader,
            num_classes,
            device,
            inferer=inferer,
            prepare_batch=prepare_batch,
            val_handlers=[best_saver],
            amp=amp,
        )
        PeriodicValidation(evaluator, val_interval, mlflow_handler).attach(trainer)

    def _save_final(_engine) -> None:
        save_fn(str(model_path))
        logger.info(f"saved the final {what} '{model_path}'.")

    FinalModelHandler(
        _save_final, {what: network}, what, skip_if=lambda: best_saver is not None and best_saver.best is not None
    ).attach(trainer)
    return evaluator, best_saver
