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

"""Utilities: atomic checkpoints, image grids, data paths, label-map checks."""

from __future__ import annotations

from .checkpoint import (
    CheckpointMismatchError,
    atomic_save,
    check_state_dict_compatible,
    load_checkpoint,
    to_json_config,
)
from .images import make_image_grid, save_image_grid
from .labels import check_label_map
from .paths import SHARED_DATA_ENV, shared_data_dir

__all__ = [
    "atomic_save",
    "load_checkpoint",
    "check_state_dict_compatible",
    "CheckpointMismatchError",
    "to_json_config",
    "make_image_grid",
    "save_image_grid",
    "check_label_map",
    "SHARED_DATA_ENV",
    "shared_data_dir",
]
