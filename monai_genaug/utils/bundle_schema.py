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
"""Offline bundle metadata checks.

MONAI's ``verify_metadata`` downloads the JSON schema named in ``metadata.json`` unless the file given as
``--filepath`` already exists. :data:`META_SCHEMA_PATH` is a schema kept in this package that encodes the required
fields of the MONAI Bundle specification (``mb_specification.rst``: version, MONAI / PyTorch / NumPy versions,
required packages, task, description, authors, copyright, ``network_data_format`` with tensor specifiers that need
type, format, channels, spatial shape, dtype and value range; ``*_data_format`` entries of secondary networks are
checked the same way). So, from the repository root::

    python -m monai.bundle verify_metadata --meta_file bundles/ttga/configs/metadata.json \\
        --filepath monai_genaug/utils/meta_schema.json

runs offline, and :func:`verify_bundle_metadata` does the same from Python.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

__all__ = ["META_SCHEMA_PATH", "load_meta_schema", "verify_bundle_metadata"]

#: the offline MONAI bundle metadata schema shipped with the package
META_SCHEMA_PATH = Path(__file__).resolve().with_name("meta_schema.json")


def load_meta_schema() -> dict[str, Any]:
    """The schema at :data:`META_SCHEMA_PATH` as a dict."""
    return json.loads(META_SCHEMA_PATH.read_text())


def verify_bundle_metadata(meta_file: str | os.PathLike, schema_path: str | os.PathLike | None = None) -> None:
    """Validate a bundle's ``metadata.json`` with MONAI's ``verify_metadata`` against a local schema (no download).

    Args:
        meta_file: the metadata file.
        schema_path: a local JSON schema (default :data:`META_SCHEMA_PATH`).

    Raises:
        FileNotFoundError: a file is missing.
        ValueError: the metadata does not follow the schema (MONAI's message names the failing field).
    """
    from monai.bundle import verify_metadata

    schema = Path(schema_path) if schema_path is not None else META_SCHEMA_PATH
    for p in (Path(meta_file), schema):
        if not p.is_file():
            raise FileNotFoundError(f"'{p}' does not exist.")
    verify_metadata(meta_file=str(meta_file), filepath=str(schema))
