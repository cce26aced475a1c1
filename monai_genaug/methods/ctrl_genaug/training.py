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
"""Ctrl-GenAug training: the downstream sequence classifier (a small 3D CNN over (C, F, H, W) clips) and its trainer,
and the generator training the bundle runs (:func:`bundle_train`: pre-training on frames, fine-tuning on clips with
:func:`~monai_genaug.engines.sequence_diffusion.create_sequence_diffusion_trainer`).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from monai_genaug.evaluation.learners import GlobalPoolCNN, predict, train_learner
from monai_genaug.filters.temporal import temporal_consistency
from monai_genaug.generative.sequence_generator import SequenceGenerator
from monai_genaug.methods.ctrl_genaug.pipeline import LEARNED_FRAME_ENCODER, CtrlGenAug, ctrl_genaug_config

__all__ = [
    "SequenceClassifier",
    "bundle_clip_monitor",
    "bundle_train",
    "classifier_network",
    "clip_stage_monitor",
    "frame_stage_pipeline",
    "temporal_classifier",
    "sequence_classifier",
    "train_sequence_classifier",
]

logger = logging.getLogger(__name__)


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


def temporal_classifier(num_classes: int, clip_shape: Sequence[int], channels: Sequence[int] = (16, 32, 64)) -> nn.Module:
    """An order-aware classifier for ``(C, F, H, W)`` clips: the protocol's :class:`GlobalPoolCNN` with 3D
    convolutions over ``(t, h, w)`` (time as a spatial axis), so frame order, motion and temporal consistency can
    change its output (unlike :class:`SequenceClassifier`, which averages per-frame features)."""
    return GlobalPoolCNN(3, int(clip_shape[0]), num_classes, channels)


def classifier_network(kind: str, num_classes: int, clip_shape: Sequence[int]) -> nn.Module:
    """A fresh sequence classifier by name: ``"frames"`` (:func:`sequence_classifier`) or ``"temporal"``
    (:func:`temporal_classifier`)."""
    if kind == "frames":
        return sequence_classifier(num_classes, clip_shape)
    if kind == "temporal":
        return temporal_classifier(num_classes, clip_shape)
    raise ValueError(f"classifier must be 'frames' (frame-averaging) or 'temporal' (3D over (t, h, w)), got {kind!r}.")


def frame_stage_pipeline(
    generator: SequenceGenerator,
    clips: torch.Tensor,
    encoder_steps: int = 300,
    motion_method: str = "flow",
    device: str | torch.device = "cpu",
    seed: int = 0,
) -> CtrlGenAug:
    """The pipeline of the frame stage (``train_frames.json``): a generator with a learned frame encoder first trains
    it on every frame of the real ``clips`` (seeded, so a resumed run rebuilds the same encoder), which then gives the
    image priors of the frame stage."""
    pipe = CtrlGenAug(generator, motion_method=motion_method, device=device)
    if generator.frame_encoder is not None:
        pipe.fit_frame_encoder(clips, num_steps=encoder_steps, seed=seed)
    return pipe


def clip_stage_monitor(
    pipeline: CtrlGenAug,
    clips: torch.Tensor,
    labels: Sequence[int] | torch.Tensor,
    classifier: nn.Module,
    reference_consistency: float,
    feature_fn: nn.Module | None = None,
    consistency_weight: float = 0.02,
    num_inference_steps: int = 10,
    guidance_scale: float = 2.0,
    seed: int = 5000,
) -> Callable[[], dict[str, float]]:
    """The clip stage's early-stopping score (for :meth:`CtrlGenAug.fit` ``monitor=``): generate one clip from the
    conditions of each validation clip and measure

    - ``agreement``: the share a classifier trained on real clips (not the benchmark's oracle) assigns to the intended
      class;
    - ``temporal_consistency``: the clips' mean temporal consistency and its gap to the real clips';

    ``score = agreement - consistency_weight x |gap|`` (higher is better).

    Args:
        pipeline: the pipeline being trained.
        clips: validation clips ``(N, C, F, H, W)`` (their conditions generate the monitored clips).
        labels: their classes.
        classifier: a classifier trained on real training clips.
        reference_consistency: the real clips' mean temporal consistency (same ``feature_fn``).
        feature_fn: frame encoder of the temporal consistency (None: pixels).
        consistency_weight: score points lost per point of consistency gap.
        num_inference_steps: DDIM steps of the monitored clips.
        guidance_scale: their guidance scale.
        seed: seed of their starting noise.
    """
    labels = torch.as_tensor(labels).long().reshape(-1)

    def monitor() -> dict[str, float]:
        gen = pipeline.generate(clips, labels, num_per_clip=1, base_seed=seed, guidance_scale=guidance_scale,
                                num_inference_steps=num_inference_steps)
        agree = float((predict(classifier, gen["clips"]).argmax(1) == labels).float().mean())
        tc = float(temporal_consistency(gen["clips"], feature_fn).mean())
        gap = tc - float(reference_consistency)
        return {"score": agree - consistency_weight * abs(gap), "agreement": agree, "temporal_consistency": tc,
                "consistency_gap": gap}

    return monitor


def bundle_clip_monitor(
    pipeline: CtrlGenAug,
    data: Mapping[str, Any],
    classifier: str = "temporal",
    classifier_steps: int = 300,
    num_inference_steps: int = 10,
    guidance_scale: float = 2.0,
    consistency_weight: float = 0.02,
    seed: int = 0,
) -> Callable[[], dict[str, float]]:
    """The early-stopping monitor of ``train_clips.json``: :func:`clip_stage_monitor` on the validation clips
    (``data["validation"]``, see :func:`~monai_genaug.methods.ctrl_genaug.data.bundle_validation_split`) with a
    classifier (:func:`classifier_network` ``classifier``) trained on ``data["train"]`` and the training clips' temporal
    consistency (the generator's learned frame features, else pixels) as the reference.

    Args:
        pipeline: the pipeline whose clip stage is monitored.
        data: ``{"train": {"clips", "labels"}, "validation": {...}, "num_classes"}``.
        classifier: ``"temporal"`` or ``"frames"``.
        classifier_steps: training steps of that classifier.
        num_inference_steps: DDIM steps of the monitored clips.
        guidance_scale: their guidance scale.
        consistency_weight: score points lost per point of consistency gap.
        seed: seed of the classifier.
    """
    val = data.get("validation")
    if not val or not len(val["clips"]):
        raise ValueError("early stopping needs validation clips: set validation_fraction > 0 (train_clips.json).")
    train, n_cls = data["train"], int(data["num_classes"])
    clf = train_sequence_classifier(train["clips"], train["labels"], n_cls, classifier_steps, seed=seed,
                                    network=classifier_network(classifier, n_cls, train["clips"].shape[1:]))
    features = pipeline.frame_features
    reference = float(temporal_consistency(train["clips"], features).mean())
    return clip_stage_monitor(pipeline, val["clips"], val["labels"], clf, reference, features, consistency_weight,
                              num_inference_steps, guidance_scale)


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


def bundle_train(
    data: Mapping[str, Any],
    stage: str,
    output_path: str | os.PathLike,
    init_path: str | os.PathLike | None = None,
    preset: str = "tiny",
    overrides: Mapping[str, Any] | None = None,
    num_steps: int = 300,
    batch_size: int = 8,
    lr: float | None = None,
    seed: int = 0,
    device: str | torch.device = "cpu",
    frame_encoder: Mapping[str, Any] | None = LEARNED_FRAME_ENCODER,
    encoder_steps: int = 300,
) -> dict[str, Any]:
    """One training stage of the bundle: ``"frames"`` (a fresh generator, or ``init_path``) or ``"clips"`` (fine-tune
    the frame generator at ``init_path``); saves the generator to ``output_path``; returns a summary.

    A fresh generator with a learned frame encoder (``frame_encoder``, default :data:`LEARNED_FRAME_ENCODER`) first
    trains it on the real training frames (``encoder_steps``); ``lr`` defaults to 1e-3 (frames) / the paper's
    :data:`CLIP_STAGE_LR` (clips)."""
    train = data["train"]
    if init_path is not None:
        generator = SequenceGenerator.load(init_path)
    elif stage == "clips":
        raise ValueError("fine-tuning on clips starts from the frame-trained generator: set init_path (train_frames.json).")
    else:
        cfg = ctrl_genaug_config(preset, int(train["clips"].shape[1]), int(train["clips"].shape[2]),
                                 int(data["num_classes"]), overrides=overrides, frame_encoder=frame_encoder)
        torch.manual_seed(seed)
        generator = SequenceGenerator.from_config(cfg)
    t0 = time.time()
    pipe = (CtrlGenAug(generator, device=device) if init_path is not None
            else frame_stage_pipeline(generator, train["clips"], encoder_steps, device=device, seed=seed))
    losses = pipe.fit(train["clips"], train["labels"], stage=stage, num_steps=num_steps, batch_size=batch_size, lr=lr,
                      seed=seed, log_every=max(num_steps // 5, 1))
    generator.save(output_path, extra={"stage": stage, "num_steps": num_steps, "data": "see bundle docs"})
    summary = {"stage": stage, "path": str(output_path), "seconds": time.time() - t0,
               "loss_first": float(np.mean(losses[: max(len(losses) // 10, 1)])),
               "loss_last": float(np.mean(losses[-max(len(losses) // 10, 1):]))}
    logger.info(f"{stage}: {summary}")
    return summary
