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
and its data / evaluation / filtering glue (:mod:`.data`).
"""

from __future__ import annotations

from .pipeline import (
    HISTODIFFUSION_SCHEDULE,
    ClassifierFeatures,
    HistoDiffusion,
    LatentFeatures,
    ClassSynthesisResult,
    estimate_scale_factor,
    histodiffusion_generator_config,
    load_autoencoder_weights,
)
from .data import (
    prepare_histodiffusion_data,
    materialize,
    default_downstream_network,
    evaluate_synthetic_augmentation,
    filter_synthetic_datalist,
)

__all__ = [
    "HISTODIFFUSION_SCHEDULE",
    "ClassifierFeatures",
    "HistoDiffusion",
    "LatentFeatures",
    "ClassSynthesisResult",
    "estimate_scale_factor",
    "histodiffusion_generator_config",
    "load_autoencoder_weights",
    "prepare_histodiffusion_data",
    "materialize",
    "default_downstream_network",
    "evaluate_synthetic_augmentation",
    "filter_synthetic_datalist",
]
