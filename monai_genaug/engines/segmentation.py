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
"""Plain supervised segmentation on MONAI's Ignite engines: a UNet checkpoint format, a trainer and an evaluator.

The segmenters every method needs (AdaptDiff's source and fine-tuned segmenter, TTGA's segmenter, GMS's UNet
baseline) are ordinary MONAI networks returning ``K + 1`` logits (background first) trained on ``{"image", "label"}``
batches with label maps ``0..K``:

- :func:`segmenter_config` / :func:`build_segmenter` / :func:`save_segmenter` / :func:`load_segmenter`: a MONAI
  :class:`~monai.networks.nets.UNet` and one checkpoint file (weights + JSON config, loaded with
  ``weights_only=True``), 2D or 3D from the same call.
- :func:`check_label_map`: label maps are checked before they reach a loss (0/255 masks, soft masks, labels beyond
  ``K`` raise a clear error instead of training on garbage).
- :func:`create_segmentation_trainer`: a ready ``SupervisedTrainer`` with a **differentiable** Dice + cross-entropy
  (MONAI ``DiceCELoss(softmax=True, to_onehot_y=True)``), Adam(W), optional step / cosine LR schedule, NaN guard,
  stats, MLflow (SQLite store under the output folder), validation Dice with best-model saving (validation split,
  never the test split), a final model file and a resumable checkpoint.
- :func:`evaluate_segmentation`: mean and global foreground Dice of a network on a loader (any MONAI inferer, e.g.
  sliding window for 3D).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from monai.engines import SupervisedTrainer
from monai.handlers import LrScheduleHandler
from monai.inferers import Inferer, SimpleInferer
from monai.losses import DiceCELoss
from monai.metrics import DiceMetric
from monai.networks.nets import UNet
from torch import nn

from monai_genaug.engines.validation import (
    attach_model_selection,
    create_dice_evaluator,
)
from monai_genaug.engines.options import (
    HandledSupervisedTrainer,
    TrainingOptions,
    resolve_training_options,
)
from monai_genaug.engines.workflow import create_supervised_trainer, finish_trainer, options_training_handlers
from monai_genaug.utils.checkpoint import (
    register_checkpoint_format,
    atomic_save,
    check_state_dict_compatible,
    load_checkpoint,
    to_json_config,
)
from monai_genaug.utils.labels import check_label_map

__all__ = [
    "SEGMENTER_FORMAT",
    "SegmentationPrepareBatch",
    "build_segmenter",
    "create_segmentation_evaluator",
    "create_segmentation_trainer",
    "evaluate_segmentation",
    "load_segmenter",
    "save_segmenter",
    "segmenter_config",
    "segmenter_divisor",
]

logger = logging.getLogger(__name__)

SEGMENTER_FORMAT = register_checkpoint_format(
    "monai_genaug.Segmenter", "segmenter", "save segmenters with monai_genaug.engines.segmentation.save_segmenter()"
)


# ----------------------------------------------------------------------------------------------------------------
# the network and its checkpoint
# ----------------------------------------------------------------------------------------------------------------
def segmenter_config(
    spatial_dims: int = 2,
    in_channels: int = 1,
    num_classes: int = 1,
    channels: Sequence[int] = (16, 32, 64, 128),
    strides: Sequence[int] | None = None,
    num_res_units: int = 2,
    norm: str = "instance",
    dropout: float = 0.0,
) -> dict[str, Any]:
    """JSON config of a MONAI ``UNet`` segmenter with ``num_classes + 1`` output logits (background first).

    Args:
        spatial_dims: 2 or 3.
        in_channels: image channels.
        num_classes: foreground classes K (1 for binary segmentation).
        channels: feature channels per level.
        strides: down-sampling strides between levels (default 2 everywhere, ``len(channels) - 1`` values).
        num_res_units: residual units per block.
        norm: MONAI norm name (``"instance"``, ``"batch"``...).
        dropout: dropout probability.
    """
    if spatial_dims not in (2, 3):
        raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}.")
    if int(num_classes) < 1:
        raise ValueError(f"num_classes counts foreground classes and must be >= 1, got {num_classes}.")
    if int(in_channels) < 1:
        raise ValueError(f"in_channels must be >= 1, got {in_channels}.")
    channels = [int(c) for c in channels]
    if len(channels) < 2:
        raise ValueError(f"channels needs at least two levels, got {channels}.")
    strides = [2] * (len(channels) - 1) if strides is None else [int(s) for s in strides]
    if len(strides) != len(channels) - 1:
        raise ValueError(f"strides needs len(channels) - 1 = {len(channels) - 1} values, got {strides}.")
    return {
        "type": "UNet",
        "spatial_dims": int(spatial_dims),
        "in_channels": int(in_channels),
        "num_classes": int(num_classes),
        "channels": channels,
        "strides": strides,
        "num_res_units": int(num_res_units),
        "norm": str(norm),
        "dropout": float(dropout),
    }


def build_segmenter(config: Mapping[str, Any] | None = None, **kwargs: Any) -> UNet:
    """Build an untrained MONAI ``UNet`` from :func:`segmenter_config` (or its keyword arguments).

    The config is kept on the network as ``network.segmenter_config`` so :func:`save_segmenter` can store it.
    """
    cfg = dict(config) if config is not None else segmenter_config(**kwargs)
    if config is not None and kwargs:
        raise ValueError("give either a config or segmenter_config keyword arguments, not both.")
    if cfg.get("type", "UNet") != "UNet":
        raise ValueError(f"unknown segmenter type {cfg.get('type')!r}; only 'UNet' configs are supported.")
    try:
        net = UNet(
            spatial_dims=int(cfg["spatial_dims"]),
            in_channels=int(cfg["in_channels"]),
            out_channels=int(cfg["num_classes"]) + 1,
            channels=tuple(cfg["channels"]),
            strides=tuple(cfg["strides"]),
            num_res_units=int(cfg.get("num_res_units", 2)),
            norm=cfg.get("norm", "instance"),
            dropout=float(cfg.get("dropout", 0.0)),
        )
    except KeyError as e:
        raise ValueError(f"segmenter config lacks the key {e}; build it with segmenter_config().") from e
    net.segmenter_config = to_json_config(cfg)
    return net


def segmenter_divisor(network: nn.Module) -> int:
    """Spatial sizes a UNet built by :func:`build_segmenter` accepts must be multiples of this (1 if unknown)."""
    cfg = getattr(network, "segmenter_config", None)
    if not cfg:
        return 1
    d = 1
    for s in cfg["strides"]:
        d *= int(s)
    return d


def save_segmenter(
    network: nn.Module,
    path: str | os.PathLike,
    config: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``{"format", "config", "state_dict", "extra"}`` atomically (temp file + rename).

    Args:
        network: the segmenter.
        path: destination file.
        config: its config (default ``network.segmenter_config``, set by :func:`build_segmenter`).
        extra: JSON-like entries stored alongside (training data, metrics).
    """
    config = config if config is not None else getattr(network, "segmenter_config", None)
    if config is None:
        raise ValueError(
            "the segmenter has no config to store; build it with build_segmenter() or pass config=segmenter_config(...)."
        )
    state = {k: v.detach().cpu() for k, v in network.state_dict().items()}
    return atomic_save(
        {"format": SEGMENTER_FORMAT, "config": to_json_config(config), "state_dict": state, "extra": dict(extra or {})},
        path,
    )


