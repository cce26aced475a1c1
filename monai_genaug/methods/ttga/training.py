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
"""TTGA stage 0: a generator for the target domain, by LoRA adaptation of an existing one or training from scratch.

Ma et al., "Test-Time Generative Augmentation for Medical Image Segmentation", arXiv:2406.17608 (spec A2): before
test time, the latent diffusion generator is adapted to the target domain. The paper fine-tunes LoRA adapters
(rank 4, alpha 4) on the attention projections of Stable Diffusion's UNet (AdamW, lr 1e-4, cosine), with the
autoencoder and the text encoder frozen. Without a pre-trained generator (3D, a modality no public model covers) the
generator is trained from scratch: autoencoder first, then latent diffusion (Rombach et al., arXiv:2112.10752) with
condition dropout so that the null context of classifier-free guidance is meaningful (Ho & Salimans,
arXiv:2207.12598).

This module is thin: it composes :class:`~monai_genaug.generative.latent_generator.LatentGenerator`,
:func:`~monai_genaug.networks.lora.apply_lora`, :func:`~monai_genaug.engines.autoencoder.create_autoencoder_trainer`
and :func:`~monai_genaug.engines.diffusion.create_diffusion_trainer`. The generator has one learned prompt (the
domain "text", id 0) and a learned null context; batches must carry the prompt id under ``prompt_key`` (e.g. a
constant ``"prompt": 0`` in every datalist entry, see :func:`monai_genaug.data.bundle.add_constant_keys`).
The bundle ``bundles/ttga`` wires the same factories in ``train_generator.json`` and ``train_lora.json``.

Small generators also need :class:`DetailPreservingTTGAAugmenter` at test time: Stable Diffusion's VAE (the paper's)
reconstructs an image almost exactly, a small CPU-sized autoencoder does not, and a frozen segmenter then sees views
that are all blurrier than the image it was trained on. Adding the autoencoder's reconstruction error of the input
back to every view restores those details (in the identity region the view becomes the input again).
"""

from __future__ import annotations

import copy
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import time

import torch
import torch.nn.functional as F

from monai_genaug.engines.options import TrainingOptions
from monai_genaug.engines.prepare_batch import LatentDiffusionPrepareBatch
from monai_genaug.utils.paths import is_empty_path
from monai_genaug.engines.autoencoder import create_autoencoder_trainer
from monai_genaug.engines.diffusion import create_diffusion_trainer
from monai_genaug.generative.latent_generator import LatentGenerator, generator_config
from monai_genaug.methods.ttga.pipeline import _AttentionRecorder
from monai_genaug.networks.lora import apply_lora, has_lora, merge_lora
from monai_genaug.utils.checkpoint import atomic_save, load_checkpoint

__all__ = [
    "attention_grounding_loss",
    "build_ttga_generator",
    "estimate_scale_factor_from_loader",
    "prepare_lora_adaptation",
    "save_generator",
    "train_grounded_ttga_generator",
    "train_ttga_generator",
    "ttga_generator_config",
]

logger = logging.getLogger(__name__)


