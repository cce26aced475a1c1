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
"""Classifier training on MONAI's ``SupervisedTrainer``: the noisy-latent classifier of classifier guidance and plain
image classifiers (the downstream task of synthetic augmentation).

**Noisy-latent classifier** (Dhariwal & Nichol, arXiv:2105.05233; HistoDiffusion, Ye et al., arXiv:2308.04020).
:class:`NoisyLatentPrepareBatch` encodes each batch with the frozen autoencoder of a ``LatentGenerator`` (posterior
sample x scale factor, as the latent diffusion model sees it), draws one timestep per item and noises the latent with
the generator's scheduler, and returns ``(z_t, label, (t,), {})``; ``SupervisedTrainer(network=classifier,
loss_function=CrossEntropyLoss())`` then trains ``classifier(z_t, t)``. With ``noised=False`` every timestep is 0 and
no noise is added: the released HistoDiffusion classifier, which guidance nevertheless queries at large t. The
default, ``noised=True``, is the guided-diffusion recipe whose gradients are meaningful at every noise level.
:func:`create_noisy_classifier_trainer` adds the handlers (NaN guard, stats, MLflow, linear LR annealing, validation
accuracy on noisy latents, final file, resumable checkpoint).

**Image classifiers.** :func:`create_classifier_trainer` trains any ``(B, C, *spatial) -> logits`` network on dict
batches (``image``, ``label``); :func:`evaluate_classifier` returns accuracy, balanced accuracy, macro F1 and the
confusion matrix.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ignite.engine import Events
from ignite.metrics import Accuracy
from monai.engines import SupervisedEvaluator, SupervisedTrainer
from monai.handlers import LrScheduleHandler
from monai.inferers import SimpleInferer
from torch import nn

from monai_genaug.handlers.savers import FinalClassifierSaver
from monai_genaug.handlers.nan_guard import NaNGuard
from monai_genaug.engines.prepare_batch import LatentDiffusionPrepareBatch
from monai_genaug.handlers.validation import PeriodicValidation
from monai_genaug.engines.options import (
    HandledSupervisedTrainer,
    TrainingOptions,
    resolve_training_options,
)
from monai_genaug.engines.workflow import create_supervised_trainer, finish_trainer, options_training_handlers
from monai_genaug.evaluation.statistics import confusion_metrics

__all__ = [
    "ClassificationPrepareBatch",
    "NoisyLatentPrepareBatch",
    "confusion_metrics",
    "create_classifier_trainer",
    "create_noisy_classifier_trainer",
    "evaluate_classifier",
    "noisy_latent_accuracy",
]

logger = logging.getLogger(__name__)


def _labels(batchdata: Mapping[str, Any], label_key: str, device: Any, non_blocking: bool) -> torch.Tensor:
    if label_key not in batchdata:
        raise KeyError(
            f"the batch has no label key '{label_key}' (keys: {sorted(batchdata)}); set label_key to the batch key of "
            "the integer class index."
        )
    labels = torch.as_tensor(batchdata[label_key])
    if labels.ndim > 1:  # (B, 1) or one-hot-free (B, 1, ...) -> (B,)
        labels = labels.reshape(labels.shape[0], -1)[:, 0]
    if labels.is_floating_point() and not torch.equal(labels, labels.round()):
        raise ValueError(f"labels under '{label_key}' must be integer class indices, got {labels.tolist()}.")
    return labels.long().to(device=device, non_blocking=non_blocking)


class NoisyLatentPrepareBatch(LatentDiffusionPrepareBatch):
    """Turn ``{image, label}`` batches into ``(z_t, label, (t,), {})`` for a noisy-latent classifier.

    Args:
        generator: the ``LatentGenerator`` whose autoencoder, scale factor and scheduler define the latents and noise.
        noised: draw ``t ~ U{0, ..., max_timestep}`` and noise the latents (True, default) or use clean latents at
            ``t = 0`` (False, the released HistoDiffusion classifier).
        label_key: batch key of the integer class index.
        image_key: batch key of the images.
        latent_key: batch key of pre-computed (scaled) latents, used instead of encoding when present.
        sample_posterior: encode with a posterior sample (as the original) or the posterior mean (default). With a
            well-trained autoencoder the two coincide; with a briefly trained one the posterior noise can swamp the
            class signal.
        seed: seed of the generator drawing timesteps, noise and posterior samples.
        max_timestep: largest timestep drawn (default ``T - 1``).
    """

    def __init__(
        self,
        generator: nn.Module,
        noised: bool = True,
        label_key: str = "label",
        image_key: str = "image",
        latent_key: str = "latent",
        sample_posterior: bool = False,
        seed: int = 0,
        max_timestep: int | None = None,
    ) -> None:
        super().__init__(
            generator, image_key=image_key, latent_key=latent_key, sample_posterior=sample_posterior, seed=seed
        )
        if max_timestep is not None and not 0 <= int(max_timestep) < self.num_train_timesteps:
            raise ValueError(f"max_timestep must be in [0, {self.num_train_timesteps - 1}], got {max_timestep}.")
        self.noised = bool(noised)
        self.label_key = label_key
        self.max_timestep = self.num_train_timesteps - 1 if max_timestep is None else int(max_timestep)

    def get_timesteps(self, images: torch.Tensor) -> torch.Tensor:
        """Uniform timesteps in ``[0, max_timestep]`` (``noised``) or zeros."""
        if not self.noised:
            return torch.zeros(images.shape[0], dtype=torch.long, device=images.device)
        return torch.randint(0, self.max_timestep + 1, (images.shape[0],), generator=self.rng).to(images.device)

    def __call__(
        self,
        batchdata: Mapping[str, Any],
        device: str | torch.device | None = None,
        non_blocking: bool = False,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, torch.Tensor, tuple, dict]:
        """Return ``(z_t, labels, (timesteps,), {})`` on ``device``."""
        if not isinstance(batchdata, Mapping):
            raise TypeError(
                f"NoisyLatentPrepareBatch expects a dict batch with '{self.image_key}' and '{self.label_key}', "
                f"got {type(batchdata).__name__}."
            )
        labels = _labels(batchdata, self.label_key, device, non_blocking)
        z0 = self.get_latents(batchdata, device, non_blocking, **kwargs)
        timesteps = self.get_timesteps(z0)
        if self.noised:
            z = self.scheduler.add_noise(original_samples=z0, noise=self.get_noise(z0), timesteps=timesteps)
        else:
            z = z0
        return z, labels, (timesteps,), {}


class ClassificationPrepareBatch:
    """``(image, label)`` from dict batches for plain image classifiers (labels as a ``(B,)`` long tensor).

    Args:
        image_key: batch key of the images.
        label_key: batch key of the integer class index.
    """

    def __init__(self, image_key: str = "image", label_key: str = "label") -> None:
        self.image_key = image_key
        self.label_key = label_key

    def __call__(self, batchdata: Mapping[str, Any], device=None, non_blocking: bool = False, **kwargs: Any):
        if not isinstance(batchdata, Mapping) or self.image_key not in batchdata:
            keys = sorted(batchdata) if isinstance(batchdata, Mapping) else type(batchdata).__name__
            raise KeyError(f"the batch has no image key '{self.image_key}' (got {keys}).")
        images = torch.as_tensor(batchdata[self.image_key]).to(device=device, non_blocking=non_blocking, **kwargs)
        return images, _labels(batchdata, self.label_key, device, non_blocking)


def _pred_label(output: Mapping[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    return output["pred"], output["label"]


def create_noisy_classifier_trainer(
    classifier: nn.Module,
    generator: nn.Module,
    train_loader: Any,
    max_epochs: int,
    output_dir: str | os.PathLike,
    lr: float = 3e-4,
    weight_decay: float = 0.05,
    anneal_lr: bool = True,
    noised: bool = True,
    device: str | torch.device = "cpu",
    epoch_length: int | None = None,
    image_key: str = "image",
    label_key: str = "label",
    latent_key: str = "latent",
    sample_posterior: bool = False,
    max_timestep: int | None = None,
    val_loader: Any | None = None,
    class_names: Sequence[str] | None = None,
    options: TrainingOptions | None = None,
    **deprecated: Any,
) -> HandledSupervisedTrainer:
    """Build a ready ``SupervisedTrainer`` for a noisy-latent classifier on a frozen ``LatentGenerator``'s latents.

    Loss: cross-entropy of ``classifier(z_t, t)``. Optimiser: AdamW(lr, weight_decay), linearly annealed to 0 over
    the run when ``anneal_lr`` (HistoDiffusion: lr 5e-5, weight decay 0.05). Handlers: NaN guard, stats, MLflow,
    LR schedule, validation (``val_accuracy`` on noisy validation latents with fixed-seed noise and timesteps), the
    final file ``output_dir/classifier_final.pt`` (with ``class_names``, ``noised`` and the generator's
    ``num_train_timesteps`` in its extra dict) and a resumable checkpoint ``output_dir/checkpoint_last.pt``.
    The typed ``trainer.handles`` (:class:`~monai_genaug.engines.options.TrainerHandles`) holds ``nan_guard``,
    ``checkpoint``, ``mlflow_handler``, ``final_saver``, ``evaluator``, ``prepare_batch``.

    Args:
        classifier: e.g. :class:`~monai_genaug.networks.noisy_classifier.NoisyLatentClassifier`; its ``in_channels``
            must equal the generator's latent channels.
        generator: the trained ``LatentGenerator`` (autoencoder and scheduler are used, nothing is updated).
        train_loader: loader of dicts with ``image_key`` (or ``latent_key``) and ``label_key``.
        max_epochs: epochs (in total, counting resumed ones).
        output_dir: folder of the checkpoint, final file and default MLflow store.
        lr: AdamW learning rate.
        weight_decay: AdamW weight decay.
        anneal_lr: linear decay of the learning rate to 0 over ``max_epochs * epoch_length`` iterations.
        noised: train on noisy latents at random timesteps (True) or clean latents at t = 0 (False, original).
        device: training device.
        epoch_length: iterations per epoch (default ``len(train_loader)``).
        image_key: batch key of the images.
        label_key: batch key of the class index.
        latent_key: batch key of pre-computed scaled latents.
        sample_posterior: encode with posterior samples (the original) or means (default, see
            :class:`NoisyLatentPrepareBatch`).
        max_timestep: largest training timestep of noised training (default ``T - 1``).
        val_loader: validation loader (``val_accuracy`` every ``options.val_interval`` epochs, noised like training).
        class_names: class names stored with the final weights.
        options: the shared training options (seed of the global RNGs at a fresh start and of the timestep / noise draws
            - validation: ``seed + 1`` -, AMP, resume, checkpoint and validation intervals, NaN policy, MLflow tracking,
            extra handlers); default ``TrainingOptions()``.
        **deprecated: the old keywords of ``options`` (``amp=``, ``seed=``, ``tracking=``, ...), accepted for one
            release with a ``DeprecationWarning``.

    Raises:
        ValueError: bad argument values, or the classifier's input channels differ from the generator's latents.
    """
    options = resolve_training_options("create_noisy_classifier_trainer", options, deprecated)
    seed, amp = options.seed, options.amp
    if max_epochs < 1:
        raise ValueError(f"max_epochs must be >= 1, got {max_epochs}.")
    if lr <= 0 or weight_decay < 0:
        raise ValueError(f"lr must be > 0 and weight_decay >= 0, got lr={lr}, weight_decay={weight_decay}.")
    latent_channels = getattr(generator, "latent_channels", None)
    clf_channels = getattr(classifier, "in_channels", None)
    if latent_channels is not None and clf_channels is not None and int(latent_channels) != int(clf_channels):
        raise ValueError(
            f"the classifier takes {clf_channels} input channels but the generator's latents have {latent_channels}; "
            "build the classifier with in_channels=generator.latent_channels."
        )
    num_classes = getattr(classifier, "num_classes", None)
    if class_names is not None and num_classes is not None and len(class_names) != int(num_classes):
        raise ValueError(
            f"class_names has {len(class_names)} entries but the classifier has {num_classes} classes: "
            f"{list(class_names)}."
        )
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    device = torch.device(device)
    classifier = classifier.to(device)
    generator = generator.to(device).eval()  # frozen: latents are encoded under no_grad
    optimizer = torch.optim.AdamW(classifier.parameters(), lr=lr, weight_decay=weight_decay)
    prepare_batch = NoisyLatentPrepareBatch(
        generator,
        noised=noised,
        label_key=label_key,
        image_key=image_key,
        latent_key=latent_key,
        sample_posterior=sample_posterior,
        seed=seed,
        max_timestep=max_timestep,
    )
    iterations = max_epochs * int(epoch_length if epoch_length is not None else len(train_loader))
    lr_scheduler = None
    if anneal_lr:
        lr_scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda=_LinearAnneal(max(iterations, 1)))

    standard = options_training_handlers(
        output_dir,
        "noisy_latent_classifier",
        {
            "lr": lr,
            "weight_decay": weight_decay,
            "anneal_lr": anneal_lr,
            "noised": noised,
            "max_epochs": max_epochs,
            "batch_size": getattr(train_loader, "batch_size", None),
            "sample_posterior": sample_posterior,
            "classifier": getattr(classifier, "config", {}),
            "class_names": list(class_names) if class_names is not None else None,
        },
        options,
        "monai_genaug",
    )
    handlers, mlflow_handler = standard.handlers, standard.mlflow_handler
    if lr_scheduler is not None:
        handlers.append(LrScheduleHandler(lr_scheduler, print_lr=False, epoch_level=False))

    evaluator = None
    if val_loader is not None:
        val_prepare = NoisyLatentPrepareBatch(
            generator,
            noised=noised,
            label_key=label_key,
            image_key=image_key,
            latent_key=latent_key,
            sample_posterior=False,
            seed=seed + 1,
            max_timestep=max_timestep,
        )
        evaluator = SupervisedEvaluator(
            device=device,
            val_data_loader=val_loader,
            network=classifier,
            prepare_batch=val_prepare,
            inferer=SimpleInferer(),
            key_val_metric={"val_accuracy": Accuracy(output_transform=_pred_label)},
            amp=amp,
            decollate=False,
        )
        evaluator.add_event_handler(Events.STARTED, lambda _: val_prepare.reset())
        handlers.append(PeriodicValidation(evaluator, options.val_interval, mlflow_handler))
    extra = {
        "class_names": list(class_names) if class_names is not None else None,
        "noised": bool(noised),
        "num_train_timesteps": int(prepare_batch.num_train_timesteps),
        "scale_factor": float(getattr(generator, "scale_factor", 1.0)),
    }
    final_saver = FinalClassifierSaver(classifier, output_dir, extra=extra)
    handlers.append(final_saver)
    handlers.extend(options.extra_handlers)

    trainer = create_supervised_trainer(
        device,
        max_epochs,
        train_loader,
        classifier,
        optimizer,
        nn.CrossEntropyLoss(),
        prepare_batch,
        handlers,
        epoch_length,
        amp=amp,
    )
    save_dict: dict[str, Any] = {"classifier": classifier, "optimizer": optimizer, "prepare_batch": prepare_batch}
    if lr_scheduler is not None:
        save_dict["lr_scheduler"] = lr_scheduler
    return finish_trainer(
        trainer, output_dir, save_dict, train_loader, options, standard,
        final_saver=final_saver,
        evaluator=evaluator,
        lr_scheduler=lr_scheduler,
        prepare_batch=prepare_batch,
    )


class _LinearAnneal:
    """``1 - step / total`` (picklable, unlike a lambda)."""

    def __init__(self, total: int) -> None:
        self.total = total

    def __call__(self, step: int) -> float:
        return max(0.0, 1.0 - step / self.total)


def create_classifier_trainer(
    network: nn.Module,
    train_loader: Any,
    max_epochs: int,
    lr: float = 1e-3,
    weight_decay: float = 1e-4,
    device: str | torch.device = "cpu",
    epoch_length: int | None = None,
    image_key: str = "image",
    label_key: str = "label",
    label_smoothing: float = 0.0,
    cosine_lr: bool = True,
    seed: int | None = 0,
    handlers: Sequence[Any] | None = None,
    amp: bool = False,
) -> SupervisedTrainer:
    """A plain ``SupervisedTrainer`` for an image classifier ``network(images) -> logits`` (the downstream model).

    Args:
        network: any classifier, e.g. ``monai.networks.nets.DenseNet121`` or a small ``Classifier``.
        train_loader: loader of dicts with ``image_key`` and ``label_key``.
        max_epochs: epochs.
        lr: AdamW learning rate.
        weight_decay: AdamW weight decay.
        device: device.
        epoch_length: iterations per epoch (default ``len(train_loader)``).
        image_key: batch key of the images.
        label_key: batch key of the class index.
        label_smoothing: label smoothing of the cross-entropy.
        cosine_lr: cosine decay of the learning rate over the run (per iteration).
        seed: seed of the global RNGs (``monai.utils.set_determinism``) when training starts; None leaves them.
        handlers: extra handlers.
        amp: automatic mixed precision (CUDA).
    """
    if max_epochs < 1:
        raise ValueError(f"max_epochs must be >= 1, got {max_epochs}.")
    device = torch.device(device)
    network = network.to(device)
    optimizer = torch.optim.AdamW(network.parameters(), lr=lr, weight_decay=weight_decay)
    all_handlers: list[Any] = [NaNGuard()]
    if cosine_lr:
        total = max_epochs * int(epoch_length if epoch_length is not None else len(train_loader))
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(total, 1))
        all_handlers.append(LrScheduleHandler(sched, print_lr=False, epoch_level=False))
    all_handlers.extend(handlers or [])
    trainer = create_supervised_trainer(
        device,
        max_epochs,
        train_loader,
        network,
        optimizer,
        nn.CrossEntropyLoss(label_smoothing=label_smoothing),
        ClassificationPrepareBatch(image_key, label_key),
        all_handlers,
        epoch_length,
        amp=amp,
    )
    if seed is not None:
        from monai.utils import set_determinism

        trainer.add_event_handler(Events.STARTED, lambda _: set_determinism(seed=seed))
    return trainer


@torch.no_grad()
def evaluate_classifier(
    network: nn.Module,
    loader: Any,
    num_classes: int,
    device: str | torch.device = "cpu",
    image_key: str = "image",
    label_key: str = "label",
) -> dict[str, Any]:
    """Accuracy, balanced accuracy (mean per-class recall), macro F1 and confusion matrix of ``network`` on ``loader``.

    Args:
        network: ``network(images) -> logits``.
        loader: loader of dicts with ``image_key`` and ``label_key``.
        num_classes: number of classes (rows / columns of the confusion matrix).
        device: device.
        image_key: batch key of the images.
        label_key: batch key of the class index.

    Returns:
        ``{"accuracy", "balanced_accuracy", "macro_f1", "num_samples", "confusion"}`` (confusion: rows = truth).
    """
    device = torch.device(device)
    network = network.to(device)
    was_training = network.training
    network.eval()
    prepare = ClassificationPrepareBatch(image_key, label_key)
    confusion = np.zeros((num_classes, num_classes), dtype=np.int64)
    for batch in loader:
        images, labels = prepare(batch, device)
        pred = network(images).argmax(dim=1)
        if labels.numel() and (int(labels.max()) >= num_classes or int(labels.min()) < 0):
            raise ValueError(f"labels {sorted(set(labels.tolist()))} are outside [0, {num_classes - 1}].")
        np.add.at(confusion, (labels.cpu().numpy(), pred.cpu().numpy()), 1)
    network.train(was_training)
    return confusion_metrics(confusion)


_confusion_metrics = confusion_metrics  # the name the tests and older callers use (moved to evaluation.statistics)


@torch.no_grad()
def noisy_latent_accuracy(
    classifier: nn.Module,
    generator: nn.Module,
    loader: Any,
    timesteps: Sequence[int] = (0, 250, 500, 750),
    device: str | torch.device = "cpu",
    image_key: str = "image",
    label_key: str = "label",
    seed: int = 0,
    balanced: bool = False,
) -> dict[int, float]:
    """Accuracy of a noisy-latent classifier at fixed noise levels: ``{t: accuracy}`` (posterior-mean latents).

    Args:
        classifier: ``classifier(z_t, t) -> logits``.
        generator: the ``LatentGenerator`` giving latents and the noise schedule.
        loader: loader of dicts with ``image_key`` and ``label_key``.
        timesteps: noise levels to test.
        device: device.
        image_key: batch key of the images.
        label_key: batch key of the class index.
        seed: seed of the noise.
        balanced: return the balanced accuracy (mean recall over the classes present), which is not fooled by a
            majority-class guess on unbalanced data.
    """
    device = torch.device(device)
    classifier = classifier.to(device).eval()
    generator = generator.to(device).eval()
    T = int(generator.scheduler.num_train_timesteps)
    bad = [t for t in timesteps if not 0 <= int(t) < T]
    if bad:
        raise ValueError(f"timesteps {bad} are outside [0, {T - 1}].")
    hits: dict[int, list[torch.Tensor]] = {int(t): [] for t in timesteps}
    targets: list[torch.Tensor] = []
    rng = torch.Generator().manual_seed(seed)
    for batch in loader:
        images, labels = ClassificationPrepareBatch(image_key, label_key)(batch, device)
        z0 = generator.encode(images)
        targets.append(labels.cpu())
        for t in hits:
            noise = torch.randn(z0.shape, generator=rng).to(z0)
            tt = torch.full((z0.shape[0],), t, dtype=torch.long, device=device)
            z = generator.scheduler.add_noise(original_samples=z0, noise=noise, timesteps=tt) if t > 0 else z0
            hits[t].append((classifier(z, tt).argmax(1) == labels).cpu())
    if not targets:
        raise ValueError("the loader gave no samples.")
    y = torch.cat(targets)
    out = {}
    for t, h in hits.items():
        ok = torch.cat(h).float()
        out[t] = float(torch.stack([ok[y == c].mean() for c in torch.unique(y)]).mean()) if balanced else float(ok.mean())
    return out
