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
    bundle_output_sizes,
)
from .schema import META_SCHEMA_PATH, load_meta_schema, verify_bundle_metadata
from .tracking import loss_tracking_handlers
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
    TTGAPictureSaver,
    case_id,
    colormap,
    compose_panel,
    engine_items,
)

__all__ = [
    "BUNDLE_OUTPUT_NAMES",
    "DEFAULT_PHANTOM_KIND",
    "META_SCHEMA_PATH",
    "CaseMapWriter",
    "ForegroundProbabilityd",
    "GenerativeTTAWithBaselineInferer",
    "SegmentationComparisonWriter",
    "SplitChannelsd",
    "TTGAPictureSaver",
    "ValidateImaged",
    "ValidateLabeld",
    "add_constant_keys",
    "bundle_data_dir",
    "bundle_datalist",
    "bundle_output_sizes",
    "bundle_transforms",
    "case_id",
    "case_metrics",
    "check_layout",
    "colormap",
    "compose_panel",
    "engine_items",
    "export_network",
    "flip_tta_probabilities",
    "has_labels",
    "load_generator",
    "load_meta_schema",
    "load_network_weights",
    "loss_tracking_handlers",
    "missing_weights_message",
    "source_name",
    "verify_bundle_metadata",
]
