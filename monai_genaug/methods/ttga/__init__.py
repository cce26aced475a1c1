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
"""TTGA (Ma et al., arXiv:2406.17608): the test-time view generator (:mod:`.pipeline`) and the generator's domain
adaptation / training from scratch (:mod:`.training`).
"""

from __future__ import annotations

from .pipeline import (
    MASK_SCHEMES,
    DetailPreservingTTGAAugmenter,
    TTGAState,
    TTGAOutput,
    TTGAAugmenter,
    ttga_legacy_scheduler,
)
from .training import (
    attention_grounding_loss,
    build_ttga_generator,
    estimate_scale_factor_from_loader,
    prepare_lora_adaptation,
    save_generator,
    train_grounded_ttga_generator,
    train_ttga_generator,
    ttga_generator_config,
)

__all__ = [
    "MASK_SCHEMES",
    "DetailPreservingTTGAAugmenter",
    "TTGAState",
    "TTGAOutput",
    "TTGAAugmenter",
    "ttga_legacy_scheduler",
    "attention_grounding_loss",
    "build_ttga_generator",
    "estimate_scale_factor_from_loader",
    "prepare_lora_adaptation",
    "save_generator",
    "train_grounded_ttga_generator",
    "train_ttga_generator",
    "ttga_generator_config",
]
