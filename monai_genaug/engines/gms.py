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
"""GMS training and evaluation on MONAI's Ignite engines, plus the data plumbing of the GMS bundle.

Huo et al., "Generative Medical Segmentation", arXiv:2403.18198. Two stages, both on stock MONAI / package engines:

1. **Tokenizer.** :func:`create_gms_autoencoder_trainer` trains a MONAI ``AutoencoderKL`` on images *and* masks
   (each batch holds the images and their per-class mask "images", see
   :func:`~monai_genaug.methods.gms.masks_to_images`) with the package's
   :func:`~monai_genaug.engines.autoencoder.create_autoencoder_trainer` (L1 + KL, optional patch adversarial term).
   A validation evaluator measures the mask reconstruction Dice (the upper bound of GMS) and the best autoencoder on
   the validation split is kept.
2. **Mapping.** :func:`create_gms_trainer` builds a MONAI ``SupervisedTrainer`` whose :class:`GMSPrepareBatch`
   turns ``{"image", "label"}`` batches into image latents (cached, with the 0.5-probability posterior noise) and mask
   latents, and whose loss is :class:`~monai_genaug.methods.gms.GMSLoss`. AdamW, linear warm-up + cosine
   (MONAI ``WarmupCosineSchedule``, stepped every iteration), a ``SupervisedEvaluator`` on a **validation** split
   (never the test split) selects the best model (``val_mean_dice``), saved atomically; MLflow through
   :func:`~monai_genaug.engines.tracking.create_mlflow_handler` (SQLite store under the output folder by default);
   a resumable checkpoint every epoch.

The bundle helpers (:func:`gms_data_dir`, :func:`gms_datalist`, :func:`gms_transforms`, :func:`label_map_saver`,
:class:`SegmentationGridSaver`) let ``bundles/gms`` configs wire only package objects: phantoms are written on the
fly when no ``dataset_dir`` is given, Kvasir-SEG-like ``images/ + masks/`` folders and BRATS-like NIfTI case folders
are read through :mod:`monai_genaug.data.folders`.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ignite.engine import Events
from monai.engines import SupervisedTrainer
from monai.handlers import (
    LrScheduleHandler,
    ValidationHandler,
)
from monai.optimizers import WarmupCosineSchedule
from monai.transforms import (
    Compose,
    MapTransform,
    Orientationd,
    RandFlipd,
    RandRotate90d,
    Resized,
    SaveImaged,
)
from torch import nn

from monai_genaug.data.folders import (
    limit_items,
    nifti_case_datalist,
    paired_image_mask_datalist,
    split_datalist,
)
from monai_genaug.data.phantoms import MANIFEST_NAME, write_phantom_dataset
from monai_genaug.data.pipelines import check_spatial_multiple, segmentation_2d_transforms, volume_3d_transforms
from monai_genaug.engines.autoencoder import create_autoencoder_trainer
from monai_genaug.engines.validation import (
    BestModelSaver,
    attach_model_selection,
    create_dice_evaluator,
)
from monai_genaug.engines.workflow import (
    attach_resumable_checkpoint,
    create_supervised_trainer,
    standard_training_handlers,
)
from monai_genaug.methods.gms import (
    GMSLoss,
    GMSSegmenter,
    LatentCache,
    MaskReconstructor,
    labels_to_onehot,
    masks_to_images,
    save_autoencoder,
)
from monai_genaug.utils.images import save_image_grid
from monai_genaug.utils.labels import check_label_map
from monai_genaug.utils.options import optional_count

__all__ = [
    "GMSAutoencoderPrepareBatch",
    "GMSPrepareBatch",
    "LabelPrepareBatch",
    "MaskForegroundWeightedL1Loss",
    "ScaleFactorInitializer",
    "SegmentationGridSaver",
    "create_gms_autoencoder_trainer",
    "create_gms_trainer",
    "gms_data_dir",
    "gms_datalist",
    "gms_transforms",
    "image_meta",
    "label_map_saver",
]

logger = logging.getLogger(__name__)


def _batch_item(batchdata: Mapping[str, Any], key: str, what: str) -> torch.Tensor:
    if not isinstance(batchdata, Mapping):
        raise TypeError(f"GMS batches must be dicts with the {what} under '{key}', got {type(batchdata).__name__}.")
    if key not in batchdata:
        raise ValueError(
            f"the batch has no '{key}' ({what}); its keys are {sorted(map(str, batchdata))}. Every training image needs "
            "its mask: check the datalist (paired_image_mask_datalist reports images without masks)."
        )
    return batchdata[key]


# ----------------------------------------------------------------------------------------------------------------
# prepare-batch objects
# ----------------------------------------------------------------------------------------------------------------
class GMSPrepareBatch:
    """Turn ``{"image", "label"}`` batches into GMS training calls for MONAI's ``SupervisedTrainer``.

    Returns ``(image_latents, {"latent": mask_latents, "mask": one_hot_foreground}, (), {"latent_input": True,
    "return_heads": True, "decode_levels": ...})``, so the trainer calls ``segmenter(z, latent_input=True, ...)``
    and ``GMSLoss(pred, target)``.

    Image latents: the frozen encoder's posterior; with probability ``noise_prob`` per batch (per sample with
    ``per_sample_noise``) a posterior sample ``(mu + sigma * eps) * scale`` replaces the mean ``mu * scale`` (the
    GMS latent noise augmentation). Mask latents always use the mean. With a cache, the encoder outputs of
    bit-identical inputs are reused (see :class:`~monai_genaug.methods.gms.LatentCache`); noise is drawn after the
    lookup, so caching never changes what is trained.

    Args:
        segmenter: the :class:`~monai_genaug.methods.gms.GMSSegmenter`.
        image_key: batch key of the images.
        label_key: batch key of the (B, 1, *spatial) label maps (0..K).
        noise_prob: probability of the posterior noise (paper: 0.5); 0 disables it.
        per_sample_noise: draw the noise decision per sample instead of per batch.
        cache: a :class:`LatentCache`, True for a new one (512 MB), or None/False for none.
        decode_levels: heads to decode for the Dice loss (None: all heads; pass ``GMSLoss.decode_levels``).
        seed: seed of the noise generator (checkpointed through ``state_dict``).
    """

    def __init__(
        self,
        segmenter: GMSSegmenter,
        image_key: str = "image",
        label_key: str = "label",
        noise_prob: float = 0.5,
        per_sample_noise: bool = False,
        cache: LatentCache | bool | None = True,
        decode_levels: Sequence[str] | None = None,
        seed: int = 0,
    ) -> None:
        if not 0.0 <= noise_prob <= 1.0:
            raise ValueError(f"noise_prob must be in [0, 1], got {noise_prob}.")
        self.segmenter = segmenter
        self.image_key = image_key
        self.label_key = label_key
        self.noise_prob = float(noise_prob)
        self.per_sample_noise = bool(per_sample_noise)
        self.cache = LatentCache() if cache is True else (None if cache is None or cache is False else cache)
        self.decode_levels = None if decode_levels is None else tuple(decode_levels)
        self.seed = int(seed)
        self.generator = torch.Generator().manual_seed(self.seed)

    def state_dict(self) -> dict[str, Any]:
        """The noise generator's state (for exact resume)."""
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        self.generator.set_state(state_dict["generator"])

    def _cached(self, inputs: torch.Tensor, tag: str, encode: Callable[[torch.Tensor], tuple[torch.Tensor, ...]]):
        """Encode ``inputs`` per sample through the cache; returns the stacked outputs of ``encode``."""
        if self.cache is None:
            return encode(inputs)
        keys = [LatentCache.key(inputs[i], tag) for i in range(inputs.shape[0])]
        found = [self.cache.get(k) for k in keys]
        todo = [i for i, v in enumerate(found) if v is None]
        if todo:
            fresh = encode(inputs[todo])
            for j, i in enumerate(todo):
                found[i] = tuple(t[j] for t in fresh)
                self.cache.put(keys[i], found[i])
        device = inputs.device
        return tuple(torch.stack([f[n].to(device) for f in found]) for n in range(len(found[0])))

    def __call__(
        self,
        batchdata: Mapping[str, Any],
        device: str | torch.device | None = None,
        non_blocking: bool = False,
        **kwargs,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor], tuple, dict[str, Any]]:
        seg = self.segmenter
        images = _batch_item(batchdata, self.image_key, "images")
        labels = _batch_item(batchdata, self.label_key, "masks")
        images = torch.as_tensor(images).to(device=device, non_blocking=non_blocking, **kwargs)
        labels = torch.as_tensor(labels).to(device=device, non_blocking=non_blocking)
        images = images.as_tensor() if hasattr(images, "as_tensor") else images
        labels = labels.as_tensor() if hasattr(labels, "as_tensor") else labels
        seg.check_images(images, name=f"batch['{self.image_key}']")
        labels = check_label_map(labels, seg.num_classes, seg.spatial_dims, name=f"batch['{self.label_key}']")
        if labels.shape[0] != images.shape[0] or labels.shape[2:] != images.shape[2:]:
            raise ValueError(
                f"batch['{self.label_key}'] has shape {tuple(labels.shape)} but the images are {tuple(images.shape)}; "
                "every image needs a mask of the same spatial size."
            )
        with torch.no_grad():
            mu, sigma = self._cached(images, "image", seg.image_posterior)
            (mask_mu,) = self._cached(labels, f"mask{seg.num_classes}", lambda y: (seg.mask_posterior_mean(y),))
        b = images.shape[0]
        if self.per_sample_noise:
            noisy = torch.rand(b, generator=self.generator) < self.noise_prob
        else:
            noisy = (torch.rand(1, generator=self.generator) < self.noise_prob).expand(b)
        eps = torch.randn(mu.shape, generator=self.generator).to(mu.device, mu.dtype)
        keep = noisy.to(mu.device).view(-1, *([1] * (mu.ndim - 1)))
        z = torch.where(keep, mu + sigma * eps, mu) * seg.scale_factor
        target = {"latent": mask_mu * seg.mask_scale_factor, "mask": labels_to_onehot(labels, seg.num_classes)}
        kw = {"latent_input": True, "return_heads": True, "decode_levels": self.decode_levels}
        return z, target, (), kw


