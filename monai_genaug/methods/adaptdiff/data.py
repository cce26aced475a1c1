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
"""AdaptDiff data, IO and evaluation glue: paired (image, mask) folders and their manifests, pseudo-labels and synthetic
pairs written to disk, the source / target splits of the bundles (phantoms or a two-modality data set), loaders,
and the Dice evaluation of segmenters before and after adaptation.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.data import DataLoader, Dataset
from monai.inferers import Inferer
from monai.transforms import Compose

from monai_genaug.data.folders import (
    IMAGE_EXTENSIONS,
    limit_items,
    paired_image_mask_datalist,
    split_datalist,
    split_name,
)
from monai_genaug.data.fundus import child_of
from monai_genaug.data.phantoms import MANIFEST_NAME, phantom_affine, write_phantom_dataset
from monai_genaug.data.pipelines import segmentation_2d_transforms, volume_3d_transforms
from monai_genaug.data.synthetic import SYNTHETIC_KEY, synthetic_name
from monai_genaug.engines.segmentation import evaluate_segmentation, load_segmenter
from monai_genaug.transforms.label_corruption import RandLabelCorruption
from monai_genaug.transforms.pseudo_label import PseudoLabeler
from monai_genaug.utils.paths import is_empty_path
from monai_genaug.utils.images import save_image_grid
from monai_genaug.utils.io import atomic_write_bytes, nifti_bytes, png_bytes
from monai_genaug.utils.labels import check_label_map

__all__ = [
    "write_pairs",
    "make_pseudo_labels",
    "write_pseudo_labels",
    "write_synthetic_pairs",
    "adaptdiff_data_dir",
    "adaptdiff_split",
    "adaptdiff_transforms",
    "load_pairs",
    "load_pair_folder",
    "make_loader",
    "evaluate_segmenters",
    "PairedSynthesisResult",
]

logger = logging.getLogger(__name__)


_SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
#: the left / right eye of one subject: ``<subject ending in a digit><L|R>`` (CHASE_DB1: ``Image_01L``)
EYE_PAIR_PATTERN = r"^(.*\d)[LR]$"

# ----------------------------------------------------------------------------------------------------------------
# files and data of the bundle stages
# ----------------------------------------------------------------------------------------------------------------
def _stem_ok(name: str) -> str:
    if not _SAFE_ID.match(name):
        raise ValueError(f"id {name!r} must be a non-empty file-name-safe string (letters, digits, '.', '_', '-').")
    return name


def write_pairs(
    images: torch.Tensor,
    labels: torch.Tensor,
    ids: Sequence[str],
    out_dir: str | os.PathLike,
    num_classes: int = 1,
    value_range: Sequence[float] = (0.0, 1.0),
    extra: Mapping[str, Any] | None = None,
) -> list[dict]:
    """Write image / mask pairs as ``out_dir/images/<id>`` + ``out_dir/masks/<id>`` (PNG 2D, NIfTI 3D).

    The layout is the one :func:`~monai_genaug.data.folders.paired_image_mask_datalist` reads (and the phantoms'):
    2D images become 8-bit grey / RGB PNGs (``value_range`` mapped to 0..255), binary masks 0/255 PNGs, multi-class
    masks their label values; 3D volumes float32 / uint8 NIfTI with a 1 mm affine. A manifest ``pairs.json`` lists
    the pairs and ``extra``.

    Returns:
        datalist entries ``{"image", "label", "id"}`` (absolute paths).
    """
    images = torch.as_tensor(images).detach().float().cpu()
    labels = check_label_map(torch.as_tensor(labels).cpu(), num_classes, images.ndim - 2, name="masks to write")
    if images.shape[0] != labels.shape[0] or len(ids) != images.shape[0]:
        raise ValueError(f"got {images.shape[0]} images, {labels.shape[0]} masks and {len(ids)} ids; give one each.")
    if len(set(ids)) != len(ids):
        raise ValueError("ids must be unique (they are the file names).")
    out = Path(out_dir).expanduser()
    lo, hi = float(value_range[0]), float(value_range[1])
    entries = []
    is2d = images.ndim == 4
    for img, lab, sid in zip(images, labels, ids):
        sid = _stem_ok(str(sid))
        if is2d:
            ip, mp = out / "images" / f"{sid}.png", out / "masks" / f"{sid}.png"
            unit = ((img - lo) / (hi - lo)).clamp(0, 1).numpy()
            mask = lab.numpy().astype(np.uint8) * (255 if num_classes == 1 else 1)
            atomic_write_bytes(ip, png_bytes(unit))
            atomic_write_bytes(mp, png_bytes(mask))
        else:
            if img.shape[0] != 1:
                raise ValueError(f"3D pairs are written as single-channel NIfTI volumes, got {img.shape[0]} channels.")
            ip, mp = out / "images" / f"{sid}.nii.gz", out / "masks" / f"{sid}.nii.gz"
            atomic_write_bytes(ip, nifti_bytes(img[0].numpy().astype(np.float32), phantom_affine()))
            atomic_write_bytes(mp, nifti_bytes(lab[0].numpy().astype(np.uint8), phantom_affine()))
        entries.append({"image": str(ip.resolve()), "label": str(mp.resolve()), "id": sid})
    manifest = {
        "num_classes": int(num_classes),
        "value_range": [lo, hi],
        "pairs": [e["id"] for e in entries],
        **dict(extra or {}),
    }
    atomic_write_bytes(out / "pairs.json", json.dumps(manifest, indent=1, default=str).encode())
    return entries


def make_pseudo_labels(
    labeler: PseudoLabeler,
    target: Any,
    corruption: RandLabelCorruption | None = None,
    min_foreground: float = 0.0,
    image_key: str = "image",
) -> list[dict]:
    """(b) The cached pseudo-label set ``[{"image", "label", "id"}]`` of unlabelled target images.

    Args:
        labeler: the :class:`PseudoLabeler` of the source segmenter.
        target: ``(N, C, *spatial)`` images or items with ``image_key`` (and ``id``); true labels are dropped.
        corruption: a seeded :class:`RandLabelCorruption` applied to every pseudo-label.
        min_foreground: drop images whose pseudo-label covers less than this fraction (0 keeps all).
        image_key: image key of the items.

    Raises:
        ValueError: no target image, target channels that the segmenter cannot take, or an empty pseudo-label set
            (no foreground in any image, or every image below ``min_foreground``).
    """
    images = _images_of(target, image_key, "target").float()
    cfg = getattr(labeler.segmenter, "segmenter_config", None) or {}
    if cfg and (images.shape[1] != int(cfg["in_channels"]) or images.ndim - 2 != int(cfg["spatial_dims"])):
        raise ValueError(
            f"target images {tuple(images.shape)} do not fit the source segmenter ({cfg['in_channels']} channel(s), "
            f"{cfg['spatial_dims']}D); source and target must have the same channels and dimensions."
        )
    ids = _ids_of(target, images.shape[0], "target_")
    labels = labeler(images).cpu()
    if corruption is not None:
        labels = torch.stack([corruption(lab) for lab in labels])
    frac = (labels > 0).float().flatten(1).mean(1)
    if not bool((frac > 0).any()):
        raise ValueError(
            f"empty pseudo-label set: the source segmenter finds no foreground in any of the {images.shape[0]} target "
            f"images at threshold {labeler.threshold}. Lower the threshold, train the source segmenter with "
            "source_augmentation() (contrast inversion), or check that the target images show the structure."
        )
    keep = frac >= float(min_foreground)
    if not bool(keep.any()):
        raise ValueError(
            f"empty pseudo-label set: no target image has a pseudo-label covering >= {min_foreground} of it "
            f"(largest {float(frac.max()):.4f}); lower min_foreground."
        )
    out = [{"image": images[i], "label": labels[i], "id": ids[i]} for i in range(images.shape[0]) if bool(keep[i])]
    logger.info(
        f"pseudo-labelled {len(out)} of {images.shape[0]} target images (mean foreground {float(frac[keep].mean()):.3f})."
    )
    return out


def write_pseudo_labels(
    labeler: PseudoLabeler,
    items: Any,
    out_dir: str | os.PathLike,
    corruption: RandLabelCorruption | None = None,
    min_foreground: float = 0.0,
    seed: int = 0,
    value_range: Sequence[float] = (0.0, 1.0),
) -> list[dict]:
    """Bundle stage (b): :func:`make_pseudo_labels` of loaded target items, written as pairs (:func:`write_pairs`).

    Args:
        labeler: the :class:`PseudoLabeler` of the source segmenter.
        items: loaded target items ``{"image", "id"}`` (:func:`load_pairs`).
        out_dir: destination folder (``images/``, ``masks/``, ``pairs.json``).
        corruption: optional :class:`RandLabelCorruption`, seeded with ``seed``.
        min_foreground: drop images whose pseudo-label covers less than this fraction.
        seed: seed of the corruption.
        value_range: intensity range of the images.
    """
    if corruption is not None:
        corruption.set_random_state(seed)
    pairs = make_pseudo_labels(labeler, items, corruption, min_foreground)
    frac = float(torch.stack([(p["label"] > 0).float().mean() for p in pairs]).mean())
    return write_pairs(
        torch.stack([p["image"] for p in pairs]),
        torch.stack([p["label"] for p in pairs]),
        [p["id"] for p in pairs],
        out_dir,
        labeler.num_classes,
        value_range,
        extra={
            "kind": "pseudo_labels",
            "threshold": labeler.threshold,
            "corrupted": corruption is not None,
            "mean_foreground": frac,
        },
    )


def write_synthetic_pairs(
    result: PairedSynthesisResult, out_dir: str | os.PathLike, num_classes: int = 1, value_range: Sequence[float] = (0.0, 1.0)
) -> list[dict]:
    """Bundle stage (d): write a :class:`PairedSynthesisResult` as pairs named ``{mask id}_seg_{seed}`` (see
    :func:`~monai_genaug.data.synthetic.synthetic_name`), plus a preview ``out_dir/grid.png`` (first row: up to 8
    images, second row: their masks; middle slices of volumes)."""
    names = [synthetic_name(i, "seg", s) for i, s in zip(result.ids, result.seeds)]
    entries = write_pairs(
        result.images, result.labels, names, out_dir, num_classes, value_range, extra={"kind": "synthetic"}
    )
    n = min(8, result.images.shape[0])
    lo, hi = (float(v) for v in value_range)
    images = ((result.images[:n] - lo) / (hi - lo)).clamp(0, 1)
    masks = (result.labels[:n].float() / num_classes).expand(-1, images.shape[1], *images.shape[2:])
    save_image_grid(torch.cat([images, masks]), Path(out_dir) / "grid.png", nrow=n, normalise=False)
    for e, s in zip(entries, result.seeds):
        e["seed"], e[SYNTHETIC_KEY] = int(s), 1
    return entries


def _link_layout(source_dir: Any, target_dir: Any, layout_dir: Path) -> str:
    """``layout_dir/source`` and ``layout_dir/target`` as symbolic links to two separate data set folders."""
    for role, folder in (("source", source_dir), ("target", target_dir)):
        path = Path(folder).expanduser().resolve()
        need = ("images", "masks") if role == "source" else ("images",)
        missing = [n for n in need if not (path / n).is_dir()]
        if missing:
            raise FileNotFoundError(
                f"{role}_dir '{path}' must hold {' and '.join(f'{n}/' for n in need)} (e.g. DRIVE as source, "
                f"CHASE_DB1 as target); missing: {missing}."
            )
        link = layout_dir / role
        layout_dir.mkdir(parents=True, exist_ok=True)
        if link.is_symlink() or link.exists():
            if link.is_symlink() and link.resolve() == path:
                continue
            if not link.is_symlink():
                raise FileExistsError(f"'{link}' exists and is not a link; choose another output_dir.")
            link.unlink()
        link.symlink_to(path, target_is_directory=True)
    return str(layout_dir)


def adaptdiff_data_dir(
    dataset_dir: str | os.PathLike | None,
    phantom_dir: str | os.PathLike | None = None,
    num: int = 96,
    spatial_size: Sequence[int] = (64, 64),
    seed: int = 0,
    source_dir: str | os.PathLike | None = None,
    target_dir: str | os.PathLike | None = None,
    layout_dir: str | os.PathLike | None = None,
) -> str:
    """The data folder of an AdaptDiff run: ``dataset_dir`` when given; else ``source_dir`` + ``target_dir`` (two
    separate data sets, e.g. DRIVE -> CHASE_DB1, linked into ``layout_dir``); else two-modality phantoms written once.

    Layout (the one :func:`~monai_genaug.data.phantoms.write_phantom_dataset` writes for ``"two_modality"``):
    ``source/images`` + ``source/masks`` (labelled source modality), ``target/images`` (unlabelled target modality)
    and optionally ``target/masks`` (only used to evaluate). Phantoms go to
    ``phantom_dir/two_modality_<num>_<size>_s<seed>`` and are reused when its manifest matches.

    ``source_dir`` needs ``images/`` + ``masks/`` (other folders such as DRIVE's ``fov/`` are ignored), ``target_dir``
    ``images/`` and optionally ``masks/`` (evaluation only); ``layout_dir`` (default ``<phantom_dir>/../data_layout``)
    receives the links ``source`` and ``target``, so no data is copied.

    Raises:
        FileNotFoundError: ``dataset_dir`` does not exist or lacks ``source/`` / ``target/``, or ``source_dir`` /
            ``target_dir`` lack their folders.
        ValueError: only one of ``source_dir`` and ``target_dir``, or together with ``dataset_dir``.
    """
    separate = [d for d in (source_dir, target_dir) if not is_empty_path(d)]
    if separate:
        if len(separate) != 2 or not is_empty_path(dataset_dir):
            raise ValueError(
                "give source_dir and target_dir together (two data sets), or dataset_dir alone (one folder with "
                "source/ and target/), not a mix."
            )
        if is_empty_path(layout_dir):
            if phantom_dir is None:
                raise ValueError("with source_dir / target_dir, pass layout_dir (or phantom_dir) for the links.")
            layout_dir = Path(phantom_dir).parent / "data_layout"
        return _link_layout(source_dir, target_dir, Path(layout_dir))
    if not is_empty_path(dataset_dir):
        path = Path(dataset_dir).expanduser()
        missing = [p for p in ("source/images", "source/masks", "target/images") if not (path / p).is_dir()]
        if not path.is_dir() or missing:
            raise FileNotFoundError(
                f"dataset_dir '{path}' must hold source/images, source/masks and target/images (target/masks optional, "
                f"for evaluation); missing: {missing or 'the folder itself'}. Leave dataset_dir empty for phantoms."
            )
        return str(path)
    if phantom_dir is None:
        raise ValueError("without dataset_dir, pass phantom_dir (where the phantom data set is written).")
    size = tuple(int(s) for s in spatial_size)
    folder = Path(phantom_dir) / f"two_modality_{num}_{'x'.join(map(str, size))}_s{seed}"
    manifest = folder / MANIFEST_NAME
    if manifest.is_file():
        try:
            m = json.loads(manifest.read_text())
            if m.get("kind") == "two_modality" and m.get("num") == num and m.get("seed") == seed:
                return str(folder)
        except (OSError, ValueError):
            pass
    write_phantom_dataset("two_modality", folder, num, seed=seed, overwrite=True, spatial_size=size)
    return str(folder)


def _group_of(stem: str) -> str:
    """Items named ``<group>__<rest>`` (e.g. slices ``<patient>__z070``) belong to ``<group>``; the eyes
    ``<subject><digit>L`` / ``<subject><digit>R`` of one subject (CHASE_DB1's ``Image_01L`` / ``Image_01R``) to the
    subject; others to themselves."""
    return child_of(stem.split("__", 1)[0], EYE_PAIR_PATTERN)


def _image_only_datalist(folder: Path) -> list[dict]:
    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    out = []
    for p in files:
        parts = split_name(p.name, IMAGE_EXTENSIONS)
        if parts is None:
            raise ValueError(f"'{p}' is not an image file (extensions {list(IMAGE_EXTENSIONS)}); remove it.")
        out.append({"image": str(p.resolve()), "id": parts[0]})
    if not out:
        raise ValueError(f"folder {folder} holds no images.")
    return out


def adaptdiff_split(
    data_dir: str | os.PathLike,
    role: str,
    val_fraction: float = 0.1,
    test_fraction: float = 0.2,
    target_fraction: float = 0.5,
    seed: int = 0,
    max_items: int | None = None,
) -> list[dict]:
    """One role of a fixed, seeded split of an AdaptDiff data folder (see :func:`adaptdiff_data_dir`).

    Items are grouped by id (``<group>__<rest>`` ids, e.g. the slices of one patient, form one group; so do the two
    eyes ``<subject>L`` / ``<subject>R`` of a subject whose id ends in a digit, e.g. CHASE_DB1's children) and every
    group goes to one role only, so no anatomy is seen both labelled and unlabelled, or in training and test:

    - ``"target_test"``: ``test_fraction`` of the target groups that have masks (final numbers only);
    - ``"target_train"``: unlabelled target images of ``target_fraction`` of the remaining target groups when source and
      target share ids (the phantoms: one anatomy rendered twice), else of all remaining target groups; no labels;
    - ``"target_train_labelled"``: the same items with their masks (for the upper bound only);
    - ``"target_all"``: every target image, without labels (inference);
    - ``"source_train"`` / ``"source_val"``: labelled source pairs of the groups not used by the target roles, split
      by ``val_fraction``; ``"source_masks"`` is ``source_train`` (the masks synthesis is conditioned on).

    Args:
        data_dir: the data folder.
        role: one of the roles above.
        val_fraction: validation fraction of the source groups.
        test_fraction: test fraction of the labelled target groups.
        target_fraction: share of the non-test groups used as unlabelled target when ids are shared.
        seed: split seed.
        max_items: keep the first ``max_items`` items (quick runs).
    """
    roles = (
        "source_train",
        "source_val",
        "source_masks",
        "target_train",
        "target_train_labelled",
        "target_test",
        "target_all",
    )
    if role not in roles:
        raise ValueError(f"role must be one of {roles}, got {role!r}.")
    root = Path(data_dir)
    source = paired_image_mask_datalist(root / "source")
    has_target_masks = (root / "target" / "masks").is_dir()
    target = (
        paired_image_mask_datalist(root / "target")
        if has_target_masks
        else _image_only_datalist(root / "target" / "images")
    )
    for it in source + target:
        it["group"] = _group_of(it["id"])
    if role == "target_all":
        out = [{k: v for k, v in it.items() if k != "label"} for it in target]
        return limit_items(out, max_items)
    t_groups = sorted({it["group"] for it in target})
    s_groups = sorted({it["group"] for it in source})
    shared = bool(set(t_groups) & set(s_groups))
    rng = np.random.default_rng(seed)
    test_groups: set[str] = set()
    if has_target_masks and test_fraction > 0:
        sp = split_datalist([{"group": g} for g in t_groups], 0.0, test_fraction, seed=rng, group_key="group")
        test_groups = {e["group"] for e in sp["test"]}
    rest = [g for g in t_groups if g not in test_groups]
    if shared:
        perm = [rest[i] for i in rng.permutation(len(rest))]
        k = round(target_fraction * len(perm))
        train_groups = set(perm[:k])
    else:
        train_groups = set(rest)
    used = test_groups | train_groups
    src = [it for it in source if it["group"] not in used]
    if not src:
        raise ValueError(
            f"no source group left in {root} after the target roles; lower target_fraction / test_fraction."
        )
    sp = split_datalist(src, val_fraction, 0.0, seed=seed, group_key="group")
    if role == "target_test":
        out = [it for it in target if it["group"] in test_groups]
    elif role == "target_train":
        out = [{k: v for k, v in it.items() if k != "label"} for it in target if it["group"] in train_groups]
    elif role == "target_train_labelled":
        if not has_target_masks:
            raise ValueError(f"{root}/target has no masks/; the labelled target role (upper bound) needs them.")
        out = [it for it in target if it["group"] in train_groups]
    elif role in ("source_train", "source_masks"):
        out = sp["training"]
    else:
        out = sp["validation"]
    if not out:
        hint = " (target/masks is missing: no test split)" if role == "target_test" and not has_target_masks else ""
        raise ValueError(f"the {role!r} role of {root} is empty{hint}; add data or change the fractions.")
    return limit_items(out, max_items)


def adaptdiff_transforms(
    spatial_dims: int = 2,
    image_channels: int = 1,
    num_classes: int = 1,
    spatial_size: Sequence[int] | None = None,
    labelled: bool = True,
) -> Compose:
    """The loading pipeline of AdaptDiff data files: image in [0, 1] (+ label map), invertible (``Invertd``).

    2D: :func:`~monai_genaug.data.pipelines.segmentation_2d_transforms` (intensities / 255 or / 65535 by bit depth, masks binarised
    with the "auto" threshold for binary models, label values kept otherwise). 3D:
    :func:`~monai_genaug.data.pipelines.volume_3d_transforms` on the key ``image`` (percentile scaling to [0, 1],
    label ``> 0`` for binary models).

    Args:
        spatial_dims: 2 or 3.
        image_channels: 1 (grey) or 3 (RGB, 2D only).
        num_classes: foreground classes K.
        spatial_size: resize to this size (nearest for labels), or None.
        labelled: load the ``label`` too.
    """
    if spatial_dims == 2:
        return segmentation_2d_transforms(
            label_key="label" if labelled else None,
            spatial_size=spatial_size,
            rgb=image_channels == 3,
            mask_threshold="auto" if num_classes == 1 else None,
            intensity_range="dtype",
        )
    if spatial_dims == 3:
        return volume_3d_transforms(
            keys=("image",),
            label_key="label" if labelled else None,
            image_key=None,
            spatial_size=spatial_size,
            axcodes=None,
            normalise="percentile",
            label_mode="whole_tumour" if num_classes == 1 else "multiclass",
        )
    raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}.")


def load_pairs(
    datalist: Sequence[Mapping[str, Any]],
    spatial_dims: int = 2,
    image_channels: int = 1,
    num_classes: int = 1,
    spatial_size: Sequence[int] | None = None,
    labelled: bool | None = None,
) -> list[dict]:
    """Load a datalist into memory: ``{"image": (C, *spatial) float in [0, 1], "label": (1, *spatial) long, ...}``.

    2D files go through :func:`~monai_genaug.data.pipelines.segmentation_2d_transforms` (8-bit intensities to
    [0, 1], masks binarised with the "auto" threshold for binary models), 3D NIfTI through
    :func:`~monai_genaug.data.pipelines.volume_3d_transforms` (percentile scaling to [0, 1]). Other keys (``id``,
    ``group``) are kept. Labels are checked (:func:`~monai_genaug.utils.labels.check_label_map`).

    Args:
        datalist: entries with ``image`` (and ``label``) paths.
        spatial_dims: 2 or 3.
        image_channels: 1 (grey) or 3 (RGB, 2D only).
        num_classes: foreground classes K (1: masks binarised).
        spatial_size: resize to this size (nearest for labels), or None to keep the files' size.
        labelled: load labels (default: when the entries have ``label``).
    """
    items = list(datalist)
    if not items:
        raise ValueError("the datalist is empty; nothing to load.")
    labelled = all("label" in it for it in items) if labelled is None else labelled
    xform = adaptdiff_transforms(spatial_dims, image_channels, num_classes, spatial_size, labelled)
    out = []
    for it in items:
        d = xform(dict(it))
        image = torch.as_tensor(d["image"]).float()
        image = image.as_tensor() if hasattr(image, "as_tensor") else image
        if image.shape[0] != image_channels:
            raise ValueError(
                f"'{it['image']}' loads with {image.shape[0]} channel(s), expected image_channels={image_channels}."
            )
        row = {k: v for k, v in it.items() if k not in ("image", "label")}
        row["image"] = image
        if labelled:
            lab = torch.as_tensor(d["label"])
            lab = lab.as_tensor() if hasattr(lab, "as_tensor") else lab
            row["label"] = check_label_map(lab[None], num_classes, spatial_dims, name=f"mask of '{it['image']}'")[0]
        out.append(row)
    return out


def load_pair_folder(
    folder: str | os.PathLike,
    spatial_dims: int = 2,
    image_channels: int = 1,
    num_classes: int = 1,
    spatial_size: Sequence[int] | None = None,
) -> list[dict]:
    """Load the pairs of a folder written by :func:`write_pairs` (pseudo-labels, synthetic pairs) into memory.

    Raises:
        FileNotFoundError: the folder (or its ``images/`` / ``masks/``) does not exist: run the stage that writes it.
        ValueError: the folder was written for another number of classes.
    """
    root = Path(folder)
    if not (root / "images").is_dir() or not (root / "masks").is_dir():
        raise FileNotFoundError(
            f"'{root}' holds no images/ + masks/ pairs; run the stage that writes it first (pseudo_label.json for "
            "pseudo-labels, synthesize.json for synthetic pairs)."
        )
    manifest = root / "pairs.json"
    if manifest.is_file():
        k = json.loads(manifest.read_text()).get("num_classes")
        if k is not None and int(k) != int(num_classes):
            raise ValueError(f"'{root}' holds {k}-class masks but num_classes={num_classes}.")
    return load_pairs(paired_image_mask_datalist(root), spatial_dims, image_channels, num_classes, spatial_size)


def make_loader(
    items: Sequence[Mapping[str, Any]],
    transform: Any | None = None,
    batch_size: int = 8,
    shuffle: bool = True,
    seed: int = 0,
) -> DataLoader:
    """A MONAI ``DataLoader`` over in-memory items with a seeded shuffle and seeded random transforms."""
    if not len(items):
        raise ValueError("cannot build a loader over an empty item list.")
    if transform is not None and hasattr(transform, "set_random_state"):
        transform.set_random_state(seed)
    ds = Dataset(data=list(items), transform=transform)
    return DataLoader(
        ds,
        batch_size=int(batch_size),
        shuffle=shuffle,
        num_workers=0,
        generator=torch.Generator().manual_seed(seed) if shuffle else None,
    )


def evaluate_segmenters(
    paths: Mapping[str, str | os.PathLike],
    items: Sequence[Mapping[str, Any]],
    output_file: str | os.PathLike | None = None,
    device: str | torch.device = "cpu",
    batch_size: int = 8,
    inferer: Inferer | None = None,
) -> dict[str, Any]:
    """Bundle stage "evaluate": Dice of several saved segmenters on labelled target items; optionally to JSON.

    Args:
        paths: ``{name: segmenter file}`` (e.g. ``{"source_only": ..., "adaptdiff": ...}``); missing files raise.
        items: loaded labelled target items (:func:`load_pairs`).
        output_file: JSON file of the results, or None.
        device: device.
        batch_size: evaluation batch size.
        inferer: MONAI inferer.
    """
    results: dict[str, Any] = {}
    loader = make_loader(items, None, batch_size, shuffle=False)
    group_key = "group" if all("group" in it for it in items) else None
    for name, path in paths.items():
        net = load_segmenter(path)
        k = int(net.segmenter_config["num_classes"])
        results[name] = evaluate_segmentation(net, loader, k, device, inferer, group_key=group_key)
        results[name]["path"] = str(path)
        logger.info(
            f"{name}: mean Dice {results[name]['mean_dice']:.4f}, global Dice {results[name]['global_dice']:.4f}"
        )
    if output_file is not None:
        atomic_write_bytes(Path(output_file), json.dumps(results, indent=1).encode())
    return results


# ----------------------------------------------------------------------------------------------------------------
# the pipeline
# ----------------------------------------------------------------------------------------------------------------
@dataclass
class PairedSynthesisResult:
    """Synthetic target-modality images and the masks they were drawn for.

    Attributes:
        images: ``(N, C, *spatial)`` in the pipeline's ``value_range``.
        labels: ``(N, 1, *spatial)`` long label maps (the conditioning masks).
        seeds: the seed of every sample (sample ``i`` of a run with seed ``s`` has seed ``s + i``).
        ids: the id of the mask every sample was drawn for.
    """

    images: torch.Tensor
    labels: torch.Tensor
    seeds: list[int] = field(default_factory=list)
    ids: list[str] = field(default_factory=list)

    def items(self) -> list[dict]:
        """One ``{"image", "label", "id", "synthetic": 1}`` dict per sample (a MONAI ``Dataset``'s data)."""
        return [
            {"image": self.images[i], "label": self.labels[i], "id": f"{self.ids[i]}_{self.seeds[i]}", SYNTHETIC_KEY: 1}
            for i in range(self.images.shape[0])
        ]


def _images_of(data: Any, key: str, what: str) -> torch.Tensor:
    """Stack ``data`` (a tensor, or a sequence of items / tensors) into a ``(N, C, *spatial)`` tensor."""
    if isinstance(data, torch.Tensor):
        return data
    items = list(data)
    if not items:
        raise ValueError(f"the {what} set is empty; give at least one item.")
    arrays = []
    for i, it in enumerate(items):
        if isinstance(it, Mapping) and key not in it:
            raise KeyError(f"{what} item {i} has no '{key}' (keys: {sorted(map(str, it))}).")
        v = it[key] if isinstance(it, Mapping) else it
        arrays.append(torch.as_tensor(np.asarray(v) if not isinstance(v, torch.Tensor) else v))
    shapes = {tuple(a.shape) for a in arrays}
    if len(shapes) > 1:
        raise ValueError(f"the {what} items differ in shape {sorted(shapes)}; resize them to one size first.")
    return torch.stack([a.as_tensor() if hasattr(a, "as_tensor") else a for a in arrays])


def _ids_of(data: Any, n: int, prefix: str) -> list[str]:
    if isinstance(data, torch.Tensor):
        return [f"{prefix}{i:04d}" for i in range(n)]
    out = []
    for i, it in enumerate(data):
        v = it.get("id") if isinstance(it, Mapping) else None
        out.append(str(v) if v is not None else f"{prefix}{i:04d}")
    return out