def ttga_generator_config(
    spatial_dims: int = 2,
    image_channels: int = 3,
    preset: str = "tiny",
    autoencoder_channels: Sequence[int] | None = None,
    latent_channels: int | None = None,
    autoencoder_norm_num_groups: int | None = None,
    unet_channels: Sequence[int] | None = None,
    unet_attention_levels: Sequence[bool] | None = None,
    num_head_channels: int | Sequence[int] | None = None,
    unet_norm_num_groups: int | None = None,
    cross_attention_dim: int | None = None,
    prompt_tokens: int | None = None,
    num_train_timesteps: int = 1000,
    num_prompts: int = 1,
    latent: bool = True,
) -> dict[str, Any]:
    """A :class:`LatentGenerator` config for TTGA: a size preset with one learned prompt, sizes overridable.

    TTGA needs cross-attention (the identity embedding is a context), so ``num_prompts >= 1``. Unspecified sizes come
    from the preset of :func:`~monai_genaug.generative.latent_generator.generator_config` (``"tiny"``, ``"small"``,
    ``"base"``).

    Args:
        spatial_dims: 2 or 3.
        image_channels: image channels (3 for RGB endoscopy, one per MRI modality).
        preset: the size preset the overrides start from.
        autoencoder_channels: AutoencoderKL channels per level (the autoencoder factor is ``2 ** (levels - 1)``).
        latent_channels: latent channels.
        autoencoder_norm_num_groups: GroupNorm groups of the autoencoder.
        unet_channels: diffusion UNet channels per level.
        unet_attention_levels: attention (self + cross) per UNet level; TTGA's mask needs cross-attention on at least
            one level.
        num_head_channels: channels per attention head (an int or one per level).
        unet_norm_num_groups: GroupNorm groups of the UNet.
        cross_attention_dim: width of the prompt / identity context.
        prompt_tokens: tokens per learned prompt (the context length L).
        num_train_timesteps: T of the training noise schedule.
        num_prompts: learned prompts (domains / classes); TTGA uses prompt 0 by default.
        latent: ``False`` builds a pixel-space generator (no autoencoder: ``encode`` / ``decode`` are the identity, so
            the reconstruction path loses nothing to an autoencoder; issue #16, item 1). The UNet then runs on the
            image grid: keep it small (e.g. ``unet_channels=[16, 32, 64]`` with cross-attention on the last level only
            at 64 px). The ``autoencoder_*`` / ``latent_channels`` arguments are ignored.

    Raises:
        ValueError: ``num_prompts < 1`` or inconsistent level counts.
    """
    if int(num_prompts) < 1:
        raise ValueError(f"TTGA needs a prompt-conditioned generator: num_prompts must be >= 1, got {num_prompts}.")
    cfg = generator_config(
        preset,
        spatial_dims=spatial_dims,
        image_channels=image_channels,
        num_prompts=int(num_prompts),
        num_train_timesteps=num_train_timesteps,
        cross_attention_dim=cross_attention_dim,
        latent=bool(latent),
    )
    ae, unet, cond = cfg["autoencoder"] or {}, cfg["unet"], cfg["conditioning"]
    if ae and autoencoder_channels is not None:
        levels = len(autoencoder_channels)
        ae.update(channels=list(autoencoder_channels), num_res_blocks=[ae["num_res_blocks"][0]] * levels,
                  attention_levels=[False] * levels)
    if ae and latent_channels is not None:
        ae["latent_channels"] = int(latent_channels)
    if ae and autoencoder_norm_num_groups is not None:
        ae["norm_num_groups"] = int(autoencoder_norm_num_groups)
    if unet_channels is not None:
        unet["channels"] = list(unet_channels)
        if unet_attention_levels is None and len(unet["attention_levels"]) != len(unet_channels):
            unet["attention_levels"] = [False] + [True] * (len(unet_channels) - 1)
    if unet_attention_levels is not None:
        unet["attention_levels"] = [bool(a) for a in unet_attention_levels]
    if len(unet["attention_levels"]) != len(unet["channels"]):
        raise ValueError(
            f"unet_attention_levels has {len(unet['attention_levels'])} entries for {len(unet['channels'])} UNet "
            "levels; give one per level."
        )
    if not any(unet["attention_levels"]):
        raise ValueError("TTGA needs cross-attention on at least one UNet level (unet_attention_levels all False).")
    if num_head_channels is not None:
        unet["num_head_channels"] = (
            [int(num_head_channels) if a else 0 for a in unet["attention_levels"]]
            if isinstance(num_head_channels, int)
            else [int(c) for c in num_head_channels]
        )
    elif isinstance(unet.get("num_head_channels"), list) and len(unet["num_head_channels"]) != len(unet["channels"]):
        unet["num_head_channels"] = [min(16, c) if a else 0 for a, c in zip(unet["attention_levels"], unet["channels"])]
    if unet_norm_num_groups is not None:
        unet["norm_num_groups"] = int(unet_norm_num_groups)
    if prompt_tokens is not None:
        cond["prompt_tokens"] = int(prompt_tokens)
    return cfg


def build_ttga_generator(
    config: dict[str, Any] | None = None, pretrained: str | os.PathLike | None = None, device: str | torch.device = "cpu"
) -> LatentGenerator:
    """A generator for TTGA: loaded from ``pretrained`` (a :meth:`LatentGenerator.save` file), else built untrained.

    Args:
        config: the config of a new generator (e.g. from :func:`ttga_generator_config`); ignored with ``pretrained``.
        pretrained: path of a trained generator checkpoint.
        device: where the generator goes.

    Raises:
        ValueError: neither argument given, or the generator has no cross-attention (TTGA cannot use it).
        FileNotFoundError: ``pretrained`` does not exist.
    """
    if not is_empty_path(pretrained):
        gen = LatentGenerator.load(str(pretrained))
    elif config is not None:
        gen = LatentGenerator.from_config(config)
    else:
        raise ValueError("give a generator config (e.g. ttga_generator_config()) or a pretrained generator path.")
    if not gen.uses_context or gen.prompt_embedding is None:
        raise ValueError(
            "TTGA needs a generator with learned prompts and cross-attention; build it with ttga_generator_config()."
        )
    return gen.to(device)


