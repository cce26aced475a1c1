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

"""The five methods, each a small pipeline composed of the generative core."""

from __future__ import annotations

from .ttga import (
    MASK_SCHEMES,
    TTGAState,
    TTGAOutput,
    TTGAAugmenter,
    ttga_legacy_scheduler,
)
from .gms import (
    AUTOENCODER_CHECKPOINT_FORMAT,
    GMS_CHECKPOINT_FORMAT,
    GMSLoss,
    GMSSegmenter,
    LatentCache,
    MaskReconstructor,
    autoencoder_factor,
    build_autoencoder,
    build_gms_segmenter,
    check_labels,
    class_probabilities,
    decoded_to_soft_masks,
    gms_config,
    labels_to_onehot,
    load_autoencoder,
    load_gms_segmenter,
    masks_to_images,
    save_autoencoder,
)

__all__ = [
    "MASK_SCHEMES",
    "TTGAState",
    "TTGAOutput",
    "TTGAAugmenter",
    "ttga_legacy_scheduler",
    "AUTOENCODER_CHECKPOINT_FORMAT",
    "GMS_CHECKPOINT_FORMAT",
    "GMSLoss",
    "GMSSegmenter",
    "LatentCache",
    "MaskReconstructor",
    "autoencoder_factor",
    "build_autoencoder",
    "build_gms_segmenter",
    "check_labels",
    "class_probabilities",
    "decoded_to_soft_masks",
    "gms_config",
    "labels_to_onehot",
    "load_autoencoder",
    "load_gms_segmenter",
    "masks_to_images",
    "save_autoencoder",
]
