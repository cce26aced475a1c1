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
"""One check of numeric options at construction: NaN and Inf never reach a sampling loop.

A NaN guidance scale makes every generated image NaN without an error (``NaN < 0`` is False, so range checks let it
through); the failure shows up much later, e.g. as "probs contain NaN values" after a whole TTGA generation. The
core classes (sampler, guidance plug-ins, TTGA augmenter) call :func:`check_finite` on their float options, so every
method that builds on them inherits the check.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import numpy as np
import torch

__all__ = ["check_finite"]


def _values(value: Any) -> Iterable[float]:
    if value is None or isinstance(value, (str, bytes)):
        return []
    if isinstance(value, torch.Tensor):
        return value.detach().float().flatten().cpu().tolist()
    if isinstance(value, np.ndarray):
        return np.asarray(value, dtype=np.float64).ravel().tolist()
    if isinstance(value, (list, tuple)):
        return [v for item in value for v in _values(item)]
    try:
        return [float(value)]
    except (TypeError, ValueError):
        return []


def check_finite(owner: str = "", **options: Any) -> None:
    """Raise ``ValueError`` when a numeric option is NaN or infinite, naming the option.

    Numbers, tensors, arrays and (nested) sequences of them are checked; None, strings and other objects are
    ignored (their own checks apply).

    Args:
        owner: the class or function named in the message, e.g. ``"DiffusionSampler"``.
        options: ``name=value`` pairs to check.

    Raises:
        ValueError: ``"<owner>: guidance_scale must be a finite number, got nan."``.

    Example::

        check_finite("ClassifierFreeGuidance", scale=float("nan"))  # ValueError naming 'scale'
    """
    for name, value in options.items():
        bad = [v for v in _values(value) if not math.isfinite(v)]
        if bad:
            where = f"{owner}: " if owner else ""
            raise ValueError(
                f"{where}{name} must be a finite number, got {value!r}; NaN / Inf would make every generated "
                f"sample NaN. Set {name} to a finite value."
            )
