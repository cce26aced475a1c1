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
"""The sequence (2D + t) diffusion model of the generative core: a temporal UNet, its scheduler and the class /
image-prior / motion condition encoders, checkpointed as one file.

Ctrl-GenAug (Zhou et al., "Ctrl-GenAug: Controllable Generative Augmentation for Medical Sequence Classification",
arXiv:2409.17091) samples clips from it with the package's one :class:`~monai_genaug.generative.sampler.DiffusionSampler`;
it satisfies the :class:`~monai_genaug.generative.protocols.DiffusionModel` protocol as
:class:`~monai_genaug.generative.latent_generator.LatentGenerator` does (here the "latents" are the frames).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from monai.networks.schedulers import DDPMScheduler
from torch import nn

from monai_genaug.networks.frame_encoder import FrameAutoencoder
from monai_genaug.networks.motion_encoder import MotionEncoder, check_motion
from monai_genaug.networks.sequence_unet import ImagePriorTokenizer, SequenceDiffusionUNet
from monai_genaug.utils.checkpoint import (
    atomic_save,
    check_state_dict_compatible,
    load_checkpoint,
    register_checkpoint_format,
    to_json_config,
)

__all__ = [
    "CTRL_CONDITION_KEYS",
    "SEQUENCE_GENERATOR_FORMAT",
    "SequenceGenerator",
]


#: the conditions of a sequence generator
CTRL_CONDITION_KEYS = ("class_labels", "prior", "motion")
SEQUENCE_GENERATOR_FORMAT = register_checkpoint_format(
    "monai_genaug.SequenceGenerator", "sequence generator", "save with SequenceGenerator.save()"
)
class SequenceGenerator(nn.Module):
    """Sequence diffusion model + scheduler + condition encoders, usable by the package's :class:`DiffusionSampler`.

    Conditions (a dict): ``class_labels`` ``(B,)`` (``num_classes`` = null class), ``prior`` ``(B, Cp, h, w)``
    image-prior embedding (zeros = null), ``motion`` ``(B, 2, F - 1, H, W)`` motion fields (zeros = null).

    Args:
        unet: a :class:`~monai_genaug.networks.sequence_unet.SequenceDiffusionUNet`.
        scheduler: a MONAI scheduler with the training noise schedule.
        num_frames: the clip length ``F`` (1-frame clips are accepted too: image pre-training).
        num_classes: number of classes (the UNet needs ``num_class_embeds = num_classes + 1``), or ``None``.
        prior_tokenizer: image-prior tokenizer (the UNet must have cross-attention), or ``None``.
        motion_encoder: motion-field encoder, or ``None``.
        frame_encoder: a learned frame encoder kept with the generator (trained on real frames, then frozen), whose
            encoding of a clip's first frame is the image prior (its ``out_channels`` must be the prior's channels);
            ``None`` when priors come from elsewhere.
        config: the JSON config (kept in checkpoints).
    """

    def __init__(
        self,
        unet: SequenceDiffusionUNet,
        scheduler: nn.Module,
        num_frames: int,
        num_classes: int | None = None,
        prior_tokenizer: ImagePriorTokenizer | None = None,
        motion_encoder: MotionEncoder | None = None,
        config: Mapping[str, Any] | None = None,
        frame_encoder: FrameAutoencoder | None = None,
    ) -> None:
        super().__init__()
        self.unet = unet
        self.scheduler = scheduler
        self.num_frames = int(num_frames)
        self.num_classes = num_classes
        self.prior_tokenizer = prior_tokenizer
        self.motion_encoder = motion_encoder
        self.frame_encoder = frame_encoder
        self.config = dict(config or {})
        self.register_buffer("scale_factor", torch.tensor(1.0))
        self.image_channels = int(unet.in_channels)
        self.latent_channels = int(unet.out_channels)
        if num_classes is not None and unet.num_class_embeds != num_classes + 1:
            raise ValueError(f"num_classes={num_classes} needs a UNet with num_class_embeds={num_classes + 1}.")
        if (prior_tokenizer is not None) != unet.with_conditioning:
            raise ValueError("an image-prior tokenizer needs a UNet with cross-attention (with_conditioning=True).")
        if frame_encoder is not None and (prior_tokenizer is None or frame_encoder.out_channels != self.prior_channels):
            raise ValueError(
                f"the frame encoder gives {frame_encoder.out_channels} channels but the prior tokenizer takes "
                f"{self.prior_channels}; set prior_channels to the encoder's last width."
            )

    @property
    def prior_channels(self) -> int | None:
        """Channels of the image-prior embedding, or None when the model takes no prior."""
        return None if self.prior_tokenizer is None else self.prior_tokenizer.in_channels

    @property
    def spatial_divisor(self) -> int:
        """Frame sizes must be multiples of this."""
        return 2 ** (len(self.unet.block_out_channels) - 1)

    # ------------------------------------------------------------------ construction and checkpoints
    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> SequenceGenerator:
        """Build an untrained generator from :func:`ctrl_genaug_config`."""
        config = to_json_config(config)
        u = dict(config["unet"])
        motion_channels = u.pop("motion_channels", [16])
        cross_dim = int(u.pop("cross_attention_dim"))
        # older configs have no "motion_injection": their motion embedding is added (ControlNet-style)
        injection = str(config.get("motion_injection", "add"))
        prior_channels = config.get("prior_channels")
        num_classes = config.get("num_classes")
        unet = SequenceDiffusionUNet(
            2,
            int(config["image_channels"]),
            int(config["image_channels"]),
            with_conditioning=bool(prior_channels),
            cross_attention_dim=cross_dim if prior_channels else None,
            num_class_embeds=(num_classes + 1) if num_classes else None,
            input_feature_mode=injection if config.get("motion") else "add",
            **u,
        )
        sched = dict(config["scheduler"])
        scheduler = DDPMScheduler(clip_sample=False, **sched)
        tokenizer = ImagePriorTokenizer(int(prior_channels), cross_dim) if prior_channels else None
        motion = (
            MotionEncoder(2, 2, int(u["channels"][0]), motion_channels, scale=float(config.get("motion_scale", 1.0)),
                          zero_init=injection == "add")
            if config.get("motion")
            else None
        )
        frames = config.get("frame_encoder")
        encoder = FrameAutoencoder(int(config["image_channels"]), **frames) if frames else None
        return cls(unet, scheduler, int(config["num_frames"]), num_classes, tokenizer, motion, config, encoder)

    def save(self, path: str | os.PathLike, extra: Mapping[str, Any] | None = None) -> None:
        """Write weights + config atomically (load with :meth:`load`)."""
        state = {k: v.detach().cpu() for k, v in self.state_dict().items()}
        atomic_save({"format": SEQUENCE_GENERATOR_FORMAT, "config": self.config, "state_dict": state,
                     "extra": dict(extra or {})}, path)

    @classmethod
    def load(cls, path: str | os.PathLike, map_location: str | torch.device | None = "cpu") -> SequenceGenerator:
        """Rebuild a generator saved by :meth:`save` (``weights_only=True``)."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(
                f"sequence generator weights '{path}' not found; train them with the Ctrl-GenAug bundle "
                "(configs/train_frames.json, then configs/train_clips.json) or pass the right path."
            )
        ckpt = load_checkpoint(str(path), map_location=map_location, expected_format=SEQUENCE_GENERATOR_FORMAT)
        gen = cls.from_config(ckpt["config"])
        check_state_dict_compatible(gen, ckpt["state_dict"], name=str(path))
        gen.load_state_dict(ckpt["state_dict"])
        return gen

    # ------------------------------------------------------------------ checks and conditions
    def check_clips(self, clips: torch.Tensor, what: str = "clips", allow_frames: bool = True) -> None:
        """Raise a clear error unless ``clips`` is ``(B, C, F, H, W)`` with this generator's C, F and sizes."""
        if not isinstance(clips, torch.Tensor) or clips.ndim != 5:
            got = tuple(clips.shape) if isinstance(clips, torch.Tensor) else type(clips).__name__
            raise ValueError(f"{what} must be (B, C, F, H, W) tensors, got {got}; stack clips as (C, F, H, W) each.")
        nf = clips.shape[2]
        if nf != self.num_frames and not (allow_frames and nf == 1):
            raise ValueError(
                f"{what} have {nf} frames but this generator makes clips of {self.num_frames} frames; resample or "
                f"crop the clips to {self.num_frames} frames (e.g. clips[:, :, :{self.num_frames}]) or build the "
                f"generator with num_frames={nf}."
            )
        if clips.shape[1] != self.image_channels:
            raise ValueError(f"{what} have {clips.shape[1]} channels, the generator expects {self.image_channels}.")
        bad = [s for s in clips.shape[3:] if s % self.spatial_divisor]
        if bad:
            raise ValueError(
                f"{what} frame size {tuple(clips.shape[3:])} is not divisible by {self.spatial_divisor}; pad or "
                "resize the frames."
            )

    def resolve_condition(
        self, condition: Mapping[str, torch.Tensor] | None, batch_size: int | None = None, num_frames: int | None = None
    ) -> dict[str, torch.Tensor]:
        """Validate a condition dict; returns ``class_labels``, ``prior`` and ``motion`` tensors the model needs."""
        condition = dict(condition or {})
        unknown = set(condition) - set(CTRL_CONDITION_KEYS)
        if unknown:
            raise ValueError(f"unknown condition keys {sorted(unknown)}; valid keys are {list(CTRL_CONDITION_KEYS)}.")
        if batch_size is None:
            batch_size = next((int(v.shape[0]) for v in condition.values() if isinstance(v, torch.Tensor)), 1)
        device = self.scale_factor.device
        out: dict[str, torch.Tensor] = {}
        if self.num_classes is not None:
            if "class_labels" in condition:
                labels = torch.as_tensor(condition["class_labels"], device=device).long().reshape(-1)
                if ((labels < 0) | (labels > self.num_classes)).any():
                    raise ValueError(
                        f"class labels must be in [0, {self.num_classes - 1}] ({self.num_classes} = null class), got "
                        f"{sorted(set(labels.tolist()))}."
                    )
                out["class_labels"] = labels
            else:
                out["class_labels"] = torch.full((batch_size,), self.num_classes, dtype=torch.long, device=device)
        elif "class_labels" in condition:
            raise ValueError("this generator is not class-conditional; build it with num_classes.")
        if self.prior_tokenizer is not None:
            if "prior" not in condition or condition["prior"] is None:
                raise ValueError(
                    f"this generator is conditioned on an image prior but condition['prior'] is missing; pass the "
                    f"(B, {self.prior_channels}, h, w) embeddings of the clips' first frames from the frozen encoder "
                    "it was trained with (precomputed tensors, or CtrlGenAug(prior_encoder=...).conditions_from_clips)."
                )
            prior = torch.as_tensor(condition["prior"]).to(device).float()
            if prior.ndim != 4 or prior.shape[1] != self.prior_channels:
                raise ValueError(
                    f"condition['prior'] must be (B, {self.prior_channels}, h, w), got shape {tuple(prior.shape)}."
                )
            out["prior"] = prior
        elif condition.get("prior") is not None:
            raise ValueError("this generator takes no image prior (prior_channels=None); remove condition['prior'].")
        if self.motion_encoder is not None:
            if "motion" not in condition or condition["motion"] is None:
                raise ValueError(
                    "this generator is conditioned on motion but condition['motion'] is missing; pass (B, 2, F-1, H, W) "
                    "fields, e.g. monai_genaug.networks.motion_encoder.estimate_motion(real_clips)."
                )
            motion = torch.as_tensor(condition["motion"]).to(device).float()
            if motion.ndim != 5 or motion.shape[1] != 2 or motion.shape[0] != batch_size:
                check_motion(motion, batch_size, (num_frames or self.num_frames), motion.shape[-2:])
            out["motion"] = motion
        elif condition.get("motion") is not None:
            raise ValueError("this generator takes no motion (built with motion=False); remove condition['motion'].")
        return out

    def null_condition(
        self,
        condition: Mapping[str, torch.Tensor] | None,
        batch_size: int,
        drop: Sequence[str] = ("prior", "motion"),
    ) -> dict[str, torch.Tensor]:
        """The null version of ``condition`` for the conditions in ``drop`` (zeros for prior and motion, the null
        class for ``class_labels``); the others are kept (by default the class, as in the paper)."""
        cond = self.resolve_condition(condition, batch_size)
        bad = set(drop) - set(CTRL_CONDITION_KEYS)
        if bad:
            raise ValueError(f"cannot drop {sorted(bad)}; droppable conditions are {list(CTRL_CONDITION_KEYS)}.")
        out = dict(cond)
        for key in drop:
            if key not in cond:
                continue
            if key == "class_labels":
                out[key] = torch.full_like(cond[key], int(self.num_classes))
            else:
                out[key] = torch.zeros_like(cond[key])
        return out

    # ------------------------------------------------------------------ the UNet call
    def forward(
        self, x_t: torch.Tensor, timesteps: torch.Tensor | int, condition: Mapping[str, torch.Tensor] | None = None
    ) -> torch.Tensor:
        """Predict the noise of clips ``x_t`` ``(B, C, F, H, W)`` at ``timesteps`` under ``condition``."""
        self.check_clips(x_t, "noisy clips")
        b, _, nf, h, w = x_t.shape
        cond = self.resolve_condition(condition, b, nf)
        for key, value in cond.items():
            if value.shape[0] != b:
                raise ValueError(f"condition '{key}' has batch size {value.shape[0]}, the clips have {b}.")
        context = self.prior_tokenizer(cond["prior"].to(x_t.dtype)) if "prior" in cond else None
        feature = None
        if "motion" in cond:
            motion = check_motion(cond["motion"], b, nf, (h, w))
            feature = self.motion_encoder(motion).to(x_t.dtype)
        t = torch.as_tensor(timesteps, device=x_t.device).long().reshape(-1)
        t = t.expand(b) if t.numel() == 1 else t
        return self.unet(x_t, t, context=context, class_labels=cond.get("class_labels"), input_feature=feature)
