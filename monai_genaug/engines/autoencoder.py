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
"""Autoencoder (VAE-GAN) training for latent diffusion: reconstruction + KL + patch adversarial (+ perceptual).

The first stage of latent diffusion (Rombach et al., arXiv:2112.10752; Esser et al., "Taming Transformers",
arXiv:2012.09841): a MONAI ``AutoencoderKL`` is trained with an L1 reconstruction loss, a small KL term towards a
standard normal posterior, a ``PatchDiscriminator`` adversarial loss (least squares, optionally switched on after
a warm-up) and, only when its weights are available locally, a perceptual loss. Nothing is downloaded.

:class:`AutoencoderKLTrainer` is MONAI's ``AdversarialTrainer`` with one iteration rewritten: the parent expects a
generator returning a tensor and has no KL or perceptual term, whereas ``AutoencoderKL`` returns
``(reconstruction, z_mu, z_sigma)``. State keys, events (``AdversarialIterationEvents``) and output keys stay those
of the parent, and ``IterationEvents.LOSS_COMPLETED`` is fired before the generator's backward pass, so
:class:`~monai_genaug.handlers.nan_guard.NaNGuard` stops a NaN loss before it reaches the weights.
"""

from __future__ import annotations

import logging
import operator
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from ignite.metrics import Average
from monai.engines import AdversarialTrainer, IterationEvents
from monai.engines.utils import default_prepare_batch
from monai.losses import PatchAdversarialLoss, PerceptualLoss
from monai.networks.nets import PatchDiscriminator
from monai.utils import (
    AdversarialIterationEvents,
    AdversarialKeys,
    CommonKeys,
    optional_import,
)
from torch import nn

from monai_genaug.handlers.sample_grid import ReconstructionSamples
from monai_genaug.handlers.savers import FinalAutoencoderSaver
from monai_genaug.handlers.sample_grid import SampleGridHandler
from monai_genaug.handlers.tracking import loss_from_output
from monai_genaug.engines.options import (
    HandlesMixin,
    TrainingOptions,
    resolve_training_options,
)
from monai_genaug.engines.workflow import finish_trainer, options_training_handlers

__all__ = [
    "kl_divergence",
    "AutoencoderKLTrainer",
    "create_perceptual_loss",
    "create_autoencoder_trainer",
    "prepare_image_batch",
]

logger = logging.getLogger(__name__)

KL_LOSS = "kl_loss"
PERCEPTUAL_LOSS = "perceptual_loss"


