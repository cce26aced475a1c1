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
"""(Latent, conditional) diffusion training and LoRA fine-tuning of a ``LatentGenerator`` on MONAI's
``SupervisedTrainer``.

No custom trainer: :class:`~monai_genaug.engines.prepare_batch.LatentDiffusionPrepareBatch` turns each batch into
``(x_t, target, (t,), {"condition": ...})`` and ``SupervisedTrainer(network=generator, inferer=SimpleInferer(),
loss_function=MSELoss())`` regresses the scheduler's target (epsilon or v; Ho et al., arXiv:2006.11239; Salimans &
Ho, arXiv:2202.00512) in pixel or latent space (Rombach et al., arXiv:2112.10752) with any conditioning and
condition dropout (Ho & Salimans, arXiv:2207.12598). :func:`create_diffusion_trainer` adds the handlers: NaN guard,
EMA, stats, MLflow, LR schedule, validation, sample grids, final generator files and a resumable checkpoint.

LoRA fine-tuning is the same trainer on a generator whose UNet carries adapters
(:func:`monai_genaug.networks.lora.apply_lora` freezes the base weights, so only the adapters are optimised); the
final files are then LoRA adapter files (:func:`monai_genaug.networks.lora.save_lora`).
"""

from __future__ import annotations

import logging
import operator
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from ignite.engine import Events
from ignite.metrics import Loss
from monai.engines import SupervisedEvaluator
from monai.handlers import LrScheduleHandler
from monai.inferers import SimpleInferer
from torch import nn

from monai_genaug.generative.ddim import prediction_type_of
from monai_genaug.handlers.sample_grid import GeneratorSamples
from monai_genaug.handlers.savers import FinalGeneratorSaver
from monai_genaug.handlers.ema import EMAHandler
from monai_genaug.engines.prepare_batch import LatentDiffusionPrepareBatch
from monai_genaug.handlers.sample_grid import SampleGridHandler
from monai_genaug.handlers.validation import PeriodicValidation
from monai_genaug.engines.options import (
    HandledSupervisedTrainer,
    TrainingOptions,
    resolve_training_options,
)
from monai_genaug.engines.workflow import create_supervised_trainer, finish_trainer, options_training_handlers
from monai_genaug.networks.lora import has_lora

__all__ = [
    "trainable_modules",
    "create_diffusion_trainer",
]

logger = logging.getLogger(__name__)