class GMSAutoencoderPrepareBatch:
    """Batches for training a GMS tokenizer: the images and their per-class mask "images" in one batch.

    Returns ``(x, x)`` with ``x = cat([images, masks_to_images(labels)])`` (the autoencoder reconstructs its input),
    for :class:`~monai_genaug.engines.autoencoder.AutoencoderKLTrainer`.

    Args:
        num_classes: foreground classes K.
        channels: image channels (masks are repeated over them).
        image_key: batch key of the images.
        label_key: batch key of the label maps.
        mask_value_range: the (outside, inside) values of an encoded mask.
        use_images: include the images.
        use_masks: include the masks.
    """

    def __init__(
        self,
        num_classes: int,
        channels: int,
        image_key: str = "image",
        label_key: str = "label",
        mask_value_range: Sequence[float] = (0.0, 1.0),
        use_images: bool = True,
        use_masks: bool = True,
    ) -> None:
        if not (use_images or use_masks):
            raise ValueError("use at least one of use_images / use_masks.")
        self.num_classes = int(num_classes)
        self.channels = int(channels)
        self.image_key = image_key
        self.label_key = label_key
        self.mask_value_range = tuple(float(v) for v in mask_value_range)
        self.use_images = use_images
        self.use_masks = use_masks

    def __call__(self, batchdata: Mapping[str, Any], device=None, non_blocking: bool = False, **kwargs):
        parts = []
        images = torch.as_tensor(_batch_item(batchdata, self.image_key, "images"))
        images = images.as_tensor() if hasattr(images, "as_tensor") else images
        sd = images.ndim - 2
        if images.shape[1] != self.channels:
            raise ValueError(
                f"batch['{self.image_key}'] has {images.shape[1]} channels, the autoencoder takes {self.channels}."
            )
        if self.use_images:
            parts.append(images.float())
        if self.use_masks:
            labels = torch.as_tensor(_batch_item(batchdata, self.label_key, "masks"))
            labels = labels.as_tensor() if hasattr(labels, "as_tensor") else labels
            labels = check_label_map(labels, self.num_classes, sd, name=f"batch['{self.label_key}']")
            parts.append(masks_to_images(labels, self.num_classes, self.channels, self.mask_value_range))
        x = torch.cat(parts).to(device=device, non_blocking=non_blocking, **kwargs)
        return x, x


