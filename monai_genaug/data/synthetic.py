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
"""Synthetic data sets: a deterministic writer and the mixing of synthetic samples into a real training set.

**Writing.** :func:`write_synthetic_images` stores generated images as ``out_dir/<class>/<source>_<label>_<seed>.png``
(``.nii.gz`` for 3D), i.e. a class-per-folder data set that :func:`monai_genaug.data.folders.class_folder_datalist`
reads back, and returns datalist entries ``{"image", "label", "class_name", "source", "seed", "synthetic": 1}``. The
deterministic name ``{source}_{label}_{seed}`` makes grouping (all samples of one source image / run) and leakage
checks possible.

**Mixing.** :func:`mix_synthetic_datalist` adds ``round(ratio x N_real)`` synthetic items (per class with
``per_class=True``, as HistoDiffusion's "fake 50 % / 100 % / 300 %" sets) to a real datalist, chosen by a seeded
permutation; :class:`SyntheticMixDataset` is a MONAI ``Dataset`` doing the same and drawing a fresh synthetic subset
every epoch (``set_epoch``), deterministically from ``(seed, epoch)``. Every mixed item carries ``"synthetic"``
(0 real, 1 synthetic) so losses or metrics can tell them apart.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.data import Dataset

from monai_genaug.data.phantoms import _class_names
from monai_genaug.utils.io import atomic_write_bytes, nifti_bytes, png_bytes

__all__ = [
    "SYNTHETIC_KEY",
    "SyntheticMixDataset",
    "match_class_counts",
    "mix_synthetic_datalist",
    "synthetic_name",
    "write_synthetic_images",
]

#: key marking synthetic (1) and real (0) items in mixed datalists
SYNTHETIC_KEY = "synthetic"
_SAFE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def synthetic_name(source: str, label: int | str, seed: int) -> str:
    """The deterministic file stem ``{source}_{label}_{seed}`` of a synthetic sample.

    Raises:
        ValueError: ``source`` is empty or holds characters unsafe in file names (``/``, spaces, ...).
    """
    source = str(source)
    if not _SAFE.match(source):
        raise ValueError(
            f"source id {source!r} must be a non-empty file-name-safe string (letters, digits, '.', '_', '-')."
        )
    return f"{source}_{label}_{int(seed)}"


def _to_unit(image: np.ndarray, value_range: tuple[float, float]) -> np.ndarray:
    lo, hi = (float(v) for v in value_range)
    if not hi > lo:
        raise ValueError(f"value_range must be (low, high) with high > low, got {value_range}.")
    return np.clip((image.astype(np.float32) - lo) / (hi - lo), 0.0, 1.0)


def _check_png_channels(image: np.ndarray) -> np.ndarray:
    if image.shape[0] not in (1, 3):
        raise ValueError(f"2D images must have 1 or 3 channels to be written as PNG, got {image.shape[0]}.")
    return image


def _volume_nifti_bytes(image: np.ndarray) -> bytes:
    vol = image[0] if image.shape[0] == 1 else np.moveaxis(image, 0, -1)  # channels last for multi-channel volumes
    return nifti_bytes(np.ascontiguousarray(vol.astype(np.float32)), np.eye(4))


def write_synthetic_images(
    images: torch.Tensor | np.ndarray,
    labels: Sequence[int] | torch.Tensor,
    seeds: Sequence[int] | torch.Tensor,
    out_dir: str | os.PathLike,
    source: str = "synthetic",
    class_names: Sequence[str] | None = None,
    value_range: tuple[float, float] = (0.0, 1.0),
    overwrite: bool = True,
) -> list[dict]:
    """Write generated images as a class-per-folder data set with deterministic names; return their datalist.

    2D images ``(N, C, H, W)`` (C = 1 or 3) become 8-bit PNGs with ``H`` rows (what ``PILReader(reverse_indexing=
    False)`` and :func:`~monai_genaug.data.pipelines.classification_2d_transforms` read back); 3D images
    ``(N, C, D, H, W)`` become float32 NIfTI volumes (identity affine). Intensities are mapped from ``value_range``
    to [0, 1] (clipped) before writing PNGs.

    Args:
        images: the images, ``(N, C, *spatial)``.
        labels: class index per image.
        seeds: seed per image (its file name is ``{source}_{label}_{seed}``); must be unique per class.
        out_dir: destination folder (``out_dir/<class name>/<name>.<ext>``).
        source: source id of the set (e.g. the generator's name or the source image id).
        class_names: folder name per class index (default ``class_<k>``).
        value_range: intensity range of ``images``.
        overwrite: replace existing files of the same name (False raises instead).

    Returns:
        datalist entries ``{"image": abs path, "label", "class_name", "source", "seed", "synthetic": 1}``.
    """
    arr = images.detach().float().cpu().numpy() if isinstance(images, torch.Tensor) else np.asarray(images, np.float32)
    if arr.ndim not in (4, 5):
        raise ValueError(f"images must be (N, C, H, W) or (N, C, D, H, W), got shape {tuple(arr.shape)}.")
    labels = [int(v) for v in (labels.tolist() if isinstance(labels, torch.Tensor) else labels)]
    seeds = [int(v) for v in (seeds.tolist() if isinstance(seeds, torch.Tensor) else seeds)]
    if not len(labels) == len(seeds) == arr.shape[0]:
        raise ValueError(f"got {arr.shape[0]} images, {len(labels)} labels and {len(seeds)} seeds; give one each.")
    if len(set(zip(labels, seeds))) != len(labels):
        raise ValueError("two images share a (label, seed) pair, so their file names would collide; use unique seeds.")
    if any(v < 0 for v in labels):
        raise ValueError(f"labels must be >= 0, got {sorted(set(labels))}.")
    if class_names is not None:
        class_names = [str(c) for c in class_names]
        if max(labels, default=-1) >= len(class_names):
            raise ValueError(f"label {max(labels)} has no entry in class_names ({len(class_names)} names).")
    # zero-padded default names, so that reading the folders back in sorted order keeps the labels
    names = class_names if class_names is not None else _class_names(None, max(labels, default=0) + 1)
    out = Path(out_dir).expanduser()
    ext = ".png" if arr.ndim == 4 else ".nii.gz"
    entries = []
    for image, label, seed in zip(arr, labels, seeds):
        cname = names[label]
        path = out / cname / f"{synthetic_name(source, label, seed)}{ext}"
        if path.exists() and not overwrite:
            raise FileExistsError(f"'{path}' exists; pass overwrite=True or choose another out_dir / source.")
        if ext == ".png":
            data = png_bytes(_check_png_channels(_to_unit(image, value_range)))
        else:
            data = _volume_nifti_bytes(image)
        atomic_write_bytes(path, data)
        entries.append(
            {
                "image": str(path.resolve()),
                "label": label,
                "class_name": cname,
                "source": str(source),
                "seed": seed,
                SYNTHETIC_KEY: 1,
            }
        )
    return entries


def _label_of(item: Mapping[str, Any], label_key: str, where: str) -> int:
    if label_key not in item:
        raise ValueError(f"{where} has no '{label_key}' (keys: {sorted(item)}); set label_key.")
    return int(np.asarray(item[label_key]).reshape(-1)[0])


def _counts(real: Sequence[Mapping[str, Any]], ratio: float, per_class: bool, label_key: str) -> dict[int | None, int]:
    if per_class:
        classes: dict[int | None, int] = {}
        for i, item in enumerate(real):
            c = _label_of(item, label_key, f"real item {i}")
            classes[c] = classes.get(c, 0) + 1
        return {c: math.floor(ratio * n + 0.5) for c, n in sorted(classes.items())}
    return {None: math.floor(ratio * len(real) + 0.5)}


def _draw(
    real: Sequence[Mapping[str, Any]],
    synthetic: Sequence[Mapping[str, Any]],
    ratio: float | None,
    rng: np.random.Generator,
    per_class: bool,
    label_key: str,
    replace: bool,
) -> list[int]:
    """Indices of the synthetic items to add."""
    if ratio is None:
        return list(range(len(synthetic)))
    pools: dict[int | None, list[int]] = {}
    for i, item in enumerate(synthetic):
        key = _label_of(item, label_key, f"synthetic item {i}") if per_class else None
        pools.setdefault(key, []).append(i)
    chosen: list[int] = []
    for key, n in _counts(real, ratio, per_class, label_key).items():
        pool = pools.get(key, [])
        if n == 0:
            continue
        what = f"class {key}" if per_class else "the synthetic set"
        if not pool:
            raise ValueError(f"ratio {ratio} asks for {n} synthetic items of {what} but there are none.")
        if n > len(pool) and not replace:
            raise ValueError(
                f"ratio {ratio} asks for {n} synthetic items of {what} but only {len(pool)} exist; lower the ratio, "
                "generate more, or pass replace=True to repeat items."
            )
        pick = rng.choice(len(pool), size=n, replace=n > len(pool))
        chosen.extend(pool[int(j)] for j in pick)
    return chosen


def mix_synthetic_datalist(
    real: Sequence[Mapping[str, Any]],
    synthetic: Sequence[Mapping[str, Any]],
    ratio: float | None = 1.0,
    seed: int = 0,
    per_class: bool = False,
    label_key: str = "label",
    keys: Sequence[str] | None = None,
    replace: bool = False,
    shuffle: bool = True,
) -> list[dict]:
    """Real items plus ``round(ratio x N_real)`` synthetic items drawn by a seeded permutation.

    Args:
        real: the real training datalist.
        synthetic: the (filtered) synthetic datalist, e.g. from :func:`write_synthetic_images`.
        ratio: synthetic items per real item (0.5 = "50 %"); None adds every synthetic item.
        seed: seed of the draw and of the shuffle.
        per_class: apply the ratio per class (``round(ratio x N_real(c))`` of class ``c``).
        label_key: key of the class index.
        keys: keys kept in every mixed item (default: ``image``, ``label_key``), so batches collate; ``"synthetic"``
            is always added (0 real, 1 synthetic).
        replace: allow repeating synthetic items when fewer exist than requested.
        shuffle: shuffle the mixed list (seeded); False puts the real items first.

    Raises:
        ValueError: a negative ratio, too few synthetic items (without ``replace``), a missing key.
    """
    if ratio is not None and not float(ratio) >= 0:
        raise ValueError(f"ratio must be >= 0 (synthetic items per real item) or None, got {ratio}.")
    keys = list(keys) if keys is not None else ["image", label_key]
    rng = np.random.default_rng(seed)
    chosen = _draw(real, synthetic, ratio, rng, per_class, label_key, replace)

    def pick(item: Mapping[str, Any], flag: int, where: str) -> dict:
        missing = [k for k in keys if k not in item]
        if missing:
            raise ValueError(f"{where} lacks key(s) {missing} (keys: {sorted(item)}).")
        out = {k: item[k] for k in keys}
        out[SYNTHETIC_KEY] = flag
        return out

    mixed = [pick(item, 0, f"real item {i}") for i, item in enumerate(real)]
    mixed += [pick(synthetic[i], 1, f"synthetic item {i}") for i in chosen]
    if shuffle:
        mixed = [mixed[int(i)] for i in rng.permutation(len(mixed))]
    return mixed


def match_class_counts(
    items: Sequence[Mapping[str, Any]],
    like: Sequence[Mapping[str, Any]],
    seed: int = 0,
    label_key: str = "label",
) -> list[dict]:
    """A seeded random subset of ``items`` with as many items per class as ``like`` has.

    Use it to compare an unfiltered synthetic set with a filtered one at equal size (the filter's effect, not the
    amount of data).

    Raises:
        ValueError: ``items`` has fewer items of some class than ``like``.
    """
    want: dict[int, int] = {}
    for i, item in enumerate(like):
        c = _label_of(item, label_key, f"item {i} of like")
        want[c] = want.get(c, 0) + 1
    pools: dict[int, list[int]] = {}
    for i, item in enumerate(items):
        pools.setdefault(_label_of(item, label_key, f"item {i}"), []).append(i)
    rng = np.random.default_rng(seed)
    chosen: list[int] = []
    for c, n in sorted(want.items()):
        pool = pools.get(c, [])
        if n > len(pool):
            raise ValueError(f"class {c}: {n} items wanted but only {len(pool)} available.")
        chosen.extend(pool[int(j)] for j in rng.permutation(len(pool))[:n])
    return [dict(items[i]) for i in sorted(chosen)]


class SyntheticMixDataset(Dataset):
    """A MONAI ``Dataset`` of real items plus a synthetic subset at a fixed ratio, redrawn every epoch.

    The synthetic subset of epoch ``e`` is a function of ``(seed, e)`` only; call :meth:`set_epoch` at the start of
    every epoch (e.g. ``trainer.add_event_handler(Events.EPOCH_STARTED, lambda e: ds.set_epoch(e.state.epoch))``).
    Without ``resample_each_epoch`` the subset of epoch 0 is used throughout. The length is constant:
    ``N_real + round(ratio x N_real)``.

    Args:
        real: real datalist.
        synthetic: synthetic datalist.
        ratio: synthetic items per real item (None: all synthetic items).
        transform: MONAI transform applied to every item.
        seed: base seed.
        per_class: apply the ratio per class.
        label_key: key of the class index.
        keys: keys kept per item (see :func:`mix_synthetic_datalist`).
        replace: allow repeating synthetic items.
        resample_each_epoch: draw a new synthetic subset in :meth:`set_epoch`.
    """

    def __init__(
        self,
        real: Sequence[Mapping[str, Any]],
        synthetic: Sequence[Mapping[str, Any]],
        ratio: float | None = 1.0,
        transform: Callable | None = None,
        seed: int = 0,
        per_class: bool = False,
        label_key: str = "label",
        keys: Sequence[str] | None = None,
        replace: bool = False,
        resample_each_epoch: bool = True,
    ) -> None:
        self.real = list(real)
        self.synthetic = list(synthetic)
        self.ratio = ratio
        self.seed = int(seed)
        self.per_class = per_class
        self.label_key = label_key
        self.keys = keys
        self.replace = replace
        self.resample_each_epoch = resample_each_epoch
        self.epoch = 0
        super().__init__(self._mix(0), transform=transform)

    def _mix(self, epoch: int) -> list[dict]:
        return mix_synthetic_datalist(
            self.real,
            self.synthetic,
            self.ratio,
            seed=int(np.random.SeedSequence([self.seed, int(epoch)]).generate_state(1)[0]),
            per_class=self.per_class,
            label_key=self.label_key,
            keys=self.keys,
            replace=self.replace,
        )

    def set_epoch(self, epoch: int) -> None:
        """Use the synthetic subset of ``epoch`` (no-op without ``resample_each_epoch``)."""
        self.epoch = int(epoch)
        if self.resample_each_epoch:
            self.data = self._mix(self.epoch)

    @property
    def num_synthetic(self) -> int:
        """Synthetic items in the current mix."""
        return sum(int(d[SYNTHETIC_KEY]) for d in self.data)
