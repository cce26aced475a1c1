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
"""Downstream learners chosen once for every method, their training loop and their per-case scores.

Classification: :class:`GlobalPoolCNN` (default; convolution blocks, global mean + max pooling, a linear head: the
design of the package's sequence classifier, translation-invariant, which small training sets need), or MONAI's
``DenseNet121`` / ``EfficientNetBN`` where a GPU makes them affordable. Segmentation: MONAI ``UNet``
(configured as :func:`monai_genaug.engines.segmentation.build_segmenter` does). One training loop gives every
variant the same iterations, batch size, optimiser, schedule and augmentation.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from monai.losses import DiceCELoss
from monai.networks.blocks import Convolution
from monai.networks.nets import UNet
from torch import nn


__all__ = [
    "CLASSIFICATION",
    "SEGMENTATION",
    "GlobalPoolCNN",
    "case_scores",
    "classification_learner",
    "predict",
    "segmentation_learner",
    "train_learner",
]

CLASSIFICATION = "classification"
SEGMENTATION = "segmentation"
_TASKS = (CLASSIFICATION, SEGMENTATION)


def _check_task(task: str) -> str:
    if task not in _TASKS:
        raise ValueError(f"task must be one of {_TASKS}, got {task!r}.")
    return task


class GlobalPoolCNN(nn.Module):
    """A small classifier: MONAI ``Convolution`` blocks (group norm, SiLU) with 2x max-pooling between them, global
    mean + max pooling, a linear head. Inputs ``(B, C, *spatial)`` with ``spatial_dims`` spatial axes; with
    ``frames=True`` a 2D network is applied to every frame of ``(B, C, F, H, W)`` clips and the frame features are
    averaged (a sequence classifier).

    Args:
        spatial_dims: spatial dimensions of the convolutions (2 or 3).
        in_channels: input channels.
        num_classes: output logits.
        channels: feature channels per block.
        norm_num_groups: group-norm groups (must divide every entry of ``channels``).
        frames: treat a 5D input as 2D frames (``spatial_dims`` must be 2).
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        num_classes: int,
        channels: Sequence[int] = (16, 32, 64),
        norm_num_groups: int = 4,
        frames: bool = False,
    ) -> None:
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}.")
        if frames and spatial_dims != 2:
            raise ValueError("frames=True applies a 2D network per frame; set spatial_dims=2.")
        if any(int(c) % int(norm_num_groups) for c in channels):
            raise ValueError(f"norm_num_groups {norm_num_groups} must divide every entry of channels {channels}.")
        pool = nn.MaxPool2d if spatial_dims == 2 else nn.MaxPool3d
        layers: list[nn.Module] = []
        c = int(in_channels)
        for i, out in enumerate(channels):
            norm = ("GROUP", {"num_groups": int(norm_num_groups)})
            layers.append(Convolution(spatial_dims, c, int(out), kernel_size=3, act="SWISH", norm=norm))
            if i < len(channels) - 1:
                layers.append(pool(2))
            c = int(out)
        self.spatial_dims = int(spatial_dims)
        self.frames = bool(frames)
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(2 * c, int(num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        expected = self.spatial_dims + 2 + int(self.frames)
        if x.ndim != expected:
            raise ValueError(f"input must have {expected} dimensions, got shape {tuple(x.shape)}.")
        if self.frames:
            b, c, nf = x.shape[:3]
            x = x.transpose(1, 2).reshape(b * nf, c, *x.shape[3:])
        y = self.features(x)
        dims = tuple(range(2, y.ndim))
        y = torch.cat([y.mean(dims), y.amax(dims)], dim=1)
        if self.frames:
            y = y.reshape(b, nf, -1).mean(1)
        return self.head(y)


def classification_learner(
    spatial_dims: int,
    in_channels: int,
    num_classes: int,
    kind: str = "cnn",
    channels: Sequence[int] = (16, 32, 64),
    frames: bool = False,
) -> nn.Module:
    """A fresh, untrained downstream classifier.

    Args:
        spatial_dims: 2 or 3.
        in_channels: input channels.
        num_classes: classes.
        kind: ``"cnn"`` (:class:`GlobalPoolCNN`), ``"densenet121"`` (MONAI ``DenseNet121``) or ``"efficientnet-b0"``
            (MONAI ``EfficientNetBN``, no pre-trained weights).
        channels: feature channels of the ``"cnn"``.
        frames: ``"cnn"`` only: classify ``(C, F, H, W)`` clips frame by frame.
    """
    if kind == "cnn":
        return GlobalPoolCNN(spatial_dims, in_channels, num_classes, channels, frames=frames)
    if frames:
        raise ValueError(f"frames=True needs kind='cnn', got {kind!r}.")
    if kind == "densenet121":
        from monai.networks.nets import DenseNet121

        return DenseNet121(spatial_dims=spatial_dims, in_channels=in_channels, out_channels=num_classes)
    if kind.startswith("efficientnet-"):
        from monai.networks.nets import EfficientNetBN

        return EfficientNetBN(
            kind, pretrained=False, spatial_dims=spatial_dims, in_channels=in_channels, num_classes=num_classes
        )
    raise ValueError(f"kind must be 'cnn', 'densenet121' or 'efficientnet-b<N>', got {kind!r}.")


def segmentation_learner(
    spatial_dims: int, in_channels: int, num_classes: int = 1, channels: Sequence[int] = (16, 32, 64, 128)
) -> nn.Module:
    """A fresh MONAI ``UNet`` with ``num_classes + 1`` outputs (background first), stride 2 between levels, 2 residual
    units per block, instance norm (the configuration of the package's segmenters)."""
    return UNet(
        spatial_dims=spatial_dims,
        in_channels=in_channels,
        out_channels=int(num_classes) + 1,
        channels=tuple(int(c) for c in channels),
        strides=(2,) * (len(channels) - 1),
        num_res_units=2,
        norm="instance",
    )


def _augment(x: torch.Tensor, y: torch.Tensor | None, rng: torch.Generator) -> tuple[torch.Tensor, Any]:
    """One random rot90 (square images only) and flip of the last two axes per batch, applied to the images and,
    when given, the label maps alike."""
    k = int(torch.randint(0, 4, (1,), generator=rng)) if x.shape[-1] == x.shape[-2] else 0
    flip = bool(torch.rand(1, generator=rng) < 0.5)
    out = []
    for t in (x, y):
        if t is not None:
            t = torch.rot90(t, k, dims=(-2, -1))
            t = t.flip(-1) if flip else t
        out.append(t)
    return out[0], out[1]


def train_learner(
    network: nn.Module,
    images: torch.Tensor,
    targets: torch.Tensor,
    task: str,
    iterations: int = 300,
    batch_size: int = 16,
    lr: float = 3e-3,
    weight_decay: float = 1e-4,
    seed: int = 0,
    augment: bool = True,
    device: str | torch.device = "cpu",
) -> nn.Module:
    """Train ``network`` for exactly ``iterations`` AdamW steps (cosine decay) on batches drawn with replacement;
    return it in eval mode.

    Args:
        network: a fresh learner.
        images: ``(N, C, ...)`` training images.
        targets: ``(N,)`` classes (classification) or ``(N, 1, ...)`` label maps with values ``0..K``
            (segmentation).
        task: ``"classification"`` (cross-entropy) or ``"segmentation"`` (Dice + cross-entropy over the batch).
        iterations: optimiser steps (the same for every variant: more data does not mean more steps).
        batch_size: items per step.
        lr: learning rate.
        weight_decay: AdamW weight decay.
        seed: seed of the batches and the augmentation (set the initialisation seed before building the network).
        augment: a random rot90 (square images) and flip of the last two axes per batch.
        device: device.
    """
    _check_task(task)
    if images.shape[0] == 0:
        raise ValueError("the training set is empty.")
    if targets.shape[0] != images.shape[0]:
        raise ValueError(f"{images.shape[0]} images but {targets.shape[0]} targets; give one target per image.")
    device = torch.device(device)
    network = network.to(device).train()
    opt = torch.optim.AdamW(network.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(int(iterations), 1))
    rng = torch.Generator().manual_seed(int(seed))
    seg_loss = DiceCELoss(to_onehot_y=True, softmax=True, batch=True) if task == SEGMENTATION else None
    n = images.shape[0]
    for _ in range(int(iterations)):
        idx = torch.randint(0, n, (min(int(batch_size), n),), generator=rng)
        x, y = images[idx].float(), targets[idx]
        if augment:
            x, y_aug = _augment(x, y if task == SEGMENTATION else None, rng)
            y = y_aug if task == SEGMENTATION else y
        x = x.to(device)
        if task == CLASSIFICATION:
            loss = F.cross_entropy(network(x), y.long().reshape(-1).to(device))
        else:
            loss = seg_loss(network(x), y.float().to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    return network.eval()


@torch.no_grad()
def predict(
    network: nn.Module, images: torch.Tensor, batch_size: int = 64, device: str | torch.device = "cpu"
) -> torch.Tensor:
    """Logits of ``network`` on ``images`` in batches (eval mode, on the CPU)."""
    device = torch.device(device)
    was_training = network.training
    network = network.to(device).eval()
    out = [network(images[i : i + batch_size].float().to(device)).cpu() for i in range(0, images.shape[0], batch_size)]
    network.train(was_training)
    return torch.cat(out)


def case_scores(logits: torch.Tensor, targets: torch.Tensor, task: str) -> torch.Tensor:
    """Per-case scores: 1 / 0 for a right / wrong class (classification), or the foreground Dice of the argmax label
    map, averaged over the classes present in the prediction or the truth (segmentation; 1 when both are empty).

    Args:
        logits: ``(N, K)`` or ``(N, K + 1, ...)``.
        targets: ``(N,)`` classes or ``(N, 1, ...)`` label maps.
        task: ``"classification"`` or ``"segmentation"``.
    """
    _check_task(task)
    if task == CLASSIFICATION:
        return (logits.argmax(1) == targets.long().reshape(-1)).float()
    pred = logits.argmax(1)
    truth = targets.long().reshape(pred.shape)
    scores = []
    for p, t in zip(pred, truth):
        per_class = []
        for k in range(1, logits.shape[1]):
            pk, tk = p == k, t == k
            total = int(pk.sum() + tk.sum())
            if total:
                per_class.append(2.0 * float((pk & tk).sum()) / total)
        scores.append(sum(per_class) / len(per_class) if per_class else 1.0)
    return torch.tensor(scores)
