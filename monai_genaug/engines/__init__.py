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

"""Ignite workflows: prepare-batch classes, the shared trainer wiring, diffusion / sequence diffusion / autoencoder / LoRA /
classifier / segmentation trainers, validation (mean-Dice evaluator, best-model selection), DDP helpers. The handlers
(EMA, sample grids, NaN guard, resumable checkpoints, MLflow tracking) live in :mod:`monai_genaug.handlers` and are
re-exported here; method trainers (GMS, ...) live in ``monai_genaug.methods.<name>.training``. Every trainer factory
takes its own arguments plus ``options=TrainingOptions(...)`` (seed, AMP, resume, intervals, NaN policy, tracking,
extra handlers) and exposes what it built in the typed ``trainer.handles`` (:mod:`.options`)."""

from __future__ import annotations

from .prepare_batch import LatentDiffusionPrepareBatch
from .options import (
    TRAINING_OPTION_NAMES,
    HandledSupervisedTrainer,
    HandlesMixin,
    TrainerHandles,
    TrainingOptions,
    attach_handles,
    pop_training_options,
    resolve_training_options,
)
from .workflow import (
    CHECKPOINT_NAME,
    TrainingHandlers,
    standard_training_handlers,
    create_supervised_trainer,
    attach_resumable_checkpoint,
)
from .validation import create_dice_evaluator, attach_model_selection
from .diffusion import (
    trainable_modules,
    create_diffusion_trainer,
)
from .sequence_diffusion import (
    SequenceDiffusionPrepareBatch,
    create_sequence_diffusion_trainer,
    drop_conditions,
)
from .autoencoder import (
    kl_divergence,
    AutoencoderKLTrainer,
    create_perceptual_loss,
    create_autoencoder_trainer,
    prepare_image_batch,
)
from .classifier import (
    ClassificationPrepareBatch,
    NoisyLatentPrepareBatch,
    create_classifier_trainer,
    create_noisy_classifier_trainer,
    evaluate_classifier,
    noisy_latent_accuracy,
)
from .segmentation import (
    SEGMENTER_FORMAT,
    SegmentationPrepareBatch,
    build_segmenter,
    create_segmentation_evaluator,
    create_segmentation_trainer,
    evaluate_segmentation,
    load_segmenter,
    save_segmenter,
    segmenter_config,
    segmenter_divisor,
)
from monai_genaug.handlers.savers import (
    FinalAutoencoderSaver,
    FinalClassifierSaver,
    FinalGeneratorSaver,
    FinalModelHandler,
    completed_normally,
)
from monai_genaug.handlers.sample_grid import GeneratorSamples, ReconstructionSamples, SequenceSamples
from monai_genaug.handlers.validation import BestModelSaver, PeriodicValidation
from monai_genaug.data.bundle import gms_data_dir, gms_datalist
from monai_genaug.handlers.scale_factor import ScaleFactorInitializer
from monai_genaug.handlers.writers import SegmentationGridSaver, image_meta, label_map_saver
from monai_genaug.handlers.ema import EMAHandler
from monai_genaug.handlers.nan_guard import NonFiniteLossError, NaNGuard
from monai_genaug.handlers.resume import (
    CHECKPOINT_FORMAT,
    get_rng_state,
    set_rng_state,
    AttributeState,
    find_non_finite,
    loader_generators,
    ResumableCheckpointHandler,
)
from monai_genaug.handlers.sample_grid import SampleGridHandler
from monai_genaug.handlers.tracking import (
    TrackingUnavailableWarning,
    default_tracking_uri,
    check_tracking_uri,
    flatten_params,
    loss_from_output,
    SafeMLFlowHandler,
    create_mlflow_handler,
)
from .distributed import (
    destroy_distributed,
    distributed_loader,
    distributed_trainer,
    get_rank,
    init_distributed,
    is_main_process,
    local_device,
    rank0_writers,
    unwrap,
)

__all__ = [
    "ScaleFactorInitializer",
    "SegmentationGridSaver",
    "gms_data_dir",
    "gms_datalist",
    "image_meta",
    "label_map_saver",
    "LatentDiffusionPrepareBatch",
    "CHECKPOINT_NAME",
    "TrainingHandlers",
    "TrainingOptions",
    "TRAINING_OPTION_NAMES",
    "resolve_training_options",
    "pop_training_options",
    "TrainerHandles",
    "HandlesMixin",
    "HandledSupervisedTrainer",
    "attach_handles",
    "standard_training_handlers",
    "PeriodicValidation",
    "create_supervised_trainer",
    "FinalModelHandler",
    "completed_normally",
    "attach_resumable_checkpoint",
    "BestModelSaver",
    "create_dice_evaluator",
    "attach_model_selection",
    "GeneratorSamples",
    "FinalGeneratorSaver",
    "trainable_modules",
    "create_diffusion_trainer",
    "SequenceDiffusionPrepareBatch",
    "SequenceSamples",
    "create_sequence_diffusion_trainer",
    "drop_conditions",
    "kl_divergence",
    "AutoencoderKLTrainer",
    "ReconstructionSamples",
    "FinalAutoencoderSaver",
    "create_perceptual_loss",
    "create_autoencoder_trainer",
    "prepare_image_batch",
    "ClassificationPrepareBatch",
    "FinalClassifierSaver",
    "NoisyLatentPrepareBatch",
    "create_classifier_trainer",
    "create_noisy_classifier_trainer",
    "evaluate_classifier",
    "noisy_latent_accuracy",
    "SEGMENTER_FORMAT",
    "SegmentationPrepareBatch",
    "build_segmenter",
    "create_segmentation_evaluator",
    "create_segmentation_trainer",
    "evaluate_segmentation",
    "load_segmenter",
    "save_segmenter",
    "segmenter_config",
    "segmenter_divisor",
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
    "destroy_distributed",
    "distributed_loader",
    "distributed_trainer",
    "get_rank",
    "init_distributed",
    "is_main_process",
    "local_device",
    "rank0_writers",
    "unwrap",
]
