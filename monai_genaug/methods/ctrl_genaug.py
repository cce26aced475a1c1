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
"""Ctrl-GenAug: controllable sequence (2D + t / slice-stack) generation with class, image-prior and motion conditions.

Zhou, Huang, et al., "Ctrl-GenAug: Controllable Generative Augmentation for Medical Sequence Classification",
arXiv:2409.17091. The pipeline, composed from the package's parts:

1. **pre-train on frames**: the sequence generator run on one-frame clips is an image diffusion model conditioned on
   the class label (class embedding added to the time embedding) and an image prior (tokens from any frozen image
   encoder's embedding of the frame, as cross-attention context; MedSAM in the paper, never required here);
2. **fine-tune on clips**: key-frame attention, temporal attention (zero-initialised, an identity at the start) and
   the ControlNet-style motion encoder are trained, the rest frozen
   (:func:`~monai_genaug.networks.sequence_unet.set_trainable_modules`); condition dropout keep-all (0.1) /
   drop-all (0.1) / drop-each (0.5) trains the null branches, copying the condition before dropping (the release
   mutates its cached samples, so a dropped condition stays dropped);
3. **generate** clips from the conditions of real *training* clips (class, prior of the first frame, motion fields
   computed from the clip with torch: :func:`~monai_genaug.networks.motion_encoder.estimate_motion`) through the
   package's one sampler with classifier-free guidance; the null branch zeroes the prior and the motion (one null
   per condition: ``guided`` names which conditions the guidance amplifies; the class can be guided too);
4. **filter** with the sequence filters (:mod:`monai_genaug.filters.semantic`, :mod:`monai_genaug.filters.temporal`);
5. **evaluate** a downstream sequence classifier on real + kept synthetic clips
   (:func:`evaluate_sequence_augmentation`).

Diffusion runs on pixels by default (small clips on CPU); the noise schedule is the paper's (T = 1000, scaled-linear
betas 0.00085 -> 0.012, epsilon prediction).
"""

from __future__ import annotations

import copy
import json
import logging
import os
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from ignite.engine import Events
from monai.networks.schedulers import DDPMScheduler
from monai.utils import optional_import
from torch import nn

from monai_genaug.data.phantoms import make_sequence_phantoms
from monai_genaug.data.synthetic import write_synthetic_images
from monai_genaug.engines.sequence_diffusion import (
    create_sequence_diffusion_trainer,
    drop_conditions,
)
from monai_genaug.engines.tracking import loss_from_output
from monai_genaug.evaluation.downstream import evaluate_training_sets, variant_summaries
from monai_genaug.evaluation.learners import GlobalPoolCNN, train_learner
from monai_genaug.filters.base import FilterChain
from monai_genaug.filters.semantic import SemanticLossFilter
from monai_genaug.filters.temporal import (
    NearDuplicateFilter,
    TemporalConsistencyFilter,
    temporal_consistency,
)
from monai_genaug.generative.guidance import (
    ClassifierFreeGuidance,
    Guidance,
    MultiConditionGuidance,
    NoGuidance,
)
from monai_genaug.generative.sampler import DiffusionSampler
from monai_genaug.networks.motion_encoder import (
    MotionEncoder,
    check_motion,
    estimate_motion,
)
from monai_genaug.networks.sequence_unet import (
    SEQUENCE_TRAINABLE_MODULES,
    ImagePriorTokenizer,
    SequenceDiffusionUNet,
    set_trainable_modules,
)
from monai_genaug.utils.checkpoint import (
    atomic_save,
    check_state_dict_compatible,
    load_checkpoint,
    to_json_config,
)
from monai_genaug.utils.images import save_image_grid

nib, _has_nib = optional_import("nibabel")

__all__ = [
    "CTRL_CONDITION_KEYS",
    "CTRL_GENAUG_SCHEDULE",
    "CtrlGenAug",
    "FramePrior",
    "SequenceClassifier",
    "SequenceGenerator",
    "brats_slice_clips",
    "bundle_evaluate",
    "bundle_filter",
    "bundle_generate",
    "bundle_sequence_data",
    "bundle_train",
    "ctrl_genaug_config",
    "drop_conditions",
    "evaluate_sequence_augmentation",
    "filter_generated",
    "load_clips",
    "prepare_sequence_data",
    "sequence_classifier",
    "train_sequence_classifier",
]

logger = logging.getLogger(__name__)

#: Ctrl-GenAug's noise schedule (SD v1.4: T = 1000, scaled-linear 0.00085 -> 0.012, epsilon)
CTRL_GENAUG_SCHEDULE: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "schedule": "scaled_linear_beta",
    "beta_start": 0.00085,
    "beta_end": 0.012,
}
#: the conditions of a sequence generator
CTRL_CONDITION_KEYS = ("class_labels", "prior", "motion")
CHECKPOINT_FORMAT = "monai_genaug.SequenceGenerator"
_PRESETS = {
    "tiny": {"channels": [8, 16], "attention_levels": [False, True], "num_res_blocks": 1, "norm_num_groups": 4,
             "num_head_channels": 8, "cross_attention_dim": 16, "motion_channels": [8]},
    "small": {"channels": [32, 64, 64], "attention_levels": [False, True, True], "num_res_blocks": 1,
              "norm_num_groups": 16, "num_head_channels": 16, "cross_attention_dim": 32, "motion_channels": [16]},
    "base": {"channels": [128, 256, 512], "attention_levels": [False, True, True], "num_res_blocks": 2,
             "norm_num_groups": 32, "num_head_channels": 64, "cross_attention_dim": 256, "motion_channels": [16]},
}


