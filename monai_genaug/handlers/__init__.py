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
"""Ignite handlers of monai_genaug (attach to any MONAI / Ignite engine): EMA weights, NaN / Inf guard, resumable
checkpoints with RNG state, sample grids of generators, periodic validation and best-model selection, final-model
savers, latent scale-factor initialisation, MLflow tracking, and the per-case writers of the bundles.
"""

from __future__ import annotations

from .progress import progress_bar
from .ema import (
    EMAHandler,
)
from .nan_guard import (
    NonFiniteLossError,
    NaNGuard,
)
from .resume import (
    CHECKPOINT_FORMAT,
    get_rng_state,
    set_rng_state,
    AttributeState,
    find_non_finite,
    loader_generators,
    ResumableCheckpointHandler,
)
from .sample_grid import (
    SampleGridHandler,
    GeneratorSamples,
    ReconstructionSamples,
    SequenceSamples,
)
from .validation import (
    BestModelSaver,
    PeriodicValidation,
)
from .savers import (
    completed_normally,
    FinalModelHandler,
    FinalGeneratorSaver,
    FinalAutoencoderSaver,
    FinalClassifierSaver,
    KeepBestAutoencoder,
)
from .scale_factor import (
    ScaleFactorInitializer,
)
from .tracking import (
    loss_tracking_handlers,
    TrackingUnavailableWarning,
    default_tracking_uri,
    check_tracking_uri,
    flatten_params,
    loss_from_output,
    SafeMLFlowHandler,
    create_mlflow_handler,
)
from .writers import (
    CaseMapWriter,
    SegmentationComparisonWriter,
    TTGAPictureSaver,
    case_id,
    colormap,
    compose_panel,
    engine_items,
    SegmentationGridSaver,
    image_meta,
    label_map_saver,
)

__all__ = [
    "progress_bar",
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
    "GeneratorSamples",
    "ReconstructionSamples",
    "SequenceSamples",
    "BestModelSaver",
    "PeriodicValidation",
    "completed_normally",
    "FinalModelHandler",
    "FinalGeneratorSaver",
    "FinalAutoencoderSaver",
    "FinalClassifierSaver",
    "KeepBestAutoencoder",
    "ScaleFactorInitializer",
    "loss_tracking_handlers",
    "TrackingUnavailableWarning",
    "default_tracking_uri",
    "check_tracking_uri",
    "flatten_params",
    "loss_from_output",
    "SafeMLFlowHandler",
    "create_mlflow_handler",
    "CaseMapWriter",
    "SegmentationComparisonWriter",
    "TTGAPictureSaver",
    "case_id",
    "colormap",
    "compose_panel",
    "engine_items",
    "SegmentationGridSaver",
    "image_meta",
    "label_map_saver",
]
