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
"""histodiffusion
"""

from __future__ import annotations

from .pipeline import (
    HISTODIFFUSION_SCHEDULE,
    ClassifierFeatures,
    HistoDiffusion,
    LatentFeatures,
    ClassSynthesisResult,
    default_downstream_network,
    estimate_scale_factor,
    evaluate_synthetic_augmentation,
    filter_synthetic_datalist,
    histodiffusion_generator_config,
    load_autoencoder_weights,
    materialize,
    prepare_histodiffusion_data,
)

__all__ = [
    "HISTODIFFUSION_SCHEDULE",
    "ClassifierFeatures",
    "HistoDiffusion",
    "LatentFeatures",
    "ClassSynthesisResult",
    "default_downstream_network",
    "estimate_scale_factor",
    "evaluate_synthetic_augmentation",
    "filter_synthetic_datalist",
    "histodiffusion_generator_config",
    "load_autoencoder_weights",
    "materialize",
    "prepare_histodiffusion_data",
]