def _pred_and_label(output: Mapping[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    return output["pred"], output["label"]


def trainable_modules(generator: nn.Module) -> nn.ModuleDict:
    """The parts of a ``LatentGenerator`` a diffusion trainer updates (UNet and prompt embedding), as one module.

    This is what the EMA tracks: the frozen autoencoder is left out.
    """
    parts = nn.ModuleDict({"unet": generator.unet})
    if getattr(generator, "prompt_embedding", None) is not None:
        parts["prompt_embedding"] = generator.prompt_embedding
    return parts


def create_diffusion_trainer(
    generator: nn.Module,
    train_loader: Any,
    max_epochs: int,
    output_dir: str | os.PathLike,
    lr: float = 1e-4,
    device: str | torch.device = "cpu",
    optimizer: torch.optim.Optimizer | None = None,
    lr_scheduler: Any | None = None,
    loss_function: nn.Module | None = None,
    epoch_length: int | None = None,
    condition_keys: Mapping[str, str] | Sequence[str] | None = None,
    condition_dropout: float = 0.0,
    image_key: str = "image",
    latent_key: str = "latent",
    sample_posterior: bool = True,
    ema_decay: float | None = 0.999,
    ema_warmup_iters: int | None = None,
    val_loader: Any | None = None,
    sample_fn: Callable[[], torch.Tensor] | None = None,
    sample_size: Sequence[int] | None = None,
    sample_every: int = 1,
    num_grid_samples: int = 4,
    num_inference_steps: int = 10,
    sample_condition: Mapping[str, torch.Tensor] | None = None,
    options: TrainingOptions | None = None,
    **deprecated: Any,
) -> HandledSupervisedTrainer:
    """Build a ready MONAI ``SupervisedTrainer`` for (latent, conditional) diffusion training or LoRA fine-tuning.

    The autoencoder is frozen (eval mode, no gradients); only ``generator.trainable_parameters()`` (UNet, prompt
    embedding; with LoRA only the adapters) are optimised. Handlers, in firing order: NaN guard, EMA, stats,
    MLflow, LR scheduler, validation (``val_loss``), sample grid (``output_dir/samples_epochNNNN.png``), final
    generator files, resumable checkpoint (``output_dir/checkpoint_last.pt``, resumed on start when ``resume``).
    MLflow metrics: ``train_loss`` per iteration, ``epoch_loss`` (epoch mean) and ``val_loss`` per epoch.
    The handlers are in the typed ``trainer.handles`` (:class:`~monai_genaug.engines.options.TrainerHandles`):
    ``ema``, ``nan_guard``, ``checkpoint``, ``mlflow_handler``, ``sample_grid``, ``final_saver``, ``evaluator``.

    Args:
        generator: the ``LatentGenerator`` (pixel or latent space, any conditioning).
        train_loader: data loader of dicts with ``image_key`` (or ``latent_key``) and the condition batch keys. For an
            exact resume, shuffle with a ``torch.Generator`` (``DataLoader(..., generator=g)``) or the global seed.
        max_epochs: epochs to train (in total, counting resumed ones).
        output_dir: folder for the checkpoint, grids, final files and the default MLflow store.
        lr: AdamW learning rate (when ``optimizer`` is None).
        device: training device.
        optimizer: a ready optimiser over ``generator.trainable_parameters()``; default AdamW(lr).
        lr_scheduler: a torch LR scheduler stepped every epoch (and checkpointed).
        loss_function: the denoising loss between the UNet output and its target (noise, v or x0, by the
            scheduler's prediction type); default ``nn.MSELoss()`` (AdaptDiff's release uses ``nn.L1Loss()``).
        epoch_length: iterations per epoch (default: ``len(train_loader)``).
        condition_keys: condition name -> batch key, e.g. ``{"class_labels": "label"}``.
        condition_dropout: classifier-free guidance dropout probability.
        image_key: batch key of the images.
        latent_key: batch key of pre-computed latents (used when present).
        sample_posterior: encode with posterior samples (True) or means.
        ema_decay: EMA decay of the trained weights; None disables the EMA.
        ema_warmup_iters: ramp the EMA decay from 0 to ``ema_decay`` over this many iterations (None: no ramp).
        val_loader: validation loader; the validation loss (``val_loss``) is computed every ``options.val_interval``
            epochs with its own fixed-seed noise (``options.seed + 1``).
        sample_fn: callable returning images for the sample grid; default :class:`GeneratorSamples` when
            ``sample_size`` is given; no grid when both are None.
        sample_size: spatial image size of the default sample grid.
        sample_every: epochs between sample grids.
        num_grid_samples: samples per default grid.
        num_inference_steps: sampler steps of the default grid.
        sample_condition: condition of the default grid samples (needed for SPADE / concat generators).
        options: the shared training options (seed of the global RNGs at a fresh start and of the noise / timestep
            draws, AMP, resume, checkpoint and validation intervals, NaN policy, MLflow tracking, extra handlers);
            default ``TrainingOptions()``.
        **deprecated: the old keywords of ``options`` (``amp=``, ``seed=``, ``tracking=``, ...), accepted for one
            release with a ``DeprecationWarning``.

    Raises:
        ValueError: the generator has no trainable parameters, or bad argument values.
    """
    options = resolve_training_options("create_diffusion_trainer", options, deprecated)
    seed, amp = options.seed, options.amp
    loss_function = loss_function if loss_function is not None else nn.MSELoss()
    if max_epochs < 1:
        raise ValueError(f"max_epochs must be >= 1, got {max_epochs}.")
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    device = torch.device(device)
    generator = generator.to(device)
    if generator.autoencoder is not None:
        generator.autoencoder.requires_grad_(False)
        generator.autoencoder.eval()
    trainable = list(generator.trainable_parameters())
    if not trainable:
        raise ValueError("the generator has no trainable parameters (all frozen); unfreeze the UNet or apply LoRA.")
    if optimizer is None:
        optimizer = torch.optim.AdamW(trainable, lr=lr)

    prepare_batch = LatentDiffusionPrepareBatch(
        generator,
        condition_keys=condition_keys,
        condition_dropout=condition_dropout,
        image_key=image_key,
        latent_key=latent_key,
        sample_posterior=sample_posterior,
        seed=seed,
    )
    standard = options_training_handlers(
        output_dir,
        "diffusion",
        {
            "lr": optimizer.param_groups[0]["lr"],
            "max_epochs": max_epochs,
            "batch_size": getattr(train_loader, "batch_size", None),
            "condition_keys": dict(prepare_batch.condition_keys),
            "condition_dropout": condition_dropout,
            "ema_decay": ema_decay,
            "prediction_type": prediction_type_of(generator.scheduler),
            "num_train_timesteps": prepare_batch.num_train_timesteps,
            "lora": has_lora(generator.unet),
            "generator": getattr(generator, "config", {}),
        },
        options,
        "monai_genaug",
    )
    handlers, mlflow_handler = standard.handlers, standard.mlflow_handler
    ema = None
    if ema_decay is not None:
        ema = EMAHandler(
            trainable_modules(generator),
            decay=ema_decay,
            warmup_decay=0.0 if ema_warmup_iters else None,
            warmup_iters=ema_warmup_iters or None,
        )
        handlers.insert(1, ema)
    if lr_scheduler is not None:
        handlers.append(LrScheduleHandler(lr_scheduler, print_lr=False))

    evaluator = None
    if val_loader is not None:
        val_prepare = LatentDiffusionPrepareBatch(
            generator,
            condition_keys=condition_keys,
            condition_dropout=0.0,
            image_key=image_key,
            latent_key=latent_key,
            sample_posterior=False,
            seed=seed + 1,
        )
        evaluator = SupervisedEvaluator(
            device=device,
            val_data_loader=val_loader,
            network=generator,
            prepare_batch=val_prepare,
            inferer=SimpleInferer(),
            key_val_metric={"val_loss": Loss(loss_function, output_transform=_pred_and_label)},
            metric_cmp_fn=operator.lt,
            amp=amp,
            decollate=False,
        )
        evaluator.add_event_handler(Events.STARTED, val_prepare.reset)
        handlers.append(PeriodicValidation(evaluator, options.val_interval, mlflow_handler))

    sample_grid = None
    if sample_fn is None and sample_size is not None:
        sample_fn = GeneratorSamples(
            generator,
            sample_size,
            num_samples=num_grid_samples,
            num_inference_steps=num_inference_steps,
            condition=sample_condition,
            seed=seed,
        )
    if sample_fn is not None:
        sample_grid = SampleGridHandler(
            sample_fn, output_dir, interval=sample_every, ema=ema, network=generator, mlflow_handler=mlflow_handler
        )
        handlers.append(sample_grid)
    final_saver = FinalGeneratorSaver(generator, output_dir, ema=ema)
    handlers.append(final_saver)
    handlers.extend(options.extra_handlers)

    trainer = create_supervised_trainer(
        device,
        max_epochs,
        train_loader,
        generator,
        optimizer,
        loss_function,
        prepare_batch,
        handlers,
        epoch_length,
        amp=amp,
    )
    save_dict: dict[str, Any] = {"generator": generator, "optimizer": optimizer, "prepare_batch": prepare_batch}
    if ema is not None:
        save_dict["ema"] = ema
    if lr_scheduler is not None:
        save_dict["lr_scheduler"] = lr_scheduler
    return finish_trainer(
        trainer, output_dir, save_dict, train_loader, options, standard,
        ema=ema,
        sample_grid=sample_grid,
        final_saver=final_saver,
        evaluator=evaluator,
        prepare_batch=prepare_batch,
        loss=loss_function,
    )
