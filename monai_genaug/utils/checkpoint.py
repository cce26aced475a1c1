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
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from monai_genaug.utils.io import atomic_write

__all__ = [
    "CHECKPOINT_FORMATS",
    "atomic_save",
    "remove_stale_temporaries",
    "load_checkpoint",
    "register_checkpoint_format",
    "check_state_dict_compatible",
    "CheckpointMismatchError",
    "to_json_config",
]


class CheckpointMismatchError(RuntimeError):
    """Raised when a checkpoint does not fit the network it is loaded into."""


#: the checkpoint formats of the package: format string -> (what the file holds, how to write one)
CHECKPOINT_FORMATS: dict[str, tuple[str, str]] = {}


def register_checkpoint_format(name: str, what: str, how: str) -> str:
    """Register a checkpoint format (the ``"format"`` entry of the checkpoint dict) and return its name.

    Args:
        name: the format string, e.g. ``"monai_genaug.LatentGenerator"``.
        what: what such a file holds, for messages (``"LatentGenerator"``).
        how: how to write one, for messages (``"save generators with LatentGenerator.save()"``).
    """
    known = CHECKPOINT_FORMATS.get(name)
    if known is not None and known != (what, how):
        raise ValueError(f"checkpoint format '{name}' is already registered as {known[0]!r}.")
    CHECKPOINT_FORMATS[name] = (what, how)
    return name


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
    """Save obj with torch.save through a temporary file and an atomic rename (:func:`~monai_genaug.utils.io.atomic_write`).

    Args:
        obj: what to save (a dict of state dicts and JSON-serialisable values).
        path: destination file; its folder is created when missing.

    Returns:
        the destination path.
    """
    return atomic_write(path, lambda f: torch.save(obj, f))


def load_checkpoint(
    path: str | os.PathLike,
    map_location: str | torch.device | None = "cpu",
    expected_format: str | Sequence[str] | None = None,
) -> dict:
    """Load a checkpoint written by :func:`atomic_save` with ``weights_only=True``.

    Args:
        path: the checkpoint file.
        map_location: where to load the tensors.
        expected_format: registered format(s) (:func:`register_checkpoint_format`) the file must have; ``None``
            accepts any readable checkpoint.

    Raises:
        FileNotFoundError: the file does not exist (the message names it).
        ValueError: the file is not a readable checkpoint, or not of ``expected_format`` (the message says what it
            should hold and how to write one).
    """
    ckpt = _load(path, map_location)
    if expected_format is not None:
        wanted = [expected_format] if isinstance(expected_format, str) else list(expected_format)
        found = ckpt.get("format") if isinstance(ckpt, Mapping) else None
        if found not in wanted:
            what = " / ".join(CHECKPOINT_FORMATS.get(w, (w, ""))[0] for w in wanted)
            how = "; ".join(h for h in (CHECKPOINT_FORMATS.get(w, ("", ""))[1] for w in wanted) if h)
            expected = " or ".join(f"'{w}'" for w in wanted)
            raise ValueError(
                f"'{path}' is not a {what} checkpoint (expected format {expected}, found {found!r})"
                + (f"; {how}." if how else ".")
            )
    return ckpt


def _load(path: str | os.PathLike, map_location: str | torch.device | None) -> Any:
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
