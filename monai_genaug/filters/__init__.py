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

"""Filters of synthetic samples: one interface (fit on reference data, score, keep mask, chainable) and its implementations: centroid, semantic (classifier loss), temporal consistency, near duplicates."""

from __future__ import annotations

from .base import (
    FeatureFilter,
    FilterChain,
    FilterResult,
    NotFittedError,
    SyntheticFilter,
    as_label_tensor,
    iterate_sample_batches,
    num_samples,
)
from .centroid import CentroidFilter, class_centroids
from .semantic import SemanticLossFilter, sample_groups
from .temporal import (
    NearDuplicateFilter,
    TemporalConsistencyFilter,
    clip_frame_features,
    kmeans_1d,
    temporal_consistency,
)

__all__ = [
    "FeatureFilter",
    "FilterChain",
    "FilterResult",
    "NotFittedError",
    "SyntheticFilter",
    "as_label_tensor",
    "iterate_sample_batches",
    "num_samples",
    "CentroidFilter",
    "class_centroids",
    "SemanticLossFilter",
    "sample_groups",
    "NearDuplicateFilter",
    "TemporalConsistencyFilter",
    "clip_frame_features",
    "kmeans_1d",
    "temporal_consistency",
]