def kl_divergence(z_mu: torch.Tensor, z_sigma: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, sigma^2) || N(0, 1)) summed over latent elements and averaged over the batch."""
    dims = list(range(1, z_mu.ndim))
    kl = 0.5 * torch.sum(z_mu.pow(2) + z_sigma.pow(2) - torch.log(z_sigma.pow(2) + 1e-12) - 1.0, dim=dims)
    return kl.mean()


def prepare_image_batch(
    batchdata: dict | Sequence, device: torch.device | str | None = None, non_blocking: bool = False, **kwargs: Any
) -> tuple[torch.Tensor, None]:
    """Batch parser of the autoencoder trainers: the image only (a label in the batch is not a reconstruction target)."""
    images, _ = default_prepare_batch(batchdata, device, non_blocking, **kwargs)
    return images, None


class _GeneratorAdversarialLoss:
    """``g_loss_function`` of the parent trainer: the generator wants its fakes called real."""

    def __init__(self, adversarial_loss: nn.Module) -> None:
        self.adversarial_loss = adversarial_loss

    def __call__(self, fake_logits: Any) -> torch.Tensor:
        return self.adversarial_loss(fake_logits, target_is_real=True, for_discriminator=False)


class _DiscriminatorAdversarialLoss:
    """``d_loss_function`` of the parent trainer: mean of the real and fake terms."""

    def __init__(self, adversarial_loss: nn.Module) -> None:
        self.adversarial_loss = adversarial_loss

    def __call__(self, real_logits: Any, fake_logits: Any) -> torch.Tensor:
        fake = self.adversarial_loss(fake_logits, target_is_real=False, for_discriminator=True)
        real = self.adversarial_loss(real_logits, target_is_real=True, for_discriminator=True)
        return 0.5 * (fake + real)


def _last(logits: Any) -> Any:
    """A ``PatchDiscriminator`` returns its intermediate features; the logits are the last entry."""
    return logits[-1] if isinstance(logits, (list, tuple)) else logits


class AutoencoderKLTrainer(HandlesMixin, AdversarialTrainer):
    """Train a MONAI ``AutoencoderKL`` with reconstruction, KL, patch-adversarial and optional perceptual losses.

    Generator loss: ``recon + kl_weight * KL + perceptual_weight * perceptual + adv_weight * adversarial`` (the
    adversarial term, and the discriminator update, start at iteration ``adv_start_iteration``). Discriminator loss:
    least-squares patch loss on real images and detached reconstructions. The outputs hold ``loss`` (generator
    total), ``reconstruction_loss``, ``kl_loss``, ``perceptual_loss``, ``generator_loss`` (adversarial) and
    ``discriminator_loss`` as detached scalars, plus ``image`` and ``pred`` (reconstruction).

    Args:
        device: training device.
        max_epochs: epochs to train.
        train_data_loader: loader of dicts with ``image`` (or tensors).
        g_network: the ``AutoencoderKL`` (any module returning ``(reconstruction, z_mu, z_sigma)`` or a tensor).
        g_optimizer: optimiser of the autoencoder.
        d_network: a ``PatchDiscriminator``, or None for a plain VAE (then ``adv_weight`` must be 0).
        d_optimizer: optimiser of the discriminator (None with ``d_network=None``).
        recon_loss_function: reconstruction loss, default L1.
        adversarial_loss: ``PatchAdversarialLoss`` (default least squares).
        kl_weight: weight of the KL term.
        adv_weight: weight of the generator's adversarial term.
        adv_start_iteration: iteration (1-based) from which the adversarial term and the discriminator train.
        perceptual_loss: a perceptual loss module (e.g. from :func:`create_perceptual_loss`), or None.
        perceptual_weight: weight of the perceptual term.
        epoch_length: iterations per epoch.
        non_blocking: non-blocking host-to-device copies.
        prepare_batch: batch parser returning ``(images, targets)``; the default reads only the image, so the
            targets are the images even when the batch also holds a label.
        train_handlers: handlers with ``attach(engine)``.
        key_train_metric: ignite metrics computed every epoch.
        metric_cmp_fn: comparison of the key metric (default: lower is better).
        amp: automatic mixed precision (CUDA); losses are computed in float32.
        decollate: decollate outputs (off by default: the outputs are scalars plus the batch).
        optim_set_to_none: ``zero_grad(set_to_none=...)``.
        to_kwargs: extra ``Tensor.to`` arguments for ``prepare_batch``.
        amp_kwargs: arguments of ``torch.autocast``.
    """

    def __init__(
        self,
        device: torch.device | str,
        max_epochs: int,
        train_data_loader: Any,
        g_network: nn.Module,
        g_optimizer: torch.optim.Optimizer,
        d_network: nn.Module | None = None,
        d_optimizer: torch.optim.Optimizer | None = None,
        recon_loss_function: Callable | None = None,
        adversarial_loss: nn.Module | None = None,
        kl_weight: float = 1e-6,
        adv_weight: float = 0.01,
        adv_start_iteration: int = 1,
        perceptual_loss: Callable | None = None,
        perceptual_weight: float = 0.001,
        epoch_length: int | None = None,
        non_blocking: bool = False,
        prepare_batch: Callable | None = None,
        train_handlers: Sequence | None = None,
        key_train_metric: dict | None = None,
        metric_cmp_fn: Callable = operator.lt,
        amp: bool = False,
        decollate: bool = False,
        optim_set_to_none: bool = False,
        to_kwargs: dict | None = None,
        amp_kwargs: dict | None = None,
    ) -> None:
        if d_network is None and adv_weight > 0:
            raise ValueError("adv_weight > 0 needs a discriminator (d_network); pass one or set adv_weight=0.")
        if (d_network is None) != (d_optimizer is None):
            raise ValueError("give d_network and d_optimizer together (or neither for a plain VAE).")
        if min(kl_weight, adv_weight, perceptual_weight) < 0:
            raise ValueError("kl_weight, adv_weight and perceptual_weight must be >= 0.")
        adversarial_loss = adversarial_loss or PatchAdversarialLoss(criterion="least_squares")
        super().__init__(
            device=device,
            max_epochs=max_epochs,
            train_data_loader=train_data_loader,
            g_network=g_network,
            g_optimizer=g_optimizer,
            g_loss_function=_GeneratorAdversarialLoss(adversarial_loss),
            recon_loss_function=recon_loss_function or nn.L1Loss(),
            d_network=d_network,
            d_optimizer=d_optimizer,
            d_loss_function=_DiscriminatorAdversarialLoss(adversarial_loss),
            epoch_length=epoch_length,
            non_blocking=non_blocking,
            prepare_batch=prepare_image_batch if prepare_batch is None else prepare_batch,
            key_train_metric=key_train_metric,
            metric_cmp_fn=metric_cmp_fn,
            train_handlers=train_handlers,
            amp=amp,
            decollate=decollate,
            optim_set_to_none=optim_set_to_none,
            to_kwargs=to_kwargs,
            amp_kwargs=amp_kwargs,
        )
        self.kl_weight = float(kl_weight)
        self.adv_weight = float(adv_weight)
        self.adv_start_iteration = int(adv_start_iteration)
        self.perceptual_loss = perceptual_loss
        self.perceptual_weight = float(perceptual_weight)

    def _autocast(self):
        return torch.autocast("cuda", **self.amp_kwargs) if self.amp else torch.autocast("cpu", enabled=False)

    def _backward_step(self, loss: torch.Tensor, optimizer: torch.optim.Optimizer, scaler: Any) -> None:
        if self.amp and scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()

    def _iteration(self, engine: AutoencoderKLTrainer, batchdata: Any) -> dict[str, Any]:  # type: ignore[override]
        if batchdata is None:
            raise ValueError("Must provide batch data for current iteration.")
        batch = engine.prepare_batch(batchdata, engine.state.device, engine.non_blocking, **engine.to_kwargs)
        images, targets = batch[0], batch[1]
        if targets is None:
            targets = images
        state = engine.state
        use_adv = state.d_network is not None and state.iteration >= engine.adv_start_iteration
        output: dict[str, Any] = {CommonKeys.IMAGE: images, CommonKeys.LABEL: targets, AdversarialKeys.REALS: images}
        state.output = output

        # ---- autoencoder (generator) step
        state.g_network.train()
        state.g_optimizer.zero_grad(set_to_none=engine.optim_set_to_none)
        with engine._autocast():
            result = state.g_network(images)
        recon, z_mu, z_sigma = (
            (result[0], result[1], result[2]) if isinstance(result, (tuple, list)) else (result, None, None)
        )
        recon = recon.float()
        output[AdversarialKeys.FAKES] = output[CommonKeys.PRED] = recon
        engine.fire_event(AdversarialIterationEvents.GENERATOR_FORWARD_COMPLETED)
        recon_loss = state.recon_loss_function(recon, targets.float()).mean()
        engine.fire_event(AdversarialIterationEvents.RECONSTRUCTION_LOSS_COMPLETED)
        total = recon_loss
        kl = kl_divergence(z_mu.float(), z_sigma.float()) if z_mu is not None else recon.new_zeros(())
        total = total + engine.kl_weight * kl
        perceptual = recon.new_zeros(())
        if engine.perceptual_loss is not None and engine.perceptual_weight > 0:
            perceptual = engine.perceptual_loss(recon, targets.float())
            total = total + engine.perceptual_weight * perceptual
        g_adv = recon.new_zeros(())
        if use_adv:
            with engine._autocast():
                fake_logits = _last(state.d_network(recon.contiguous()))
            engine.fire_event(AdversarialIterationEvents.GENERATOR_DISCRIMINATOR_FORWARD_COMPLETED)
            g_adv = state.g_loss_function(fake_logits.float())
            engine.fire_event(AdversarialIterationEvents.GENERATOR_LOSS_COMPLETED)
            total = total + engine.adv_weight * g_adv
        output[CommonKeys.LOSS] = total
        output[AdversarialKeys.RECONSTRUCTION_LOSS] = recon_loss.detach()
        output[KL_LOSS] = kl.detach()
        output[PERCEPTUAL_LOSS] = perceptual.detach()
        output[AdversarialKeys.GENERATOR_LOSS] = g_adv.detach()
        engine.fire_event(IterationEvents.LOSS_COMPLETED)  # NaN guard: before any weight changes
        engine._backward_step(total, state.g_optimizer, state.g_scaler)
        engine.fire_event(AdversarialIterationEvents.GENERATOR_BACKWARD_COMPLETED)
        engine.fire_event(AdversarialIterationEvents.GENERATOR_MODEL_COMPLETED)
        output[CommonKeys.LOSS] = total.detach()

        # ---- discriminator step
        d_loss = recon.new_zeros(())
        if use_adv:
            state.d_network.train()
            state.d_optimizer.zero_grad(set_to_none=engine.optim_set_to_none)
            with engine._autocast():
                real_logits = _last(state.d_network(images.contiguous().detach()))
                engine.fire_event(AdversarialIterationEvents.DISCRIMINATOR_REALS_FORWARD_COMPLETED)
                fake_logits = _last(state.d_network(recon.contiguous().detach()))
                engine.fire_event(AdversarialIterationEvents.DISCRIMINATOR_FAKES_FORWARD_COMPLETED)
            output[AdversarialKeys.REAL_LOGITS] = real_logits.detach()
            output[AdversarialKeys.FAKE_LOGITS] = fake_logits.detach()
            d_loss = state.d_loss_function(real_logits.float(), fake_logits.float())
            engine.fire_event(AdversarialIterationEvents.DISCRIMINATOR_LOSS_COMPLETED)
            engine._backward_step(d_loss, state.d_optimizer, state.d_scaler)
            engine.fire_event(AdversarialIterationEvents.DISCRIMINATOR_BACKWARD_COMPLETED)
        output[AdversarialKeys.DISCRIMINATOR_LOSS] = d_loss.detach()
        output[CommonKeys.PRED] = output[AdversarialKeys.FAKES] = recon.detach()
        return output


def create_perceptual_loss(
    spatial_dims: int, weights_path: str | os.PathLike, network_type: str = "resnet50", is_fake_3d: bool = True
) -> nn.Module:
    """A MONAI ``PerceptualLoss`` whose weights come from a local file (never downloaded).

    Args:
        spatial_dims: 2 or 3 (3D uses the 2.5D slice approach).
        weights_path: local state dict of the feature network (torchvision ResNet-50 layout).
        network_type: MONAI perceptual network; only ``"resnet50"`` loads from a local path.
        is_fake_3d: 2.5D perceptual loss for 3D images.

    Raises:
        FileNotFoundError: ``weights_path`` does not exist.
        ValueError: ``network_type`` cannot load local weights.
        ImportError: torchvision is not installed.
    """
    path = Path(weights_path)
    if not path.is_file():
        raise FileNotFoundError(
            f"perceptual loss weights '{path}' not found; pass a local ResNet-50 state dict, or leave "
            "perceptual_weights_path unset to train without the perceptual term (nothing is downloaded)."
        )
    if network_type != "resnet50":
        raise ValueError(
            f"network_type '{network_type}' loads its weights from the internet; only 'resnet50' takes a local "
            "weights file (pretrained_path)."
        )
    _, has_tv = optional_import("torchvision")
    if not has_tv:
        raise ImportError("the perceptual loss needs torchvision (pip install torchvision).")
    return PerceptualLoss(
        spatial_dims=spatial_dims,
        network_type=network_type,
        is_fake_3d=is_fake_3d,
        pretrained=True,
        pretrained_path=str(path),
    )


def _infer_dims_and_channels(autoencoder: nn.Module) -> tuple[int, int]:
    encoder = getattr(autoencoder, "encoder", None)
    spatial_dims = getattr(encoder, "spatial_dims", None)
    in_channels = getattr(encoder, "in_channels", None)
    if spatial_dims is None or in_channels is None:
        raise ValueError(
            "cannot read spatial_dims / in_channels from the autoencoder; pass a discriminator explicitly."
        )
    return int(spatial_dims), int(in_channels)


def create_autoencoder_trainer(
    autoencoder: nn.Module,
    train_loader: Any,
    max_epochs: int,
    output_dir: str | os.PathLike,
    lr: float = 1e-4,
    d_lr: float | None = None,
    device: str | torch.device = "cpu",
    discriminator: nn.Module | None = None,
    discriminator_layers: int = 3,
    epoch_length: int | None = None,
    kl_weight: float = 1e-6,
    adv_weight: float = 0.01,
    adv_start_iteration: int = 1,
    perceptual_weights_path: str | os.PathLike | None = None,
    perceptual_loss: Callable | None = None,
    perceptual_weight: float = 0.001,
    grid_images: torch.Tensor | None = None,
    sample_every: int = 1,
    config: dict | None = None,
    prepare_batch: Callable | None = None,
    recon_loss_function: Callable | None = None,
    options: TrainingOptions | None = None,
    **deprecated: Any,
) -> AutoencoderKLTrainer:
    """Build a ready :class:`AutoencoderKLTrainer` with NaN guard, stats, MLflow, reconstruction grids, final file
    (``output_dir/autoencoder_final.pt``) and a resumable checkpoint (``output_dir/checkpoint_last.pt``).

    The handlers are in the typed ``trainer.handles`` (:class:`~monai_genaug.engines.options.TrainerHandles`):
    ``nan_guard``, ``checkpoint``, ``mlflow_handler``, ``sample_grid``, ``final_saver``.

    Args:
        autoencoder: a MONAI ``AutoencoderKL``.
        train_loader: loader of dicts with ``image``.
        max_epochs: epochs to train (in total, counting resumed ones).
        output_dir: folder for checkpoint, grids, final file and the default MLflow store.
        lr: Adam learning rate of the autoencoder.
        d_lr: Adam learning rate of the discriminator (default ``lr``).
        device: training device.
        discriminator: a ``PatchDiscriminator``; default: one with 16 channels and ``discriminator_layers`` layers
            (INSTANCE norm) when ``adv_weight > 0``.
        discriminator_layers: layers of the default discriminator (each halves the size; use 2 for 16-px images).
        epoch_length: iterations per epoch.
        kl_weight: KL weight.
        adv_weight: adversarial weight; 0 trains a plain VAE (no discriminator).
        adv_start_iteration: iteration (1-based) from which the adversarial term is on.
        perceptual_weights_path: local ResNet-50 weights for a perceptual loss (:func:`create_perceptual_loss`);
            None: no perceptual term. Nothing is ever downloaded.
        perceptual_loss: a ready perceptual loss module (instead of ``perceptual_weights_path``).
        perceptual_weight: perceptual weight.
        grid_images: fixed images whose reconstructions are written as PNG grids every ``sample_every`` epochs.
        sample_every: epochs between reconstruction grids.
        config: JSON config of the autoencoder, stored in the final file and logged to MLflow.
        prepare_batch: batch parser of the trainer (default :func:`prepare_image_batch`: the images only).
        recon_loss_function: reconstruction loss (default L1).
        options: the shared training options (seed of the global RNGs at a fresh start - posterior sampling uses the
            global RNG -, AMP, resume, checkpoint interval, NaN policy, MLflow tracking, extra handlers); default
            ``TrainingOptions()``.
        **deprecated: the old keywords of ``options`` (``amp=``, ``seed=``, ``tracking=``, ...), accepted for one
            release with a ``DeprecationWarning``.
    """
    options = resolve_training_options("create_autoencoder_trainer", options, deprecated)
    if max_epochs < 1:
        raise ValueError(f"max_epochs must be >= 1, got {max_epochs}.")
    if perceptual_loss is not None and perceptual_weights_path is not None:
        raise ValueError("give perceptual_loss or perceptual_weights_path, not both.")
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    device = torch.device(device)
    autoencoder = autoencoder.to(device)
    spatial_dims = None
    if perceptual_weights_path is not None or (discriminator is None and adv_weight > 0):
        spatial_dims, in_channels = _infer_dims_and_channels(autoencoder)
    if perceptual_weights_path is not None:
        perceptual_loss = create_perceptual_loss(spatial_dims, perceptual_weights_path)
    if perceptual_loss is not None and isinstance(perceptual_loss, nn.Module):
        perceptual_loss = perceptual_loss.to(device)
    if discriminator is None and adv_weight > 0:
        discriminator = PatchDiscriminator(
            spatial_dims=spatial_dims,
            channels=16,
            in_channels=in_channels,
            out_channels=1,
            num_layers_d=discriminator_layers,
            norm="INSTANCE",
        )
    d_optimizer = None
    if discriminator is not None:
        discriminator = discriminator.to(device)
        d_optimizer = torch.optim.Adam(discriminator.parameters(), lr=d_lr or lr)
    g_optimizer = torch.optim.Adam(autoencoder.parameters(), lr=lr)

    standard = options_training_handlers(
        output_dir,
        "autoencoder",
        {
            "lr": lr,
            "d_lr": d_lr or lr,
            "max_epochs": max_epochs,
            "batch_size": getattr(train_loader, "batch_size", None),
            "kl_weight": kl_weight,
            "adv_weight": adv_weight,
            "adv_start_iteration": adv_start_iteration,
            "perceptual": perceptual_loss is not None,
            "perceptual_weight": perceptual_weight,
            "autoencoder": config or {},
        },
        options,
        "monai_genaug",
    )
    handlers, mlflow_handler = standard.handlers, standard.mlflow_handler
    sample_grid = None
    if grid_images is not None:
        sample_grid = SampleGridHandler(
            ReconstructionSamples(autoencoder, grid_images),
            output_dir,
            interval=sample_every,
            nrow=int(grid_images.shape[0]),
            file_prefix="reconstructions",
            network=autoencoder,
            mlflow_handler=mlflow_handler,
        )
        handlers.append(sample_grid)
    final_saver = FinalAutoencoderSaver(autoencoder, output_dir, discriminator=discriminator, config=config)
    handlers.append(final_saver)
    handlers.extend(options.extra_handlers)

    trainer = AutoencoderKLTrainer(
        device=device,
        max_epochs=max_epochs,
        train_data_loader=train_loader,
        g_network=autoencoder,
        g_optimizer=g_optimizer,
        d_network=discriminator,
        d_optimizer=d_optimizer,
        kl_weight=kl_weight,
        adv_weight=adv_weight,
        adv_start_iteration=adv_start_iteration,
        perceptual_loss=perceptual_loss,
        perceptual_weight=perceptual_weight,
        epoch_length=epoch_length,
        train_handlers=handlers,
        key_train_metric={"epoch_loss": Average(output_transform=loss_from_output)},
        amp=options.amp,
        prepare_batch=prepare_batch,
        recon_loss_function=recon_loss_function,
    )
    save_dict: dict[str, Any] = {"autoencoder": autoencoder, "g_optimizer": g_optimizer}
    if discriminator is not None:
        save_dict.update(discriminator=discriminator, d_optimizer=d_optimizer)
    return finish_trainer(
        trainer, output_dir, save_dict, train_loader, options, standard,
        grad_scalers={"g_scaler": (trainer.state, "g_scaler"), "d_scaler": (trainer.state, "d_scaler")},
        sample_grid=sample_grid,
        final_saver=final_saver,
        prepare_batch=trainer.prepare_batch,
    )
