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
"""Ctrl-GenAug (Zhou et al., arXiv:2409.17091): the controllable sequence synthesizer (:mod:`.pipeline`), the
classifier and generator training (:mod:`.training`), data / evaluation / bundle glue (:mod:`.data`). The sequence
diffusion model is :class:`monai_genaug.generative.sequence_generator.SequenceGenerator` (re-exported here).
"""

from __future__ import annotations

from .pipeline import (
    CLIP_STAGE_LR,
    CTRL_GENAUG_SCHEDULE,
    LEARNED_FRAME_ENCODER,
    CtrlGenAug,
    FramePrior,
    ctrl_genaug_config,
    drop_conditions,
)
from .training import (
    SequenceClassifier,
    bundle_clip_monitor,
    bundle_train,
    classifier_network,
    clip_stage_monitor,
    frame_stage_pipeline,
    temporal_classifier,
    sequence_classifier,
    train_sequence_classifier,
)
from .data import (
    load_clips,
    prepare_sequence_data,
    brats_slice_clips,
    evaluate_sequence_augmentation,
    filter_generated,
    bundle_sequence_data,
    bundle_validation_split,
    bundle_generate,
    bundle_filter,
    bundle_evaluate,
)
from monai_genaug.generative.sequence_generator import (
    CTRL_CONDITION_KEYS,
    SequenceGenerator,
)

__all__ = [
    "CLIP_STAGE_LR",
    "CTRL_GENAUG_SCHEDULE",
    "LEARNED_FRAME_ENCODER",
    "CtrlGenAug",
    "FramePrior",
    "ctrl_genaug_config",
    "drop_conditions",
    "SequenceClassifier",
    "bundle_clip_monitor",
    "bundle_train",
    "classifier_network",
    "clip_stage_monitor",
    "frame_stage_pipeline",
    "temporal_classifier",
    "sequence_classifier",
    "train_sequence_classifier",
    "load_clips",
    "prepare_sequence_data",
    "brats_slice_clips",
    "evaluate_sequence_augmentation",
    "filter_generated",
    "bundle_sequence_data",
    "bundle_validation_split",
    "bundle_generate",
    "bundle_filter",
    "bundle_evaluate",
    "CTRL_CONDITION_KEYS",
    "SequenceGenerator",
]
