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
"""Stable Diffusion 1.x / 2.x weights in MONAI networks: config derivation, key mapping, text conditioning, I/O.

See ``docs/sd_weights.md``. Nothing here downloads anything; ``diffusers`` is never needed (only the tests use it),
``safetensors`` reads ``.safetensors`` files and ``transformers`` runs a local CLIP text encoder (extra ``sd``).
"""

from __future__ import annotations

from .configs import (
    SD_REFERENCE_CONFIGS,
    SD_SCALE_FACTOR,
    SDImportError,
    UnsupportedModelError,
    autoencoder_config_from_diffusers,
    diffusers_unet_config_from_ldm,
    diffusers_vae_config_from_state_dict,
    read_original_config,
    reference_diffusers_configs,
    scheduler_config_from_diffusers,
    unet_config_from_diffusers,
)
from .loading import (
    AUTOENCODER_FORMAT,
    UNET_FORMAT,
    SDModels,
    convert_stable_diffusion,
    convert_unet,
    convert_vae,
    load_converted_network,
    load_stable_diffusion,
    load_weights,
    reference_generator_config,
    save_converted,
)
from .mapping import (
    ldm_unet_to_diffusers,
    ldm_vae_to_diffusers,
    unet_state_dict_to_monai,
    vae_state_dict_to_monai,
)
from .networks import (
    AUTOENCODER_TYPES,
    UNET_TYPES,
    SDAutoencoderKL,
    SDDiffusionModelUNet,
    build_network,
)
from .text import (
    EMBEDDINGS_FORMAT,
    encode_prompts,
    load_prompt_embeddings,
    save_prompt_embeddings,
)

__all__ = [
    "SD_REFERENCE_CONFIGS",
    "SD_SCALE_FACTOR",
    "SDImportError",
    "UnsupportedModelError",
    "autoencoder_config_from_diffusers",
    "unet_config_from_diffusers",
    "scheduler_config_from_diffusers",
    "diffusers_vae_config_from_state_dict",
    "diffusers_unet_config_from_ldm",
    "read_original_config",
    "reference_diffusers_configs",
    "AUTOENCODER_FORMAT",
    "UNET_FORMAT",
    "SDModels",
    "load_weights",
    "convert_vae",
    "convert_unet",
    "load_stable_diffusion",
    "save_converted",
    "convert_stable_diffusion",
    "load_converted_network",
    "reference_generator_config",
    "ldm_vae_to_diffusers",
    "ldm_unet_to_diffusers",
    "vae_state_dict_to_monai",
    "unet_state_dict_to_monai",
    "AUTOENCODER_TYPES",
    "UNET_TYPES",
    "SDAutoencoderKL",
    "SDDiffusionModelUNet",
    "build_network",
    "EMBEDDINGS_FORMAT",
    "encode_prompts",
    "load_prompt_embeddings",
    "save_prompt_embeddings",
]
