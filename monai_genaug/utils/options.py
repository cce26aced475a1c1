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
"""Options shared by every bundle and command line, and the parsing of their values (``python -m monai.bundle run``
passes ``--progress false`` and ``--max_items null`` as the texts ``'false'`` and ``'null'``).

``num_threads``: torch's intra-op thread count. The default (``None``) is **one thread per process on CPU**: the
shipped networks are small, one thread is as fast as two on a quiet machine, and torch's default (one thread per
core) collapses when another busy process shares the cores (oversubscription, issue #22,
``benchmarks/threads_busy.py``). On an accelerator the default leaves torch's setting alone.

:func:`check_finite`: one check of numeric options at construction, so NaN and Inf never reach a sampling loop
(issue #21). A NaN guidance scale makes every generated image NaN without an error (``NaN < 0`` is False, so range
checks let it through); the failure shows up much later, e.g. as "probs contain NaN values" after a whole TTGA
generation. The core classes (sampler, guidance plug-ins, TTGA augmenter) call it on their float options, so every
method that builds on them inherits the check.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Iterable
from typing import Any

import numpy as np
import torch

__all__ = ["add_runtime_arguments", "apply_runtime_arguments", "as_bool", "check_finite", "optional_count",
           "resolve_num_threads", "set_num_threads", "set_progress", "tqdm_disable"]

# The process-wide ``progress`` setting: a bundle's ``--progress false`` (through :func:`set_num_threads`) or a command
# line's reaches the bars of loops that take no ``progress`` option of their own (the trainers' per-iteration bars).
_PROGRESS = True


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


def resolve_num_threads(num_threads: int | None, device: torch.device | str | None = None) -> int | None:
    """The thread count ``num_threads`` stands for on ``device`` (None: leave torch's setting).

    Args:
        num_threads: a positive int, or None for the default: 1 on CPU (or when ``device`` is None), torch's own
            setting on an accelerator.
        device: the device the run computes on.

    Raises:
        ValueError: ``num_threads`` is not a positive integer.
    """
    if num_threads is None:
        kind = torch.device(device).type if device is not None else "cpu"
        return 1 if kind == "cpu" else None
    if isinstance(num_threads, bool) or not isinstance(num_threads, int) or num_threads < 1:
        raise ValueError(
            f"num_threads must be a positive integer or null (1 thread per process on CPU), got {num_threads!r}; "
            "e.g. --num_threads 1."
        )
    return num_threads


def set_progress(progress: bool | str | None) -> bool:
    """Set the process-wide ``progress`` default (see :func:`tqdm_disable`); None leaves it; return the setting.

    Args:
        progress: true: bars on stderr when it is a terminal; false: no bars anywhere in this process.
    """
    global _PROGRESS
    if progress is not None:
        _PROGRESS = as_bool(progress, "progress")
    return _PROGRESS


def tqdm_disable(progress: bool | str | None = None) -> bool | None:
    """tqdm's ``disable`` argument for a ``progress`` option: None (= off when stderr is not a TTY) or True (off).

    Args:
        progress: true: show bars on a terminal; false: never (see :func:`as_bool`); None: the process-wide setting
            (:func:`set_progress`, true unless a bundle or command line said ``--progress false``).
    """
    if progress is None:
        progress = _PROGRESS
    return None if as_bool(progress, "progress") else True


def set_num_threads(
    num_threads: int | None = None, device: torch.device | str | None = None, progress: bool | str | None = None
) -> int:
    """Set torch's intra-op thread count from a bundle / command-line ``num_threads`` option; return the count in use.

    Every bundle calls it first in ``initialize``, so it also takes the bundle's ``progress`` option and makes it the
    process-wide default (:func:`set_progress`).

    Args:
        num_threads: see :func:`resolve_num_threads` (None: 1 thread per process on CPU).
        device: the device the run computes on.
        progress: the run's ``progress`` option (None: leave the process-wide setting).
    """
    set_progress(progress)
    n = resolve_num_threads(num_threads, device)
    if n is not None and n != torch.get_num_threads():
        torch.set_num_threads(n)
    return torch.get_num_threads()


def add_runtime_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add ``--num_threads`` and ``--progress`` (as in every bundle config) to a command line; return the parser."""
    parser.add_argument("--num_threads", type=int, default=None,
                        help="torch CPU threads of this process (default: 1 per process on CPU)")
    parser.add_argument("--progress", type=lambda v: as_bool(v, "progress"), default=True,
                        help="progress bars on stderr when it is a terminal (default true; false: none)")
    return parser


def apply_runtime_arguments(args: argparse.Namespace, device: torch.device | str | None = None) -> int:
    """Set torch's thread count from parsed :func:`add_runtime_arguments` options; return the count in use.

    Args:
        args: the parsed arguments.
        device: the device the command computes on (default CPU).
    """
    return set_num_threads(getattr(args, "num_threads", None), device, getattr(args, "progress", None))


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
