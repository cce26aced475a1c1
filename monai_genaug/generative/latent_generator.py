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
"""The one generator every method builds on: autoencoder + diffusion UNet + scheduler + scale factor + conditions.

Latent diffusion (Rombach et al., "High-Resolution Image Synthesis with Latent Diffusion Models",
arXiv:2112.10752) composed from MONAI core networks: an optional :class:`monai.networks.nets.AutoencoderKL`
(``None`` gives pixel-space diffusion), a :class:`monai.networks.nets.DiffusionModelUNet` or
:class:`monai.networks.nets.SPADEDiffusionModelUNet`, a MONAI scheduler holding the training noise schedule, a
latent scale factor (1 / std of the training latents) and a conditioner. ``generator(x_t, t, condition)``
predicts the UNet's target (noise, velocity or sample) for any conditioning the UNet takes:

============== ============================= =========================================================
condition key  shape                         how it reaches the UNet
============== ============================= =========================================================
``prompt``     (B,) long, -1 = null prompt   :class:`~monai_genaug.networks.conditioning.PromptEmbedding`
                                             tokens as cross-attention ``context``
``context``    (B, L, D)                     raw cross-attention context (CLIP embeddings, TTGA identity)
``class_labels`` (B,) long, ``num_classes``  class embedding added to the time embedding
               = null class
``seg``        (B, K, *spatial)              SPADE normalisation (mask-conditioned synthesis)
``concat``     (B, C, *spatial)              concatenated to the noisy input channels
============== ============================= =========================================================

The generator saves and loads as one checkpoint (weights + JSON config), see :meth:`LatentGenerator.save`.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch
from monai.networks.nets import DiffusionModelUNet, SPADEDiffusionModelUNet
from monai.networks.schedulers import DDIMScheduler, DDPMScheduler
from torch import nn

from monai_genaug.networks.latent_scale import latent_scale_factor
from monai_genaug.networks.conditioning import PromptEmbedding
from monai_genaug.networks.lora import apply_lora, get_lora_config, has_lora
from monai_genaug.networks.sd.networks import AUTOENCODER_TYPES, SDDiffusionModelUNet
from monai_genaug.utils.checkpoint import (
    register_checkpoint_format,
    atomic_save,
    check_state_dict_compatible,
    load_checkpoint,
    to_json_config,
)

__all__ = [
    "CONDITION_KEYS",
    "CHECKPOINT_FORMAT",
    "LatentGenerator",
    "concat_conditions",
    "generator_config",
]

CONDITION_KEYS = ("prompt", "context", "class_labels", "seg", "concat")
CHECKPOINT_FORMAT = register_checkpoint_format(
    "monai_genaug.LatentGenerator", "LatentGenerator", "save generators with LatentGenerator.save()"
)
_UNETS = {
    "DiffusionModelUNet": DiffusionModelUNet,
    "SPADEDiffusionModelUNet": SPADEDiffusionModelUNet,
    "SDDiffusionModelUNet": SDDiffusionModelUNet,  # converted Stable Diffusion (monai_genaug.sd_import)
}
_SCHEDULERS = {"DDPMScheduler": DDPMScheduler, "DDIMScheduler": DDIMScheduler}

_PRESETS: dict[str, dict[str, Any]] = {
    # unit tests: a few thousand parameters, 16-32 px
    "tiny": {
        "spade_channels": 16,
        "autoencoder": {
            "channels": [8, 16],
            "num_res_blocks": [1, 1],
            "attention_levels": [False, False],
            "latent_channels": 2,
            "norm_num_groups": 4,
            "with_encoder_nonlocal_attn": False,
            "with_decoder_nonlocal_attn": False,
        },
        "unet": {
            "channels": [16, 32],
            "num_res_blocks": 1,
            "attention_levels": [False, True],
            "norm_num_groups": 8,
            "num_head_channels": 8,
        },
        "cross_attention_dim": 16,
        "prompt_tokens": 4,
    },
    # CPU demos: 2D 64-128 px, 3D 32-64 voxels
    "small": {
        "spade_channels": 64,
        "autoencoder": {
            "channels": [32, 64, 64],
            "num_res_blocks": [1, 1, 1],
            "attention_levels": [False, False, False],
            "latent_channels": 3,
            "norm_num_groups": 16,
            "with_encoder_nonlocal_attn": False,
            "with_decoder_nonlocal_attn": False,
        },
        "unet": {
            "channels": [32, 64, 128],
            "num_res_blocks": 1,
            "attention_levels": [False, True, True],
            "norm_num_groups": 16,
            "num_head_channels": [0, 16, 32],
        },
        "cross_attention_dim": 64,
        "prompt_tokens": 4,
    },
    # GPU: 2D 256-512 px, 3D 96-128 voxels
    "base": {
        "spade_channels": 128,
        "autoencoder": {
            "channels": [64, 128, 128, 256],
            "num_res_blocks": [2, 2, 2, 2],
            "attention_levels": [False, False, False, False],
            "latent_channels": 4,
            "norm_num_groups": 32,
            "with_encoder_nonlocal_attn": True,
            "with_decoder_nonlocal_attn": True,
        },
        "unet": {
            "channels": [128, 256, 512],
            "num_res_blocks": 2,
            "attention_levels": [False, True, True],
            "norm_num_groups": 32,
            "num_head_channels": [0, 64, 64],
        },
        "cross_attention_dim": 256,
        "prompt_tokens": 8,
    },
}


def generator_config(
    preset: str = "tiny",
    spatial_dims: int = 2,
    image_channels: int = 1,
    latent: bool = True,
    num_prompts: int | None = None,
    num_classes: int | None = None,
    seg_channels: int | None = None,
    concat_channels: int = 0,
    prediction_type: str = "epsilon",
    num_train_timesteps: int = 1000,
    schedule: str = "scaled_linear_beta",
    beta_start: float = 0.0015,
    beta_end: float = 0.0195,
    use_flash_attention: bool = False,
    cross_attention_dim: int | None = None,
) -> dict[str, Any]:
    """Build a JSON-serialisable :class:`LatentGenerator` config from a size preset and the conditions wanted.

    Args:
        preset: ``"tiny"`` (tests), ``"small"`` (CPU demos: 2D 64-128 px, 3D 32-64 voxels) or ``"base"`` (GPU).
        spatial_dims: 2 or 3.
        image_channels: channels of the images (1 grey / MRI, 3 RGB).
        latent: ``True`` for latent diffusion through an AutoencoderKL, ``False`` for pixel-space diffusion.
        num_prompts: number of learned prompts (cross-attention conditioning), ``None`` for none.
        num_classes: number of classes for class-label conditioning (a null class is added), ``None`` for none.
        seg_channels: channels of SPADE segmentation conditioning (one-hot masks), ``None`` for none.
        concat_channels: channels concatenated to the noisy input (e.g. an image prior), 0 for none.
        prediction_type: ``"epsilon"``, ``"v_prediction"`` or ``"sample"``.
        num_train_timesteps: T of the training noise schedule.
        schedule: MONAI noise schedule name (``"linear_beta"``, ``"scaled_linear_beta"``, ``"cosine"``...).
        beta_start: first beta of linear schedules.
        beta_end: last beta of linear schedules.
        use_flash_attention: use PyTorch scaled-dot-product attention in the UNet (faster, no attention maps).
        cross_attention_dim: width of the cross-attention context; default the preset's when ``num_prompts`` is set.
            Give it without ``num_prompts`` for a generator conditioned on raw ``context`` embeddings (e.g. CLIP).
    """
    if preset not in _PRESETS:
        raise ValueError(f"unknown preset '{preset}'; choose one of {sorted(_PRESETS)}.")
    if spatial_dims not in (2, 3):
        raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}.")
    p = copy.deepcopy(_PRESETS[preset])
    unet = p["unet"]
    unet["type"] = "SPADEDiffusionModelUNet" if seg_channels else "DiffusionModelUNet"
    unet["use_flash_attention"] = use_flash_attention
    if seg_channels:
        unet["spade_intermediate_channels"] = p["spade_channels"]
    schedule_args = {"beta_start": beta_start, "beta_end": beta_end} if "linear" in schedule else {}
    return to_json_config(
        {
            "spatial_dims": spatial_dims,
            "image_channels": image_channels,
            "autoencoder": p["autoencoder"] if latent else None,
            "unet": unet,
            "scheduler": {
                "type": "DDPMScheduler",
                "num_train_timesteps": num_train_timesteps,
                "schedule": schedule,
                "prediction_type": prediction_type,
                "clip_sample": False,
                **schedule_args,
            },
            "conditioning": {
                "num_prompts": num_prompts,
                "prompt_tokens": p["prompt_tokens"],
                "cross_attention_dim": cross_attention_dim or (p["cross_attention_dim"] if num_prompts else None),
                "num_classes": num_classes,
                "seg_channels": seg_channels,
                "concat_channels": concat_channels,
            },
            "scale_factor": 1.0,
        }
    )


def concat_conditions(conditions: Sequence[Mapping[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Concatenate resolved conditions (see :meth:`LatentGenerator.resolve_condition`) along the batch axis.

    All entries must hold the same keys; this is how guidance branches share one batched UNet call.
    """
    if not conditions:
        return {}
    keys = set(conditions[0])
    for c in conditions[1:]:
        if set(c) != keys:
            raise ValueError(f"cannot batch conditions with different keys: {sorted(keys)} vs {sorted(c)}.")
    return {k: torch.cat([c[k] for c in conditions], dim=0) for k in conditions[0]}


