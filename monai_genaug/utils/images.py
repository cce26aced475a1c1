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
"""PNG grids of image batches: 2D images, the middle slice of 3D volumes, the frames of sequences.

A grid is a quick visual check of generated samples or reconstructions during training. One- and three-channel
images are written as grey-scale and RGB PNGs; a 3D volume is shown by its middle slice along ``slice_axis``; a
sequence (2D+t or a slice stack) gets one grid row per sample with its frames side by side. Files are written
atomically (temporary file + rename), so a crash never leaves a truncated PNG behind.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from monai.utils import optional_import


Image, _ = optional_import("PIL.Image")

from monai_genaug.utils.io import atomic_write

__all__ = [
    "make_image_grid",
    "save_image_grid",
    "to_unit_range",
    "from_unit_range",
]


def _as_tensor(batch) -> torch.Tensor:
    if isinstance(batch, (list, tuple)):
        batch = torch.stack([torch.as_tensor(np.asarray(b) if not isinstance(b, torch.Tensor) else b) for b in batch])
    if isinstance(batch, np.ndarray):
        batch = torch.from_numpy(batch)
    if not isinstance(batch, torch.Tensor):
        raise TypeError(
            f"tensor_batch must be a torch.Tensor, numpy array or list of them, got {type(batch).__name__}."
        )
    return batch.detach().to("cpu", torch.float32)


def _to_tiles(batch: torch.Tensor, sequence_dim: int | None, slice_axis: int) -> tuple[torch.Tensor, int | None]:
    """Return (N, C, H, W) tiles and the number of tiles per row forced by a sequence layout (or None)."""
    if batch.ndim < 4:
        raise ValueError(
            f"tensor_batch must be batch-first and channel-first, (B, C, H, W[, D]) or (B, C, T, H, W) for a sequence; "
            f"got shape {tuple(batch.shape)}. Add the missing dimensions with unsqueeze."
        )
    if sequence_dim is not None:
        if batch.ndim != 5:
            raise ValueError(
                f"a sequence batch must have shape (B, C, T, H, W) (frames at sequence_dim={sequence_dim}), "
                f"got shape {tuple(batch.shape)}."
            )
        dim = sequence_dim % batch.ndim
        if dim in (0, 1):
            raise ValueError(f"sequence_dim={sequence_dim} points at the batch or channel dimension; use 2, 3 or 4.")
        frames = batch.movedim(dim, 2)  # (B, C, T, H, W)
        b, c, t = frames.shape[:3]
        tiles = frames.permute(0, 2, 1, 3, 4).reshape(b * t, c, *frames.shape[3:])
        return tiles, t
    if batch.ndim == 5:  # 3D volume: middle slice along slice_axis (a spatial axis)
        axis = slice_axis % 5 if slice_axis < 0 else slice_axis + 2
        if axis not in (2, 3, 4):
            raise ValueError(f"slice_axis={slice_axis} must name a spatial axis: 0, 1, 2 or -3, -2, -1.")
        return batch.select(axis, batch.shape[axis] // 2), None
    if batch.ndim == 4:
        return batch, None
    raise ValueError(f"tensor_batch has {batch.ndim} dimensions (shape {tuple(batch.shape)}); expected 4 or 5.")


def make_image_grid(
    tensor_batch,
    nrow: int | None = None,
    normalise: bool = True,
    padding: int = 2,
    pad_value: float = 0.0,
    sequence_dim: int | None = None,
    slice_axis: int = -1,
) -> np.ndarray:
    """Arrange a batch of images into one uint8 grid image.

    Args:
        tensor_batch: (B, C, H, W) 2D images, (B, C, H, W, D) 3D volumes, or (B, C, T, H, W) sequences with
            ``sequence_dim=2``; C must be 1 (grey) or 3 (RGB). A numpy array or a list of tensors also works.
        nrow: tiles per grid row; defaults to ceil(sqrt(B)). Ignored for sequences (one row per sample).
        normalise: scale every tile to [0, 1] by its own min and max; when False values are clipped to [0, 1].
        padding: pixels between tiles and around the grid.
        pad_value: grey value of the padding, in [0, 1].
        sequence_dim: the frame dimension of a 5D sequence batch (e.g. 2 for (B, C, T, H, W)); None for 2D/3D.
        slice_axis: spatial axis (0, 1, 2 or negative) along which the middle slice of a 3D volume is taken.

    Returns:
        (H_grid, W_grid) uint8 array for one channel, (H_grid, W_grid, 3) for three channels.
    """
    batch = _as_tensor(tensor_batch)
    tiles, row_len = _to_tiles(batch, sequence_dim, slice_axis)
    n, c, h, w = tiles.shape
    if n == 0:
        raise ValueError("tensor_batch is empty; nothing to draw.")
    if c not in (1, 3):
        raise ValueError(
            f"save_image_grid draws 1-channel (grey) or 3-channel (RGB) images, got {c} channels "
            f"(shape {tuple(batch.shape)}). Select channels first, e.g. tensor_batch[:, :1] or tensor_batch[:, :3]."
        )
    if padding < 0:
        raise ValueError(f"padding must be >= 0, got {padding}.")
    if not torch.isfinite(tiles).all():
        warnings.warn("save_image_grid: non-finite values in the images were replaced by 0.", stacklevel=2)
        tiles = torch.nan_to_num(tiles, nan=0.0, posinf=0.0, neginf=0.0)
    if normalise:
        flat = tiles.reshape(n, -1)
        lo = flat.min(dim=1).values.view(n, 1, 1, 1)
        hi = flat.max(dim=1).values.view(n, 1, 1, 1)
        tiles = (tiles - lo) / (hi - lo).clamp_min(1e-12)
    tiles = tiles.clamp(0.0, 1.0)

    ncol = row_len if row_len is not None else (nrow if nrow is not None else math.ceil(math.sqrt(n)))
    if ncol < 1:
        raise ValueError(f"nrow must be >= 1, got {nrow}.")
    ncol = min(ncol, n)
    nrows = math.ceil(n / ncol)
    grid = torch.full((c, nrows * (h + padding) + padding, ncol * (w + padding) + padding), float(pad_value))
    for i in range(n):
        r, q = divmod(i, ncol)
        top, left = padding + r * (h + padding), padding + q * (w + padding)
        grid[:, top : top + h, left : left + w] = tiles[i]
    out = (grid * 255.0 + 0.5).clamp(0, 255).to(torch.uint8).numpy()
    return out[0] if c == 1 else np.ascontiguousarray(out.transpose(1, 2, 0))


def save_image_grid(
    tensor_batch,
    path: str | os.PathLike,
    nrow: int | None = None,
    normalise: bool = True,
    padding: int = 2,
    pad_value: float = 0.0,
    sequence_dim: int | None = None,
    slice_axis: int = -1,
) -> Path:
    """Write a batch of images as one PNG grid, atomically (temporary file in the same folder + rename).

    Args:
        tensor_batch: (B, C, H, W) 2D images, (B, C, H, W, D) 3D volumes (middle slice shown), or (B, C, T, H, W)
            sequences with ``sequence_dim=2`` (one row of frames per sample); C must be 1 or 3.
        path: destination ``.png`` file; its folder is created when missing.
        nrow: tiles per grid row; defaults to ceil(sqrt(B)). Ignored for sequences.
        normalise: scale every tile to [0, 1] by its own min and max; when False values are clipped to [0, 1].
        padding: pixels between tiles and around the grid.
        pad_value: grey value of the padding, in [0, 1].
        sequence_dim: the frame dimension of a 5D sequence batch; None for 2D images and 3D volumes.
        slice_axis: spatial axis along which the middle slice of a 3D volume is taken (default: the last one).

    Returns:
        the path of the written PNG.

    Raises:
        ValueError: the batch shape or channel count cannot be drawn, or ``path`` does not end with ``.png``.
    """
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ValueError(f"save_image_grid writes PNG files; '{path}' should end with '.png'.")
    grid = make_image_grid(tensor_batch, nrow, normalise, padding, pad_value, sequence_dim, slice_axis)
    # uint8 (H, W) -> "L", (H, W, 3) -> "RGB"
    return atomic_write(path, lambda f: Image.fromarray(grid).save(f, format="PNG"))


def to_unit_range(x: torch.Tensor, value_range: Sequence[float]) -> torch.Tensor:
    """Map intensities from ``value_range`` to [-1, 1] (the diffusion space)."""
    lo, hi = float(value_range[0]), float(value_range[1])
    return (x - lo) / (hi - lo) * 2.0 - 1.0


def from_unit_range(x: torch.Tensor, value_range: Sequence[float]) -> torch.Tensor:
    """Map intensities from [-1, 1] back to ``value_range``."""
    lo, hi = float(value_range[0]), float(value_range[1])
    return (x + 1.0) / 2.0 * (hi - lo) + lo
