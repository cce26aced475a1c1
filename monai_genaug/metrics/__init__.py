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

"""Segmentation, uncertainty / error-estimation and synthetic-quality metrics."""

from __future__ import annotations

from .topology import cl_dice, soft_skeleton
from .uncertainty import (
    error_estimation_auc,
    error_estimation_dice,
    error_map,
    expected_entropy,
    mean_probability,
    mutual_information,
    predictive_entropy,
    predictive_variance,
    roc_auc,
    uncertainty_maps,
)

__all__ = [
    "cl_dice",
    "soft_skeleton",
    "mean_probability",
    "predictive_entropy",
    "expected_entropy",
    "mutual_information",
    "predictive_variance",
    "uncertainty_maps",
    "roc_auc",
    "error_map",
    "error_estimation_auc",
    "error_estimation_dice",
]
