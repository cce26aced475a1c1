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
"""Fundus photographs for retinal-vessel segmentation: the DRIVE and CHASE_DB1 folder layouts, in memory, at one size.

- DRIVE (Staal et al., IEEE TMI 2004): ``images/<id>.png`` (RGB), ``masks/<id>.png`` (first observer's vessels),
  ``fov/<id>.png`` (field of view), ``split.csv`` (``id,split``: the official 20 training / 20 test images).
- CHASE_DB1 (Fraz et al., IEEE TBME 2012): ``images/Image_<child><L|R>.png``, ``masks/`` (first observer),
  ``masks_2ndHO/`` (second observer), no field-of-view masks. The two eyes of a child are one subject:
  :func:`child_of` gives the group every split must keep together.

:func:`load_fundus` reads such items into tensors: the **green channel** (the channel with the highest vessel
contrast in fundus photographs, and the one the AdaptDiff release uses: ``x[:, 1]``) resized to ``size`` x ``size``
(bilinear; masks by area and > 0.5), normalised inside the field of view (its ``percentiles`` map to [0, 1], clipped;
outside the field of view 0). Where no field-of-view file exists it is estimated from the red channel
(:func:`estimate_fov`). :func:`random_fov_crops` samples the training crops (random windows whose centre lies inside
the field of view, seeded).
"""

from __future__ import annotations

import csv
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "CHASE_CHILD_PATTERN",
    "child_of",
    "chase_datalist",
    "drive_datalist",
    "estimate_fov",
    "load_fundus",
    "random_fov_crops",
]

#: CHASE_DB1 ids ``Image_<child><L|R>``: the child (group) is ``Image_<child>``
CHASE_CHILD_PATTERN = r"^(Image_\d+)[LR]$"


def child_of(stem: str, pattern: str = CHASE_CHILD_PATTERN) -> str:
    """The subject of an image id: the first group of ``pattern`` when it matches (CHASE: the child of an eye), else the
    id itself."""
    m = re.match(pattern, stem)
    return m.group(1) if m else stem


def _pngs(folder: Path) -> dict[str, Path]:
    if not folder.is_dir():
        raise FileNotFoundError(f"folder {folder} does not exist; check the data set path (see its README).")
    return {p.stem: p for p in sorted(folder.iterdir()) if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".tif")}


def drive_datalist(root: str | os.PathLike, split: str | None = None) -> list[dict]:
    """Items ``{"image", "label", "fov", "id", "group", "split"}`` of a DRIVE folder (paths).

    Args:
        root: folder with ``images/``, ``masks/``, ``fov/`` and ``split.csv``.
        split: ``"train"`` or ``"test"`` (the official split), or None for all.

    Raises:
        FileNotFoundError: a folder or ``split.csv`` is missing, or an image lacks its mask / field of view.
    """
    root = Path(root)
    images, masks, fovs = _pngs(root / "images"), _pngs(root / "masks"), _pngs(root / "fov")
    table = root / "split.csv"
    if not table.is_file():
        raise FileNotFoundError(f"{table} (id,split) is missing; DRIVE's official split is read from it.")
    with open(table, newline="") as f:
        splits = {row["id"]: row["split"] for row in csv.DictReader(f)}
    if split is not None and split not in set(splits.values()):
        raise ValueError(f"split must be one of {sorted(set(splits.values()))} or None, got {split!r}.")
    out = []
    for sid, path in images.items():
        if split is not None and splits.get(sid) != split:
            continue
        missing = [name for name, d in (("masks", masks), ("fov", fovs)) if sid not in d]
        if missing:
            raise FileNotFoundError(f"DRIVE image {sid} has no file in {missing} of {root}.")
        out.append({"image": str(path), "label": str(masks[sid]), "fov": str(fovs[sid]), "id": sid, "group": sid,
                    "split": splits.get(sid, "unknown")})
    if not out:
        raise ValueError(f"no DRIVE image of split {split!r} in {root}.")
    return out


def chase_datalist(root: str | os.PathLike, second_observer: bool = True) -> list[dict]:
    """Items ``{"image", "label", ["label_2nd"], "id", "group"}`` of a CHASE_DB1 folder; ``group`` is the child.

    Args:
        root: folder with ``images/``, ``masks/`` (first observer) and ``masks_2ndHO/`` (second observer).
        second_observer: also return the second observer's mask (``label_2nd``).
    """
    root = Path(root)
    images, masks = _pngs(root / "images"), _pngs(root / "masks")
    second = _pngs(root / "masks_2ndHO") if second_observer else {}
    out = []
    for sid, path in images.items():
        if sid not in masks:
            raise FileNotFoundError(f"CHASE_DB1 image {sid} has no first-observer mask in {root / 'masks'}.")
        it = {"image": str(path), "label": str(masks[sid]), "id": sid, "group": child_of(sid)}
        if second_observer:
            if sid not in second:
                raise FileNotFoundError(f"CHASE_DB1 image {sid} has no second-observer mask in {root / 'masks_2ndHO'}.")
            it["label_2nd"] = str(second[sid])
        out.append(it)
    if not out:
        raise ValueError(f"no image in {root / 'images'}.")
    return out


