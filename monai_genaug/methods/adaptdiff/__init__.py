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
"""AdaptDiff (Xu et al., arXiv:2410.04648): the mask-conditioned cross-modality adaptation pipeline (:mod:`.pipeline`) and
its data / IO / evaluation glue (:mod:`.data`). Its transforms (pseudo-labels, label corruption, contrast inversion,
mask-conditioned inputs) live in :mod:`monai_genaug.transforms` and are re-exported here.
"""

from __future__ import annotations

from .pipeline import (
    ADAPTDIFF_SCHEDULE,
    DIFFUSION_LOSSES,
    SAMPLERS,
    AdaptDiff,
    MaskConditionedInputd,
    PseudoLabeld,
    PseudoLabeler,
    RandIntensityInversiond,
    RandLabelCorruption,
    RandLabelCorruptiond,
    PairedSynthesisResult,
    adaptdiff_generator_config,
    check_modalities,
    finetune_augmentation,
    histogram_match,
    labels_to_seg,
    source_augmentation,
    spatial_augmentation,
)
from .data import (
    write_pairs,
    make_pseudo_labels,
    write_pseudo_labels,
    write_synthetic_pairs,
    adaptdiff_data_dir,
    adaptdiff_split,
    adaptdiff_transforms,
    load_pairs,
    load_pair_folder,
    make_loader,
    evaluate_segmenters,
)

__all__ = [
    "ADAPTDIFF_SCHEDULE",
    "DIFFUSION_LOSSES",
    "SAMPLERS",
    "AdaptDiff",
    "MaskConditionedInputd",
    "PseudoLabeld",
    "PseudoLabeler",
    "RandIntensityInversiond",
    "RandLabelCorruption",
    "RandLabelCorruptiond",
    "PairedSynthesisResult",
    "adaptdiff_generator_config",
    "check_modalities",
    "finetune_augmentation",
    "histogram_match",
    "labels_to_seg",
    "source_augmentation",
    "spatial_augmentation",
    "write_pairs",
    "make_pseudo_labels",
    "write_pseudo_labels",
    "write_synthetic_pairs",
    "adaptdiff_data_dir",
    "adaptdiff_split",
    "adaptdiff_transforms",
    "load_pairs",
    "load_pair_folder",
    "make_loader",
    "evaluate_segmenters",
]
