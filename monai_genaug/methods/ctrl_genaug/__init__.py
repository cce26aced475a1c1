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
"""ctrl_genaug
"""

from __future__ import annotations

from .pipeline import (
    CTRL_CONDITION_KEYS,
    CTRL_GENAUG_SCHEDULE,
    CtrlGenAug,
    FramePrior,
    SequenceClassifier,
    SequenceGenerator,
    brats_slice_clips,
    bundle_evaluate,
    bundle_filter,
    bundle_generate,
    bundle_sequence_data,
    bundle_train,
    ctrl_genaug_config,
    drop_conditions,
    evaluate_sequence_augmentation,
    filter_generated,
    load_clips,
    prepare_sequence_data,
    sequence_classifier,
    train_sequence_classifier,
)

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
