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
"""The wiring every trainer of the package shares, written once: the standard handler set (NaN guard, stats,
optional MLflow run), periodic validation that never shifts training's random stream, a ``SupervisedTrainer`` with
the package defaults, final-model handlers that fire only on normal completion, and the resumable checkpoint."""

from __future__ import annotations

import logging
import operator
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from ignite.metrics import Average
from monai.handlers import StatsHandler
from monai.inferers import Inferer, SimpleInferer
from torch import nn

from monai_genaug.engines.options import HandledSupervisedTrainer, TrainerHandles, TrainingOptions, attach_handles
from monai_genaug.handlers.nan_guard import NaNGuard
from monai_genaug.handlers.progress import progress_bar
from monai_genaug.handlers.resume import AttributeState, ResumableCheckpointHandler, loader_generators
from monai_genaug.handlers.tracking import create_mlflow_handler, loss_from_output

__all__ = [
    "CHECKPOINT_NAME",
    "TrainingHandlers",
    "standard_training_handlers",
    "create_supervised_trainer",
    "attach_resumable_checkpoint",
    "options_training_handlers",
    "finish_trainer",
]

logger = logging.getLogger(__name__)

#: file name of the resumable checkpoint every trainer writes into its output folder
CHECKPOINT_NAME = "checkpoint_last.pt"


@dataclass
class TrainingHandlers:
    """The standard handlers of a trainer: ``handlers`` (in firing order) and the two the caller keeps a handle on."""

    handlers: list[Any]
    nan_guard: NaNGuard
    mlflow_handler: Any | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def standard_training_handlers(
    output_dir: str | os.PathLike,
    trainer_name: str,
    params: Mapping[str, Any],
    nan_raise: bool = True,
    tracking: bool = False,
    tracking_uri: str | None = None,
    experiment_name: str = "monai_genaug",
    run_name: str | None = None,
) -> TrainingHandlers:
    """NaN guard (first, so a bad loss stops the iteration before anything else sees it), loss stats, a progress bar
    (per iteration, on stderr when it is a terminal, off with the process-wide ``--progress false``), and an MLflow run.

    Args:
        output_dir: the trainer's output folder (checkpoint and default MLflow store live there).
        trainer_name: logged as the ``trainer`` parameter.
        params: hyper-parameters logged to MLflow.
        nan_raise: raise on a non-finite loss (True) or stop with an error log (False).
        tracking: log to MLflow (also on whenever ``tracking_uri`` is given).
        tracking_uri: MLflow URI; default ``sqlite:///<output_dir>/mlruns.db``. Unreachable -> warning, no tracking.
        experiment_name: MLflow experiment.
        run_name: MLflow run name.
    """
    nan_guard = NaNGuard(checkpoint_path=Path(output_dir) / CHECKPOINT_NAME, raise_error=nan_raise)
    handlers: list[Any] = [
        nan_guard,
        StatsHandler(name="monai_genaug.train", tag_name="train_loss", output_transform=loss_from_output),
        progress_bar(desc=trainer_name),
    ]
    mlflow_handler = None
    if tracking or tracking_uri is not None:
        mlflow_handler = create_mlflow_handler(
            output_dir=output_dir,
            tracking_uri=tracking_uri,
            experiment_name=experiment_name,
            run_name=run_name,
            params={"trainer": trainer_name, **dict(params)},
        )
        if mlflow_handler is not None:
            handlers.append(mlflow_handler)
    return TrainingHandlers(handlers, nan_guard, mlflow_handler)


def create_supervised_trainer(
    device: torch.device | str,
    max_epochs: int,
    train_loader: Any,
    network: nn.Module,
    optimizer: torch.optim.Optimizer,
    loss_function: Callable,
    prepare_batch: Callable,
    handlers: Sequence[Any],
    epoch_length: int | None = None,
    inferer: Inferer | None = None,
    metric_name: str = "epoch_loss",
    amp: bool = False,
) -> HandledSupervisedTrainer:
    """A MONAI ``SupervisedTrainer`` (:class:`~monai_genaug.engines.options.HandledSupervisedTrainer`, which carries
    the factory's typed ``handles``) with the package's defaults: the mean training loss as key metric (lower is
    better), no decollation (outputs are losses plus the batch), a ``SimpleInferer`` unless given.

    Args:
        device: training device.
        max_epochs: epochs in total (counting resumed ones).
        train_loader: the training loader.
        network: the trained network (a DDP-wrapped one works too).
        optimizer: its optimiser.
        loss_function: the loss.
        prepare_batch: the batch parser (one of the package's prepare-batch classes).
        handlers: trainer handlers, in firing order.
        epoch_length: iterations per epoch (default ``len(train_loader)``).
        inferer: the training inferer.
        metric_name: name of the key metric (the epoch's mean loss).
        amp: automatic mixed precision (CUDA).
    """
    return HandledSupervisedTrainer(
        device=device,
        max_epochs=max_epochs,
        train_data_loader=train_loader,
        network=network,
        optimizer=optimizer,
        loss_function=loss_function,
        epoch_length=epoch_length,
        prepare_batch=prepare_batch,
        inferer=inferer or SimpleInferer(),
        key_train_metric={metric_name: Average(output_transform=loss_from_output)},
        metric_cmp_fn=operator.lt,
        train_handlers=list(handlers),
        amp=amp,
        decollate=False,
    )


