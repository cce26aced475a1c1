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

"""The generative core: one generator, one sampler with guidance plug-ins, one inversion."""

from __future__ import annotations

from .ddim import (
    CLEAN,
    alpha_bar,
    ddim_transition,
    timestep_path,
    to_epsilon_and_x0,
)
from .guidance import (
    ClassifierFreeGuidance,
    ClassifierGuidance,
    Guidance,
    MultiConditionGuidance,
    NoGuidance,
)
from .inversion import (
    ddim_invert,
    ddim_jump,
    inversion_path,
    predict_epsilon,
)
from .latent_generator import (
    CONDITION_KEYS,
    LatentGenerator,
    concat_conditions,
    generator_config,
)
from .sampler import DiffusionSampler, SamplerStep

__all__ = [
    "CONDITION_KEYS",
    "LatentGenerator",
    "concat_conditions",
    "generator_config",
    "CLEAN",
    "alpha_bar",
    "ddim_transition",
    "timestep_path",
    "to_epsilon_and_x0",
    "Guidance",
    "NoGuidance",
    "ClassifierFreeGuidance",
    "MultiConditionGuidance",
    "ClassifierGuidance",
    "DiffusionSampler",
    "SamplerStep",
    "ddim_invert",
    "ddim_jump",
    "inversion_path",
    "predict_epsilon",
]
