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
   the class label (class embedding added to the time embedding) and an image prior (tokens from a frozen image
   encoder's embedding of the frame, as cross-attention context; MedSAM in the paper, here by default a small
   autoencoder trained on the real frames and kept in the generator, :meth:`CtrlGenAug.fit_frame_encoder`);
2. **fine-tune on clips** (the paper's learning rate :data:`CLIP_STAGE_LR`, optional model selection / early stopping
   with ``fit(monitor=...)``): key-frame attention, temporal attention (zero-initialised, an identity at the start),
   the motion encoder and the insert unit (motion features concatenated and convolved, the paper's
   ``insert_strategy="concat"``) are trained, the rest frozen
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
import logging
import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from ignite.engine import Events
from monai.utils import optional_import
from torch import nn

from monai_genaug.data.synthetic import write_synthetic_images
from monai_genaug.engines.options import pop_training_options
from monai_genaug.engines.sequence_diffusion import create_sequence_diffusion_trainer, drop_conditions
from monai_genaug.generative.guidance import ClassifierFreeGuidance, Guidance, MultiConditionGuidance, NoGuidance
from monai_genaug.generative.sampler import DiffusionSampler
from monai_genaug.generative.sequence_generator import SequenceGenerator
from monai_genaug.handlers.tracking import loss_from_output
from monai_genaug.networks.motion_encoder import check_motion, estimate_motion
from monai_genaug.networks.frame_encoder import train_frame_autoencoder
from monai_genaug.networks.sequence_unet import INPUT_FEATURE_MODES, SEQUENCE_TRAINABLE_MODULES, set_trainable_modules
from monai_genaug.utils.checkpoint import to_json_config
from monai_genaug.utils.images import save_image_grid
from monai_genaug.utils.io import atomic_write_json

nib, _has_nib = optional_import("nibabel")

__all__ = [
    "CTRL_GENAUG_SCHEDULE",
    "CLIP_STAGE_LR",
    "LEARNED_FRAME_ENCODER",
    "CtrlGenAug",
    "FramePrior",
    "ctrl_genaug_config",
    "drop_conditions",
]

logger = logging.getLogger(__name__)