def attach_resumable_checkpoint(
    trainer: Any,
    output_dir: str | os.PathLike,
    save_dict: dict[str, Any],
    train_loader: Any,
    resume: bool = True,
    seed: int = 0,
    save_interval: int = 1,
    grad_scalers: Mapping[str, tuple[Any, str]] | None = None,
) -> ResumableCheckpointHandler:
    """Attach the resumable checkpoint as the trainer's last handler (it saves after the epoch's LR step, validation and
    pictures), with the loader's shuffling generators and the AMP gradient scalers added to ``save_dict``.

    Args:
        trainer: the trainer.
        output_dir: folder of ``checkpoint_last.pt``.
        save_dict: the states to save (networks, optimisers, schedulers, stateful handlers...).
        train_loader: the training loader (its generators are checkpointed for an exact resume).
        resume: continue from an existing checkpoint.
        seed: seed of the global RNGs at a fresh start.
        save_interval: epochs between checkpoints.
        grad_scalers: ``{name: (owner, attribute)}`` of the AMP gradient scalers, created lazily by the trainer and
            saved empty while AMP is off; default: a MONAI ``SupervisedTrainer``'s ``trainer.scaler``.
    """
    if grad_scalers is None:
        grad_scalers = {"grad_scaler": (trainer, "scaler")}
    for name, (owner, attribute) in grad_scalers.items():
        save_dict[name] = AttributeState(owner, attribute)
    save_dict.update(loader_generators(train_loader))
    checkpoint = ResumableCheckpointHandler(
        output_dir, save_dict, resume=resume, seed=seed, save_interval=save_interval
    )
    checkpoint.attach(trainer)
    return checkpoint


def options_training_handlers(
    output_dir: str | os.PathLike,
    trainer_name: str,
    params: Mapping[str, Any],
    options: TrainingOptions,
    default_experiment: str = "monai_genaug",
) -> TrainingHandlers:
    """:func:`standard_training_handlers` set from a :class:`~monai_genaug.engines.options.TrainingOptions`: NaN
    policy, MLflow tracking (experiment ``default_experiment`` unless the options name one) and the logged parameters
    (``params`` + ``amp`` / ``seed`` + ``options.params``)."""
    return standard_training_handlers(
        output_dir, trainer_name, options.logged_params(params), **options.tracking_kwargs(default_experiment)
    )


def finish_trainer(
    trainer: Any,
    output_dir: str | os.PathLike,
    save_dict: dict[str, Any],
    train_loader: Any,
    options: TrainingOptions,
    standard: TrainingHandlers,
    grad_scalers: Mapping[str, tuple[Any, str]] | None = None,
    **handles: Any,
) -> Any:
    """The last step of every trainer factory: attach the resumable checkpoint (``options.resume`` / ``seed`` /
    ``save_interval``, see :func:`attach_resumable_checkpoint`) and store the typed ``trainer.handles``
    (:class:`~monai_genaug.engines.options.TrainerHandles`: the options, the NaN guard and MLflow handler of
    ``standard``, the checkpoint and ``handles``); return the trainer.

    Args:
        trainer: the built trainer.
        output_dir: folder of ``checkpoint_last.pt``.
        save_dict: the states to checkpoint.
        train_loader: the training loader (its shuffling generators are checkpointed).
        options: the trainer's :class:`~monai_genaug.engines.options.TrainingOptions`.
        standard: the trainer's :class:`TrainingHandlers`.
        grad_scalers: see :func:`attach_resumable_checkpoint`.
        handles: the other :class:`~monai_genaug.engines.options.TrainerHandles` fields (``ema``, ``evaluator``...).
    """
    checkpoint = attach_resumable_checkpoint(
        trainer, output_dir, save_dict, train_loader, options.resume, options.seed, options.save_interval, grad_scalers
    )
    return attach_handles(
        trainer,
        TrainerHandles(
            options=options,
            nan_guard=standard.nan_guard,
            mlflow_handler=standard.mlflow_handler,
            checkpoint=checkpoint,
            **handles,
        ),
    )