def load_segmenter(
    path: str | os.PathLike, map_location: str | torch.device | None = "cpu", made_by: str | None = None
) -> UNet:
    """Rebuild a segmenter saved by :func:`save_segmenter` (``weights_only=True``); ``network.extra`` holds its extra.

    Args:
        path: the segmenter file.
        map_location: device the weights are loaded to.
        made_by: the command that writes this file, quoted when it is missing (bundle stages).

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file is not a segmenter checkpoint.
    """
    if made_by and not Path(path).is_file():
        raise FileNotFoundError(f"segmenter file '{path}' does not exist. It is written by: {made_by}")
    ckpt = load_checkpoint(path, map_location=map_location, expected_format=SEGMENTER_FORMAT)
    net = build_segmenter(ckpt["config"])
    check_state_dict_compatible(net, ckpt["state_dict"], name=str(path))
    net.load_state_dict(ckpt["state_dict"])
    net.extra = dict(ckpt.get("extra") or {})
    return net


# ----------------------------------------------------------------------------------------------------------------
# labels and batches
# ----------------------------------------------------------------------------------------------------------------
class SegmentationPrepareBatch:
    """``(images, label_map)`` from ``{"image", "label"}`` batches, with the labels checked (:func:`check_label_map`).

    Args:
        num_classes: foreground classes K.
        image_key: batch key of the images.
        label_key: batch key of the label maps.
    """

    def __init__(self, num_classes: int = 1, image_key: str = "image", label_key: str = "label") -> None:
        self.num_classes = int(num_classes)
        self.image_key = image_key
        self.label_key = label_key

    def __call__(self, batchdata: Mapping[str, Any], device=None, non_blocking: bool = False, **kwargs: Any):
        if not isinstance(batchdata, Mapping):
            raise TypeError(f"segmentation batches must be dicts, got {type(batchdata).__name__}.")
        for key, what in ((self.image_key, "images"), (self.label_key, "label maps")):
            if key not in batchdata:
                raise KeyError(
                    f"the batch has no '{key}' ({what}); its keys are {sorted(map(str, batchdata))}. Set image_key / "
                    "label_key to the batch keys."
                )
        images = torch.as_tensor(batchdata[self.image_key])
        if images.dtype == torch.float64:  # e.g. numpy float64 images: the networks are float32
            images = images.float()
        images = images.to(device=device, non_blocking=non_blocking, **kwargs)
        labels = check_label_map(
            torch.as_tensor(batchdata[self.label_key]), self.num_classes, name=f"batch['{self.label_key}']"
        )
        if tuple(labels.shape[2:]) != tuple(images.shape[2:]):
            raise ValueError(
                f"images {tuple(images.shape)} and label maps {tuple(labels.shape)} differ in spatial size; resize "
                "masks with nearest interpolation to the image size."
            )
        return images, labels.to(device=device, non_blocking=non_blocking)


