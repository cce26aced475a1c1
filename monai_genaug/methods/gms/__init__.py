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
"""GMS (Huo et al., arXiv:2403.18198): the facade and presets (:mod:`.pipeline`), trainers and prepare-batch classes
(:mod:`.training`), bundle data helpers (:mod:`.data`). The network itself is :mod:`monai_genaug.networks.gms`
(re-exported here, with the autoencoder checkpoint I/O of :mod:`monai_genaug.networks.autoencoder`).
"""

from __future__ import annotations

from .pipeline import (
    GMS_CHECKPOINT_FORMAT,
    build_gms_segmenter,
    gms_config,
    load_gms_segmenter,
)
from .training import (
    GMSLoss,
    GMSAutoencoderPrepareBatch,
    GMSPrepareBatch,
    LabelPrepareBatch,
    MaskForegroundWeightedL1Loss,
    create_gms_autoencoder_trainer,
    create_gms_trainer,
)
from .data import (
    GMSTokenizerDataset,
    gms_data_dir,
    gms_datalist,
    gms_tokenizer_dataset,
    gms_tokenizer_loader,
    gms_transforms,
)
from monai_genaug.networks.gms import (
    GMSSegmenter,
    LatentCache,
    MaskReconstructor,
    class_probabilities,
    decoded_to_soft_masks,
    labels_to_onehot,
    masks_to_images,
)
from monai_genaug.networks.autoencoder import (
    AUTOENCODER_CHECKPOINT_FORMAT,
    autoencoder_factor,
    build_autoencoder,
    load_autoencoder,
    save_autoencoder,
)
from monai_genaug.handlers.scale_factor import (
    ScaleFactorInitializer,
)
from monai_genaug.handlers.writers import (
    SegmentationGridSaver,
    image_meta,
    label_map_saver,
)

__all__ = [
    "GMS_CHECKPOINT_FORMAT",
    "build_gms_segmenter",
    "gms_config",
    "load_gms_segmenter",
    "GMSLoss",
    "GMSAutoencoderPrepareBatch",
    "GMSPrepareBatch",
    "LabelPrepareBatch",
    "MaskForegroundWeightedL1Loss",
    "create_gms_autoencoder_trainer",
    "create_gms_trainer",
    "GMSTokenizerDataset",
    "gms_data_dir",
    "gms_datalist",
    "gms_tokenizer_dataset",
    "gms_tokenizer_loader",
    "gms_transforms",
    "GMSSegmenter",
    "LatentCache",
    "MaskReconstructor",
    "class_probabilities",
    "decoded_to_soft_masks",
    "labels_to_onehot",
    "masks_to_images",
    "AUTOENCODER_CHECKPOINT_FORMAT",
    "autoencoder_factor",
    "build_autoencoder",
    "load_autoencoder",
    "save_autoencoder",
    "ScaleFactorInitializer",
    "SegmentationGridSaver",
    "image_meta",
    "label_map_saver",
]