class LabelPrepareBatch:
    """``(labels, labels)`` from ``batch[label_key]``: evaluate a :class:`MaskReconstructor` on label maps."""

    def __init__(self, label_key: str = "label") -> None:
        self.label_key = label_key

    def __call__(self, batchdata: Mapping[str, Any], device=None, non_blocking: bool = False, **kwargs):
        labels = torch.as_tensor(_batch_item(batchdata, self.label_key, "masks")).to(
            device=device, non_blocking=non_blocking
        )
        return labels, labels


class MaskForegroundWeightedL1Loss(nn.Module):
    """L1 reconstruction loss of a tokenizer batch that up-weights the foreground of the mask samples.

    Small structures (a tumour of 1 % of a volume) are blurred away by a plain L1 autoencoder, so their decoded
    masks never reach 0.5. A sample of the batch is a mask sample when all its values are the (outside, inside)
    values of ``value_range`` (see :class:`GMSAutoencoderPrepareBatch`); its ``inside`` voxels get
    ``foreground_weight``, every other voxel (and every image sample) weight 1. The weighted mean is normalised by the
    sum of the weights.

    Args:
        value_range: the (outside, inside) values of an encoded mask.
        foreground_weight: weight of the inside voxels of mask samples (1 gives plain L1).
    """

    def __init__(self, value_range: Sequence[float] = (0.0, 1.0), foreground_weight: float = 10.0) -> None:
        super().__init__()
        if foreground_weight <= 0:
            raise ValueError(f"foreground_weight must be positive, got {foreground_weight}.")
        self.lo, self.hi = (float(v) for v in value_range)
        self.foreground_weight = float(foreground_weight)

    def forward(self, recon: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Weighted L1 between ``recon`` and ``target`` (both (N, C, *spatial))."""
        flat = target.flatten(1)
        is_mask = ((flat == self.lo) | (flat == self.hi)).all(dim=1).view(-1, *([1] * (target.ndim - 1)))
        weight = 1.0 + (self.foreground_weight - 1.0) * (is_mask & (target == self.hi)).to(recon.dtype)
        return ((recon - target).abs() * weight).sum() / weight.sum()


# ----------------------------------------------------------------------------------------------------------------
# handlers
# ----------------------------------------------------------------------------------------------------------------
class ScaleFactorInitializer:
    """On ``STARTED``, set the segmenter's latent scale factor to 1 / std of the image latents of ``loader``.

    Attach it before a resume handler: a resumed run then restores the saved scale factor.

    Args:
        segmenter: the :class:`GMSSegmenter`.
        loader: data loader of dicts with ``image_key``.
        image_key: batch key of the images.
        max_batches: batches used for the estimate (None: all).
    """

    def __init__(
        self, segmenter: GMSSegmenter, loader: Any, image_key: str = "image", max_batches: int | None = 8
    ) -> None:
        self.segmenter = segmenter
        self.loader = loader
        self.image_key = image_key
        self.max_batches = max_batches
        self.value: float | None = None

    def attach(self, engine) -> None:
        engine.add_event_handler(Events.STARTED, self)

    def __call__(self, engine=None) -> float:
        with torch.random.fork_rng(devices=[]):
            self.value = self.segmenter.estimate_scale_factor(self.loader, self.image_key, max_batches=self.max_batches)
        logger.info(f"GMS latent scale factor set to {self.value:.4f}.")
        return self.value


# ----------------------------------------------------------------------------------------------------------------
# trainers
# ----------------------------------------------------------------------------------------------------------------
def create_gms_trainer(
    segmenter: GMSSegmenter,
    train_loader: Any,
    max_epochs: int,
    output_dir: str | os.PathLike,
    val_loader: Any | None = None,
    val_interval: int = 1,
    loss: GMSLoss | None = None,
    lr: float = 2e-3,
    weight_decay: float = 0.01,
    warmup_epochs: float = 5.0,
    optimizer: torch.optim.Optimizer | None = None,
    noise_prob: float = 0.5,
    cache: LatentCache | bool | None = True,
    image_key: str = "image",
    label_key: str = "label",
    device: str | torch.device = "cpu",
    epoch_length: int | None = None,
    estimate_scale: bool = True,
    scale_batches: int | None = 8,
    model_path: str | os.PathLike | None = None,
    val_inferer: Any | None = None,
    tracking: bool = False,
    tracking_uri: str | None = None,
    experiment_name: str = "gms",
    run_name: str | None = None,
    params: Mapping[str, Any] | None = None,
    amp: bool = False,
    seed: int = 0,
    resume: bool = True,
    save_interval: int = 1,
    nan_raise: bool = True,
    extra_handlers: Sequence[Any] | None = None,
) -> SupervisedTrainer:
    """Build a ready MONAI ``SupervisedTrainer`` for the GMS mapping network (the autoencoder stays frozen).

    Handlers, in firing order: scale-factor estimate (on start, before resuming), NaN guard, stats, MLflow, LR
    schedule (linear warm-up + cosine, every iteration), validation (``val_mean_dice`` on ``val_loader``; the best
    model is written to ``model_path``), final model (``model_path`` when there is no validation), resumable
    checkpoint ``output_dir/checkpoint_last.pt``. They are exposed as trainer attributes: ``prepare`` (the
    :class:`GMSPrepareBatch`), ``gms_loss``, ``lr_scheduler``, ``evaluator``, ``best_saver``, ``nan_guard``,
    ``mlflow_handler``, ``checkpoint``, ``scale_init``.

    Args:
        segmenter: the :class:`GMSSegmenter` with a trained autoencoder.
        train_loader: loader of ``{"image", "label"}`` dicts; shuffle with a seeded ``torch.Generator`` for an exact
            resume.
        max_epochs: epochs (in total, counting resumed ones); the paper trains 1000 on small data sets.
        output_dir: folder of the checkpoint, the default model file and the default MLflow store.
        val_loader: a **validation** loader (carved from the training data; never the test split).
        val_interval: epochs between validations.
        loss: the :class:`GMSLoss` (default: paper weights 1 / 1, all heads).
        lr: AdamW learning rate (paper 2e-3).
        weight_decay: AdamW weight decay (paper: torch default 0.01).
        warmup_epochs: linear warm-up length in epochs (paper 5; fractions allowed), then cosine to 0.
        optimizer: a ready optimiser over ``segmenter.trainable_parameters()`` instead of AdamW.
        noise_prob: probability of the posterior noise on image latents (paper 0.5).
        cache: latent cache (see :class:`GMSPrepareBatch`).
        image_key: batch key of the images.
        label_key: batch key of the label maps.
        device: training device.
        epoch_length: iterations per epoch (default ``len(train_loader)``).
        estimate_scale: set the scale factor from the training images when training starts.
        scale_batches: batches used for the scale estimate.
        model_path: file of the best (or final) model; default ``output_dir/model.pt``.
        val_inferer: inferer of the validation evaluator.
        tracking: log to MLflow (also on whenever ``tracking_uri`` is given).
        tracking_uri: MLflow URI; default ``sqlite:///<output_dir>/mlruns.db``. Unreachable -> warning, no tracking.
        experiment_name: MLflow experiment.
        run_name: MLflow run name.
        params: extra hyper-parameters to log.
        amp: automatic mixed precision (CUDA).
        seed: seed of the global RNGs at a fresh start and of the latent noise.
        resume: continue from ``output_dir/checkpoint_last.pt`` when it exists.
        save_interval: epochs between checkpoints.
        nan_raise: raise on a non-finite loss (True) or stop with an error log (False).
        extra_handlers: more trainer handlers (attached before the checkpoint).
    """
    if max_epochs < 1:
        raise ValueError(f"max_epochs must be >= 1, got {max_epochs}.")
    if not segmenter.include_background:
        raise ValueError(
            "train a GMSSegmenter built with include_background=True (the evaluator takes K + 1 probabilities)."
        )
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    device = torch.device(device)
    segmenter = segmenter.to(device)
    segmenter.freeze_autoencoders()
    loss = loss or GMSLoss()
    if optimizer is None:
        optimizer = torch.optim.AdamW(segmenter.trainable_parameters(), lr=lr, weight_decay=weight_decay)
    model_path = Path(model_path) if model_path is not None else output_dir / "model.pt"
    steps = int(epoch_length or len(train_loader))
    total = max(1, steps * max_epochs)
    scheduler = WarmupCosineSchedule(optimizer, warmup_steps=round(warmup_epochs * steps), t_total=total)
    prepare = GMSPrepareBatch(
        segmenter, image_key, label_key, noise_prob=noise_prob, cache=cache, decode_levels=loss.decode_levels, seed=seed
    )

    standard = standard_training_handlers(
        output_dir,
        "gms",
        params={
            "lr": optimizer.param_groups[0]["lr"],
            "weight_decay": weight_decay,
            "warmup_epochs": warmup_epochs,
            "max_epochs": max_epochs,
            "batch_size": getattr(train_loader, "batch_size", None),
            "noise_prob": noise_prob,
            "w_rec": loss.w_rec,
            "w_dice": loss.w_dice,
            "ds_levels": list(loss.ds_levels) if loss.ds_levels is not None else "all",
            "trainable_parameters": sum(p.numel() for p in segmenter.trainable_parameters()),
            "amp": amp,
            "seed": seed,
            "gms": segmenter.config,
            **dict(params or {}),
        },
        nan_raise=nan_raise,
        tracking=tracking,
        tracking_uri=tracking_uri,
        experiment_name=experiment_name,
        run_name=run_name,
    )
    handlers, nan_guard, mlflow_handler = standard.handlers, standard.nan_guard, standard.mlflow_handler
    scale_init = None
    if estimate_scale:  # first: the scale is set on start, before the checkpoint resumes
        scale_init = ScaleFactorInitializer(segmenter, train_loader, image_key, max_batches=scale_batches)
        handlers.insert(0, scale_init)
    handlers.append(LrScheduleHandler(scheduler, print_lr=False, epoch_level=False))

    trainer = create_supervised_trainer(
        device,
        max_epochs,
        train_loader,
        segmenter,
        optimizer,
        loss,
        prepare,
        handlers,
        epoch_length,
        metric_name="train_loss",
        amp=amp,
    )
    save_dict: dict[str, Any] = {
        "segmenter": segmenter,
        "optimizer": optimizer,
        "lr_scheduler": scheduler,
        "prepare_batch": prepare,
    }
    evaluator, best_saver = attach_model_selection(
        trainer,
        segmenter,
        segmenter.save,
        model_path,
        segmenter.num_classes,
        val_loader,
        val_interval,
        device,
        inferer=val_inferer,
        mlflow_handler=mlflow_handler,
        amp=amp,
        what="GMS segmenter",
    )
    if best_saver is not None:
        save_dict["best_saver"] = best_saver
    for h in extra_handlers or []:
        h.attach(trainer)
    checkpoint = attach_resumable_checkpoint(trainer, output_dir, save_dict, train_loader, resume, seed, save_interval)

    trainer.prepare = prepare
    trainer.gms_loss = loss
    trainer.lr_scheduler = scheduler
    trainer.evaluator = evaluator
    trainer.best_saver = best_saver
    trainer.nan_guard = nan_guard
    trainer.mlflow_handler = mlflow_handler
    trainer.checkpoint = checkpoint
    trainer.scale_init = scale_init
    trainer.model_path = model_path
    return trainer


class _KeepBestAutoencoder:
    """On ``COMPLETED``: load the best validated autoencoder weights back (if any) and freeze the autoencoder."""

    def __init__(
        self, autoencoder: nn.Module, saver: BestModelSaver | None, path: Path, config: Mapping[str, Any]
    ) -> None:
        self.autoencoder = autoencoder
        self.saver = saver
        self.path = path
        self.config = config

    def attach(self, engine) -> None:
        engine.add_event_handler(Events.COMPLETED, self)

    def __call__(self, engine) -> None:
        from monai_genaug.methods.gms import load_autoencoder

        if self.saver is not None and self.saver.best is not None and self.path.is_file():
            best, _ = load_autoencoder(self.path, map_location="cpu")
            self.autoencoder.load_state_dict(best.state_dict())
        elif not getattr(engine.state, "nan_detected", False):
            save_autoencoder(self.autoencoder, self.path, self.config)
        self.autoencoder.requires_grad_(False)
        self.autoencoder.eval()


def create_gms_autoencoder_trainer(
    autoencoder: nn.Module,
    train_loader: Any,
    max_epochs: int,
    output_dir: str | os.PathLike,
    num_classes: int,
    config: Mapping[str, Any],
    val_loader: Any | None = None,
    val_interval: int = 1,
    autoencoder_path: str | os.PathLike | None = None,
    mask_value_range: Sequence[float] | None = None,
    image_key: str = "image",
    label_key: str = "label",
    lr: float = 1e-3,
    kl_weight: float = 1e-6,
    adv_weight: float = 0.0,
    device: str | torch.device = "cpu",
    tracking: bool = False,
    tracking_uri: str | None = None,
    experiment_name: str = "gms_autoencoder",
    seed: int = 0,
    resume: bool = True,
    grid: bool = True,
    mask_foreground_weight: float = 1.0,
    **kwargs: Any,
):
    """Train a GMS tokenizer: a MONAI ``AutoencoderKL`` that reconstructs images and masks.

    Wraps :func:`~monai_genaug.engines.autoencoder.create_autoencoder_trainer` with a
    :class:`GMSAutoencoderPrepareBatch` (images + per-class mask images in every batch). With ``val_loader`` a
    ``SupervisedEvaluator`` computes the mask reconstruction Dice (``val_mask_dice``, the upper bound of GMS) every
    ``val_interval`` epochs and the best autoencoder is written to ``autoencoder_path``; when training completes
    the best weights are loaded back (or, without validation, the last weights are written) and the autoencoder is
    frozen, ready for :func:`create_gms_trainer`. Exposed attributes: ``evaluator``, ``best_saver``.

    Args:
        autoencoder: the ``AutoencoderKL`` (e.g. ``segmenter.autoencoder``; it is unfrozen while training).
        train_loader: loader of ``{"image", "label"}`` dicts.
        max_epochs: epochs.
        output_dir: folder of the checkpoint and reconstruction grids.
        num_classes: foreground classes K.
        config: :func:`~monai_genaug.methods.gms.gms_config` (or ``{"spatial_dims", "image_channels",
            "autoencoder"}``), stored with the weights.
        val_loader: validation loader (for the mask reconstruction Dice and the best-model choice).
        val_interval: epochs between validations.
        autoencoder_path: file of the chosen autoencoder; default ``output_dir/autoencoder.pt``.
        mask_value_range: (outside, inside) mask values; default ``config["mask_value_range"]`` or (0, 1).
        image_key: batch key of the images.
        label_key: batch key of the label maps.
        lr: Adam learning rate.
        kl_weight: KL weight.
        adv_weight: patch-adversarial weight (0: plain VAE, the cheap CPU default).
        device: device.
        tracking: MLflow tracking.
        tracking_uri: MLflow URI (default SQLite under ``output_dir``).
        experiment_name: MLflow experiment.
        seed: seed.
        resume: resume from ``output_dir/checkpoint_last.pt``.
        grid: write reconstruction grids of a few images and masks (1- or 3-channel images only).
        mask_foreground_weight: weight of the inside voxels of the masks in the L1 loss
            (:class:`MaskForegroundWeightedL1Loss`); 1 is plain L1. Raise it (e.g. 20) when the structures are small.
        kwargs: passed to ``create_autoencoder_trainer`` (``discriminator_layers``, ``perceptual_weights_path``...).
    """
    output_dir = Path(output_dir)
    config = dict(config)
    image_channels = int(config["image_channels"])
    value_range = tuple(
        mask_value_range if mask_value_range is not None else config.get("mask_value_range", (0.0, 1.0))
    )
    path = Path(autoencoder_path) if autoencoder_path is not None else output_dir / "autoencoder.pt"
    prepare = GMSAutoencoderPrepareBatch(num_classes, image_channels, image_key, label_key, value_range)
    autoencoder.requires_grad_(True)
    device = torch.device(device)
    autoencoder.to(device)
    grid_images = None
    if grid and image_channels in (1, 3):
        first = next(iter(train_loader))
        x, _ = prepare({image_key: first[image_key][:2], label_key: first[label_key][:2]})
        grid_images = x
    saver = evaluator = None
    extra: list[Any] = []
    if val_loader is not None:
        saver = BestModelSaver(lambda p: save_autoencoder(autoencoder, p, config), path, "val_mask_dice")
        recon = MaskReconstructor(autoencoder, num_classes, value_range)
        evaluator = create_dice_evaluator(
            recon,
            val_loader,
            num_classes,
            device,
            prepare_batch=LabelPrepareBatch(label_key),
            metric_name="val_mask_dice",
            val_handlers=[saver],
        )
        extra.append(ValidationHandler(interval=val_interval, validator=evaluator, epoch_level=True))
    extra.append(_KeepBestAutoencoder(autoencoder, saver, path, config))
    trainer = create_autoencoder_trainer(
        autoencoder,
        train_loader,
        max_epochs,
        output_dir,
        lr=lr,
        device=device,
        kl_weight=kl_weight,
        adv_weight=adv_weight,
        grid_images=grid_images,
        config=config,
        tracking=tracking,
        tracking_uri=tracking_uri,
        experiment_name=experiment_name,
        seed=seed,
        resume=resume,
        extra_handlers=extra,
        **kwargs,
    )
    trainer.prepare_batch = prepare  # images + masks; the default would take the masks as targets
    if mask_foreground_weight != 1.0:
        trainer.state.recon_loss_function = MaskForegroundWeightedL1Loss(value_range, mask_foreground_weight)
    if saver is not None:
        saver.trainer = trainer
        trainer.checkpoint.save_dict["best_saver"] = saver
    trainer.evaluator = evaluator
    trainer.best_saver = saver
    trainer.autoencoder_path = path
    return trainer


# ----------------------------------------------------------------------------------------------------------------
# bundle data plumbing
# ----------------------------------------------------------------------------------------------------------------
_PHANTOM_KINDS = ("endoscopy", "grey", "mri")


def gms_data_dir(
    dataset_dir: str | os.PathLike | None,
    phantom_dir: str | os.PathLike | None = None,
    kind: str = "endoscopy",
    num: int = 120,
    spatial_size: Sequence[int] = (64, 64),
    num_classes: int = 3,
    seed: int = 0,
) -> str:
    """The data folder of a GMS run: ``dataset_dir`` when given, else a phantom data set written on the fly.

    Phantoms (:mod:`monai_genaug.data.phantoms`) are written once to ``phantom_dir/<kind>_<num>_<size>_s<seed>`` (a
    folder whose manifest matches is reused): ``"endoscopy"`` (RGB, binary, Kvasir-SEG layout ``images/ +
    masks/``), ``"grey"`` (grey ultrasound-like, binary) or ``"mri"`` (3D BRATS-like case folders with
    ``Flair``, ``T1c`` and a multi-class ``OTMultiClass`` label, ``num_classes`` tumour classes).

    Args:
        dataset_dir: a real data folder, or None / "" for phantoms.
        phantom_dir: where phantoms are written (required without ``dataset_dir``).
        kind: phantom kind.
        num: number of phantoms.
        spatial_size: phantom size.
        num_classes: tumour classes of the MRI phantoms.
        seed: phantom seed.

    Raises:
        FileNotFoundError: ``dataset_dir`` does not exist.
    """
    if dataset_dir not in (None, "", "None", "null"):
        path = Path(dataset_dir).expanduser()
        if not path.is_dir():
            raise FileNotFoundError(
                f"dataset_dir '{path}' does not exist; pass an images/ + masks/ folder (Kvasir-SEG) or a folder of NIfTI "
                "case folders (BRATS), or leave dataset_dir empty to use phantoms."
            )
        return str(path)
    if kind not in _PHANTOM_KINDS:
        raise ValueError(f"phantom kind must be one of {_PHANTOM_KINDS}, got {kind!r}.")
    if phantom_dir is None:
        raise ValueError("without dataset_dir, pass phantom_dir (where the phantom data set is written).")
    size = tuple(int(s) for s in spatial_size)
    name = f"{kind}_{num}_{'x'.join(map(str, size))}_s{seed}" + (f"_k{num_classes}" if kind == "mri" else "")
    folder = Path(phantom_dir) / name
    kwargs: dict[str, Any] = {"spatial_size": size}
    if kind == "mri":
        kwargs["num_classes"] = int(num_classes)
    manifest = folder / MANIFEST_NAME
    if manifest.is_file():
        try:
            m = json.loads(manifest.read_text())
            if m.get("kind") == kind and m.get("num") == num and m.get("seed") == seed:
                return str(folder)
        except (OSError, ValueError):
            pass
    write_phantom_dataset(kind, folder, num, seed=seed, overwrite=True, **kwargs)
    return str(folder)


def gms_datalist(
    data_dir: str | os.PathLike,
    split: str = "training",
    layout: str = "auto",
    val_fraction: float = 0.1,
    test_fraction: float = 0.2,
    seed: int = 0,
    max_items: int | None = None,
    patterns: Mapping[str, str] | None = None,
) -> list[dict]:
    """One split of a fixed, seeded train / validation / test split of a GMS data folder.

    Layouts: ``"paired"`` (``images/ + masks/``, e.g. Kvasir-SEG; entries ``image``, ``label``, ``id``), ``"cases"``
    (one folder per case with ``Flair*``, ``T1c*``, ``OTMultiClass*``, e.g. BRATS; entries ``flair``, ``t1c``,
    ``label``, ``case_id``; cases are never split), or ``"auto"`` (paired when ``images/`` exists).

    Args:
        data_dir: the data folder.
        split: ``"training"``, ``"validation"`` (checkpoint selection), ``"test"`` (final numbers only) or
            ``"all"`` (every item).
        layout: see above.
        val_fraction: validation fraction.
        test_fraction: test fraction.
        seed: split seed (the split depends only on the file set and the seed).
        max_items: keep the first ``max_items`` entries of the split (quick runs), None (or ``"null"``) for all.
        patterns: NIfTI file patterns for ``"cases"`` (see :func:`~monai_genaug.data.folders.nifti_case_datalist`).
    """
    max_items = optional_count(max_items)  # --max_items null arrives as the text 'null'
    root = Path(data_dir)
    if layout == "auto":
        layout = "paired" if (root / "images").is_dir() else "cases"
    if layout == "paired":
        items = paired_image_mask_datalist(root)
        group = None
    elif layout == "cases":
        items = nifti_case_datalist(root, patterns=patterns)
        group = "case_id"
    else:
        raise ValueError(f"layout must be 'auto', 'paired' or 'cases', got {layout!r}.")
    splits = split_datalist(items, val_fraction=val_fraction, test_fraction=test_fraction, seed=seed, group_key=group)
    if split == "all":  # every item, in split order (as the other bundles' ``--split all``)
        splits["all"] = [item for part in ("training", "validation", "test") for item in splits.get(part, [])]
    if split not in splits:
        raise ValueError(f"split must be one of {[*splits, 'all']}, got {split!r}.")
    out = splits[split]
    if not out:
        raise ValueError(
            f"the {split!r} split of {root} is empty ({len(items)} items, val_fraction={val_fraction}, "
            f"test_fraction={test_fraction}); add data or change the fractions."
        )
    return limit_items(out, max_items)


class _CheckLabelsd(MapTransform):
    """Check a loaded label map against ``0..num_classes`` (:func:`~monai_genaug.utils.labels.check_label_map`), naming
    the file and the model's class count in the error. Missing labels are allowed (unlabelled images)."""

    def __init__(self, key: str, num_classes: int, spatial_dims: int) -> None:
        super().__init__(key, allow_missing_keys=True)
        self.num_classes = int(num_classes)
        self.spatial_dims = int(spatial_dims)

    def __call__(self, data: Mapping[str, Any]) -> dict[str, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            label = d[key]
            meta = getattr(label, "meta", {}) or {}
            name = f"label file '{meta.get('filename_or_obj', key)}'"
            x = torch.as_tensor(label.as_tensor() if hasattr(label, "as_tensor") else label)
            try:
                check_label_map(x[None], self.num_classes, self.spatial_dims, name=name)
            except ValueError as e:
                raise ValueError(
                    f"{e} The GMS model file decides num_classes: for BRATS labels 0..4 use a model trained with "
                    "--num_classes 4 (configs/train.json + configs/train_3d.json), or one trained with --num_classes 1 "
                    "(whole tumour)."
                ) from e
        return d


def gms_transforms(
    spatial_dims: int = 2,
    spatial_size: Sequence[int] = (64, 64),
    num_classes: int = 1,
    image_channels: int = 3,
    resize_label: bool = True,
    augment: bool = False,
    modality_keys: Sequence[str] = ("flair", "t1c"),
    image_key: str = "image",
    label_key: str = "label",
    spatial_multiple: int = 1,
) -> Compose:
    """Loading pipeline of the GMS bundle for 2D ``images/ + masks/`` pairs or 3D NIfTI cases.

    2D (:func:`~monai_genaug.data.pipelines.segmentation_2d_transforms`): RGB (``image_channels=3``) or grey image in
    [0, 1]; the mask binarised (``num_classes == 1``: "auto" threshold, so 0/255 PNG and Kvasir's JPEG masks work) or
    kept as label values (multi-class). 3D (:func:`~monai_genaug.data.pipelines.volume_3d_transforms`): one channel
    per modality, z-scored inside the non-zero region, label ``"whole_tumour"`` (binary) or ``"multiclass"``, then
    RAS orientation. The label values are then checked against ``0..num_classes`` (a ``ValueError`` names the file,
    e.g. BRATS labels 0..4 given to a 3-class model). Both end with ``Resized`` to ``spatial_size`` (bilinear /
    trilinear images, nearest labels), which ``Invertd`` undoes for native-resolution outputs.

    Args:
        spatial_dims: 2 or 3.
        spatial_size: network input size (a multiple of the autoencoder factor).
        num_classes: foreground classes K (1: binarise the labels).
        image_channels: 3 (RGB) or 1 (grey) in 2D; the number of ``modality_keys`` in 3D.
        resize_label: resize the label too (training, validation); False keeps it at native resolution
            (evaluation at native resolution after ``Invertd``).
        augment: random flips and 90-degree rotations (image and label together).
        modality_keys: 3D modality keys of the datalist, one image channel each.
        image_key: image key.
        label_key: label key.
        spatial_multiple: ``spatial_size`` must be a multiple of it (the model's autoencoder factor,
            ``GMSSegmenter.factor``); checked here so a bad size fails before any image is read.

    Raises:
        ValueError: ``spatial_size`` of the wrong length or not a multiple of ``spatial_multiple``; wrong channels.
    """
    size = [int(s) for s in spatial_size]
    if len(size) != spatial_dims:
        raise ValueError(f"spatial_size {tuple(size)} must have {spatial_dims} values for spatial_dims={spatial_dims}.")
    check_spatial_multiple(size, spatial_multiple, "the model's autoencoder down-sampling factor")
    if spatial_dims == 2:
        if image_channels not in (1, 3):
            raise ValueError(f"2D GMS images are RGB (image_channels=3) or grey (1), got {image_channels}.")
        xforms = list(
            segmentation_2d_transforms(
                image_key=image_key,
                label_key=label_key,
                spatial_size=None,
                rgb=image_channels == 3,
                mask_threshold="auto" if num_classes == 1 else None,
            ).transforms
        )
    elif spatial_dims == 3:
        keys = list(modality_keys)
        if len(keys) != image_channels:
            raise ValueError(f"image_channels={image_channels} but modality_keys={keys}; give one key per channel.")
        xforms = list(
            volume_3d_transforms(
                keys=keys,
                label_key=label_key,
                image_key=image_key,
                spatial_size=None,
                axcodes=None,
                normalise="zscore",
                nonzero=True,
                label_mode="whole_tumour" if num_classes == 1 else "multiclass",
            ).transforms
        )
        xforms.append(Orientationd(keys=[image_key, label_key], axcodes="RAS", labels=None))
    else:
        raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}.")
    xforms.append(_CheckLabelsd(label_key, num_classes, spatial_dims))
    mode = "bilinear" if spatial_dims == 2 else "trilinear"
    xforms.append(Resized(keys=image_key, spatial_size=size, mode=mode, anti_aliasing=spatial_dims == 2))
    if resize_label:
        xforms.append(Resized(keys=label_key, spatial_size=size, mode="nearest"))
    if augment:
        xforms += [
            RandFlipd(keys=[image_key, label_key], prob=0.5, spatial_axis=0),
            RandFlipd(keys=[image_key, label_key], prob=0.5, spatial_axis=1),
            RandRotate90d(keys=[image_key, label_key], prob=0.5, max_k=3, spatial_axes=(0, 1)),
        ]
    return Compose(xforms)


def label_map_saver(
    output_dir: str | os.PathLike,
    spatial_dims: int = 2,
    num_classes: int = 1,
    key: str = "pred",
    postfix: str = "seg",
    data_root_dir: str | os.PathLike = "",
) -> SaveImaged:
    """A ``SaveImaged`` writing label maps: PNG in 2D (binary as 0/255, multi-class as label values), NIfTI in 3D
    (uint8 labels with the affine of the inverted prediction, i.e. the input file's affine).

    Args:
        output_dir: destination folder.
        spatial_dims: 2 (PNG) or 3 (NIfTI).
        num_classes: foreground classes K.
        key: key of the (1, *spatial) label map.
        postfix: file name postfix (``<input stem>_<postfix>.png``).
        data_root_dir: the data folder; the input's sub-folders below it are kept (``case_0001/Flair_seg.nii.gz``),
            which keeps case folders whose files share a name apart.
    """
    data_root_dir = "" if data_root_dir in (None, "None") else str(data_root_dir)
    if spatial_dims == 2:
        saver = SaveImaged(
            keys=key,
            output_dir=str(output_dir),
            output_postfix=postfix,
            output_ext=".png",
            output_dtype=np.uint8,
            scale=255 if num_classes == 1 else None,
            writer="PILWriter",
            separate_folder=False,
            data_root_dir=data_root_dir,
            print_log=False,
        )
        return saver.set_options(write_kwargs={"reverse_indexing": False})  # (H, W) arrays, as loaded
    return SaveImaged(
        keys=key,
        output_dir=str(output_dir),
        output_postfix=postfix,
        output_ext=".nii.gz",
        output_dtype=np.uint8,
        resample=False,
        separate_folder=False,
        data_root_dir=data_root_dir,
        print_log=False,
    )


def image_meta(batch: Sequence[Mapping[str, Any]], image_key: str = "image") -> list[dict]:
    """The meta data of the images of a decollated batch (``MetricsSaver(batch_transform=...)``: file names)."""
    return [dict(getattr(item[image_key], "meta", {})) for item in batch]


_PALETTE = (
    torch.tensor(
        [[0, 0, 0], [230, 60, 60], [60, 200, 80], [70, 110, 240], [240, 200, 50], [200, 80, 220], [60, 210, 220]],
        dtype=torch.float32,
    )
    / 255.0
)


class SegmentationGridSaver:
    """Write one PNG of ``image | truth | prediction`` rows for the first ``num_images`` cases of an evaluation.

    3D cases show the middle slice along the last axis; images with other than 1 or 3 channels show their first
    channel; labels are colour-coded (class 1 red, 2 green, 3 blue, ...). Label maps are drawn at the image's size
    (nearest neighbour); tiles smaller than ``min_tile_size`` are enlarged by an integer factor (nearest neighbour),
    so 64 px images or 32^3 volumes stay readable.

    Args:
        output_dir: destination folder.
        filename: PNG file name.
        num_images: rows in the grid.
        image_key: batch key of the (network-resolution) image.
        label_key: batch/output key of the truth label map (1, *spatial) or its one-hot form.
        pred_key: output key of the predicted label map (1, *spatial) (e.g. a copy made before ``Invertd``).
        min_tile_size: the longer side of a tile is enlarged to at least this many pixels (1: network size).
    """

    def __init__(
        self,
        output_dir: str | os.PathLike,
        filename: str = "predictions.png",
        num_images: int = 4,
        image_key: str = "image",
        label_key: str = "label",
        pred_key: str = "pred_net",
        min_tile_size: int = 128,
    ) -> None:
        self.path = Path(output_dir) / filename
        self.min_tile_size = max(1, int(min_tile_size))
        self.num_images = int(num_images)
        self.image_key = image_key
        self.label_key = label_key
        self.pred_key = pred_key
        self.rows: list[torch.Tensor] = []

    def attach(self, engine) -> None:
        engine.add_event_handler(Events.STARTED, lambda e: self.rows.clear())
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.collect)
        engine.add_event_handler(Events.COMPLETED, self.write)

    @staticmethod
    def _plane(x: torch.Tensor) -> torch.Tensor:
        x = torch.as_tensor(x).detach().float().cpu()
        if hasattr(x, "as_tensor"):
            x = x.as_tensor()
        return x[..., x.shape[-1] // 2] if x.ndim == 4 else x  # (C, H, W)

    def _labels(self, y: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
        y = self._plane(y)
        if y.shape[0] > 1:
            y = y.argmax(0, keepdim=True).float()
        y = nn.functional.interpolate(y[None], size=tuple(size), mode="nearest")[0, 0].round().long()
        return _PALETTE[y.clamp(0, len(_PALETTE) - 1)].permute(2, 0, 1)

    def collect(self, engine) -> None:
        batch, output = engine.state.batch, engine.state.output
        if not isinstance(batch, list) or len(self.rows) >= 3 * self.num_images:
            return
        for b, o in zip(batch, output):
            if len(self.rows) >= 3 * self.num_images:
                break
            merged = {**b, **o}
            if any(k not in merged for k in (self.image_key, self.label_key, self.pred_key)):
                return
            img = self._plane(merged[self.image_key])
            img = img[:3] if img.shape[0] == 3 else img[:1].expand(3, -1, -1)
            lo, hi = img.min(), img.max()
            img = (img - lo) / (hi - lo).clamp_min(1e-8)
            scale = max(1, -(-self.min_tile_size // max(img.shape[1:])))  # ceil division
            if scale > 1:
                img = nn.functional.interpolate(img[None], scale_factor=scale, mode="nearest")[0]
            size = img.shape[1:]
            self.rows += [img, self._labels(merged[self.label_key], size), self._labels(merged[self.pred_key], size)]

    def write(self, engine=None) -> Path | None:
        if not self.rows:
            return None
        save_image_grid(torch.stack(self.rows), self.path, nrow=3, normalise=False)
        logger.info(f"saved '{self.path}' (image | truth | prediction).")
        return self.path
