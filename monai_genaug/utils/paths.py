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
"""Where optional real data lives: never bundled, always reached through a path."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["EMPTY_PATH_VALUES", "SHARED_DATA_ENV", "is_empty_path", "shared_data_dir"]

#: what a bundle config or a command line may give for "no path" (JSON null, an empty string, Python's None as text)
EMPTY_PATH_VALUES = ("", "none", "null")


def is_empty_path(value: str | os.PathLike | None) -> bool:
    """Whether ``value`` means "no path": ``None``, ``""``, or the words ``None`` / ``null`` (any case, surrounding
    spaces ignored), as ``--dataset_dir None`` arrives from ``python -m monai.bundle run``. The one such check of the
    package."""
    return value is None or str(value).strip().lower() in EMPTY_PATH_VALUES


#: environment variable naming the folder with the real data sets (Kvasir-SEG, BRATS, histology)
SHARED_DATA_ENV = "MONAI_GENAUG_DATA"


def shared_data_dir(default: str | os.PathLike | None = None) -> Path:
    """Return the real-data folder: ``$MONAI_GENAUG_DATA``, else ``default``, else ``../shared/data``
    next to the repository root. The folder may not exist; callers skip or fail with a clear message."""
    env = os.environ.get(SHARED_DATA_ENV)
    if env:
        return Path(env).expanduser()
    if default is not None:
        return Path(default).expanduser()
    return Path(__file__).resolve().parents[3] / "shared" / "data"
