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
"""Parsing of command-line option values: ``python -m monai.bundle run`` passes ``--progress false`` and
``--max_items null`` as the texts ``'false'`` and ``'null'``."""

from __future__ import annotations

from typing import Any

__all__ = ["as_bool", "optional_count"]


def as_bool(value: Any, name: str) -> bool:
    """A command-line switch as a bool: ``True``/``False`` and the texts ``true``/``false``/``1``/``0``/``yes``/``no``
    (``python -m monai.bundle run --progress false`` passes the text ``'false'``).

    Args:
        value: the option's value.
        name: the option's name, for the error message.

    Raises:
        ValueError: anything else.
    """
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "1", "yes", "on"):
        return True
    if text in ("false", "0", "no", "off"):
        return False
    raise ValueError(f"{name} must be true or false, got {value!r}; e.g. --{name} false.")


def optional_count(value: Any, name: str = "max_items") -> int | None:
    """A count option that may be "no limit": ``None`` and the texts ``null`` / ``none`` / ``""`` give None (the
    command line passes ``--max_items null`` as the text ``'null'``), ints and integer texts give the int.

    Args:
        value: the option's value.
        name: the option's name, for the error message.

    Raises:
        ValueError: anything else (a negative number, a fraction, other text).
    """
    if value is None or (isinstance(value, str) and value.strip().lower() in ("null", "none", "")):
        return None
    try:
        if isinstance(value, bool) or float(value) != int(float(value)) or int(float(value)) < 0:
            raise ValueError
        return int(float(value))
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a whole number >= 0 or null (no limit), got {value!r}; e.g. --{name} null.") from None
