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
"""Plumbing shared by the bundles in ``bundles/``: data (``dataset_dir`` or phantoms), input checks, weights with
helpful messages, the TTGA evaluation inferer, per-case writers, ``--tracking mlflow`` support and the offline
metadata schema."""

from __future__ import annotations

from .data import (
    DEFAULT_PHANTOM_KIND,
    add_constant_keys,
    bundle_data_dir,
    bundle_datalist,
    bundle_transforms,
    check_layout,
    has_labels,
)
from .evaluation import case_metrics, flip_tta_probabilities
from .inferers import (
    BUNDLE_OUTPUT_NAMES,
    GenerativeTTAWithBaselineInferer,
    ProbabilitiesAsLogits,
    bundle_output_sizes,
)
from .runtime import bundle_root, progress_bar, resolve_num_threads, set_num_threads, tqdm_disable
from .schema import META_SCHEMA_PATH, load_meta_schema, verify_bundle_metadata
from .synthesis import SynthesisEvaluator, synthesis_summary
from .tracking import (
    config_settings,
    executed_config_path,
    loss_tracking_handlers,
    skip_tracking,
    track_config,
    tracked_handlers,
    tracking_requested,
)
from .transforms import (
    ForegroundProbabilityd,
    SplitChannelsd,
    ValidateImaged,
    ValidateLabeld,
    source_name,
)
from .weights import (
    export_network,
    load_generator,
    load_network_weights,
    missing_weights_message,
)
from .writers import (
    CaseMapWriter,
    SegmentationComparisonWriter,
    TTAUncertaintyWriter,
    TTGAPictureSaver,
    case_id,
    colormap,
    compose_panel,
    engine_items,
)

__all__ = [
    "BUNDLE_OUTPUT_NAMES",
    "CaseMapWriter",
    "DEFAULT_PHANTOM_KIND",
    "ForegroundProbabilityd",
    "GenerativeTTAWithBaselineInferer",
    "META_SCHEMA_PATH",
    "ProbabilitiesAsLogits",
    "SegmentationComparisonWriter",
    "SplitChannelsd",
    "SynthesisEvaluator",
    "TTAUncertaintyWriter",
    "TTGAPictureSaver",
    "ValidateImaged",
    "ValidateLabeld",
    "add_constant_keys",
    "bundle_data_dir",
    "bundle_datalist",
    "bundle_output_sizes",
    "bundle_root",
    "bundle_transforms",
    "case_id",
    "case_metrics",
    "check_layout",
    "colormap",
    "compose_panel",
    "config_settings",
    "engine_items",
    "executed_config_path",
    "export_network",
    "flip_tta_probabilities",
    "has_labels",
    "load_generator",
    "load_meta_schema",
    "load_network_weights",
    "loss_tracking_handlers",
    "missing_weights_message",
    "progress_bar",
    "resolve_num_threads",
    "set_num_threads",
    "skip_tracking",
    "source_name",
    "synthesis_summary",
    "tqdm_disable",
    "track_config",
    "tracked_handlers",
    "tracking_requested",
    "verify_bundle_metadata",
]
