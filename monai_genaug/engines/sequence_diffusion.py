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
"""Sequence (2D + t / slice-stack) diffusion training of a Ctrl-GenAug ``SequenceGenerator`` on MONAI's
``SupervisedTrainer``.

Zhou, Huang, et al., "Ctrl-GenAug: Controllable Generative Augmentation for Medical Sequence Classification",
arXiv:2409.17091. As for the image generators (:func:`monai_genaug.engines.diffusion.create_diffusion_trainer`),
there is no custom trainer: :class:`SequenceDiffusionPrepareBatch` turns a batch of clips ``(B, C, F, H, W)`` in
[0, 1] into ``(x_t, noise, (t,), {"condition": ...})`` (noise and timesteps from its own seeded generator; the
conditions: class label, the image prior of each clip's first frame, the clip's motion fields, taken from the batch
when precomputed; then Ctrl-GenAug's condition dropout keep-all / drop-all / drop-each, on a copy) and
:func:`create_sequence_diffusion_trainer` wires the package's shared trainer parts around it (NaN guard, optional EMA,
stats, optional MLflow run, gradient clipping, LR schedule, sample sheets, final generator file on normal completion,
resumable checkpoint including the loader's shuffling generator).

The same trainer serves both stages: pre-training on single frames (``F = 1`` clips, everything trained) and
fine-tuning on clips (only the modules named by ``trainable``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from monai.engines import IterationEvents, SupervisedTrainer
from monai.handlers import LrScheduleHandler
from torch import nn
from torch.utils.data.dataloader import default_collate

from monai_genaug.handlers.sample_grid import SequenceSamples
from monai_genaug.handlers.ema import EMAHandler
from monai_genaug.engines.prepare_batch import LatentDiffusionPrepareBatch
from monai_genaug.handlers.sample_grid import SampleGridHandler
from monai_genaug.handlers.savers import FinalModelHandler
from monai_genaug.engines.options import (
    HandledSupervisedTrainer,
    TrainingOptions,
    resolve_training_options,
)
from monai_genaug.engines.workflow import create_supervised_trainer, finish_trainer, options_training_handlers
from monai_genaug.networks.motion_encoder import check_motion, estimate_motion
from monai_genaug.networks.sequence_unet import set_trainable_modules

__all__ = [
    "SequenceDiffusionPrepareBatch",
    "create_sequence_diffusion_trainer",
    "drop_conditions",
]

logger = logging.getLogger(__name__)


def drop_conditions(
    condition: Mapping[str, torch.Tensor],
    keep_all_p: float = 0.1,
    drop_all_p: float = 0.1,
    drop_each_p: float = 0.5,
    keys: Sequence[str] = ("prior", "motion"),
    rng: torch.Generator | None = None,
    null_class: int | None = None,
) -> dict[str, torch.Tensor]:
    """Condition dropout for classifier-free guidance training: per sample, ``u ~ U(0, 1)``: ``u < keep_all_p``
    keeps all conditions, ``u < keep_all_p + drop_all_p`` drops all of ``keys``, else each is dropped with
    probability ``drop_each_p``. A dropped prior / motion becomes zeros, a dropped class the null class.

    The input dict is not modified (the original mutates its cached samples, so a dropped condition stays dropped).

    Args:
        condition: ``{"class_labels", "prior", "motion"}`` tensors with the batch first.
        keep_all_p: probability of keeping every condition.
        drop_all_p: probability of dropping every condition of ``keys``.
        drop_each_p: otherwise, probability of dropping each condition independently.
        keys: the droppable conditions (``"class_labels"`` may be added; it needs ``null_class``).
        rng: generator of the draws (CPU).
        null_class: the null class index (to drop ``class_labels``).
    """
    for name, p in (("keep_all_p", keep_all_p), ("drop_all_p", drop_all_p), ("drop_each_p", drop_each_p)):
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"{name} must be in [0, 1], got {p}.")
    if keep_all_p + drop_all_p > 1.0:
        raise ValueError(f"keep_all_p + drop_all_p must be <= 1, got {keep_all_p + drop_all_p}.")
    out = {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in condition.items()}
    present = [k for k in keys if k in out]
    if not present:
        return out
    if "class_labels" in present and null_class is None:
        raise ValueError("dropping 'class_labels' needs null_class (the generator's num_classes).")
    batch = int(out[present[0]].shape[0])
    u = torch.rand(batch, generator=rng)
    each = torch.rand(batch, len(present), generator=rng) < drop_each_p
    drop_all = (u >= keep_all_p) & (u < keep_all_p + drop_all_p)
    regular = u >= keep_all_p + drop_all_p
    for j, key in enumerate(present):
        drop = (drop_all | (regular & each[:, j])).to(out[key].device)
        if key == "class_labels":
            out[key] = torch.where(drop, torch.full_like(out[key], int(null_class)), out[key])
        else:
            out[key] = out[key] * (~drop).view(-1, *([1] * (out[key].ndim - 1))).to(out[key].dtype)
    return out


class SequenceDiffusionPrepareBatch(LatentDiffusionPrepareBatch):
    """Turn a batch of clips into a noised sequence-diffusion training pair for a ``SequenceGenerator``.

    Returns ``(x_t, target, (timesteps,), {"condition": condition})``, so that ``SupervisedTrainer(network=generator,
    loss_function=MSELoss())`` computes ``mse(generator(x_t, t, condition=condition), target)``. Clips in [0, 1] are
    mapped to [-1, 1]. Conditions: ``class_labels`` from ``label_key``; ``prior`` from ``prior_key`` when the batch
    has it, else ``prior_encoder`` applied to each clip's first frame; ``motion`` from ``motion_key`` when present,
    else :func:`~monai_genaug.networks.motion_encoder.estimate_motion` of the clip (empty for one-frame clips). Then
    :func:`drop_conditions` (keep-all / drop-all / drop-each) on a copy. Noise, timesteps and dropout come from one
    seeded CPU generator, checkpointed with the trainer.

    Args:
        generator: the ``SequenceGenerator`` being trained.
        prior_encoder: frozen callable mapping frames ``(B, C, H, W)`` to prior embeddings (when the generator takes
            a prior and the batch does not carry ``prior_key``).
        motion_method: ``"flow"`` or ``"difference"`` for motion estimated on the fly.
        image_key: batch key of the clips ``(B, C, F, H, W)`` in [0, 1].
        label_key: batch key of the class labels.
        prior_key: batch key of precomputed prior embeddings.
        motion_key: batch key of precomputed motion fields ``(B, 2, F - 1, H, W)``.
        keep_all_p: condition dropout, see :func:`drop_conditions`.
        drop_all_p: condition dropout.
        drop_each_p: condition dropout.
        seed: seed of the noise, timestep and dropout draws.
    """

    def __init__(
        self,
        generator: nn.Module,
        prior_encoder: Callable[[torch.Tensor], torch.Tensor] | None = None,
        motion_method: str = "flow",
        image_key: str = "image",
        label_key: str = "label",
        prior_key: str = "prior",
        motion_key: str = "motion",
        keep_all_p: float = 0.1,
        drop_all_p: float = 0.1,
        drop_each_p: float = 0.5,
        seed: int = 0,
    ) -> None:
        super().__init__(generator, condition_keys=None, image_key=image_key, seed=seed)
        drop_conditions({}, keep_all_p, drop_all_p, drop_each_p)  # validates the probabilities
        self.prior_encoder = prior_encoder
        self.motion_method = motion_method
        self.label_key = label_key
        self.prior_key = prior_key
        self.motion_key = motion_key
        self.keep_all_p, self.drop_all_p, self.drop_each_p = float(keep_all_p), float(drop_all_p), float(drop_each_p)

    def _clips(self, batchdata: Mapping[str, Any], device: Any = None, non_blocking: bool = False) -> torch.Tensor:
        if not isinstance(batchdata, Mapping) or self.image_key not in batchdata:
            got = sorted(batchdata) if isinstance(batchdata, Mapping) else type(batchdata).__name__
            raise KeyError(
                f"SequenceDiffusionPrepareBatch expects dict batches with clips under '{self.image_key}' (got {got}); "
                "set image_key to the batch key of the (B, C, F, H, W) clips."
            )
        clips = torch.as_tensor(batchdata[self.image_key]).float()
        self.generator.check_clips(clips, f"batch['{self.image_key}']")
        return clips.to(device=device, non_blocking=non_blocking)

    def get_latents(
        self, batchdata: Mapping[str, Any], device: torch.device | str | None, non_blocking: bool, **kwargs: Any
    ) -> torch.Tensor:
        """The clips mapped from [0, 1] to [-1, 1] (diffusion runs on pixels)."""
        return self._clips(batchdata, device, non_blocking) * 2.0 - 1.0

    def get_condition(
        self, batchdata: Mapping[str, Any], device: torch.device | str | None = None, non_blocking: bool = False
    ) -> dict[str, torch.Tensor]:
        """Class labels, image prior and motion of the batch's clips (precomputed ones from the batch)."""
        gen = self.generator
        clips = self._clips(batchdata, device, non_blocking)  # priors and motion are computed where training runs
        b, _, nf = clips.shape[:3]
        cond: dict[str, torch.Tensor] = {}
        if gen.num_classes is not None:
            if self.label_key not in batchdata:
                raise KeyError(
                    f"the generator is class-conditional but the batch has no '{self.label_key}' "
                    f"(keys: {sorted(batchdata)}); set label_key."
                )
            cond["class_labels"] = torch.as_tensor(batchdata[self.label_key]).long().reshape(b, -1)[:, 0]
        if gen.prior_tokenizer is not None:
            if self.prior_key in batchdata:
                prior = torch.as_tensor(batchdata[self.prior_key]).float()
            elif self.prior_encoder is not None:
                with torch.no_grad():
                    prior = torch.as_tensor(self.prior_encoder(clips[:, :, 0])).float()
            else:
                raise KeyError(
                    f"the generator takes an image prior but the batch has no '{self.prior_key}' and no prior_encoder "
                    "was given; precompute the priors or pass prior_encoder."
                )
            cond["prior"] = prior
        if gen.motion_encoder is not None:
            if self.motion_key in batchdata:
                motion = torch.as_tensor(batchdata[self.motion_key]).float()
            elif nf > 1:
                motion = estimate_motion(clips, self.motion_method)
            else:
                motion = clips.new_zeros(b, 2, 0, *clips.shape[3:])
            cond["motion"] = check_motion(motion, b, nf, clips.shape[3:])
        cond = drop_conditions(
            cond, self.keep_all_p, self.drop_all_p, self.drop_each_p, ("prior", "motion"), rng=self.rng
        )
        return {k: v.to(device=device, non_blocking=non_blocking) for k, v in cond.items()}

    def drop_condition(self, condition: dict[str, torch.Tensor] | None) -> dict[str, torch.Tensor] | None:
        """Dropout is applied in :meth:`get_condition` (Ctrl-GenAug's three-way scheme)."""
        return condition