# ----------------------------------------------------------------------------------------------------------------
# evaluator, trainer, evaluation
# ----------------------------------------------------------------------------------------------------------------
def create_segmentation_evaluator(
    network: nn.Module,
    val_loader: Any,
    num_classes: int = 1,
    device: str | torch.device = "cpu",
    inferer: Inferer | None = None,
    image_key: str = "image",
    label_key: str = "label",
    metric_name: str = "val_mean_dice",
    val_handlers: Sequence[Any] | None = None,
    amp: bool = False,
):
    """A ``SupervisedEvaluator`` with the mean foreground Dice of the argmax prediction as key metric.

    Args:
        network: returns ``num_classes + 1`` logits / probabilities.
        val_loader: loader of ``{image_key, label_key}`` dicts (label maps ``0..K``).
        num_classes: foreground classes K.
        device: device.
        inferer: MONAI inferer (default ``SimpleInferer``; ``SlidingWindowInferer`` for large volumes).
        image_key: batch key of the images.
        label_key: batch key of the label maps.
        metric_name: name of the key metric.
        val_handlers: more evaluator handlers.
        amp: automatic mixed precision (CUDA).
    """
    return create_dice_evaluator(
        network,
        val_loader,
        num_classes,
        device=device,
        inferer=inferer,
        prepare_batch=SegmentationPrepareBatch(num_classes, image_key, label_key),
        metric_name=metric_name,
        val_handlers=val_handlers,
        amp=amp,
    )


