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
"""The one config merge of the package: presets plus user overrides, recursively, without aliasing either."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

__all__ = ["merge_config"]


def merge_config(base: Mapping[str, Any], override: Mapping[str, Any] | None) -> dict[str, Any]:
    """A deep copy of ``base`` with ``override`` merged in: nested dicts are merged key by key, any other value
    (lists included) replaces the base's. Neither argument is modified, and the result shares no object with them.

    Args:
        base: the preset config.
        override: the entries to change (``None``: none).

    Example::

        merge_config({"unet": {"channels": [8, 16], "num_res_blocks": 1}}, {"unet": {"channels": [16, 32]}})
        # {"unet": {"channels": [16, 32], "num_res_blocks": 1}}
    """
    out = copy.deepcopy(dict(base))
    for key, value in (override or {}).items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge_config(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out