@torch.no_grad()
def estimate_scale_factor_from_loader(
    generator: LatentGenerator,
    loader: Any,
    max_batches: int = 8,
    image_key: str = "image",
    device: str | torch.device | None = None,
) -> float:
    """Set the generator's latent scale factor to 1 / std of the posterior means of up to ``max_batches`` batches
    (:meth:`LatentGenerator.estimate_scale_factor_from_loader`, which restores the networks' train / eval modes).

    Run it after the autoencoder is trained and before diffusion training (Rombach et al.'s rescaling).

    Args:
        generator: the generator (its trained autoencoder is used).
        loader: a data loader of dicts with ``image_key``.
        max_batches: batches to look at.
        image_key: batch key of the images.
        device: move the generator there first (default: leave it where it is).

    Returns:
        the new scale factor.
    """
    if device is not None:
        generator.to(device)
    scale = generator.estimate_scale_factor_from_loader(loader, image_key, max_batches)
    logger.info(f"latent scale factor set to {scale:.4f}.")
    return scale


def prepare_lora_adaptation(
    generator: LatentGenerator,
    rank: int = 4,
    alpha: float | None = None,
    target_modules: str | Sequence[str] | None = None,
    train_prompt: bool = True,
    seed: int = 0,
) -> LatentGenerator:
    """Put LoRA adapters on the generator's UNet (paper: rank 4, alpha 4, attention q/k/v/out) and freeze the rest.

    The autoencoder stays frozen (like Stable Diffusion's VAE in the paper). ``train_prompt`` also adapts the learned
    domain prompt and null context (a few hundred numbers; the paper's text encoder is frozen, but its caption is
    free text, while here the prompt is a learned vector that may need to move to a new domain).

    Args:
        generator: a trained generator.
        rank: LoRA rank.
        alpha: LoRA alpha (None: ``rank``).
        target_modules: layers to adapt (see :func:`monai_genaug.networks.lora.resolve_lora_targets`).
        train_prompt: also train the prompt embedding.
        seed: seed of the adapters' initialisation.

    Raises:
        ValueError: the UNet already has adapters (merge or remove them first).
    """
    apply_lora(generator.unet, rank=rank, alpha=alpha, target_modules=target_modules,
               generator=torch.Generator().manual_seed(int(seed)))
    if generator.autoencoder is not None:
        generator.autoencoder.requires_grad_(False)
    if generator.prompt_embedding is not None:
        generator.prompt_embedding.requires_grad_(bool(train_prompt))
    return generator


