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
"""Checkpoint files written atomically and read with ``weights_only=True``.

A checkpoint is one dict holding tensors (state dicts) and plain JSON-serialisable values
(a model config, counters). It is written to a temporary file in the destination folder and
renamed into place, so an interrupted write never leaves a half-written checkpoint behind.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "atomic_save",
    "remove_stale_temporaries",
    "load_checkpoint",
    "check_state_dict_compatible",
    "CheckpointMismatchError",
    "to_json_config",
]


class CheckpointMismatchError(RuntimeError):
    """Raised when a checkpoint does not fit the network it is loaded into."""


def remove_stale_temporaries(path: str | os.PathLike) -> list[Path]:
    """Delete the temporary files that an interrupted :func:`atomic_save` of ``path`` left (``.<name>.*.tmp``).

    A run killed while writing (``kill -9``, out of memory) never reaches the cleanup of :func:`atomic_save`; call this
    at the start of the next run, before anything writes ``path`` again.

    Args:
        path: the file whose temporaries are removed (it is not touched itself).

    Returns:
        the removed files.
    """
    path = Path(path)
    if not path.parent.is_dir():
        return []
    removed = []
    for tmp in path.parent.glob(f".{path.name}.*.tmp"):
        if tmp.is_file():
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed


def atomic_save(obj: Any, path: str | os.PathLike) -> Path:
    """Save obj with torch.save through a temporary file and an atomic rename.

    Args:
        obj: what to save (a dict of state dicts and JSON-serialisable values).
        path: destination file; its folder is created when missing.

    Returns:
        the destination path.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return path


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device | None = "cpu") -> dict:
    """Load a checkpoint written by :func:`atomic_save` with ``weights_only=True``.

    Raises:
        FileNotFoundError: the file does not exist (the message names it).
        ValueError: the file is not a readable checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint '{path}' does not exist; check the path or train the model first.")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # truncated file, pickle of arbitrary objects, not a torch file
        raise ValueError(
            f"'{path}' is not a readable weights-only checkpoint ({type(e).__name__}: {e}). "
            "Checkpoints must hold only tensors and JSON-like values; re-save it with monai_genaug."
        ) from e


def check_state_dict_compatible(module: torch.nn.Module, state_dict: Mapping[str, torch.Tensor], name: str = "") -> None:
    """Raise :class:`CheckpointMismatchError` listing missing, unexpected and mis-shaped keys.

    Args:
        module: the network that should receive state_dict.
        state_dict: the weights to check.
        name: a label for the message (e.g. "unet").
    """
    own = module.state_dict()
    missing = sorted(set(own) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(own))
    shape = sorted(
        f"{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(own[k].shape)}"
        for k in set(own) & set(state_dict)
        if tuple(own[k].shape) != tuple(state_dict[k].shape)
    )
    if missing or unexpected or shape:

        def _short(items: list[str]) -> str:
            return ", ".join(items[:10]) + (f" (+{len(items) - 10} more)" if len(items) > 10 else "") if items else "none"

        raise CheckpointMismatchError(
            f"checkpoint{' for ' + name if name else ''} does not match the network built from this config: "
            f"missing keys: {_short(missing)}; unexpected keys: {_short(unexpected)}; "
            f"shape mismatches: {_short(shape)}. Build the network with the config stored in the checkpoint."
        )


def to_json_config(config: Mapping[str, Any]) -> dict:
    """Return config as a plain JSON-serialisable dict (tuples become lists); raise if it is not."""
    try:
        return json.loads(json.dumps(config))
    except TypeError as e:
        raise TypeError(f"config is not JSON-serialisable: {e}") from e