def estimate_fov(rgb: torch.Tensor, threshold: float = 0.15, kernel: int = 9) -> torch.Tensor:
    """Field of view of a fundus photograph (the bright disk): smoothed red channel above ``threshold``.

    Args:
        rgb: ``(3, H, W)`` in [0, 1].
        threshold: red-channel level (in [0, 1]) separating the disk from the black border.
        kernel: size of the smoothing window (odd).

    Returns:
        ``(1, H, W)`` bool.
    """
    if rgb.ndim != 3 or rgb.shape[0] != 3:
        raise ValueError(f"estimate_fov needs an RGB (3, H, W) image, got {tuple(rgb.shape)}.")
    red = F.avg_pool2d(rgb[None, :1].float(), kernel, stride=1, padding=kernel // 2, count_include_pad=False)
    return red[0] > float(threshold)


def _read(path: str | os.PathLike, mode: str) -> torch.Tensor:
    from PIL import Image

    with Image.open(path) as im:
        arr = np.asarray(im.convert(mode), dtype=np.float32) / 255.0
    t = torch.from_numpy(arr)
    return t.permute(2, 0, 1) if t.ndim == 3 else t[None]


def _resize(x: torch.Tensor, size: int, mask: bool) -> torch.Tensor:
    if mask:
        return F.interpolate(x[None].float(), size=(size, size), mode="area")[0] > 0.5
    return F.interpolate(x[None], size=(size, size), mode="bilinear", align_corners=False, antialias=True)[0]


def load_fundus(
    items: Sequence[Mapping[str, Any]],
    size: int = 512,
    percentiles: tuple[float, float] = (1.0, 99.0),
    label_keys: Sequence[str] = ("label", "label_2nd"),
) -> list[dict]:
    """Load fundus items into memory: ``{"image": (1, size, size) float in [0, 1] (green channel), "fov": (1, S, S)
    bool, <label keys>: (1, S, S) long 0/1, ...other keys}``.

    Args:
        items: entries with ``image`` (and optional ``fov`` and label) paths (:func:`drive_datalist`,
            :func:`chase_datalist`).
        size: side of the square resize (images bilinear with antialiasing; masks by area, then > 0.5).
        percentiles: the green channel's percentiles inside the field of view mapped to [0, 1] (then clipped);
            outside the field of view the image is 0.
        label_keys: keys of masks to load when present.
    """
    if int(size) < 8:
        raise ValueError(f"size must be >= 8 pixels, got {size}.")
    if not items:
        raise ValueError("no fundus item to load.")
    out = []
    for it in items:
        rgb = _read(it["image"], "RGB")
        fov = _read(it["fov"], "L") > 0.5 if it.get("fov") else estimate_fov(rgb)
        green = _resize(rgb[1:2], size, mask=False)
        fov = _resize(fov, size, mask=True)
        if not bool(fov.any()):
            raise ValueError(f"the field of view of {it['image']} is empty; check the image or its fov file.")
        lo, hi = np.percentile(green[fov].numpy(), percentiles)
        image = ((green - float(lo)) / max(float(hi - lo), 1e-6)).clamp(0.0, 1.0) * fov
        row = {k: v for k, v in it.items() if k not in ("image", "fov", *label_keys)}
        row.update(image=image.float(), fov=fov)
        for key in label_keys:
            if it.get(key):
                row[key] = (_resize(_read(it[key], "L") > 0.5, size, mask=True) & fov).long()
        out.append(row)
    return out


def random_fov_crops(
    items: Sequence[Mapping[str, Any]],
    crop: int,
    num_per_item: int,
    seed: int = 0,
    keys: Sequence[str] = ("image", "label"),
    min_fov: float = 0.5,
) -> list[dict]:
    """Random square crops of loaded fundus items, ``num_per_item`` per item (seeded, drawn once).

    A crop's centre is drawn uniformly among the field-of-view pixels whose window fits the image and keeps at least
    ``min_fov`` of its pixels inside the field of view (no crops of the black border).

    Args:
        items: loaded items (:func:`load_fundus`) with ``fov`` and the ``keys``.
        crop: crop side in pixels.
        num_per_item: crops per item.
        seed: seed of the draw.
        keys: keys cropped (those present in an item); ``fov`` is cropped too.
        min_fov: least field-of-view fraction of a crop.

    Returns:
        ``[{key: crop, "fov": crop, "id": "<id>__c<k>", "group": item group}]``.
    """
    rng = np.random.default_rng(int(seed))
    out = []
    for it in items:
        fov = it["fov"][0].float()
        h, w = fov.shape
        if crop > min(h, w):
            raise ValueError(f"crop {crop} is larger than the image {h} x {w}.")
        frac = F.avg_pool2d(fov[None, None], crop, stride=1)[0, 0]  # window starting at (r, c)
        starts = torch.nonzero(frac >= float(min_fov)).numpy()
        if not len(starts):
            raise ValueError(f"no {crop}-pixel window of {it.get('id')} holds {min_fov} field of view; lower min_fov.")
        for k, idx in enumerate(rng.integers(0, len(starts), size=int(num_per_item))):
            r, c = (int(v) for v in starts[idx])
            row = {key: it[key][:, r : r + crop, c : c + crop].clone() for key in (*keys, "fov") if key in it}
            row["id"] = f"{it.get('id', 'item')}__c{k:03d}"
            row["group"] = it.get("group", it.get("id"))
            out.append(row)
    return out
