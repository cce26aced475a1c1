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

"""Networks MONAI lacks: learned prompt conditions, LoRA adapters, GMS latent mapping net, noisy-latent classifier, temporal sequence UNet and motion encoder, Stable Diffusion weight import (monai_genaug.networks.sd)."""

from __future__ import annotations

from .conditioning import NULL_PROMPT, PromptEmbedding
from .latent_mapping import LatentMappingNet, head_names
from .latent_scale import latent_scale_factor
from .lora import (
    DEFAULT_LORA_TARGETS,
    LORA_TARGET_PRESETS,
    apply_lora,
    count_trainable_parameters,
    get_lora_config,
    has_lora,
    load_lora,
    lora_disabled,
    lora_parameters,
    lora_state_dict,
    merge_lora,
    remove_lora,
    resolve_lora_targets,
    save_lora,
    set_lora_enabled,
    set_lora_scale,
)
from .motion_encoder import (
    MOTION_METHODS,
    MotionEncoder,
    check_motion,
    estimate_motion,
)
from .noisy_classifier import (
    CLASSIFIER_CHECKPOINT_FORMAT,
    AttentionPool,
    NoisyLatentClassifier,
    classifier_config,
)
from .sequence_unet import (
    SEQUENCE_TRAINABLE_MODULES,
    ImagePriorTokenizer,
    KeyFrameSABlock,
    SequenceDiffusionUNet,
    TemporalAttention,
    set_trainable_modules,
)

__all__ = [
    "latent_scale_factor",
    "NULL_PROMPT",
    "PromptEmbedding",
    "DEFAULT_LORA_TARGETS",
    "LORA_TARGET_PRESETS",
    "resolve_lora_targets",
    "apply_lora",
    "has_lora",
    "get_lora_config",
    "lora_parameters",
    "lora_state_dict",
    "count_trainable_parameters",
    "save_lora",
    "load_lora",
    "merge_lora",
    "remove_lora",
    "set_lora_scale",
    "set_lora_enabled",
    "lora_disabled",
    "LatentMappingNet",
    "head_names",
    "CLASSIFIER_CHECKPOINT_FORMAT",
    "AttentionPool",
    "NoisyLatentClassifier",
    "classifier_config",
    "SEQUENCE_TRAINABLE_MODULES",
    "ImagePriorTokenizer",
    "KeyFrameSABlock",
    "SequenceDiffusionUNet",
    "TemporalAttention",
    "set_trainable_modules",
    "MOTION_METHODS",
    "MotionEncoder",
    "check_motion",
    "estimate_motion",
]
