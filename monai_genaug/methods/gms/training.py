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
   :func:`~monai_genaug.handlers.tracking.create_mlflow_handler` (SQLite store under the output folder by default);
   a resumable checkpoint every epoch.

The bundle helpers (:func:`gms_data_dir`, :func:`gms_datalist`, :func:`gms_transforms`, :func:`label_map_saver`,
:class:`SegmentationGridSaver`) let ``bundles/gms`` configs wire only package objects: phantoms are written on the
fly when no ``dataset_dir`` is given, Kvasir-SEG-like ``images/ + masks/`` folders and BRATS-like NIfTI case folders
are read through :mod:`monai_genaug.data.folders`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
import logging
import os
from pathlib import Path
from typing import Any

from ignite.engine import Events
from ignite.handlers import EarlyStopping
from monai.engines import SupervisedTrainer
from monai.handlers import LrScheduleHandler, ValidationHandler
from monai.losses import DiceLoss
from monai.optimizers import WarmupCosineSchedule
import torch
from torch import nn

from monai_genaug.engines.autoencoder import AutoencoderKLTrainer, create_autoencoder_trainer
from monai_genaug.engines.options import (
    TRAINING_OPTION_NAMES,
    HandledSupervisedTrainer,
    TrainingOptions,
    resolve_training_options,
)
from monai_genaug.engines.validation import BestModelSaver, attach_model_selection, create_dice_evaluator
from monai_genaug.engines.workflow import create_supervised_trainer, finish_trainer, options_training_handlers
from monai_genaug.networks.autoencoder import save_autoencoder
from monai_genaug.networks.gms import GMSSegmenter, LatentCache, MaskReconstructor, labels_to_onehot, masks_to_images
from monai_genaug.handlers.savers import KeepBestAutoencoder
from monai_genaug.handlers.scale_factor import ScaleFactorInitializer
from monai_genaug.utils.labels import check_label_map

__all__ = [
    "GMSLoss",
    "GMSAutoencoderPrepareBatch",
    "GMSPrepareBatch",
    "LabelPrepareBatch",
    "MaskForegroundWeightedL1Loss",
    "create_gms_autoencoder_trainer",
    "create_gms_trainer",
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
        # contiguous: rot90 / transpose augmentations give strided views, on which the convolutions run slower
        images = (images.as_tensor() if hasattr(images, "as_tensor") else images).contiguous()
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
# trainers
# ----------------------------------------------------------------------------------------------------------------
def create_gms_trainer(
    segmenter: GMSSegmenter,
    train_loader: Any,
    max_epochs: int,
    output_dir: str | os.PathLike,
    val_loader: Any | None = None,
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
    options: TrainingOptions | None = None,
    **deprecated: Any,
) -> HandledSupervisedTrainer:
    """Build a ready MONAI ``SupervisedTrainer`` for the GMS mapping network (the autoencoder stays frozen).

    Handlers, in firing order: scale-factor estimate (on start, before resuming), NaN guard, stats, MLflow, LR
    schedule (linear warm-up + cosine, every iteration), validation (``val_mean_dice`` on ``val_loader``; the best
    model is written to ``model_path``), final model (``model_path`` when there is no validation), resumable
    checkpoint ``output_dir/checkpoint_last.pt``. The typed ``trainer.handles``
    (:class:`~monai_genaug.engines.options.TrainerHandles`) holds ``prepare_batch`` (the :class:`GMSPrepareBatch`),
    ``loss`` (the :class:`GMSLoss`), ``lr_scheduler``, ``evaluator``, ``best_saver``, ``nan_guard``,
    ``mlflow_handler``, ``checkpoint``, ``scale_init``, ``model_path``.

    Args:
        segmenter: the :class:`GMSSegmenter` with a trained autoencoder.
        train_loader: loader of ``{"image", "label"}`` dicts; shuffle with a seeded ``torch.Generator`` for an exact
            resume.
        max_epochs: epochs (in total, counting resumed ones); the paper trains 1000 on small data sets.
        output_dir: folder of the checkpoint, the default model file and the default MLflow store.
        val_loader: a **validation** loader (carved from the training data; never the test split).
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
        options: the shared training options (seed of the global RNGs at a fresh start and of the latent noise, AMP,
            resume, checkpoint and validation intervals, NaN policy, MLflow tracking - experiment ``gms`` unless named
            -, extra handlers); default ``TrainingOptions()``.
        **deprecated: the old keywords of ``options`` (``amp=``, ``seed=``, ``tracking=``, ...), accepted for one
            release with a ``DeprecationWarning``.
    """
    options = resolve_training_options("create_gms_trainer", options, deprecated)
    seed, amp = options.seed, options.amp
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

    standard = options_training_handlers(
        output_dir,
        "gms",
        {
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
            "gms": segmenter.config,
        },
        options,
        "gms",
    )
    handlers, mlflow_handler = standard.handlers, standard.mlflow_handler
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
        options.val_interval,
        device,
        inferer=val_inferer,
        mlflow_handler=mlflow_handler,
        amp=amp,
        what="GMS segmenter",
    )
    if best_saver is not None:
        save_dict["best_saver"] = best_saver
    for h in options.extra_handlers:
        h.attach(trainer)
    return finish_trainer(
        trainer, output_dir, save_dict, train_loader, options, standard,
        evaluator=evaluator,
        best_saver=best_saver,
        lr_scheduler=scheduler,
        prepare_batch=prepare,
        loss=loss,
        scale_init=scale_init,
        model_path=model_path,
    )