def create_segmentation_trainer(
    network: nn.Module,
    train_loader: Any,
    max_epochs: int,
    output_dir: str | os.PathLike,
    num_classes: int = 1,
    loss_function: nn.Module | None = None,
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    optimizer: torch.optim.Optimizer | None = None,
    lr_step_size: int | None = None,
    lr_gamma: float = 0.5,
    cosine_lr: bool = False,
    val_loader: Any | None = None,
    val_inferer: Inferer | None = None,
    model_path: str | os.PathLike | None = None,
    save_fn: Callable[[str], Any] | None = None,
    image_key: str = "image",
    label_key: str = "label",
    device: str | torch.device = "cpu",
    epoch_length: int | None = None,
    options: TrainingOptions | None = None,
    **deprecated: Any,
) -> HandledSupervisedTrainer:
    """Build a ready MONAI ``SupervisedTrainer`` for a segmenter returning ``num_classes + 1`` logits.

    Handlers, in firing order: NaN guard, stats, MLflow, LR schedule, validation (``val_mean_dice``; the best model
    is written to ``model_path``), final model (``model_path`` when there is no validation or it never ran),
    resumable checkpoint
    ``output_dir/checkpoint_last.pt``. The typed ``trainer.handles``
    (:class:`~monai_genaug.engines.options.TrainerHandles`) holds ``evaluator``, ``best_saver``, ``nan_guard``,
    ``mlflow_handler``, ``checkpoint``, ``lr_scheduler``, ``model_path``.

    Args:
        network: the segmenter (e.g. :func:`build_segmenter`), trained in place.
        train_loader: loader of ``{image_key, label_key}`` dicts; shuffle with a seeded ``torch.Generator`` for an
            exact resume.
        max_epochs: epochs (in total, counting resumed ones).
        output_dir: folder of the checkpoint, the default model file and the default MLflow store.
        num_classes: foreground classes K (labels ``0..K`` are checked every batch).
        loss_function: default ``DiceCELoss(softmax=True, to_onehot_y=True)`` (soft Dice on the softmax: it trains,
            unlike a Dice computed on the argmax).
        lr: learning rate of the default Adam(W).
        weight_decay: AdamW weight decay (0: plain Adam behaviour).
        optimizer: a ready optimiser instead.
        lr_step_size: multiply the LR by ``lr_gamma`` every this many epochs (AdaptDiff: 3 epochs, 0.5), or None.
        lr_gamma: factor of the step schedule.
        cosine_lr: cosine decay to 0 over the run, per iteration (ignored when ``lr_step_size`` is set).
        val_loader: a **validation** loader (never the test split); the best ``val_mean_dice`` model is saved.
        val_inferer: inferer of the validation evaluator.
        model_path: file of the best (or final) model; default ``output_dir/model.pt``.
        save_fn: called with the model path to write the model; default :func:`save_segmenter`.
        image_key: batch key of the images.
        label_key: batch key of the label maps.
        device: training device.
        epoch_length: iterations per epoch (default ``len(train_loader)``).
        options: the shared training options (seed of the global RNGs at a fresh start, AMP, resume, checkpoint and
            validation intervals, NaN policy, MLflow tracking - experiment ``segmentation`` unless named -, extra
            handlers); default ``TrainingOptions()``.
        **deprecated: the old keywords of ``options`` (``amp=``, ``seed=``, ``tracking=``, ...), accepted for one
            release with a ``DeprecationWarning``.
    """
    options = resolve_training_options("create_segmentation_trainer", options, deprecated)
    if max_epochs < 1:
        raise ValueError(f"max_epochs must be >= 1, got {max_epochs}.")
    if int(num_classes) < 1:
        raise ValueError(f"num_classes counts foreground classes and must be >= 1, got {num_classes}.")
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    device = torch.device(device)
    network = network.to(device)
    if optimizer is None:
        optimizer = torch.optim.AdamW(network.parameters(), lr=lr, weight_decay=weight_decay)
    loss_function = loss_function if loss_function is not None else DiceCELoss(softmax=True, to_onehot_y=True)
    model_path = Path(model_path) if model_path is not None else output_dir / "model.pt"
    save_fn = save_fn if save_fn is not None else (lambda p: save_segmenter(network, p))
    steps = int(epoch_length or len(train_loader))

    standard = options_training_handlers(
        output_dir,
        "segmentation",
        {
            "lr": optimizer.param_groups[0]["lr"],
            "weight_decay": weight_decay,
            "max_epochs": max_epochs,
            "batch_size": getattr(train_loader, "batch_size", None),
            "loss": type(loss_function).__name__,
            "lr_step_size": lr_step_size,
            "lr_gamma": lr_gamma,
            "cosine_lr": cosine_lr,
            "segmenter": getattr(network, "segmenter_config", None),
        },
        options,
        "segmentation",
    )
    handlers, mlflow_handler = standard.handlers, standard.mlflow_handler
    lr_scheduler = None
    if lr_step_size is not None:
        if lr_step_size < 1:
            raise ValueError(f"lr_step_size must be >= 1 epoch, got {lr_step_size}.")
        lr_scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=int(lr_step_size), gamma=float(lr_gamma))
        handlers.append(LrScheduleHandler(lr_scheduler, print_lr=False, epoch_level=True))
    elif cosine_lr:
        lr_scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, steps * max_epochs))
        handlers.append(LrScheduleHandler(lr_scheduler, print_lr=False, epoch_level=False))

    trainer = create_supervised_trainer(
        device,
        max_epochs,
        train_loader,
        network,
        optimizer,
        loss_function,
        SegmentationPrepareBatch(num_classes, image_key, label_key),
        handlers,
        epoch_length,
        amp=options.amp,
    )
    save_dict: dict[str, Any] = {"network": network, "optimizer": optimizer}
    if lr_scheduler is not None:
        save_dict["lr_scheduler"] = lr_scheduler
    evaluator, best_saver = attach_model_selection(
        trainer,
        network,
        save_fn,
        model_path,
        num_classes,
        val_loader,
        options.val_interval,
        device,
        inferer=val_inferer,
        prepare_batch=SegmentationPrepareBatch(num_classes, image_key, label_key),
        mlflow_handler=mlflow_handler,
        amp=options.amp,
        what="segmenter",
    )
    if best_saver is not None:
        save_dict["best_saver"] = best_saver
    for h in options.extra_handlers:
        h.attach(trainer)
    return finish_trainer(
        trainer, output_dir, save_dict, train_loader, options, standard,
        evaluator=evaluator,
        best_saver=best_saver,
        lr_scheduler=lr_scheduler,
        prepare_batch=trainer.prepare_batch,
        loss=loss_function,
        model_path=model_path,
    )