def save_generator(
    generator: LatentGenerator,
    path: str | os.PathLike,
    dtype: str | torch.dtype | None = None,
    merge: bool = False,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write a generator file loadable with :meth:`LatentGenerator.load`, optionally in half precision.

    Args:
        generator: the generator (not modified).
        path: destination file (written atomically).
        dtype: store the parameters in this dtype (e.g. ``"float16"`` halves the file; they are cast back to float32
            on load); buffers (the latent scale factor) stay in full precision. None keeps float32.
        merge: fold LoRA adapters into the base weights (a plain generator file) instead of keeping them.
        extra: JSON-like information stored with the weights (e.g. how they were trained).
    """
    gen = copy.deepcopy(generator).cpu()
    if merge and has_lora(gen.unet):
        merge_lora(gen.unet)
    if dtype is not None:
        dt = getattr(torch, dtype) if isinstance(dtype, str) else dtype
        if not isinstance(dt, torch.dtype) or not dt.is_floating_point:
            raise ValueError(f"dtype must be a floating point torch dtype (e.g. 'float16'), got {dtype!r}.")
        for p in gen.parameters():
            p.data = p.data.to(dt)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    gen.save(str(path), extra=extra)
    return path


def train_ttga_generator(
    train_loader: Any,
    output_dir: str | os.PathLike,
    generator: LatentGenerator | None = None,
    config: dict[str, Any] | None = None,
    lora: bool | dict[str, Any] = False,
    autoencoder_epochs: int = 10,
    autoencoder_lr: float = 1e-3,
    adv_weight: float = 0.0,
    diffusion_epochs: int = 20,
    diffusion_lr: float = 1e-3,
    condition_dropout: float = 0.15,
    prompt_key: str = "prompt",
    ema_decay: float | None = None,
    val_loader: Any | None = None,
    sample_size: Sequence[int] | None = None,
    device: str | torch.device = "cpu",
    seed: int = 0,
    tracking: bool = False,
    tracking_uri: str | None = None,
    resume: bool = True,
    extra_handlers: Sequence[Any] | None = None,
) -> LatentGenerator:
    """Train a TTGA generator on ``train_loader``: from scratch, or by adapting ``generator`` (LoRA or full).

    From scratch (``generator=None``): build from ``config`` (default :func:`ttga_generator_config`), train the
    autoencoder (``output_dir/autoencoder``), set the latent scale factor, train the latent diffusion UNet and prompt
    (``output_dir/diffusion``). With a ``generator`` the autoencoder is kept and only the diffusion stage runs: on
    LoRA adapters (``lora=True`` or a dict of :func:`prepare_lora_adaptation` arguments) or on the whole UNet.
    Returns the trained generator (live weights, in eval mode); save it with :func:`save_generator`.

    Args:
        train_loader: loader of dicts with ``image`` and ``prompt_key``.
        output_dir: where the stages write checkpoints, sample grids and MLflow stores.
        generator: a trained generator to adapt, or None to train from scratch.
        config: config of a new generator.
        lora: adapt with LoRA adapters (True / dict of arguments) instead of fine-tuning the whole UNet.
        autoencoder_epochs: autoencoder epochs (from scratch only).
        autoencoder_lr: autoencoder learning rate.
        adv_weight: patch-adversarial weight of the autoencoder (0: plain VAE, fastest).
        diffusion_epochs: diffusion epochs.
        diffusion_lr: diffusion (or LoRA) learning rate (paper's LoRA: 1e-4 for SD at batch 8, 10k steps; small
            CPU generators need larger steps).
        condition_dropout: probability of training on the null context (classifier-free guidance).
        prompt_key: batch key of the prompt id.
        ema_decay: EMA of the diffusion weights (None: off; short runs are better without).
        val_loader: validation loader for the diffusion loss.
        sample_size: spatial size of the sample grids written every epoch (None: no grids).
        device: training device.
        seed: seed of every stage.
        tracking: log both stages to MLflow (SQLite under each stage's folder unless ``tracking_uri``).
        tracking_uri: MLflow URI.
        resume: continue from the stages' last checkpoints.
        extra_handlers: more handlers for the diffusion trainer.
    """
    output_dir = Path(output_dir)
    options = TrainingOptions(seed=seed, resume=resume, tracking=tracking, tracking_uri=tracking_uri)
    first = next(iter(train_loader), None)
    if first is None:
        raise ValueError("train_loader is empty.")
    if "label" in first:
        raise ValueError(
            "the training batches carry a 'label' key: the autoencoder trainer would reconstruct the label instead of "
            "the image. Drop it from the datalist (e.g. bundle_datalist(..., drop_keys=['label']))."
        )
    if prompt_key not in first:
        raise ValueError(
            f"the training batches have no '{prompt_key}' key (the domain prompt id the generator is conditioned on); "
            "add a constant one, e.g. monai_genaug.data.bundle.add_constant_keys(datalist, {'prompt': 0})."
        )
    if generator is None:
        generator = build_ttga_generator(config if config is not None else ttga_generator_config(), device=device)
        if generator.autoencoder is not None:
            ae_trainer = create_autoencoder_trainer(
                generator.autoencoder, train_loader, max_epochs=autoencoder_epochs,
                output_dir=output_dir / "autoencoder", lr=autoencoder_lr, device=device, adv_weight=adv_weight,
                config=generator.config.get("autoencoder"), options=options,
            )
            ae_trainer.run()
            estimate_scale_factor_from_loader(generator, train_loader, device=device)
    else:
        generator = generator.to(device)
        if lora:
            prepare_lora_adaptation(generator, seed=seed, **(lora if isinstance(lora, dict) else {}))
    trainer = create_diffusion_trainer(
        generator, train_loader, max_epochs=diffusion_epochs, output_dir=output_dir / "diffusion", lr=diffusion_lr,
        device=device, condition_keys={"prompt": prompt_key}, condition_dropout=condition_dropout,
        ema_decay=ema_decay, val_loader=val_loader, sample_size=sample_size,
        options=options.replace(extra_handlers=extra_handlers),
    )
    trainer.run()
    return generator.eval()




def attention_grounding_loss(maps: Sequence[torch.Tensor], mask: torch.Tensor, token: int = 0) -> torch.Tensor:
    """Binary cross-entropy between one context token's cross-attention at the finest level and a mask.

    Token-level attention supervision (Wang et al., "TokenCompose: Text-to-Image Diffusion with Token-level
    Supervision", arXiv:2312.03626) gives a learned prompt token a spatial meaning: trained with this loss, token
    ``token`` of the prompt attends where the lesion is and nowhere else, so TTGA's attention mask
    (``mask_tokens=[token]``, ``attention_factor="finest"``) keeps the lesion and augments the rest.

    Args:
        maps: head-averaged cross-attention maps (B, Nq, L) of one UNet call (from ``_AttentionRecorder`` with
            ``differentiable=True``); the maps with the most queries (the finest level) are averaged over layers.
        mask: the lesion mask (B, 1, *spatial) in [0, 1] on the image (or latent) grid; it is average-pooled to the
            attention grid (a soft target at the lesion's border).
        token: the context token that is grounded.

    Raises:
        ValueError: no maps, or the token / the mask's batch does not fit the maps.
    """
    if not maps:
        raise ValueError("no cross-attention maps were recorded; the UNet needs cross-attention (attn2) blocks.")
    nq = max(int(m.shape[1]) for m in maps)
    att = torch.stack([m for m in maps if m.shape[1] == nq]).mean(0)
    if not 0 <= int(token) < att.shape[-1]:
        raise ValueError(f"token {token} is outside the context of {att.shape[-1]} tokens.")
    if mask.shape[0] != att.shape[0]:
        raise ValueError(f"mask has batch {mask.shape[0]}, the attention maps {att.shape[0]}.")
    spatial = mask.shape[2:]
    total = 1
    for s in spatial:
        total *= int(s)
    factor = round((total / nq) ** (1.0 / len(spatial)))
    grid = tuple(int(s) // factor for s in spatial)
    pool = F.adaptive_avg_pool2d if len(spatial) == 2 else F.adaptive_avg_pool3d
    target = pool(mask.float().clamp(0, 1), grid).flatten(1)
    if target.shape[1] != nq:
        raise ValueError(f"the mask's grid {tuple(spatial)} does not map onto {nq} attention queries.")
    return F.binary_cross_entropy(att[..., int(token)].clamp(1e-6, 1 - 1e-6), target)


def train_grounded_ttga_generator(
    generator: LatentGenerator,
    train_loader: Any,
    output_dir: str | os.PathLike,
    epochs: int = 10,
    lr: float = 1e-3,
    grounding_weight: float = 1.0,
    lesion_token: int = 0,
    prompt: int = 0,
    condition_dropout: float = 0.15,
    image_key: str = "image",
    mask_key: str = "label",
    seed: int = 0,
    resume: bool = True,
    max_seconds: float | None = None,
    device: str | torch.device = "cpu",
) -> dict[str, Any]:
    """Train the diffusion UNet and prompts of a TTGA generator with a lesion token grounded on the masks.

    Each step is the usual denoising loss (:class:`~monai_genaug.engines.prepare_batch.LatentDiffusionPrepareBatch`:
    noise, timestep and condition dropout from one seeded generator) plus ``grounding_weight`` times
    :func:`attention_grounding_loss` of token ``lesion_token`` of the prompt on the items that kept the prompt. The
    autoencoder (if any) must already be trained; a pixel-space generator (``ttga_generator_config(latent=False)``)
    needs none. A checkpoint (weights, optimiser, epoch, history) is written after every epoch to
    ``output_dir/grounded_checkpoint.pt``; ``resume`` continues from it, and ``max_seconds`` stops after the epoch
    that passes the budget (call again to continue).

    Args:
        generator: a TTGA generator with learned prompts and cross-attention.
        train_loader: loader of dicts with ``image_key`` and ``mask_key`` (B, 1, *spatial) masks in [0, 1].
        output_dir: checkpoint folder.
        epochs: total epochs (counting resumed ones).
        lr: AdamW learning rate.
        grounding_weight: weight of the grounding loss (0: plain diffusion training).
        lesion_token: prompt token tied to the lesion.
        prompt: the prompt id every item is trained with (before condition dropout).
        condition_dropout: probability of the null prompt (classifier-free guidance).
        image_key: batch key of the images (already in the generator's range).
        mask_key: batch key of the masks.
        seed: seed of noise, timesteps and dropout.
        resume: continue from the checkpoint.
        max_seconds: wall-clock budget of this call (None: none).
        device: training device.

    Returns:
        ``{"epochs": completed epochs, "loss": [...], "grounding_loss": [...], "seconds": [...]}`` (per epoch).
    """
    if generator.prompt_embedding is None or not generator.uses_context:
        raise ValueError("grounding needs a generator with learned prompts; build it with ttga_generator_config().")
    if not 0 <= int(lesion_token) < generator.prompt_embedding.num_tokens:
        raise ValueError(f"lesion_token must be in [0, {generator.prompt_embedding.num_tokens}), got {lesion_token}.")
    if grounding_weight < 0:
        raise ValueError(f"grounding_weight must be >= 0, got {grounding_weight}.")
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    ckpt_path = output_dir / "grounded_checkpoint.pt"
    device = torch.device(device)
    generator.to(device)
    optimizer = torch.optim.AdamW(list(generator.trainable_parameters()), lr=lr)
    prepare = LatentDiffusionPrepareBatch(generator, condition_keys={"prompt": "_prompt"},
                                          condition_dropout=condition_dropout, image_key=image_key, seed=seed)
    history: dict[str, Any] = {"epochs": 0, "loss": [], "grounding_loss": [], "seconds": []}
    if resume and ckpt_path.is_file():
        ckpt = load_checkpoint(str(ckpt_path), map_location=device)
        generator.load_state_dict(ckpt["generator"])
        optimizer.load_state_dict(ckpt["optimizer"])
        prepare.load_state_dict(ckpt["prepare"])
        history = ckpt["history"]
    started = time.perf_counter()
    generator.train()
    with _AttentionRecorder(generator.unet, differentiable=True) as recorder:
        for epoch in range(int(history["epochs"]), int(epochs)):
            t0, total, total_g, steps = time.perf_counter(), 0.0, 0.0, 0
            for batch in train_loader:
                if mask_key not in batch:
                    raise KeyError(f"the batch has no '{mask_key}' mask (keys: {sorted(batch)}); set mask_key.")
                batch = {**batch, "_prompt": torch.full((len(batch[image_key]),), int(prompt), dtype=torch.long)}
                x_t, target, (t,), kwargs = prepare(batch, device)
                recorder.take()
                pred = generator(x_t, t, kwargs["condition"])
                loss = F.mse_loss(pred.float(), target.float())
                maps = recorder.take()
                null = generator.prompt_embedding.null_context(1).to(device)
                kept = ~torch.isclose(kwargs["condition"]["context"], null).flatten(1).all(1)
                g_loss = torch.zeros((), device=device)
                if grounding_weight > 0 and bool(kept.any()):
                    mask = torch.as_tensor(batch[mask_key]).to(device).float()
                    g_loss = attention_grounding_loss([m[kept] for m in maps], mask[kept], lesion_token)
                optimizer.zero_grad(set_to_none=True)
                (loss + grounding_weight * g_loss).backward()
                optimizer.step()
                total, total_g, steps = total + loss.item(), total_g + g_loss.item(), steps + 1
            history["epochs"] = epoch + 1
            history["loss"].append(total / max(steps, 1))
            history["grounding_loss"].append(total_g / max(steps, 1))
            history["seconds"].append(time.perf_counter() - t0)
            logger.info(f"grounded epoch {epoch + 1}/{epochs}: loss {history['loss'][-1]:.4f}, grounding "
                        f"{history['grounding_loss'][-1]:.4f}")
            atomic_save({"generator": generator.state_dict(), "optimizer": optimizer.state_dict(),
                         "prepare": prepare.state_dict(), "history": history}, ckpt_path)
            if max_seconds is not None and time.perf_counter() - started > max_seconds:
                break
    generator.eval()
    return history