def _clip_gradients(parameters: list[nn.Parameter], max_norm: float) -> Callable[[Any], None]:
    def clip(engine) -> None:
        torch.nn.utils.clip_grad_norm_(parameters, max_norm)

    return clip


def create_sequence_diffusion_trainer(
    generator: nn.Module,
    train_loader: Any,
    max_epochs: int,
    output_dir: str | os.PathLike,
    stage: str = "clips",
    trainable: Sequence[str] | None = None,
    lr: float = 1e-4,
    weight_decay: float = 1e-2,
    device: str | torch.device = "cpu",
    optimizer: torch.optim.Optimizer | None = None,
    lr_scheduler: Any | None = None,
    epoch_length: int | None = None,
    grad_clip: float | None = 1.0,
    prior_encoder: Callable[[torch.Tensor], torch.Tensor] | None = None,
    motion_method: str = "flow",
    image_key: str = "image",
    label_key: str = "label",
    prior_key: str = "prior",
    motion_key: str = "motion",
    keep_all_p: float = 0.1,
    drop_all_p: float = 0.1,
    drop_each_p: float = 0.5,
    ema_decay: float | None = None,
    sample_every: int | None = None,
    num_grid_samples: int = 4,
    num_inference_steps: int = 10,
    sample_guidance_scale: float = 1.0,
    final_path: str | os.PathLike | None = None,
    final_extra: Mapping[str, Any] | None = None,
    options: TrainingOptions | None = None,
    **deprecated: Any,
) -> HandledSupervisedTrainer:
    """Build a ready MONAI ``SupervisedTrainer`` for one Ctrl-GenAug training stage of a ``SequenceGenerator``.

    Handlers, in firing order: NaN guard, EMA (optional), stats, MLflow (optional), LR scheduler, sample sheet
    (optional, ``output_dir/samples_epochNNNN.png``, one clip per row), final generator file (only when every
    iteration ran and the weights are finite), resumable checkpoint (``output_dir/checkpoint_last.pt``, with the
    prepare-batch's and the loader's generators; resumed on start when ``resume``). Gradients are clipped to
    ``grad_clip`` after every backward pass (not with ``options.amp``). The typed ``trainer.handles``
    (:class:`~monai_genaug.engines.options.TrainerHandles`) holds ``prepare_batch``, ``ema``, ``nan_guard``,
    ``checkpoint``, ``mlflow_handler``, ``sample_grid``, ``model_path`` (the final generator file).

    Args:
        generator: the ``SequenceGenerator``.
        train_loader: loader of dicts with clips ``(C, F, H, W)`` in [0, 1] under ``image_key`` (``F = 1`` for the
            frame stage), labels and optionally precomputed priors / motion. For an exact resume shuffle with a
            ``torch.Generator`` (``DataLoader(..., generator=g)`` or a sampler with ``generator=g``).
        max_epochs: epochs in total (counting resumed ones).
        output_dir: folder of the checkpoint, sample sheets and the default MLflow store.
        stage: ``"frames"`` (image pre-training: all parameters trained) or ``"clips"`` (fine-tuning ``trainable``).
        trainable: name substrings of the modules fine-tuned on clips (None: all), see
            :func:`~monai_genaug.networks.sequence_unet.set_trainable_modules`.
        lr: AdamW learning rate (when ``optimizer`` is None).
        weight_decay: AdamW weight decay.
        device: training device.
        optimizer: a ready optimiser over the trainable parameters.
        lr_scheduler: a torch LR scheduler stepped every epoch (and checkpointed).
        epoch_length: iterations per epoch (default ``len(train_loader)``).
        grad_clip: gradient-norm clip (None: none).
        prior_encoder: frozen prior encoder for batches without precomputed priors.
        motion_method: motion estimation for batches without precomputed motion.
        image_key: batch key of the clips.
        label_key: batch key of the class labels.
        prior_key: batch key of precomputed priors.
        motion_key: batch key of precomputed motion fields.
        keep_all_p: condition dropout: keep every condition.
        drop_all_p: condition dropout: drop prior and motion together.
        drop_each_p: condition dropout: otherwise drop each independently.
        ema_decay: EMA decay of the weights (None: no EMA); the final EMA weights go to ``<final_path stem>_ema.pt``.
        sample_every: epochs between sample sheets (None: none); the sheet uses the conditions of the first
            ``num_grid_samples`` training items and fixed noise.
        num_grid_samples: clips per sheet.
        num_inference_steps: sampler steps of the sheet.
        sample_guidance_scale: classifier-free guidance scale of the sheet.
        final_path: file of the final generator (default ``output_dir/generator_final.pt``).
        final_extra: extra JSON entries stored in the final file.
        options: the shared training options (seed of the global RNGs at a fresh start and of the noise / timestep /
            dropout draws, AMP - no gradient clipping with AMP -, resume, checkpoint interval, NaN policy, MLflow
            tracking - experiment ``ctrl_genaug`` and run name ``stage`` unless named -, extra handlers); default
            ``TrainingOptions()``.
        **deprecated: the old keywords of ``options`` (``amp=``, ``seed=``, ``tracking=``, ...), accepted for one
            release with a ``DeprecationWarning``.

    Raises:
        ValueError: bad ``stage`` / ``max_epochs``, or no parameter left to train.
    """
    options = resolve_training_options("create_sequence_diffusion_trainer", options, deprecated)
    seed, amp = options.seed, options.amp
    if stage not in ("frames", "clips"):
        raise ValueError(f"stage must be 'frames' (pre-training on single frames) or 'clips', got '{stage}'.")
    if max_epochs < 1:
        raise ValueError(f"max_epochs must be >= 1, got {max_epochs}.")
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    device = torch.device(device)
    generator = generator.to(device)
    set_trainable_modules(generator, None if stage == "frames" else trainable)
    params_to_train = [p for p in generator.parameters() if p.requires_grad]
    if optimizer is None:
        optimizer = torch.optim.AdamW(params_to_train, lr=lr, weight_decay=weight_decay)
    prepare_batch = SequenceDiffusionPrepareBatch(
        generator, prior_encoder, motion_method, image_key, label_key, prior_key, motion_key,
        keep_all_p, drop_all_p, drop_each_p, seed,
    )
    final_path = Path(final_path) if final_path is not None else output_dir / "generator_final.pt"
    standard = options_training_handlers(
        output_dir,
        "sequence_diffusion",
        {
            "stage": stage,
            "lr": optimizer.param_groups[0]["lr"],
            "max_epochs": max_epochs,
            "batch_size": getattr(train_loader, "batch_size", None),
            "trainable": list(trainable) if trainable is not None and stage == "clips" else "all",
            "num_trainable_parameters": sum(p.numel() for p in params_to_train),
            "condition_dropout": {"keep_all": keep_all_p, "drop_all": drop_all_p, "drop_each": drop_each_p},
            "grad_clip": grad_clip,
            "ema_decay": ema_decay,
            "generator": getattr(generator, "config", {}),
        },
        options.replace(run_name=options.run_name or stage),
        "ctrl_genaug",
    )
    handlers = standard.handlers
    ema = None
    if ema_decay is not None:
        ema = EMAHandler(generator, decay=ema_decay)
        handlers.insert(1, ema)
    if lr_scheduler is not None:
        handlers.append(LrScheduleHandler(lr_scheduler, print_lr=False))
    sample_grid = None
    if sample_every is not None:
        dataset = train_loader.dataset
        items = [dataset[i] for i in range(min(int(num_grid_samples), len(dataset)))]
        batch = default_collate(items)
        cond_builder = SequenceDiffusionPrepareBatch(
            generator, prior_encoder, motion_method, image_key, label_key, prior_key, motion_key, 1.0, 0.0, 0.0, seed
        )
        clips = torch.as_tensor(batch[image_key])
        sample_fn = SequenceSamples(
            generator, cond_builder.get_condition(batch), clips.shape[2], clips.shape[3:], num_inference_steps,
            sample_guidance_scale, seed,
        )
        sample_grid = SampleGridHandler(
            sample_fn, output_dir, interval=int(sample_every), normalise=False, sequence_dim=2, ema=ema,
            network=generator, mlflow_handler=standard.mlflow_handler,
        )
        handlers.append(sample_grid)

    def save_final(engine) -> None:
        extra = {"stage": stage, "epochs": int(engine.state.epoch), "iterations": int(engine.state.iteration),
                 **dict(final_extra or {})}
        generator.save(final_path, extra=extra)
        if ema is not None:
            with ema.use_ema_weights():
                generator.save(final_path.with_name(f"{final_path.stem}_ema{final_path.suffix}"), extra=extra)
        logger.info(f"saved the {stage}-stage generator to '{final_path}'.")

    handlers.append(FinalModelHandler(save_final, {"generator": generator}, what="generator"))
    handlers.extend(options.extra_handlers)
    trainer = create_supervised_trainer(
        device, max_epochs, train_loader, generator, optimizer, nn.MSELoss(), prepare_batch, handlers, epoch_length,
        amp=amp,
    )
    if grad_clip is not None and not amp:
        trainer.add_event_handler(IterationEvents.BACKWARD_COMPLETED, _clip_gradients(params_to_train, grad_clip))
    save_dict: dict[str, Any] = {"generator": generator, "optimizer": optimizer, "prepare_batch": prepare_batch}
    if ema is not None:
        save_dict["ema"] = ema
    if lr_scheduler is not None:
        save_dict["lr_scheduler"] = lr_scheduler
    return finish_trainer(
        trainer, output_dir, save_dict, train_loader, options, standard,
        ema=ema,
        sample_grid=sample_grid,
        lr_scheduler=lr_scheduler,
        prepare_batch=prepare_batch,
        model_path=final_path,
    )