@torch.no_grad()
def evaluate_segmentation(
    network: nn.Module,
    loader: Any,
    num_classes: int = 1,
    device: str | torch.device = "cpu",
    inferer: Inferer | None = None,
    image_key: str = "image",
    label_key: str = "label",
    group_key: str | None = None,
) -> dict[str, Any]:
    """Foreground Dice of ``network`` (argmax of its ``K + 1`` outputs) on a labelled loader.

    Args:
        network: the segmenter.
        loader: loader of ``{image_key, label_key}`` dicts (an iterable of batches).
        num_classes: foreground classes K.
        device: device.
        inferer: MONAI inferer (default ``SimpleInferer``).
        image_key: batch key of the images.
        label_key: batch key of the label maps.
        group_key: batch key of a group id (e.g. the patient of 2D slices): Dice is then also computed per group
            over all its items (``"group_dice"``, the per-volume Dice of slice-wise predictions).

    Returns:
        ``{"mean_dice"`` (mean over items with foreground in the label, MONAI ``DiceMetric``), ``"global_dice"`` (all
        pixels of the set pooled), ``"per_class_global_dice"``, ``"num_items"``, and with ``group_key``
        ``"group_dice"`` {group: Dice} and ``"mean_group_dice"``}.
    """
    device = torch.device(device)
    inferer = inferer or SimpleInferer()
    was_training = network.training
    network = network.to(device).eval()
    prepare = SegmentationPrepareBatch(num_classes, image_key, label_key)
    metric = DiceMetric(include_background=False, reduction="mean", ignore_empty=True)
    inter = torch.zeros(num_classes, dtype=torch.float64)
    total = torch.zeros(num_classes, dtype=torch.float64)
    groups: dict[str, torch.Tensor] = {}
    n = 0
    classes = torch.arange(1, num_classes + 1, device=device)
    for batch in loader:
        images, labels = prepare(batch, device)
        pred = inferer(images, network).argmax(dim=1, keepdim=True)
        cls = classes.view(1, -1, *([1] * (pred.ndim - 2)))
        p1, l1 = (pred == cls).float(), (labels == cls).float()
        p_oh = torch.cat([1.0 - p1.amax(1, keepdim=True), p1], dim=1)
        l_oh = torch.cat([1.0 - l1.amax(1, keepdim=True), l1], dim=1)
        metric(p_oh, l_oh)
        dims = tuple(range(2, pred.ndim))
        i_b = (p1 * l1).sum(dims).double().cpu()
        t_b = (p1.sum(dims) + l1.sum(dims)).double().cpu()
        inter += i_b.sum(0)
        total += t_b.sum(0)
        if group_key is not None:
            ids = batch[group_key]
            ids = ids.tolist() if isinstance(ids, torch.Tensor) else list(ids)
            for j, g in enumerate(ids):
                acc = groups.setdefault(str(g), torch.zeros(2, num_classes, dtype=torch.float64))
                acc[0] += i_b[j]
                acc[1] += t_b[j]
        n += images.shape[0]
    network.train(was_training)
    if n == 0:
        raise ValueError("the evaluation loader is empty; there is nothing to evaluate.")
    agg = metric.aggregate()
    mean_dice = float(agg.item()) if agg.numel() else float("nan")
    per_class = torch.where(total > 0, 2 * inter / total.clamp_min(1e-12), torch.ones_like(total))
    out: dict[str, Any] = {
        "mean_dice": mean_dice,
        "global_dice": float(per_class.mean()),
        "per_class_global_dice": [float(v) for v in per_class],
        "num_items": n,
    }
    if group_key is not None:
        gd = {
            g: float(torch.where(a[1] > 0, 2 * a[0] / a[1].clamp_min(1e-12), torch.ones_like(a[1])).mean())
            for g, a in sorted(groups.items())
        }
        out["group_dice"] = gd
        out["mean_group_dice"] = float(sum(gd.values()) / len(gd))
    return out