def ctrl_genaug_config(
    preset: str = "tiny",
    image_channels: int = 1,
    num_frames: int = 8,
    num_classes: int | None = 2,
    prior_channels: int | None = 2,
    motion: bool = True,
    motion_scale: float = 1.0,
    overrides: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """A JSON config of a :class:`SequenceGenerator`.

    Args:
        preset: ``"tiny"`` (tests), ``"small"`` (CPU demos, 16-64 px) or ``"base"`` (GPU).
        image_channels: channels per frame.
        num_frames: clip length ``F`` the generator is fine-tuned and sampled at (1-frame clips are accepted for
            pre-training on frames).
        num_classes: classes of the class condition (a null class is added), ``None`` for none.
        prior_channels: channels of the image-prior embedding (e.g. 2 for :class:`FramePrior`, 256 for MedSAM),
            ``None`` for no prior.
        motion: condition on motion fields through a :class:`~monai_genaug.networks.motion_encoder.MotionEncoder`.
        motion_scale: multiplies motion fields before encoding.
        overrides: entries replacing the preset's UNet settings (``channels``, ``attention_levels``...).
    """
    if preset not in _PRESETS:
        raise ValueError(f"unknown preset '{preset}'; choose one of {sorted(_PRESETS)}.")
    if num_frames < 2:
        raise ValueError(f"num_frames must be >= 2 (a clip), got {num_frames}.")
    unet = dict(copy.deepcopy(_PRESETS[preset]))
    unet.update(overrides or {})
    return to_json_config(
        {
            "image_channels": image_channels,
            "num_frames": num_frames,
            "num_classes": num_classes,
            "prior_channels": prior_channels,
            "motion": bool(motion),
            "motion_scale": motion_scale,
            "unet": unet,
            "scheduler": {"prediction_type": "epsilon", **CTRL_GENAUG_SCHEDULE},
        }
    )


class FramePrior(nn.Module):
    """A parameter-free frozen image encoder: average- and max-pooled frame at ``size`` (``(B, 2C, s, s)``).

    The default image prior when no foundation-model encoder (MedSAM, ...) is at hand: any frozen module mapping
    frames ``(B, C, H, W)`` to ``(B, Cp, h, w)`` works in its place.

    Args:
        size: side of the pooled map.
    """

    def __init__(self, size: int = 4) -> None:
        super().__init__()
        self.size = int(size)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        return torch.cat([F.adaptive_avg_pool2d(frames, self.size), F.adaptive_max_pool2d(frames, self.size)], dim=1)


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
    ) -> None:
        super().__init__()
        self.unet = unet
        self.scheduler = scheduler
        self.num_frames = int(num_frames)
        self.num_classes = num_classes
        self.prior_tokenizer = prior_tokenizer
        self.motion_encoder = motion_encoder
        self.config = dict(config or {})
        self.register_buffer("scale_factor", torch.tensor(1.0))
        self.image_channels = int(unet.in_channels)
        self.latent_channels = int(unet.out_channels)
        if num_classes is not None and unet.num_class_embeds != num_classes + 1:
            raise ValueError(f"num_classes={num_classes} needs a UNet with num_class_embeds={num_classes + 1}.")
        if (prior_tokenizer is not None) != unet.with_conditioning:
            raise ValueError("an image-prior tokenizer needs a UNet with cross-attention (with_conditioning=True).")

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
        prior_channels = config.get("prior_channels")
        num_classes = config.get("num_classes")
        unet = SequenceDiffusionUNet(
            2,
            int(config["image_channels"]),
            int(config["image_channels"]),
            with_conditioning=bool(prior_channels),
            cross_attention_dim=cross_dim if prior_channels else None,
            num_class_embeds=(num_classes + 1) if num_classes else None,
            **u,
        )
        sched = dict(config["scheduler"])
        scheduler = DDPMScheduler(clip_sample=False, **sched)
        tokenizer = ImagePriorTokenizer(int(prior_channels), cross_dim) if prior_channels else None
        motion = (
            MotionEncoder(2, 2, int(u["channels"][0]), motion_channels, scale=float(config.get("motion_scale", 1.0)))
            if config.get("motion")
            else None
        )
        return cls(unet, scheduler, int(config["num_frames"]), num_classes, tokenizer, motion, config)

    def save(self, path: str | os.PathLike, extra: Mapping[str, Any] | None = None) -> None:
        """Write weights + config atomically (load with :meth:`load`)."""
        state = {k: v.detach().cpu() for k, v in self.state_dict().items()}
        atomic_save({"format": CHECKPOINT_FORMAT, "config": self.config, "state_dict": state,
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
        ckpt = load_checkpoint(str(path), map_location=map_location)
        if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"'{path}' is not a sequence generator checkpoint; save with SequenceGenerator.save().")
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


class CtrlGenAug:
    """The Ctrl-GenAug pipeline: conditions from clips, two-stage training, guided clip generation, writing.

    Clips are ``(B, C, F, H, W)`` in [0, 1] (diffusion runs in [-1, 1]).

    Args:
        generator: the :class:`SequenceGenerator`.
        prior_encoder: a frozen module / callable mapping frames ``(B, C, H, W)`` to prior embeddings
            ``(B, Cp, h, w)`` (default :class:`FramePrior` when the generator takes a prior; MedSAM or any foundation
            model can be plugged in, or priors passed precomputed).
        motion_method: ``"flow"`` or ``"difference"`` (see :func:`estimate_motion`).
        device: device of the generator.
    """

    def __init__(
        self,
        generator: SequenceGenerator,
        prior_encoder: nn.Module | Callable[[torch.Tensor], torch.Tensor] | None = None,
        motion_method: str = "flow",
        device: str | torch.device = "cpu",
    ) -> None:
        self.device = torch.device(device)
        self.generator = generator.to(self.device)
        if prior_encoder is None and generator.prior_tokenizer is not None:
            prior_encoder = FramePrior(int(generator.config.get("prior_size", 4)))
        self.prior_encoder = prior_encoder
        self.motion_method = motion_method

    @classmethod
    def from_preset(cls, preset: str = "tiny", device: str | torch.device = "cpu", **kwargs: Any) -> CtrlGenAug:
        """A fresh pipeline from :func:`ctrl_genaug_config` arguments."""
        return cls(SequenceGenerator.from_config(ctrl_genaug_config(preset, **kwargs)), device=device)

    @classmethod
    def load(cls, path: str | os.PathLike, device: str | torch.device = "cpu", **kwargs: Any) -> CtrlGenAug:
        """A pipeline around a saved generator."""
        return cls(SequenceGenerator.load(path), device=device, **kwargs)

    # ------------------------------------------------------------------ conditions
    @torch.no_grad()
    def compute_prior(self, frames: torch.Tensor) -> torch.Tensor:
        """Image-prior embeddings ``(B, Cp, h, w)`` of frames ``(B, C, H, W)`` with the frozen prior encoder."""
        if self.prior_encoder is None:
            raise ValueError(
                "no prior encoder: pass precomputed prior embeddings (priors=...) or build CtrlGenAug(prior_encoder=...)."
            )
        if isinstance(self.prior_encoder, nn.Module):
            self.prior_encoder.eval()
        return torch.as_tensor(self.prior_encoder(frames.to(self.device).float())).float()

    def conditions_from_clips(
        self,
        clips: torch.Tensor,
        labels: Sequence[int] | torch.Tensor | None = None,
        priors: torch.Tensor | None = None,
        motion: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """The condition of real clips: class labels, the prior of each clip's first frame, the clip's motion.

        Args:
            clips: ``(B, C, F, H, W)`` real clips in [0, 1].
            labels: class index per clip (required by class-conditional generators).
            priors: precomputed ``(B, Cp, h, w)`` prior embeddings of the first frames (else computed).
            motion: precomputed ``(B, 2, F - 1, H, W)`` motion fields (else estimated from the clips).
        """
        gen = self.generator
        gen.check_clips(clips)
        b, _, nf = clips.shape[:3]
        cond: dict[str, torch.Tensor] = {}
        if gen.num_classes is not None:
            if labels is None:
                raise ValueError("this generator is class-conditional: pass the class label of every clip.")
            lab = torch.as_tensor(labels).long().reshape(-1)
            if lab.numel() != b:
                raise ValueError(f"got {lab.numel()} labels for {b} clips.")
            cond["class_labels"] = lab.to(self.device)
        if gen.prior_tokenizer is not None:
            if priors is None:
                priors = self.compute_prior(clips[:, :, 0])
            priors = torch.as_tensor(priors).float()
            if priors.shape[0] != b:
                raise ValueError(f"got {priors.shape[0]} prior embeddings for {b} clips; give one per clip.")
            cond["prior"] = priors.to(self.device)
        if gen.motion_encoder is not None:
            if motion is None:
                motion = estimate_motion(clips, self.motion_method) if nf > 1 else clips.new_zeros(b, 2, 0, *clips.shape[3:])
            cond["motion"] = check_motion(motion, b, nf, clips.shape[3:]).to(self.device)
        return cond

    # ------------------------------------------------------------------ training
    def training_items(
        self,
        clips: torch.Tensor,
        labels: Sequence[int] | torch.Tensor | None = None,
        priors: torch.Tensor | None = None,
        stage: str = "clips",
    ) -> list[dict[str, torch.Tensor]]:
        """Training items ``{"image", "label", "prior", "motion"}`` with the conditions computed once (the prior of
        each clip's first frame, the clip's motion); for ``stage="frames"`` every frame is a one-frame clip.

        Args:
            clips: real clips ``(N, C, F, H, W)`` in [0, 1].
            labels: class per clip.
            priors: precomputed prior embeddings; for ``stage="frames"`` one per frame ``(N*F, ...)`` in frame order
                (clip-major), for ``"clips"`` one per clip (of its first frame). Computed when None.
            stage: ``"frames"`` or ``"clips"``.
        """
        if stage not in ("frames", "clips"):
            raise ValueError(f"stage must be 'frames' or 'clips', got '{stage}'.")
        gen = self.generator
        gen.check_clips(clips, allow_frames=stage == "frames")
        clips = clips.float()
        n, c, nf, h, w = clips.shape
        if stage == "frames":
            data = clips.transpose(1, 2).reshape(n * nf, c, 1, h, w)
            lab = None if labels is None else torch.as_tensor(labels).long().reshape(-1).repeat_interleave(nf)
            cond = self.conditions_from_clips(data, lab, priors, None)
        else:
            data = clips
            cond = self.conditions_from_clips(data, labels, priors)
        cond = {k: v.cpu() for k, v in cond.items()}
        key = {"class_labels": "label", "prior": "prior", "motion": "motion"}
        return [{"image": data[i], **{key[k]: v[i] for k, v in cond.items()}} for i in range(data.shape[0])]

    def create_trainer(
        self,
        clips: torch.Tensor,
        labels: Sequence[int] | torch.Tensor | None = None,
        priors: torch.Tensor | None = None,
        stage: str = "clips",
        num_steps: int = 100,
        batch_size: int = 8,
        lr: float = 1e-3,
        output_dir: str | os.PathLike = "ctrl_genaug_train",
        trainable: Sequence[str] | None = SEQUENCE_TRAINABLE_MODULES,
        steps_per_epoch: int | None = None,
        seed: int = 0,
        **trainer_kwargs: Any,
    ):
        """A MONAI ``SupervisedTrainer`` for one training stage on these clips
        (:func:`~monai_genaug.engines.sequence_diffusion.create_sequence_diffusion_trainer`).

        Batches are drawn with replacement by a seeded sampler (checkpointed, so a resumed run equals an uninterrupted
        one); the run has exactly ``num_steps`` iterations: ``num_steps / steps_per_epoch`` epochs.

        Args:
            clips: real clips ``(N, C, F, H, W)`` in [0, 1].
            labels: class per clip.
            priors: precomputed prior embeddings (see :meth:`training_items`).
            stage: ``"frames"`` (pre-training on single frames, all parameters) or ``"clips"`` (``trainable`` only).
            num_steps: optimisation steps in total.
            batch_size: clips (or frames) per step.
            lr: AdamW learning rate.
            output_dir: folder of the checkpoint (``checkpoint_last.pt``), sample sheets, final file, MLflow store.
            trainable: name substrings of the modules fine-tuned on clips (None: all).
            steps_per_epoch: iterations per epoch; must divide ``num_steps``; default the largest divisor of
                ``num_steps`` not above one pass over the data.
            seed: seed of the sampler, the noise / timestep / dropout draws and the global RNGs.
            trainer_kwargs: more arguments of ``create_sequence_diffusion_trainer`` (``ema_decay``, ``tracking``,
                ``tracking_uri``, ``sample_every``, ``final_path``, ``resume``, ``keep_all_p``, ``grad_clip``...).
        """
        items = self.training_items(clips, labels, priors, stage)
        num_steps = int(num_steps)
        if num_steps < 1:
            raise ValueError(f"num_steps must be >= 1, got {num_steps}.")
        batch_size = max(1, min(int(batch_size), len(items)))
        if steps_per_epoch is None:
            one_pass = max(1, -(-len(items) // batch_size))
            steps_per_epoch = max(d for d in range(1, min(one_pass, num_steps) + 1) if num_steps % d == 0)
        if steps_per_epoch < 1 or num_steps % steps_per_epoch:
            raise ValueError(f"steps_per_epoch={steps_per_epoch} must be >= 1 and divide num_steps={num_steps}.")
        sampler = torch.utils.data.RandomSampler(
            items, replacement=True, num_samples=steps_per_epoch * batch_size,
            generator=torch.Generator().manual_seed(int(seed)),
        )
        loader = torch.utils.data.DataLoader(items, batch_size=batch_size, sampler=sampler, num_workers=0)
        return create_sequence_diffusion_trainer(
            self.generator, loader, num_steps // steps_per_epoch, output_dir, stage=stage, trainable=trainable,
            lr=lr, device=self.device, prior_encoder=self.prior_encoder, motion_method=self.motion_method, seed=seed,
            **trainer_kwargs,
        )

    def fit(
        self,
        clips: torch.Tensor,
        labels: Sequence[int] | torch.Tensor | None = None,
        priors: torch.Tensor | None = None,
        stage: str = "clips",
        num_steps: int = 100,
        batch_size: int = 8,
        lr: float = 1e-3,
        trainable: Sequence[str] | None = SEQUENCE_TRAINABLE_MODULES,
        keep_all_p: float = 0.1,
        drop_all_p: float = 0.1,
        drop_each_p: float = 0.5,
        grad_clip: float = 1.0,
        seed: int = 0,
        log_every: int = 0,
        output_dir: str | os.PathLike | None = None,
        **trainer_kwargs: Any,
    ) -> list[float]:
        """Train the generator (MSE on the noise, AdamW, gradient clipping, condition dropout) with the Ignite trainer
        of :meth:`create_trainer`; the generator is left in eval mode with every parameter trainable.

        Args:
            clips: real clips ``(N, C, F, H, W)`` in [0, 1].
            labels: class per clip.
            priors: precomputed prior embeddings (see :meth:`training_items`).
            stage: ``"frames"`` (pre-training on single frames, all parameters trained; temporal modules are unused)
                or ``"clips"`` (fine-tuning, only ``trainable`` modules).
            num_steps: optimisation steps.
            batch_size: clips (or frames) per step.
            lr: AdamW learning rate.
            trainable: name substrings of the modules fine-tuned on clips (None: all).
            keep_all_p: condition dropout, see :func:`drop_conditions`.
            drop_all_p: condition dropout.
            drop_each_p: condition dropout.
            grad_clip: gradient-norm clip.
            seed: seed of batches, noise, timesteps and dropout.
            log_every: log the mean loss every so many steps (0: never).
            output_dir: the trainer's folder (checkpoint, sheets, MLflow); a temporary folder (no resume) when None.
            trainer_kwargs: more arguments of :meth:`create_trainer` (``ema_decay``, ``tracking_uri``, ``resume``...).

        Returns:
            the loss of every step of this run.
        """
        with tempfile.TemporaryDirectory() as tmp:
            trainer = self.create_trainer(
                clips, labels, priors, stage, num_steps, batch_size, lr, output_dir or tmp, trainable, seed=seed,
                keep_all_p=keep_all_p, drop_all_p=drop_all_p, drop_each_p=drop_each_p, grad_clip=grad_clip,
                **({"resume": False} if output_dir is None else {}), **trainer_kwargs,
            )
            losses: list[float] = []

            def record(engine) -> None:
                losses.append(float(loss_from_output(engine.state.output)))
                if log_every and len(losses) % log_every == 0:
                    logger.info(f"{stage} step {engine.state.iteration}/{num_steps}: "
                                f"loss {np.mean(losses[-log_every:]):.4f}")

            trainer.add_event_handler(Events.ITERATION_COMPLETED, record)
            try:
                trainer.run()
            finally:
                self.generator.eval()
                set_trainable_modules(self.generator, None)
        return losses

    # ------------------------------------------------------------------ generation
    def guidance(
        self,
        condition: Mapping[str, torch.Tensor],
        guidance_scale: float | Mapping[str, float] = 7.5,
        guided: Sequence[str] = ("prior", "motion"),
    ) -> Guidance:
        """Classifier-free guidance with a null per condition.

        Args:
            condition: the (batched) condition.
            guidance_scale: one scale for the ``guided`` conditions together (``null + s (cond - null)``, the null
                branch has all of ``guided`` nulled: the paper's form with ``guided=("prior", "motion")``), or a
                dict ``{condition: scale}`` for separate scales (``null + sum_k s_k (cond_k - null)``, where
                ``cond_k`` keeps only condition ``k``).
            guided: the conditions the single scale amplifies.
        """
        gen = self.generator
        batch = next(iter(condition.values())).shape[0]
        if isinstance(guidance_scale, Mapping):
            keys = list(guidance_scale)
            null = gen.null_condition(condition, batch, keys)
            branches, weights = [null], [1.0 - sum(float(s) for s in guidance_scale.values())]
            for k in keys:
                branches.append(gen.null_condition(condition, batch, [o for o in keys if o != k]))
                weights.append(float(guidance_scale[k]))
            return MultiConditionGuidance(branches, weights)
        if float(guidance_scale) == 1.0:
            return NoGuidance()
        return ClassifierFreeGuidance(float(guidance_scale), null_condition=gen.null_condition(condition, batch, guided))

    @torch.no_grad()
    def sample(
        self,
        condition: Mapping[str, torch.Tensor],
        num_frames: int | None = None,
        spatial_size: Sequence[int] | None = None,
        guidance_scale: float | Mapping[str, float] = 7.5,
        guided: Sequence[str] = ("prior", "motion"),
        num_inference_steps: int = 50,
        eta: float = 0.0,
        seeds: Sequence[int] | None = None,
    ) -> torch.Tensor:
        """Generate one clip per condition entry, ``(B, C, F, H, W)`` in [0, 1].

        Args:
            condition: batched condition (e.g. from :meth:`conditions_from_clips`).
            num_frames: clip length (default the generator's).
            spatial_size: frame size (default: the motion fields' size; required without motion).
            guidance_scale: see :meth:`guidance`.
            guided: see :meth:`guidance`.
            num_inference_steps: DDIM steps.
            eta: DDIM stochasticity.
            seeds: one seed per clip (its starting noise), default ``0..B-1``.
        """
        gen = self.generator
        batch = next(iter(condition.values())).shape[0]
        nf = int(num_frames or gen.num_frames)
        if spatial_size is None:
            if "motion" not in condition:
                raise ValueError("give spatial_size (H, W) of the frames to generate.")
            spatial_size = tuple(condition["motion"].shape[-2:])
        seeds = list(range(batch)) if seeds is None else [int(s) for s in seeds]
        if len(seeds) != batch:
            raise ValueError(f"got {len(seeds)} seeds for {batch} clips.")
        shape = (gen.image_channels, nf, *[int(s) for s in spatial_size])
        x = torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(s)) for s in seeds]).to(self.device)
        gen.check_clips(x)
        cond = {k: v.to(self.device) for k, v in condition.items()}
        sampler = DiffusionSampler(num_inference_steps=num_inference_steps, eta=eta, clip_x0=(-1.0, 1.0),
                                   progress=False)
        gen.eval()
        out = sampler(gen, x=x, condition=cond, guidance=self.guidance(cond, guidance_scale, guided),
                      rng=torch.Generator().manual_seed(seeds[0]))
        return ((out.clamp(-1, 1) + 1) / 2).cpu()

    def generate(
        self,
        clips: torch.Tensor,
        labels: Sequence[int] | torch.Tensor | None = None,
        num_per_clip: int = 2,
        priors: torch.Tensor | None = None,
        sources: Sequence[str] | None = None,
        base_seed: int = 66,
        batch_size: int = 8,
        **sample_kwargs: Any,
    ) -> dict[str, Any]:
        """Generate ``num_per_clip`` clips from the conditions of every real (training) clip, one seed each.

        Returns:
            ``{"clips": (N, C, F, H, W) in [0, 1], "labels": [...], "sources": [...], "seeds": [...]}``; the
            generated clips of real clip ``i`` come from seeds ``base_seed + k`` (``k < num_per_clip``).
        """
        cond = self.conditions_from_clips(clips, labels, priors)
        n = clips.shape[0]
        sources = [f"clip{i:04d}" for i in range(n)] if sources is None else [str(s) for s in sources]
        if len(sources) != n:
            raise ValueError(f"got {len(sources)} source ids for {n} clips.")
        rows = [(i, base_seed + k) for i in range(n) for k in range(int(num_per_clip))]
        out = []
        for start in range(0, len(rows), batch_size):
            chunk = rows[start : start + batch_size]
            idx = torch.tensor([i for i, _ in chunk])
            sub = {k: v[idx.to(v.device)] for k, v in cond.items()}
            out.append(self.sample(sub, clips.shape[2], clips.shape[3:], seeds=[s for _, s in chunk], **sample_kwargs))
        lab = cond.get("class_labels")
        return {
            "clips": torch.cat(out) if out else torch.zeros(0, *clips.shape[1:]),
            "labels": [int(lab[i]) if lab is not None else 0 for i, _ in rows],
            "sources": [sources[i] for i, _ in rows],
            "seeds": [s for _, s in rows],
        }

    @staticmethod
    def write(
        generated: Mapping[str, Any], out_dir: str | os.PathLike, class_names: Sequence[str] | None = None,
        sheet_rows: int = 8,
    ) -> list[dict]:
        """Write generated clips as NIfTI volumes (frames along the third axis), ``<class>/<source>_<label>_<seed>``,
        a datalist ``synthetic_datalist.json`` and a PNG sheet ``samples_sheet.png`` (one clip per row)."""
        out = Path(out_dir)
        clips = generated["clips"]
        entries: list[dict] = []
        by_source: dict[str, list[int]] = {}
        for i, s in enumerate(generated["sources"]):
            by_source.setdefault(s, []).append(i)
        for source, idx in by_source.items():
            written = write_synthetic_images(
                clips[idx], [generated["labels"][i] for i in idx], [generated["seeds"][i] for i in idx], out,
                source=source, class_names=class_names,
            )
            entries.extend(written)
        if len(clips):
            save_image_grid(clips[:sheet_rows], out / "samples_sheet.png", sequence_dim=2, normalise=False)
        _write_json({"training": entries}, out / "synthetic_datalist.json")
        return entries


def load_clips(datalist: Sequence[Mapping[str, Any]], image_key: str = "image") -> torch.Tensor:
    """Clips ``(N, 1, F, H, W)`` of datalist entries holding tensors / arrays or NIfTI paths written by
    :meth:`CtrlGenAug.write` (frames along the third axis)."""
    out = []
    for item in datalist:
        v = item[image_key]
        if isinstance(v, (str, os.PathLike)):
            if not Path(v).is_file():
                raise FileNotFoundError(f"clip file '{v}' not found; regenerate the synthetic set.")
            arr = np.asarray(nib.load(str(v)).dataobj, dtype=np.float32)
            v = arr[None] if arr.ndim == 3 else np.moveaxis(arr, -1, 0)
        out.append(torch.as_tensor(np.asarray(v), dtype=torch.float32))
    if not out:
        return torch.zeros(0)
    shapes = {tuple(t.shape) for t in out}
    if len(shapes) > 1:
        raise ValueError(f"clips have different shapes {sorted(shapes)}; all clips must share (C, F, H, W).")
    return torch.stack(out)


def _write_json(obj: Any, path: str | os.PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    os.replace(tmp, path)
    return path


# ------------------------------------------------------------------------------------------------ data
def prepare_sequence_data(
    num: int = 96,
    num_frames: int = 8,
    spatial_size: Sequence[int] = (16, 16),
    num_classes: int = 2,
    test_fraction: float = 0.5,
    seed: int = 0,
) -> dict[str, Any]:
    """Phantom sequences (:func:`~monai_genaug.data.phantoms.make_sequence_phantoms`) split into train / test.

    Returns:
        ``{"train": {"clips", "labels"}, "test": {...}, "num_classes", "class_names"}``; clips ``(N, 1, F, H, W)``.
    """
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}.")
    items = make_sequence_phantoms(num, num_frames, spatial_size, num_classes, seed)
    clips = torch.stack([torch.as_tensor(i["image"]) for i in items]).float()
    labels = torch.tensor([int(i["label"]) for i in items])
    perm = torch.randperm(num, generator=torch.Generator().manual_seed(seed))
    n_test = max(1, int(round(num * test_fraction)))
    te, tr = perm[:n_test].sort().values, perm[n_test:].sort().values
    return {
        "train": {"clips": clips[tr], "labels": labels[tr]},
        "test": {"clips": clips[te], "labels": labels[te]},
        "num_classes": num_classes,
        "class_names": [f"class_{k}" for k in range(num_classes)],
    }


def brats_slice_clips(
    dataset_dir: str | os.PathLike,
    num_frames: int = 8,
    slice_step: int = 2,
    window_step: int = 4,
    size: int = 32,
    modality: str = "Flair",
    tumour_threshold: float = 0.01,
    cases: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Axial slice-stack clips of BRATS volumes labelled by tumour presence (a real sequence-classification task).

    For every case folder (``<case>/{modality}_subtrMeanDivStd.nii.gz``, ``OTMultiClass.nii.gz``,
    ``brainmask.nii.gz``, the DeepMedic copy of BRATS 2013): the volume is cropped to the square around the brain's
    in-plane bounding box, normalised within the brain mask (1st-99th percentile to [0, 1], 0 outside the brain), and
    windows of ``num_frames`` axial slices ``slice_step`` apart start every ``window_step`` slices inside the brain;
    each frame is area-resized to ``size x size``. Label 1 ("tumour") when the tumour voxels (any label > 0) are at
    least ``tumour_threshold`` of the brain voxels of the clip's slices, else 0.

    Args:
        dataset_dir: folder of the case folders.
        num_frames: slices per clip.
        slice_step: slice spacing inside a clip.
        window_step: slices between the starts of consecutive clips.
        size: frame side after resizing.
        modality: file prefix of the sequence (``"Flair"`` or ``"T1c"``).
        tumour_threshold: tumour fraction of the brain voxels that makes a clip positive.
        cases: case folder names to use (default all, sorted).

    Returns:
        ``{"clips": (N, 1, F, size, size), "labels": (N,), "cases": [case per clip], "tumour_fraction": (N,),
        "class_names": ["no_tumour", "tumour"], "num_classes": 2}``.
    """
    root = Path(dataset_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"BRATS folder '{root}' not found; pass the folder holding the case folders.")
    names = sorted(p.name for p in root.iterdir() if p.is_dir()) if cases is None else list(cases)
    clips, labels, owners, fractions = [], [], [], []
    span = (num_frames - 1) * slice_step + 1
    for name in names:
        case = root / name
        files = {k: case / f for k, f in (("image", f"{modality}_subtrMeanDivStd.nii.gz"),
                                          ("label", "OTMultiClass.nii.gz"), ("brain", "brainmask.nii.gz"))}
        missing = [str(f) for f in files.values() if not f.is_file()]
        if missing:
            raise FileNotFoundError(f"BRATS case '{case}' lacks {missing}; expected the DeepMedic layout.")
        vol = np.asarray(nib.load(str(files["image"])).dataobj, dtype=np.float32)
        brain = np.asarray(nib.load(str(files["brain"])).dataobj) > 0.5
        tumour = np.asarray(nib.load(str(files["label"])).dataobj) > 0.5
        lo, hi = np.percentile(vol[brain], [1, 99])
        vol = np.where(brain, np.clip((vol - lo) / max(hi - lo, 1e-6), 0, 1), 0).astype(np.float32)
        xs, ys, zs = (np.nonzero(brain.any(axis=ax))[0] for ax in ((1, 2), (0, 2), (0, 1)))
        side = max(xs[-1] - xs[0], ys[-1] - ys[0]) + 1
        cx, cy = (xs[0] + xs[-1]) // 2, (ys[0] + ys[-1]) // 2
        pad = side
        vol_p, brain_p, tumour_p = (np.pad(a, ((pad, pad), (pad, pad), (0, 0))) for a in (vol, brain, tumour))
        x0, y0 = cx - side // 2 + pad, cy - side // 2 + pad
        crop = (slice(x0, x0 + side), slice(y0, y0 + side))
        vol_c, brain_c, tumour_c = vol_p[crop], brain_p[crop], tumour_p[crop]
        for z in range(int(zs[0]), int(zs[-1]) - span + 2, window_step):
            sl = slice(z, z + span, slice_step)
            frames = torch.from_numpy(np.ascontiguousarray(vol_c[:, :, sl].transpose(2, 1, 0)))[:, None]
            frames = F.interpolate(frames, size=(size, size), mode="area")[:, 0]
            fraction = float(tumour_c[:, :, sl].sum() / max(brain_c[:, :, sl].sum(), 1))
            clips.append(frames[None])
            labels.append(int(fraction >= tumour_threshold))
            owners.append(name)
            fractions.append(fraction)
    if not clips:
        raise ValueError(f"no clip of {num_frames} slices x {slice_step} fits the brains under '{root}'.")
    return {"clips": torch.stack(clips).float(), "labels": torch.tensor(labels), "cases": owners,
            "tumour_fraction": torch.tensor(fractions), "class_names": ["no_tumour", "tumour"], "num_classes": 2}


# ------------------------------------------------------------------------------------------------ downstream
class SequenceClassifier(GlobalPoolCNN):
    """A small sequence classifier: a 2D CNN (MONAI ``Convolution`` blocks, group norm, SiLU, max-pooling) applied to
    every frame, global mean + max pooling over space, mean over frames, a linear head: the evaluation protocol's
    :class:`~monai_genaug.evaluation.GlobalPoolCNN` in its frame-wise form.

    Global pooling makes it translation-invariant, which a downstream task on small clips needs (a flatten + linear
    head over a 3D feature map, as in MONAI's ``Classifier``, stays at chance on the phantom sequences with 32
    training clips). Input ``(B, C, F, H, W)``.

    Args:
        in_channels: channels per frame.
        num_classes: output classes.
        channels: feature channels per block (a 2x max-pool between blocks).
        norm_num_groups: group-norm groups.
    """

    def __init__(
        self, in_channels: int, num_classes: int, channels: Sequence[int] = (16, 32, 32), norm_num_groups: int = 4
    ) -> None:
        super().__init__(2, in_channels, num_classes, channels, norm_num_groups, frames=True)

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        if clips.ndim != 5:
            raise ValueError(f"clips must be (B, C, F, H, W), got shape {tuple(clips.shape)}.")
        return super().forward(clips)


def sequence_classifier(
    num_classes: int, clip_shape: Sequence[int], channels: Sequence[int] = (16, 32, 32)
) -> nn.Module:
    """The downstream / semantic-filter classifier for ``(C, F, H, W)`` clips: a :class:`SequenceClassifier`."""
    return SequenceClassifier(int(clip_shape[0]), num_classes, channels)


def train_sequence_classifier(
    clips: torch.Tensor,
    labels: Sequence[int] | torch.Tensor,
    num_classes: int,
    num_steps: int = 400,
    batch_size: int = 16,
    lr: float = 3e-3,
    seed: int = 0,
    network: nn.Module | None = None,
    augment: bool = True,
) -> nn.Module:
    """Train a sequence classifier on clips (e.g. the real-data classifier of the semantic filter); eval mode.

    Args:
        clips: ``(N, C, F, H, W)`` clips.
        labels: class per clip.
        num_classes: number of classes.
        num_steps: AdamW steps (cosine decay), batches drawn with replacement.
        batch_size: clips per step.
        lr: learning rate.
        seed: seed of the initialisation, batches and augmentation.
        network: the classifier (default :func:`sequence_classifier`).
        augment: random in-plane rot90 / flips.
    """
    torch.manual_seed(seed)
    net = network if network is not None else sequence_classifier(num_classes, clips.shape[1:])
    labels = torch.as_tensor(labels).long().reshape(-1)
    return train_learner(net, clips, labels, "classification", num_steps, batch_size, lr, seed=seed, augment=augment)


def evaluate_sequence_augmentation(
    train_clips: torch.Tensor,
    train_labels: Sequence[int] | torch.Tensor,
    test_clips: torch.Tensor,
    test_labels: Sequence[int] | torch.Tensor,
    synthetic: Mapping[str, tuple[torch.Tensor, Sequence[int]] | None],
    num_classes: int,
    num_steps: int = 400,
    batch_size: int = 16,
    lr: float = 3e-3,
    seeds: Sequence[int] = (0,),
    output_path: str | os.PathLike | None = None,
) -> dict[str, dict[str, Any]]:
    """Train the downstream sequence classifier on real clips alone and on real + each synthetic set; test each.

    A thin wrapper of :func:`monai_genaug.evaluation.evaluate_training_sets` (the package's one downstream
    protocol): every variant trains for the same number of steps from the same initialisation per seed. For the full
    protocol (random subset of the filtered count, intervals, label curve) use
    :func:`monai_genaug.evaluation.evaluate_downstream`.

    Args:
        train_clips: real training clips ``(N, C, F, H, W)``.
        train_labels: their classes.
        test_clips: test clips.
        test_labels: their classes.
        synthetic: ``{variant: (clips, labels)}``; ``None`` is the real-only baseline.
        num_classes: number of classes.
        num_steps: training steps per run.
        batch_size: clips per step.
        lr: AdamW learning rate (cosine decay).
        seeds: one run per seed.
        output_path: also write the results as JSON.

    Returns:
        ``{variant: {"accuracy", "accuracy_std", "accuracy_low", "accuracy_high", "balanced_accuracy", "num_train",
        "num_synthetic", "runs"}}`` (:func:`monai_genaug.evaluation.variant_summaries`); ``"rows"`` holds the
        variant's per-case scores.
    """
    variants = {
        name: None if syn is None or not len(syn[0]) else (syn[0].float(), torch.as_tensor(syn[1]).long().reshape(-1))
        for name, syn in synthetic.items()
    }
    table, counts = evaluate_training_sets(
        "classification", (train_clips.float(), torch.as_tensor(train_labels).long().reshape(-1)),
        (test_clips.float(), torch.as_tensor(test_labels).long().reshape(-1)), num_classes, variants,
        learner_fn=lambda: sequence_classifier(num_classes, train_clips.shape[1:]), iterations=num_steps,
        batch_size=batch_size, lr=lr, seeds=seeds,
    )
    results = variant_summaries(table, counts, num_classes)
    for name, r in results.items():
        logger.info(f"downstream '{name}': accuracy {r['accuracy']:.3f}")
    if output_path is not None:
        _write_json(results, output_path)
    return results


def filter_generated(
    generated: Mapping[str, Any],
    classifier: nn.Module,
    feature_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
    alpha: float = 1.0,
    k: int = 4,
    dedup_threshold: float = 0.98,
    seed: int = 3407,
) -> dict[str, Any]:
    """Ctrl-GenAug's noisy-sample filter on generated clips: semantic (classifier loss <= alpha x group mean) >>
    temporal consistency (k-means midpoints) >> near-duplicates (cosine >= threshold), groups = source clips.

    Returns:
        ``{"keep": (N,) bool, "scores": (N, 3), "result": FilterResult, "kept": int, "total": int}``.
    """
    groups = list(generated["sources"])
    chain = FilterChain([
        SemanticLossFilter(classifier, alpha=alpha, groups=groups),
        TemporalConsistencyFilter(feature_fn, k=k, seed=seed),
        NearDuplicateFilter(feature_fn, threshold=dedup_threshold, groups=groups),
    ])
    result = chain(generated["clips"], generated["labels"])
    return {"keep": result.keep, "scores": result.scores, "result": result, "kept": result.num_kept,
            "total": int(result.keep.numel())}



# ------------------------------------------------------------------------------------------------ bundle steps
def bundle_sequence_data(
    dataset_dir: str | os.PathLike | None = None,
    num_phantoms: int = 64,
    num_frames: int = 8,
    image_size: Sequence[int] = (16, 16),
    num_classes: int = 2,
    test_fraction: float = 0.5,
    seed: int = 0,
) -> dict[str, Any]:
    """The bundle's data: phantom sequences by default, or ``dataset_dir/<class>/<clip>.nii.gz`` clips (frames along
    the third axis, as written by :meth:`CtrlGenAug.write`), split train / test with ``seed``."""
    if dataset_dir is None:
        return prepare_sequence_data(num_phantoms, num_frames, image_size, num_classes, test_fraction, seed)
    from monai_genaug.data.folders import class_folder_datalist

    items = class_folder_datalist(dataset_dir, extensions=(".nii.gz", ".nii"), check_readable=False)
    clips = load_clips(items)
    if clips.shape[2] != num_frames:
        raise ValueError(f"clips in '{dataset_dir}' have {clips.shape[2]} frames; set num_frames={clips.shape[2]}.")
    labels = torch.tensor([int(i["label"]) for i in items])
    perm = torch.randperm(len(items), generator=torch.Generator().manual_seed(seed))
    n_test = max(1, int(round(len(items) * test_fraction)))
    te, tr = perm[:n_test].sort().values, perm[n_test:].sort().values
    names = sorted({i["class_name"] for i in items}, key=lambda c: [i["class_name"] for i in items].index(c))
    return {"train": {"clips": clips[tr], "labels": labels[tr]}, "test": {"clips": clips[te], "labels": labels[te]},
            "num_classes": len(names), "class_names": names}


def bundle_train(
    data: Mapping[str, Any],
    stage: str,
    output_path: str | os.PathLike,
    init_path: str | os.PathLike | None = None,
    preset: str = "tiny",
    overrides: Mapping[str, Any] | None = None,
    num_steps: int = 300,
    batch_size: int = 8,
    lr: float = 2e-3,
    seed: int = 0,
    device: str | torch.device = "cpu",
) -> dict[str, Any]:
    """One training stage of the bundle: ``"frames"`` (a fresh generator, or ``init_path``) or ``"clips"`` (fine-tune
    the frame generator at ``init_path``); saves the generator to ``output_path``; returns a summary."""
    train = data["train"]
    if init_path is not None:
        generator = SequenceGenerator.load(init_path)
    elif stage == "clips":
        raise ValueError("fine-tuning on clips starts from the frame-trained generator: set init_path (train_frames.json).")
    else:
        cfg = ctrl_genaug_config(preset, int(train["clips"].shape[1]), int(train["clips"].shape[2]),
                                 int(data["num_classes"]), overrides=overrides)
        torch.manual_seed(seed)
        generator = SequenceGenerator.from_config(cfg)
    pipe = CtrlGenAug(generator, device=device)
    t0 = time.time()
    losses = pipe.fit(train["clips"], train["labels"], stage=stage, num_steps=num_steps, batch_size=batch_size, lr=lr,
                      seed=seed, log_every=max(num_steps // 5, 1))
    generator.save(output_path, extra={"stage": stage, "num_steps": num_steps, "data": "see bundle docs"})
    summary = {"stage": stage, "path": str(output_path), "seconds": time.time() - t0,
               "loss_first": float(np.mean(losses[: max(len(losses) // 10, 1)])),
               "loss_last": float(np.mean(losses[-max(len(losses) // 10, 1):]))}
    logger.info(f"{stage}: {summary}")
    return summary


def bundle_generate(
    generator_path: str | os.PathLike | CtrlGenAug,
    data: Mapping[str, Any],
    output_dir: str | os.PathLike,
    num_clips: int | None = None,
    num_per_clip: int = 2,
    guidance_scale: float = 2.0,
    num_inference_steps: int = 20,
    device: str | torch.device = "cpu",
) -> dict[str, Any]:
    """Generate clips from the conditions of the first ``num_clips`` real *training* clips; write them.

    ``generator_path`` is a saved generator or an already loaded :class:`CtrlGenAug` (the bundle's ``inferer``)."""
    pipe = generator_path if isinstance(generator_path, CtrlGenAug) else CtrlGenAug.load(generator_path, device=device)
    train = data["train"]
    n = len(train["clips"]) if num_clips is None else min(int(num_clips), len(train["clips"]))
    t0 = time.time()
    gen = pipe.generate(train["clips"][:n], train["labels"][:n], num_per_clip=num_per_clip,
                        guidance_scale=guidance_scale, num_inference_steps=num_inference_steps)
    entries = CtrlGenAug.write(gen, output_dir, class_names=data.get("class_names"))
    return {"num": len(entries), "seconds": time.time() - t0, "datalist": str(Path(output_dir) / "synthetic_datalist.json")}


def _read_synthetic(datalist_path: str | os.PathLike) -> tuple[list[dict], dict[str, Any]]:
    path = Path(datalist_path)
    if not path.is_file():
        raise FileNotFoundError(f"synthetic datalist '{path}' not found; run configs/inference.json first.")
    entries = json.loads(path.read_text())["training"]
    generated = {"clips": load_clips(entries), "labels": [int(e["label"]) for e in entries],
                 "sources": [e["source"] for e in entries], "seeds": [int(e["seed"]) for e in entries]}
    return entries, generated


def bundle_filter(
    data: Mapping[str, Any],
    synthetic_datalist: str | os.PathLike,
    output_dir: str | os.PathLike,
    classifier_steps: int = 400,
    alpha: float = 1.0,
    k: int = 4,
    dedup_threshold: float = 0.98,
    seed: int = 3407,
) -> dict[str, Any]:
    """Train the real-data sequence classifier, run the three filters, write the kept datalist and all scores."""
    entries, generated = _read_synthetic(synthetic_datalist)
    train = data["train"]
    clf = train_sequence_classifier(train["clips"], train["labels"], int(data["num_classes"]), classifier_steps)
    res = filter_generated(generated, clf, alpha=alpha, k=k, dedup_threshold=dedup_threshold, seed=seed)
    out = Path(output_dir)
    kept = [e for e, keep in zip(entries, res["keep"].tolist()) if keep]
    _write_json({"training": kept}, out / "filtered_datalist.json")
    names = ["semantic_loss", "temporal_consistency", "duplicate_similarity"]
    _write_json([{"image": e["image"], "kept": bool(k_), **{n: float(s) for n, s in zip(names, row)}}
                 for e, k_, row in zip(entries, res["keep"].tolist(), res["scores"].tolist())], out / "filter_scores.json")
    real_tc = temporal_consistency(train["clips"])
    summary = {"kept": res["kept"], "total": res["total"],
               "temporal_consistency_real": float(real_tc.mean()),
               "temporal_consistency_synthetic": float(res["scores"][:, 1].mean()) if res["total"] else None,
               "datalist": str(out / "filtered_datalist.json")}
    _write_json(summary, out / "filter_summary.json")
    return summary


def bundle_evaluate(
    data: Mapping[str, Any],
    synthetic_datalist: str | os.PathLike,
    filtered_datalist: str | os.PathLike,
    output_path: str | os.PathLike,
    num_steps: int = 400,
    seeds: Sequence[int] = (0,),
) -> dict[str, dict[str, Any]]:
    """Downstream sequence classification: real only, real + all synthetic clips, real + filtered clips."""
    _, syn = _read_synthetic(synthetic_datalist)
    path = Path(filtered_datalist)
    if not path.is_file():
        raise FileNotFoundError(f"filtered datalist '{path}' not found; run configs/filter.json first.")
    kept = json.loads(path.read_text())["training"]
    filt = (load_clips(kept), [int(e["label"]) for e in kept]) if kept else None
    return evaluate_sequence_augmentation(
        data["train"]["clips"], data["train"]["labels"], data["test"]["clips"], data["test"]["labels"],
        {"real_only": None, "real+synthetic": (syn["clips"], syn["labels"]), "real+filtered": filt},
        int(data["num_classes"]), num_steps=num_steps, seeds=seeds, output_path=output_path,
    )
