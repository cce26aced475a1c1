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
"""HistoDiffusion (Ye et al., arXiv:2308.04020): the class-guided synthesizer on the generative core (:mod:`.pipeline`)
its data / evaluation / filtering glue (:mod:`.data`) and the choice of the guidance on a validation split by an
independent oracle (:mod:`.selection`).
"""

from __future__ import annotations

from .pipeline import (
    HISTODIFFUSION_SCHEDULE,
    ClassifierFeatures,
    HistoDiffusion,
    LatentFeatures,
    PenultimateFeatures,
    ClassSynthesisResult,
    estimate_scale_factor,
    histodiffusion_generator_config,
    informative_max_timestep,
    load_autoencoder_weights,
)
from .data import (
    prepare_histodiffusion_data,
    materialize,
    default_downstream_network,
    evaluate_synthetic_augmentation,
    filter_synthetic_datalist,
    train_real_feature_network,
)
from .selection import AgreementScorer, select_guidance

__all__ = [
    "HISTODIFFUSION_SCHEDULE",
    "ClassifierFeatures",
    "HistoDiffusion",
    "LatentFeatures",
    "PenultimateFeatures",
    "ClassSynthesisResult",
    "estimate_scale_factor",
    "histodiffusion_generator_config",
    "informative_max_timestep",
    "load_autoencoder_weights",
    "prepare_histodiffusion_data",
    "materialize",
    "default_downstream_network",
    "evaluate_synthetic_augmentation",
    "filter_synthetic_datalist",
    "train_real_feature_network",
    "AgreementScorer",
    "select_guidance",
]