def create_gms_autoencoder_trainer(
    autoencoder: nn.Module,
    train_loader: Any,
    max_epochs: int,
    output_dir: str | os.PathLike,
    num_classes: int,
    config: Mapping[str, Any],
    val_loader: Any | None = None,
    autoencoder_path: str | os.PathLike | None = None,
    mask_value_range: Sequence[float] | None = None,
    image_key: str = "image",
    label_key: str = "label",
    lr: float = 1e-3,
    kl_weight: float = 1e-6,
    adv_weight: float = 0.0,
    device: str | torch.device = "cpu",
    grid: bool = True,
    mask_foreground_weight: float = 1.0,
    use_masks: bool = True,
    options: TrainingOptions | None = None,
    patience: int | None = None,
    **kwargs: Any,
) -> AutoencoderKLTrainer:
    """Train a GMS tokenizer: a MONAI ``AutoencoderKL`` that reconstructs images and masks.

    Wraps :func:`~monai_genaug.engines.autoencoder.create_autoencoder_trainer` with a
    :class:`GMSAutoencoderPrepareBatch` (images + per-class mask images in every batch). With ``val_loader`` a
    ``SupervisedEvaluator`` computes the mask reconstruction Dice (``val_mask_dice``, the upper bound of GMS) every
    ``val_interval`` epochs and the best autoencoder is written to ``autoencoder_path``; when training completes
    the best weights are loaded back (or, without validation, the last weights are written) and the autoencoder is
    frozen, ready for :func:`create_gms_trainer`. The typed ``trainer.handles``
    (:class:`~monai_genaug.engines.options.TrainerHandles`) adds ``evaluator``, ``best_saver`` and ``model_path``
    (the chosen autoencoder file) to the autoencoder trainer's.

    Args:
        autoencoder: the ``AutoencoderKL`` (e.g. ``segmenter.autoencoder``; it is unfrozen while training).
        train_loader: loader of ``{"image", "label"}`` dicts.
        max_epochs: epochs.
        output_dir: folder of the checkpoint and reconstruction grids.
        num_classes: foreground classes K.
        config: :func:`~monai_genaug.methods.gms.gms_config` (or ``{"spatial_dims", "image_channels",
            "autoencoder"}``), stored with the weights.
        val_loader: validation loader (for the mask reconstruction Dice and the best-model choice).
        autoencoder_path: file of the chosen autoencoder; default ``output_dir/autoencoder.pt``.
        mask_value_range: (outside, inside) mask values; default ``config["mask_value_range"]`` or (0, 1).
        image_key: batch key of the images.
        label_key: batch key of the label maps.
        lr: Adam learning rate.
        kl_weight: KL weight.
        adv_weight: patch-adversarial weight (0: plain VAE, the cheap CPU default).
        device: device.
        grid: write reconstruction grids of a few images and masks (1- or 3-channel images only).
        mask_foreground_weight: weight of the inside voxels of the masks in the L1 loss
            (:class:`MaskForegroundWeightedL1Loss`); 1 is plain L1. Raise it (e.g. 20) when the structures are small.
        use_masks: add the per-class mask images of ``batch[label_key]`` to every training batch (the task's own
            tokenizer). False trains on ``batch[image_key]`` alone, so ``train_loader`` may hold unlabelled images
            (a wider tokenizer trained on every image available; put mask images among them with
            :func:`~monai_genaug.methods.gms.masks_to_images` when it should also see masks). The validation mask
            Dice still needs labelled ``val_loader`` batches.
        options: the shared training options (seed, AMP, resume, checkpoint and validation intervals - the mask
            Dice runs every ``options.val_interval`` epochs -, NaN policy, MLflow tracking - experiment
            ``gms_autoencoder`` unless named -, extra handlers); default ``TrainingOptions()``.
        patience: train until convergence: stop after this many validations in a row without a better validation
            mask Dice (Ignite ``EarlyStopping``; needs ``val_loader``); ``max_epochs`` is then the cap. None: train
            ``max_epochs``.
        kwargs: passed to ``create_autoencoder_trainer`` (``discriminator_layers``, ``perceptual_weights_path``...);
            the old keywords of ``options`` (``seed=``, ``resume=``, ``tracking=``...) are accepted for one release
            with a ``DeprecationWarning``.
    """
    legacy = {key: kwargs.pop(key) for key in TRAINING_OPTION_NAMES if key in kwargs}
    options = resolve_training_options("create_gms_autoencoder_trainer", options, legacy)
    if patience is not None and (int(patience) < 1 or val_loader is None):
        raise ValueError(
            f"patience={patience} stops the tokenizer's training on its validation mask Dice: it needs an integer "
            ">= 1 and a val_loader (bundle: 'ae_patience' null trains 'ae_epochs' epochs)."
        )
    output_dir = Path(output_dir)
    config = dict(config)
    image_channels = int(config["image_channels"])
    value_range = tuple(
        mask_value_range if mask_value_range is not None else config.get("mask_value_range", (0.0, 1.0))
    )
    path = Path(autoencoder_path) if autoencoder_path is not None else output_dir / "autoencoder.pt"
    prepare = GMSAutoencoderPrepareBatch(
        num_classes, image_channels, image_key, label_key, value_range, use_masks=use_masks
    )
    autoencoder.requires_grad_(True)
    device = torch.device(device)
    autoencoder.to(device)
    grid_images = None
    if grid and image_channels in (1, 3):
        first = next(iter(train_loader))
        sample = {image_key: _batch_item(first, image_key, "images")[:2]}
        if use_masks:
            sample[label_key] = _batch_item(first, label_key, "masks")[:2]
        x, _ = prepare(sample)
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
        extra.append(ValidationHandler(interval=options.val_interval, validator=evaluator, epoch_level=True))
    extra.append(KeepBestAutoencoder(autoencoder, saver, path, config))
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
        prepare_batch=prepare,  # images + masks; the default would take the masks as targets
        recon_loss_function=(
            MaskForegroundWeightedL1Loss(value_range, mask_foreground_weight) if mask_foreground_weight != 1.0 else None
        ),
        options=options.replace(
            experiment_name=options.experiment_name or "gms_autoencoder",
            extra_handlers=(*extra, *options.extra_handlers),
        ),
        **kwargs,
    )
    handles = trainer.handles
    if saver is not None:
        saver.trainer = trainer
        handles.checkpoint.save_dict["best_saver"] = saver
    if patience is not None:
        stopper = EarlyStopping(int(patience), lambda engine: float(engine.state.metrics["val_mask_dice"]), trainer)
        evaluator.add_event_handler(Events.COMPLETED, stopper)
        handles.checkpoint.save_dict["early_stopping"] = stopper  # a resumed run keeps its count
    handles.options, handles.evaluator, handles.best_saver, handles.model_path = options, evaluator, saver, path
    return trainer