#: Ctrl-GenAug's noise schedule (SD v1.4: T = 1000, scaled-linear 0.00085 -> 0.012, epsilon)
CTRL_GENAUG_SCHEDULE: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "schedule": "scaled_linear_beta",
    "beta_start": 0.00085,
    "beta_end": 0.012,
}
#: the paper's learning rate of the clip stage (AdamW, spec C.3)
CLIP_STAGE_LR = 1e-4
#: a small learned frame encoder (:class:`~monai_genaug.networks.frame_encoder.FrameAutoencoder`) for the image prior
#: and the filters' frame features: 16 channels at half the frame size
LEARNED_FRAME_ENCODER: dict[str, Any] = {"channels": [16, 16], "strides": [2, 1]}
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
    motion_injection: str = "concat",
    frame_encoder: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """A JSON config of a :class:`SequenceGenerator`.

    Args:
        preset: ``"tiny"`` (tests), ``"small"`` (CPU demos, 16-64 px) or ``"base"`` (GPU).
        image_channels: channels per frame.
        num_frames: clip length ``F`` the generator is fine-tuned and sampled at (1-frame clips are accepted for
            pre-training on frames).
        num_classes: classes of the class condition (a null class is added), ``None`` for none.
        prior_channels: channels of the image-prior embedding of an external encoder (e.g. 2 for :class:`FramePrior`,
            256 for MedSAM), ``None`` for no prior; replaced by the last width of ``frame_encoder`` when one is given.
        motion: condition on motion fields through a :class:`~monai_genaug.networks.motion_encoder.MotionEncoder`.
        motion_scale: multiplies motion fields before encoding.
        overrides: entries replacing the preset's UNet settings (``channels``, ``attention_levels``...).
        motion_injection: ``"concat"`` (the paper's ``insert_strategy``: motion features concatenated to the first
            convolution's output and convolved back by a trained insert unit) or ``"add"`` (a zero-initialised
            ControlNet-style residual).
        frame_encoder: arguments of a :class:`~monai_genaug.networks.frame_encoder.FrameAutoencoder` kept inside the
            generator (e.g. :data:`LEARNED_FRAME_ENCODER`): trained on real frames and frozen, it gives the image
            prior (and the filters' frame features); ``None``: priors from an external encoder.
    """
    if preset not in _PRESETS:
        raise ValueError(f"unknown preset '{preset}'; choose one of {sorted(_PRESETS)}.")
    if num_frames < 2:
        raise ValueError(f"num_frames must be >= 2 (a clip), got {num_frames}.")
    if motion_injection not in INPUT_FEATURE_MODES:
        raise ValueError(f"motion_injection must be one of {INPUT_FEATURE_MODES}, got {motion_injection!r}.")
    unet = dict(copy.deepcopy(_PRESETS[preset]))
    unet.update(overrides or {})
    if frame_encoder is not None:
        frame_encoder = dict(frame_encoder)
        prior_channels = int(list(frame_encoder.get("channels", LEARNED_FRAME_ENCODER["channels"]))[-1])
    return to_json_config(
        {
            "image_channels": image_channels,
            "num_frames": num_frames,
            "num_classes": num_classes,
            "prior_channels": prior_channels,
            "motion": bool(motion),
            "motion_scale": motion_scale,
            "motion_injection": motion_injection,
            "frame_encoder": frame_encoder,
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


class _BestWeights:
    """Model selection for :meth:`CtrlGenAug.fit`: evaluate, keep the best weights, stop after ``patience``."""

    def __init__(self, network: nn.Module, monitor: Callable[[], Mapping[str, float]], patience: int | None) -> None:
        self.network, self.monitor, self.patience = network, monitor, patience
        self.history: list[dict[str, float]] = []
        self.best: tuple[float, int, dict[str, torch.Tensor]] | None = None
        self.stopped_at: int | None = None

    def evaluate(self, step: int, engine: Any = None) -> None:
        was_training = self.network.training
        self.network.eval()
        result = {k: float(v) for k, v in dict(self.monitor()).items()}
        self.network.train(was_training)
        if "score" not in result:
            raise ValueError(f"the monitor must return a mapping with a 'score', got keys {sorted(result)}.")
        self.history.append({"step": int(step), **result})
        if self.best is None or result["score"] > self.best[0]:
            self.best = (result["score"], int(step), copy.deepcopy(self.network.state_dict()))
        elif self.patience is not None and engine is not None:
            since = sum(1 for h in self.history if h["step"] > self.best[1])
            if since >= int(self.patience):
                self.stopped_at = int(step)
                engine.terminate()

    def restore(self) -> dict[str, Any]:
        assert self.best is not None
        self.network.load_state_dict(self.best[2])
        return {"history": self.history, "best_step": self.best[1], "best_score": self.best[0],
                "stopped_at": self.stopped_at}


class CtrlGenAug:
    """The Ctrl-GenAug pipeline: conditions from clips, two-stage training, guided clip generation, writing.

    Clips are ``(B, C, F, H, W)`` in [0, 1] (diffusion runs in [-1, 1]).

    Args:
        generator: the :class:`SequenceGenerator`.
        prior_encoder: a frozen module / callable mapping frames ``(B, C, H, W)`` to prior embeddings
            ``(B, Cp, h, w)`` (default: the generator's learned frame encoder when it has one
            (:meth:`fit_frame_encoder`), else :class:`FramePrior` when the generator takes a prior; MedSAM or any
            foundation model can be plugged in, or priors passed precomputed).
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
            prior_encoder = generator.frame_encoder or FramePrior(int(generator.config.get("prior_size", 4)))
        self.prior_encoder = prior_encoder
        self.motion_method = motion_method
        #: the clip stage's monitoring of the last :meth:`fit` with ``monitor`` (history, best step, stop step)
        self.monitoring: dict[str, Any] = {}

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
        lr: float | None = None,
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
            lr: AdamW learning rate (default 1e-3 for frames, the paper's :data:`CLIP_STAGE_LR` for clips).
            output_dir: folder of the checkpoint (``checkpoint_last.pt``), sample sheets, final file, MLflow store.
            trainable: name substrings of the modules fine-tuned on clips (None: all).
            steps_per_epoch: iterations per epoch; must divide ``num_steps``; default the largest divisor of
                ``num_steps`` not above one pass over the data.
            seed: seed of the sampler, the noise / timestep / dropout draws and the global RNGs.
            trainer_kwargs: more arguments of ``create_sequence_diffusion_trainer`` (``ema_decay``, ``sample_every``,
                ``final_path``, ``keep_all_p``, ``grad_clip``, ``options=TrainingOptions(...)`` - whose ``seed`` is
                replaced by ``seed`` -...).
        """
        items = self.training_items(clips, labels, priors, stage)
        if lr is None:
            lr = CLIP_STAGE_LR if stage == "clips" else 1e-3
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
            lr=lr, device=self.device, prior_encoder=self.prior_encoder, motion_method=self.motion_method,
            options=pop_training_options(trainer_kwargs, "CtrlGenAug.trainer").replace(seed=int(seed)),
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
        lr: float | None = None,
        trainable: Sequence[str] | None = SEQUENCE_TRAINABLE_MODULES,
        keep_all_p: float = 0.1,
        drop_all_p: float = 0.1,
        drop_each_p: float = 0.5,
        grad_clip: float = 1.0,
        seed: int = 0,
        log_every: int = 0,
        output_dir: str | os.PathLike | None = None,
        monitor: Callable[[], Mapping[str, float]] | None = None,
        monitor_every: int = 0,
        patience: int | None = None,
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
            lr: AdamW learning rate (default 1e-3 for frames, the paper's :data:`CLIP_STAGE_LR` for clips).
            trainable: name substrings of the modules fine-tuned on clips (None: all).
            keep_all_p: condition dropout, see :func:`drop_conditions`.
            drop_all_p: condition dropout.
            drop_each_p: condition dropout.
            grad_clip: gradient-norm clip.
            seed: seed of batches, noise, timesteps and dropout.
            log_every: log the mean loss every so many steps (0: never).
            output_dir: the trainer's folder (checkpoint, sheets, MLflow); a temporary folder (no resume) when None.
            monitor: early stopping / model selection: a callable run on the generator (eval mode) before training and
                every ``monitor_every`` steps, returning a mapping with a ``"score"`` (higher is better; e.g.
                :func:`~monai_genaug.methods.ctrl_genaug.training.clip_stage_monitor`: oracle class agreement and
                temporal consistency of clips generated from validation conditions). The weights of the best score
                are restored at the end (the untrained start included); :attr:`monitoring` keeps the history.
            monitor_every: steps between two monitor calls (required with ``monitor``).
            patience: stop after this many monitor calls without a better score (None: never stop early).
            trainer_kwargs: more arguments of :meth:`create_trainer` (``ema_decay``, ``options=TrainingOptions(...)``...).

        Returns:
            the loss of every step of this run.
        """
        if monitor is not None and int(monitor_every) < 1:
            raise ValueError(f"monitor needs monitor_every >= 1 (steps between evaluations), got {monitor_every}.")
        options = pop_training_options(trainer_kwargs, "CtrlGenAug.train")
        if output_dir is None:
            options = options.replace(resume=False)
        with tempfile.TemporaryDirectory() as tmp:
            trainer = self.create_trainer(
                clips, labels, priors, stage, num_steps, batch_size, lr, output_dir or tmp, trainable, seed=seed,
                keep_all_p=keep_all_p, drop_all_p=drop_all_p, drop_each_p=drop_each_p, grad_clip=grad_clip,
                options=options, **trainer_kwargs,
            )
            losses: list[float] = []

            def record(engine) -> None:
                losses.append(float(loss_from_output(engine.state.output)))
                if log_every and len(losses) % log_every == 0:
                    logger.info(f"{stage} step {engine.state.iteration}/{num_steps}: "
                                f"loss {np.mean(losses[-log_every:]):.4f}")

            trainer.add_event_handler(Events.ITERATION_COMPLETED, record)
            if monitor is not None:
                self.attach_monitor(trainer, monitor, monitor_every, patience)
            try:
                trainer.run()
            finally:
                self.generator.eval()
                set_trainable_modules(self.generator, None)
        return losses

    def attach_monitor(
        self,
        trainer: Any,
        monitor: Callable[[], Mapping[str, float]],
        monitor_every: int,
        patience: int | None = None,
        final_path: str | os.PathLike | None = None,
    ) -> None:
        """Model selection / early stopping on a trainer of :meth:`create_trainer` (what :meth:`fit` ``monitor=``
        and the bundle's ``train_clips.json`` use): ``monitor`` runs on the generator (eval mode) when the run starts
        and every ``monitor_every`` iterations; after ``patience`` calls without a better ``"score"`` the run stops;
        when it ends, the best weights (the start included) are restored, :attr:`monitoring` gets the history, and
        the generator is saved again to ``final_path`` (the trainer's final file, written just before with the last
        weights) with the history in its ``extra["monitoring"]``.

        Args:
            trainer: the Ignite trainer.
            monitor: callable returning a mapping with a ``"score"`` (higher is better), e.g.
                :func:`~monai_genaug.methods.ctrl_genaug.training.clip_stage_monitor`.
            monitor_every: iterations between two monitor calls.
            patience: stop after this many monitor calls without a better score (None: never stop early).
            final_path: where to save the selected generator (None: not saved).
        """
        if int(monitor_every) < 1:
            raise ValueError(f"monitor needs monitor_every >= 1 (steps between evaluations), got {monitor_every}.")
        if patience is not None and int(patience) < 1:
            raise ValueError(f"patience must be >= 1 monitor calls (or None: never stop early), got {patience}.")
        tracker = _BestWeights(self.generator, monitor, patience)
        trainer.add_event_handler(Events.STARTED, lambda engine: tracker.evaluate(engine.state.iteration))
        trainer.add_event_handler(Events.ITERATION_COMPLETED(every=int(monitor_every)),
                                  lambda engine: tracker.evaluate(engine.state.iteration, engine))

        def select(engine: Any) -> None:
            self.monitoring = tracker.restore()
            if final_path is not None:
                self.generator.save(final_path, extra={"stage": "clips", "iterations": int(engine.state.iteration),
                                                       "monitoring": self.monitoring})
                logger.info(f"saved the generator of step {self.monitoring['best_step']} (best monitor score "
                            f"{self.monitoring['best_score']:.4f}) to '{final_path}'.")

        trainer.add_event_handler(Events.COMPLETED, select)

    def fit_frame_encoder(
        self, clips: torch.Tensor, num_steps: int = 300, batch_size: int = 32, lr: float = 3e-3, seed: int = 0
    ) -> list[float]:
        """Train the generator's learned frame encoder to reconstruct every frame of the real ``clips`` (before the
        frame stage), then freeze it; it gives the image prior and the filters' frame features.

        Raises:
            ValueError: the generator has no frame encoder (build it with ``ctrl_genaug_config(frame_encoder=...)``).
        """
        enc = self.generator.frame_encoder
        if enc is None:
            raise ValueError("this generator has no learned frame encoder; build it with "
                             "ctrl_genaug_config(..., frame_encoder=LEARNED_FRAME_ENCODER).")
        self.generator.check_clips(clips, allow_frames=True)
        frames = clips.float().transpose(1, 2).flatten(0, 1)
        return train_frame_autoencoder(enc, frames.to(self.device), num_steps, batch_size, lr, seed)

    @property
    def frame_features(self) -> nn.Module | None:
        """The learned frame encoder (frame features for the sequence filters), or None."""
        return self.generator.frame_encoder

    @torch.no_grad()
    def denoising_loss(
        self,
        clips: torch.Tensor,
        labels: Sequence[int] | torch.Tensor | None = None,
        drop: Sequence[str] = (),
        seed: int = 0,
        repeats: int = 4,
    ) -> float:
        """The noise-prediction MSE on fixed noise and timesteps (the same draws every call): a loss curve without
        the sampling noise of the training loss, and an ablation of a condition (``drop=("motion",)`` replaces it by
        its null) that shows whether the model uses it.

        Args:
            clips: ``(N, C, F, H, W)`` clips in [0, 1] (e.g. validation clips).
            labels: their classes.
            drop: conditions replaced by their null version.
            seed: seed of the noise and timesteps.
            repeats: draws per clip.
        """
        gen = self.generator
        cond = self.conditions_from_clips(clips, labels)
        g = torch.Generator().manual_seed(int(seed))
        x0 = (clips.float() * 2 - 1).repeat(int(repeats), 1, 1, 1, 1)
        cond = {k: v.repeat(int(repeats), *[1] * (v.ndim - 1)) for k, v in cond.items()}
        if drop:
            cond = gen.null_condition(cond, x0.shape[0], drop)
        noise = torch.randn(x0.shape, generator=g)
        t = torch.randint(0, gen.scheduler.num_train_timesteps, (x0.shape[0],), generator=g)
        x_t = gen.scheduler.add_noise(x0, noise, t)
        gen.eval()
        pred = gen(x_t.to(self.device), t.to(self.device), cond)
        return float(F.mse_loss(pred.cpu(), noise))

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
        sampler = DiffusionSampler(num_inference_steps=num_inference_steps, eta=eta, clip_x0=(-1.0, 1.0))
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
        atomic_write_json(out / "synthetic_datalist.json", {"training": entries})
        return entries