class LatentGenerator(nn.Module):
    """Autoencoder + diffusion UNet + scheduler + scale factor + conditioner, as one module and one checkpoint.

    Args:
        unet: a MONAI ``DiffusionModelUNet`` or ``SPADEDiffusionModelUNet`` (or any module with the same forward).
        scheduler: a MONAI scheduler carrying the training noise schedule (``alphas_cumprod``) and
            ``prediction_type``; the sampler uses its schedule, any number of steps.
        autoencoder: a MONAI ``AutoencoderKL`` for latent diffusion, ``None`` for pixel-space diffusion.
        prompt_embedding: learned prompts for cross-attention conditioning, or ``None``.
        num_classes: number of classes of class-label conditioning (the UNet needs ``num_class_embeds =
            num_classes + 1``; index ``num_classes`` is the null class), or ``None``.
        concat_channels: number of channels concatenated to the noisy input, 0 for none.
        scale_factor: multiplies the autoencoder's latents (use :meth:`estimate_scale_factor`).
        config: the JSON config this generator was built from (kept in checkpoints).

    Example::

        gen = LatentGenerator.from_config(generator_config("tiny", spatial_dims=2, num_prompts=2))
        z0 = gen.encode(images)                      # (B, latent_channels, H/f, W/f)
        noise_pred = gen(z_t, t, {"prompt": ids})    # UNet target
    """

    def __init__(
        self,
        unet: nn.Module,
        scheduler: nn.Module,
        autoencoder: nn.Module | None = None,
        prompt_embedding: PromptEmbedding | None = None,
        num_classes: int | None = None,
        concat_channels: int = 0,
        scale_factor: float = 1.0,
        config: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.unet = unet
        self.scheduler = scheduler
        self.autoencoder = autoencoder
        self.prompt_embedding = prompt_embedding
        self.num_classes = num_classes
        self.concat_channels = int(concat_channels)
        self.register_buffer("scale_factor", torch.tensor(float(scale_factor)))
        self.config: dict[str, Any] = dict(config) if config is not None else {}
        self.spatial_dims = int(getattr(unet, "spatial_dims", self.config.get("spatial_dims", 2)))
        self.latent_channels = int(unet.out_channels) if hasattr(unet, "out_channels") else None
        self.image_channels = (
            int(self.config.get("image_channels", autoencoder.encoder.in_channels))
            if autoencoder is not None
            else self.latent_channels
        )
        self.is_spade = isinstance(unet, SPADEDiffusionModelUNet)
        self.uses_context = bool(getattr(unet, "with_conditioning", False))
        if num_classes is not None and getattr(unet, "num_class_embeds", None) != num_classes + 1:
            raise ValueError(
                f"class conditioning with num_classes={num_classes} needs a UNet with num_class_embeds="
                f"{num_classes + 1} (the last index is the null class), got {getattr(unet, 'num_class_embeds', None)}."
            )

    # ------------------------------------------------------------------ construction and checkpoints
    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> LatentGenerator:
        """Build an untrained generator from a config made by :func:`generator_config` (or a checkpoint's)."""
        config = to_json_config(config)
        try:
            sd = int(config["spatial_dims"])
            image_channels = int(config["image_channels"])
            cond = config.get("conditioning") or {}
            unet_cfg = dict(config["unet"])
            sched_cfg = dict(config["scheduler"])
        except KeyError as e:
            raise ValueError(f"generator config lacks the key {e}; build it with generator_config().") from e
        ae_cfg = config.get("autoencoder")
        autoencoder = None
        latent_channels = image_channels
        if ae_cfg:
            ae_cfg = dict(ae_cfg)
            ae_type = ae_cfg.pop("type", "AutoencoderKL")
            if ae_type not in AUTOENCODER_TYPES:
                raise ValueError(f"unknown autoencoder type '{ae_type}'; choose one of {sorted(AUTOENCODER_TYPES)}.")
            autoencoder = AUTOENCODER_TYPES[ae_type](
                spatial_dims=sd, in_channels=image_channels, out_channels=image_channels, **ae_cfg
            )
            latent_channels = int(ae_cfg["latent_channels"])
        unet_type = unet_cfg.pop("type", "DiffusionModelUNet")
        if unet_type not in _UNETS:
            raise ValueError(f"unknown UNet type '{unet_type}'; choose one of {sorted(_UNETS)}.")
        num_prompts = cond.get("num_prompts")
        num_classes = cond.get("num_classes")
        concat_channels = int(cond.get("concat_channels") or 0)
        if num_prompts:
            unet_cfg.update(with_conditioning=True, cross_attention_dim=int(cond["cross_attention_dim"]))
        elif cond.get("cross_attention_dim"):
            unet_cfg.update(with_conditioning=True, cross_attention_dim=int(cond["cross_attention_dim"]))
        if num_classes:
            unet_cfg["num_class_embeds"] = int(num_classes) + 1
        if unet_type == "SPADEDiffusionModelUNet":
            if not cond.get("seg_channels"):
                raise ValueError("a SPADEDiffusionModelUNet needs conditioning.seg_channels (the mask channels).")
            unet_cfg["label_nc"] = int(cond["seg_channels"])
        unet = _UNETS[unet_type](
            spatial_dims=sd, in_channels=latent_channels + concat_channels, out_channels=latent_channels, **unet_cfg
        )
        if config.get("lora"):
            apply_lora(unet, **config["lora"])
        sched_type = sched_cfg.pop("type", "DDPMScheduler")
        if sched_type not in _SCHEDULERS:
            raise ValueError(f"unknown scheduler type '{sched_type}'; choose one of {sorted(_SCHEDULERS)}.")
        scheduler = _SCHEDULERS[sched_type](**sched_cfg)
        prompt_embedding = (
            PromptEmbedding(int(num_prompts), int(cond["cross_attention_dim"]), int(cond.get("prompt_tokens") or 4))
            if num_prompts
            else None
        )
        return cls(
            unet=unet,
            scheduler=scheduler,
            autoencoder=autoencoder,
            prompt_embedding=prompt_embedding,
            num_classes=int(num_classes) if num_classes else None,
            concat_channels=concat_channels,
            scale_factor=float(config.get("scale_factor", 1.0)),
            config=config,
        )

    @classmethod
    def from_preset(cls, preset: str = "tiny", **kwargs: Any) -> LatentGenerator:
        """Shortcut for ``LatentGenerator.from_config(generator_config(preset, **kwargs))``."""
        return cls.from_config(generator_config(preset, **kwargs))

    def save(self, path: str, extra: Mapping[str, Any] | None = None) -> None:
        """Write weights + config to ``path`` atomically (temp file + rename); ``extra`` must be JSON-like.

        A UNet with LoRA adapters is saved with its adapter config, so :meth:`load` rebuilds the adapters.
        """
        if not self.config:
            raise ValueError("this generator was built without a config; build it with LatentGenerator.from_config().")
        config = dict(self.config)
        config["scale_factor"] = float(self.scale_factor)
        config["lora"] = get_lora_config(self.unet) if has_lora(self.unet) else None
        state = {k: v.detach().cpu() for k, v in self.state_dict().items()}
        atomic_save(
            {"format": CHECKPOINT_FORMAT, "config": config, "state_dict": state, "extra": dict(extra or {})}, path
        )

    @classmethod
    def load(cls, path: str, map_location: str | torch.device | None = "cpu") -> LatentGenerator:
        """Rebuild a generator from a checkpoint written by :meth:`save` (``weights_only=True``)."""
        ckpt = load_checkpoint(path, map_location=map_location, expected_format=CHECKPOINT_FORMAT)
        gen = cls.from_config(ckpt["config"])
        check_state_dict_compatible(gen, ckpt["state_dict"], name=str(path))
        gen.load_state_dict(ckpt["state_dict"])
        return gen

    def load_weights(self, path: str, map_location: str | torch.device | None = "cpu") -> None:
        """Load the weights of a checkpoint into this generator; mismatching keys are listed in the error."""
        ckpt = load_checkpoint(path, map_location=map_location)
        state = ckpt.get("state_dict", ckpt) if isinstance(ckpt, dict) else ckpt
        check_state_dict_compatible(self, state, name=str(path))
        self.load_state_dict(state)

    # ------------------------------------------------------------------ shapes and checks
    @property
    def autoencoder_factor(self) -> int:
        """Spatial down-sampling factor of the autoencoder (1 without one)."""
        if self.autoencoder is None:
            return 1
        return 2 ** (len(self.config.get("autoencoder", {}).get("channels", [0])) - 1)

    @property
    def unet_factor(self) -> int:
        """Spatial down-sampling factor of the UNet on latents."""
        return 2 ** (len(self.unet.block_out_channels) - 1)

    @property
    def spatial_divisor(self) -> int:
        """Image sizes must be multiples of this (autoencoder factor x UNet factor)."""
        return self.autoencoder_factor * self.unet_factor

    def latent_shape(self, image_spatial_shape: Sequence[int]) -> tuple[int, ...]:
        """Latent shape ``(latent_channels, *spatial)`` of an image of spatial shape ``image_spatial_shape``."""
        self._check_spatial(image_spatial_shape, self.spatial_divisor, "image")
        return (self.latent_channels, *[s // self.autoencoder_factor for s in image_spatial_shape])

    def _check_spatial(self, shape: Sequence[int], divisor: int, what: str) -> None:
        if len(shape) != self.spatial_dims:
            raise ValueError(
                f"{what} has {len(shape)} spatial dims {tuple(shape)} but this generator is {self.spatial_dims}D; "
                f"pass a (B, C, {', '.join('HWD'[: self.spatial_dims])}) tensor."
            )
        bad = [s for s in shape if s % divisor]
        if bad:
            raise ValueError(
                f"{what} spatial size {tuple(shape)} is not divisible by {divisor} (autoencoder factor "
                f"{self.autoencoder_factor} x UNet factor {self.unet_factor}); pad it, e.g. with "
                f"monai.transforms.DivisiblePad(k={divisor}), and crop the result back."
            )

    def _check_tensor(self, x: torch.Tensor, channels: int | None, divisor: int, what: str) -> None:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{what} must be a torch.Tensor, got {type(x).__name__}.")
        if x.ndim != self.spatial_dims + 2:
            raise ValueError(
                f"{what} must be (B, C, {', '.join('HWD'[: self.spatial_dims])}) for this {self.spatial_dims}D "
                f"generator, got shape {tuple(x.shape)}; add the batch/channel axes or use a {x.ndim - 2}D generator."
            )
        if channels is not None and x.shape[1] != channels:
            raise ValueError(f"{what} has {x.shape[1]} channels, this generator expects {channels}.")
        self._check_spatial(x.shape[2:], divisor, what)

    # ------------------------------------------------------------------ autoencoder
    def encode(self, images: torch.Tensor, sample: bool = False, generator: torch.Generator | None = None) -> torch.Tensor:
        """Encode images to scaled latents: the posterior mean (or a posterior sample) times ``scale_factor``.

        Without an autoencoder the images themselves are the diffusion space (returned unchanged).
        """
        self._check_tensor(images, self.image_channels, self.spatial_divisor, "images")
        if self.autoencoder is None:
            return images
        z_mu, z_sigma = self.autoencoder.encode(images)
        if sample:
            # drawn where the generator lives (a CPU generator with CUDA latents is fine), then moved
            eps = torch.randn(z_mu.shape, generator=generator, device=generator.device if generator else z_mu.device)
            z_mu = z_mu + z_sigma * eps.to(z_mu.device, z_mu.dtype)
        return z_mu * self.scale_factor

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Decode scaled latents to images (identity for pixel-space diffusion)."""
        self._check_tensor(latents, self.latent_channels, 1, "latents")
        if self.autoencoder is None:
            return latents
        return self.autoencoder.decode(latents / self.scale_factor)

    @torch.no_grad()
    def estimate_scale_factor(self, images: torch.Tensor, set_value: bool = True) -> float:
        """Set ``scale_factor = 1 / std`` of the unscaled posterior means of ``images`` and return it (the package's
        one estimate, :func:`~monai_genaug.networks.latent_scale.latent_scale_factor`: sample std, float64)."""
        if self.autoencoder is None:
            return 1.0
        value = latent_scale_factor(self._posterior_mean, images)
        if set_value:
            self.scale_factor.fill_(value)
        return value

    def _posterior_mean(self, images: torch.Tensor) -> torch.Tensor:
        self._check_tensor(images, self.image_channels, self.spatial_divisor, "images")
        return self.autoencoder.encode(images)[0]

    @torch.no_grad()
    def estimate_scale_factor_from_loader(self, loader: Any, image_key: str = "image", max_batches: int = 8) -> float:
        """:meth:`estimate_scale_factor` on the images of the first ``max_batches`` batches of a data loader,
        streamed batch by batch (the same value as on the concatenated images).

        The loader pass runs inside ``torch.random.fork_rng`` (random transforms do not shift the caller's random
        stream) and with the networks in eval mode; their train / eval modes are restored afterwards.

        Args:
            loader: an iterable of dicts with ``image_key``.
            image_key: batch key of the images.
            max_batches: batches to look at.

        Raises:
            ValueError: the loader is empty or its batches lack ``image_key``.
        """
        if self.autoencoder is None:
            return 1.0
        modes = {m: m.training for m in self.modules()}
        self.eval()
        try:
            with torch.random.fork_rng(devices=[]):
                value = latent_scale_factor(
                    self._posterior_mean, loader, image_key, max_batches=max_batches, device=self.scale_factor.device
                )
        finally:
            for m, mode in modes.items():
                m.training = mode
        self.scale_factor.fill_(value)
        return value

    # ------------------------------------------------------------------ conditions
    def null_condition(self, condition: Mapping[str, torch.Tensor] | None, batch_size: int) -> dict[str, torch.Tensor]:
        """The null version of ``condition``: null prompt, null context, null class; ``seg``/``concat`` kept.

        This is the unconditional branch of classifier-free guidance.
        """
        condition = dict(condition or {})
        null: dict[str, torch.Tensor] = {}
        device = self.scale_factor.device
        if self.prompt_embedding is not None or "prompt" in condition or "context" in condition:
            if self.prompt_embedding is not None:
                null["context"] = self.prompt_embedding.null_context(batch_size)
            elif "context" in condition:
                null["context"] = torch.zeros_like(condition["context"])
        if self.num_classes is not None:
            null["class_labels"] = torch.full((batch_size,), self.num_classes, dtype=torch.long, device=device)
        for key in ("seg", "concat"):
            if key in condition:
                null[key] = condition[key]
        return null

    def drop_condition(
        self, condition: Mapping[str, torch.Tensor] | None, p: float, generator: torch.Generator | None = None
    ) -> dict[str, torch.Tensor]:
        """Replace the semantic condition of a random fraction ``p`` of the batch by the null condition.

        Condition dropout trains the null branch used by classifier-free guidance. Returns a new dict (the input is
        not modified); ``seg`` and ``concat`` are structural and never dropped.
        """
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"condition dropout probability must be in [0, 1], got {p}.")
        if not condition:
            return {}
        resolved = self.resolve_condition(condition)
        if p == 0.0:
            return resolved
        batch = next(iter(resolved.values())).shape[0]
        null = self.null_condition(condition, batch)
        dev = next(iter(resolved.values())).device
        drop = (torch.rand(batch, generator=generator, device=generator.device if generator else "cpu") < p).to(dev)
        out = dict(resolved)
        for key in ("context", "class_labels"):
            if key in resolved:
                mask = drop.view(-1, *([1] * (resolved[key].ndim - 1)))
                out[key] = torch.where(mask, null[key].to(resolved[key].dtype), resolved[key])
        return out

    def resolve_condition(
        self, condition: Mapping[str, torch.Tensor] | None, batch_size: int | None = None
    ) -> dict[str, torch.Tensor]:
        """Turn a user condition into the tensors the UNet takes: ``context``, ``class_labels``, ``seg``, ``concat``.

        Missing semantic conditions become null (unconditional); a SPADE UNet needs ``seg`` and concatenated
        channels need ``concat``.
        """
        condition = dict(condition or {})
        unknown = set(condition) - set(CONDITION_KEYS)
        if unknown:
            raise ValueError(f"unknown condition keys {sorted(unknown)}; valid keys are {list(CONDITION_KEYS)}.")
        if batch_size is None:
            batch_size = next((int(v.shape[0]) for v in condition.values() if isinstance(v, torch.Tensor)), 1)
        out: dict[str, torch.Tensor] = {}
        if "prompt" in condition and "context" in condition:
            raise ValueError("give either 'prompt' (learned prompt ids) or 'context' (raw embeddings), not both.")
        if "prompt" in condition:
            if self.prompt_embedding is None:
                raise ValueError("this generator has no learned prompts; build it with num_prompts or pass 'context'.")
            out["context"] = self.prompt_embedding(condition["prompt"])
        elif "context" in condition:
            if not self.uses_context:
                raise ValueError("this generator's UNet has no cross-attention; it cannot take a 'context'.")
            out["context"] = condition["context"]
        elif self.uses_context:
            if self.prompt_embedding is None:
                raise ValueError("this generator's UNet needs a cross-attention 'context' (B, L, D).")
            out["context"] = self.prompt_embedding.null_context(batch_size)
        if "class_labels" in condition:
            if self.num_classes is None:
                raise ValueError("this generator is not class-conditional; build it with num_classes.")
            labels = torch.as_tensor(condition["class_labels"], device=self.scale_factor.device).long().reshape(-1)
            if ((labels < 0) | (labels > self.num_classes)).any():
                raise ValueError(
                    f"class labels must be in [0, {self.num_classes - 1}] (or {self.num_classes} for the null class), "
                    f"got {sorted(set(labels.tolist()))}."
                )
            out["class_labels"] = labels
        elif self.num_classes is not None:
            out["class_labels"] = torch.full(
                (batch_size,), self.num_classes, dtype=torch.long, device=self.scale_factor.device
            )
        if self.is_spade:
            if "seg" not in condition:
                raise ValueError("this generator is mask-conditioned (SPADE): pass condition['seg'] (B, K, *spatial).")
            out["seg"] = condition["seg"]
        elif "seg" in condition:
            raise ValueError("'seg' conditioning needs a SPADE generator (generator_config(seg_channels=K)).")
        if self.concat_channels:
            if "concat" not in condition:
                raise ValueError(f"this generator needs condition['concat'] with {self.concat_channels} channels.")
            out["concat"] = condition["concat"]
        elif "concat" in condition:
            raise ValueError("'concat' conditioning needs a generator built with concat_channels > 0.")
        return out

    # ------------------------------------------------------------------ the UNet call
    def forward(
        self,
        x_t: torch.Tensor,
        timesteps: torch.Tensor | int,
        condition: Mapping[str, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Predict the UNet target (noise, velocity or sample) for noisy inputs ``x_t`` at ``timesteps``.

        Args:
            x_t: noisy latents (B, latent_channels, *spatial).
            timesteps: an int or a (B,) tensor of training-schedule indices.
            condition: a dict with any of ``prompt``, ``context``, ``class_labels``, ``seg``, ``concat``; already
                resolved conditions (from :meth:`resolve_condition`) are accepted too.
        """
        self._check_tensor(x_t, self.latent_channels, self.unet_factor, "noisy latents")
        batch = x_t.shape[0]
        cond = self.resolve_condition(condition, batch)
        for key, value in cond.items():
            if value.shape[0] != batch:
                raise ValueError(f"condition '{key}' has batch size {value.shape[0]}, the latents have {batch}.")
        t = torch.as_tensor(timesteps, device=x_t.device).long().reshape(-1)
        if t.numel() == 1:
            t = t.expand(batch)
        x = x_t
        if "concat" in cond:
            extra = cond["concat"].to(x_t.dtype)
            if tuple(extra.shape[2:]) != tuple(x_t.shape[2:]) or extra.shape[1] != self.concat_channels:
                raise ValueError(
                    f"condition 'concat' must have shape (B, {self.concat_channels}, {tuple(x_t.shape[2:])}), "
                    f"got {tuple(extra.shape)}."
                )
            x = torch.cat([x_t, extra], dim=1)
        kwargs: dict[str, torch.Tensor] = {}
        if "context" in cond:
            kwargs["context"] = cond["context"].to(x_t.dtype)
        if "class_labels" in cond:
            kwargs["class_labels"] = cond["class_labels"]
        if "seg" in cond:
            kwargs["seg"] = cond["seg"].to(x_t.dtype)
        return self.unet(x, t, **kwargs)

    def train(self, mode: bool = True) -> LatentGenerator:
        """Set train mode on the UNet and prompts; the autoencoder stays in eval mode (it is frozen during diffusion
        training; train it through its own trainer on ``generator.autoencoder``)."""
        super().train(mode)
        if self.autoencoder is not None:
            self.autoencoder.eval()
        return self

    def trainable_parameters(self) -> Iterator[nn.Parameter]:
        """Parameters a diffusion trainer optimises: the UNet's and the prompt embedding's (autoencoder excluded)."""
        yield from (p for p in self.unet.parameters() if p.requires_grad)
        if self.prompt_embedding is not None:
            yield from (p for p in self.prompt_embedding.parameters() if p.requires_grad)