# ----------------------------------------------------------------------------------------------------------------
# loss
# ----------------------------------------------------------------------------------------------------------------
class GMSLoss(nn.Module):
    """GMS loss: latent MSE plus Dice on the decoded masks, summed over the deep-supervision heads.

    ``L = w_rec * sum_l a_l * MSE(z_l, z_mask) + w_dice * sum_l a_l * Dice(D(z_l), mask)`` with the heads ``l`` of
    ``ds_levels`` for the MSE and of ``dice_levels`` for the Dice; ``D`` is the frozen decoder (see
    :meth:`GMSSegmenter.decode_masks`) and ``a_l`` the level weights. Dice is MONAI's ``DiceLoss`` with its defaults
    (no activation, background channel included, smooth 1e-5), applied to the K per-class soft masks against the
    one-hot foreground classes, as in the original (binary: one channel).

    Args:
        w_rec: weight of the latent MSE (paper: 1).
        w_dice: weight of the Dice loss (paper: 1).
        ds_levels: heads supervised in latent space; None for every head the mapping network built (its default
            heads are the paper's ``("level2", "level1", "out")``).
        dice_levels: heads supervised in image space (decoded); None for ``ds_levels``. ``("out",)`` saves two of
            three decoder passes (the cheaper 3D ablation of the spec).
        level_weights: per-head weights ``{head: a_l}`` (default 1 for all).
        dice_kwargs: extra arguments of ``monai.losses.DiceLoss``.

    ``forward(pred, target)`` takes ``pred = {"latents": {head: z}, "masks": {head: soft}}`` (from
    ``GMSSegmenter(..., return_heads=True)``) and ``target = {"latent": z_mask, "mask": (B, K, *spatial)}``; the
    terms of the last call are kept in :attr:`last_terms`.
    """

    def __init__(
        self,
        w_rec: float = 1.0,
        w_dice: float = 1.0,
        ds_levels: Sequence[str] | None = None,
        dice_levels: Sequence[str] | None = None,
        level_weights: Mapping[str, float] | None = None,
        dice_kwargs: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if w_rec < 0 or w_dice < 0 or (w_rec == 0 and w_dice == 0):
            raise ValueError(f"w_rec and w_dice must be >= 0 and not both 0, got {w_rec}, {w_dice}.")
        for name, levels in (("ds_levels", ds_levels), ("dice_levels", dice_levels)):
            if levels is not None and (isinstance(levels, str) or not levels):
                raise ValueError(f"{name} must be None or a non-empty sequence of head names, got {levels!r}.")
        self.w_rec = float(w_rec)
        self.w_dice = float(w_dice)
        self.ds_levels = tuple(ds_levels) if ds_levels is not None else None
        self.dice_levels = tuple(dice_levels) if dice_levels is not None else self.ds_levels
        self.level_weights = {k: float(v) for k, v in (level_weights or {}).items()}
        self.dice = DiceLoss(**dict(dice_kwargs or {}))
        self.last_terms: dict[str, float] = {}

    @property
    def decode_levels(self) -> tuple[str, ...] | None:
        """Heads whose decoded masks the loss needs: ``()`` when ``w_dice == 0``, None for "all heads"."""
        return self.dice_levels if self.w_dice > 0 else ()

    def forward(self, pred: Mapping[str, Mapping[str, torch.Tensor]], target: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Total loss of the heads ``pred`` against ``target`` (see the class docstring)."""
        if not isinstance(pred, Mapping) or "latents" not in pred:
            raise TypeError(
                "GMSLoss takes the heads dict of GMSSegmenter(x, latent_input=True, return_heads=True); use "
                "monai_genaug.methods.gms.GMSPrepareBatch with SupervisedTrainer."
            )
        latents, masks = pred["latents"], pred.get("masks", {})
        ds_levels = self.ds_levels if self.ds_levels is not None else tuple(latents)
        dice_levels = self.dice_levels if self.dice_levels is not None else ds_levels
        missing = [lvl for lvl in ds_levels if lvl not in latents]
        if self.w_dice > 0:
            missing += [lvl for lvl in dice_levels if lvl not in masks]
        if missing:
            raise ValueError(
                f"GMSLoss needs the heads {sorted(set(missing))}, the prediction has latents {list(latents)} and decoded "
                f"masks {list(masks)}; build the mapping network with these heads or change ds_levels/dice_levels."
            )
        weight = self.level_weights
        rec = sum(weight.get(lvl, 1.0) * nn.functional.mse_loss(latents[lvl], target["latent"]) for lvl in ds_levels)
        total = self.w_rec * rec
        terms = {"latent_mse": float(rec.detach())}
        if self.w_dice > 0:
            dice = sum(weight.get(lvl, 1.0) * self.dice(masks[lvl], target["mask"]) for lvl in dice_levels)
            total = total + self.w_dice * dice
            terms["dice"] = float(dice.detach())
        self.last_terms = terms
        return total
