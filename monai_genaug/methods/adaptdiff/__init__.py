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
"""adaptdiff
"""

from __future__ import annotations

from .pipeline import (
    ADAPTDIFF_SCHEDULE,
    AdaptDiff,
    MaskConditionedInputd,
    PseudoLabeld,
    PseudoLabeler,
    RandIntensityInversiond,
    RandLabelCorruption,
    RandLabelCorruptiond,
    PairedSynthesisResult,
    adaptdiff_data_dir,
    adaptdiff_generator_config,
    adaptdiff_split,
    adaptdiff_transforms,
    check_modalities,
    evaluate_segmenters,
    finetune_augmentation,
    histogram_match,
    labels_to_seg,
    load_pair_folder,
    load_pairs,
    make_loader,
    make_pseudo_labels,
    source_augmentation,
    write_pairs,
    write_pseudo_labels,
    write_synthetic_pairs,
)

__all__ = [
    "ADAPTDIFF_SCHEDULE",
    "AdaptDiff",
    "MaskConditionedInputd",
    "PseudoLabeld",
    "PseudoLabeler",
    "RandIntensityInversiond",
    "RandLabelCorruption",
    "RandLabelCorruptiond",
    "PairedSynthesisResult",
    "adaptdiff_data_dir",
    "adaptdiff_generator_config",
    "adaptdiff_split",
    "adaptdiff_transforms",
    "check_modalities",
    "evaluate_segmenters",
    "finetune_augmentation",
    "histogram_match",
    "labels_to_seg",
    "load_pair_folder",
    "load_pairs",
    "make_loader",
    "make_pseudo_labels",
    "source_augmentation",
    "write_pairs",
    "write_pseudo_labels",
    "write_synthetic_pairs",
]
