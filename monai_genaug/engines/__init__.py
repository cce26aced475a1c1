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

"""Ignite workflows: prepare-batch classes, diffusion / autoencoder / LoRA / GMS trainers, handlers (EMA, sample grids, NaN guard, resumable checkpoints), MLflow tracking."""

from __future__ import annotations

from .prepare_batch import LatentDiffusionPrepareBatch
from .diffusion import (
    GeneratorSamples,
    FinalGeneratorSaver,
    trainable_modules,
    create_diffusion_trainer,
)
from .autoencoder import (
    kl_divergence,
    AutoencoderKLTrainer,
    ReconstructionSamples,
    FinalAutoencoderSaver,
    create_perceptual_loss,
    create_autoencoder_trainer,
)
from .gms import (
    BestModelSaver,
    GMSAutoencoderPrepareBatch,
    GMSPrepareBatch,
    LabelPrepareBatch,
    MaskForegroundWeightedL1Loss,
    ScaleFactorInitializer,
    SegmentationGridSaver,
    create_gms_autoencoder_trainer,
    create_gms_evaluator,
    create_gms_trainer,
    gms_data_dir,
    gms_datalist,
    gms_transforms,
    image_meta,
    label_map_saver,
)
from .ema import EMAHandler
from .nan_guard import NonFiniteLossError, NaNGuard
from .resume import (
    CHECKPOINT_FORMAT,
    get_rng_state,
    set_rng_state,
    AttributeState,
    find_non_finite,
    loader_generators,
    ResumableCheckpointHandler,
)
from .sample_grid import SampleGridHandler
from .tracking import (
    TrackingUnavailableWarning,
    default_tracking_uri,
    check_tracking_uri,
    flatten_params,
    loss_from_output,
    SafeMLFlowHandler,
    create_mlflow_handler,
)

__all__ = [
    "LatentDiffusionPrepareBatch",
    "GeneratorSamples",
    "FinalGeneratorSaver",
    "trainable_modules",
    "create_diffusion_trainer",
    "kl_divergence",
    "AutoencoderKLTrainer",
    "ReconstructionSamples",
    "FinalAutoencoderSaver",
    "create_perceptual_loss",
    "create_autoencoder_trainer",
    "BestModelSaver",
    "GMSAutoencoderPrepareBatch",
    "GMSPrepareBatch",
    "LabelPrepareBatch",
    "MaskForegroundWeightedL1Loss",
    "ScaleFactorInitializer",
    "SegmentationGridSaver",
    "create_gms_autoencoder_trainer",
    "create_gms_evaluator",
    "create_gms_trainer",
    "gms_data_dir",
    "gms_datalist",
    "gms_transforms",
    "image_meta",
    "label_map_saver",
    "EMAHandler",
    "NonFiniteLossError",
    "NaNGuard",
    "CHECKPOINT_FORMAT",
    "get_rng_state",
    "set_rng_state",
    "AttributeState",
    "find_non_finite",
    "loader_generators",
    "ResumableCheckpointHandler",
    "SampleGridHandler",
    "TrackingUnavailableWarning",
    "default_tracking_uri",
    "check_tracking_uri",
    "flatten_params",
    "loss_from_output",
    "SafeMLFlowHandler",
    "create_mlflow_handler",
]
