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
"""Bundle data plumbing: ``dataset_dir`` or phantoms, a fixed split, and the loading pipelines of 2D and 3D bundles.

Every bundle runs on a fresh clone without data: when ``dataset_dir`` is empty, a phantom data set
(:mod:`monai_genaug.data.phantoms`) is written once under the bundle's output folder and read back through the same
folder readers as real data (``images/ + masks/`` for 2D, one NIfTI folder per case for 3D). The folder and split
logic is the GMS bundle's (:func:`monai_genaug.methods.gms.gms_data_dir`, :func:`~monai_genaug.methods.gms.gms_datalist`);
this module adds the checks that a 2D folder does not reach a 3D bundle (and the reverse), image-only folders for
unlabelled inference, constant extra keys (e.g. the TTGA prompt id) and pipelines whose label steps are skipped when
there is no label (so MONAI Label can feed images alone).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
import json
import os
from pathlib import Path
from typing import Any

from monai.data import PILReader
from monai.transforms import (
    Compose,
    ConcatItemsd,
    DeleteItemsd,
    EnsureChannelFirstd,
    EnsureTyped,
    LoadImaged,
    Orientationd,
    RandAdjustContrastd,
    RandFlipd,
    RandGaussianNoised,
    RandGaussianSmoothd,
    RandRotate90d,
    Resized,
    ScaleIntensityRangePercentilesd,
)

from monai_genaug.utils.paths import is_empty_path
from monai_genaug.transforms.validation import ValidateImaged, ValidateLabeld
from monai_genaug.data.folders import (
    limit_items,
    IMAGE_EXTENSIONS,
    nifti_case_datalist,
    paired_image_mask_datalist,
    split_datalist,
    split_name,
)
from monai_genaug.data.phantoms import MANIFEST_NAME, write_phantom_dataset
from monai_genaug.data.pipelines import PILConvert, check_spatial_multiple
from monai_genaug.transforms.io import BinarizeLabeld, ScaleIntensityByDtyped
from monai_genaug.utils.options import optional_count

__all__ = [
    "DEFAULT_PHANTOM_KIND",
    "add_constant_keys",
    "bundle_data_dir",
    "bundle_datalist",
    "bundle_transforms",
    "check_layout",
    "has_labels",
    "gms_data_dir",
    "gms_datalist",
]

#: phantom kind written when ``dataset_dir`` is empty
DEFAULT_PHANTOM_KIND = {2: "endoscopy", 3: "mri"}



def check_layout(data_dir: str | os.PathLike, spatial_dims: int, bundle: str = "this bundle") -> str:
    """Check that a data folder has the layout of a ``spatial_dims``-D bundle and return it.

    Layouts: 2D ``"paired"`` (``images/ + masks/``) or ``"images"`` (``images/`` only, unlabelled); 3D ``"cases"``
    (one sub-folder per case with one NIfTI file per modality).

    Args:
        data_dir: the folder.
        spatial_dims: 2 or 3.
        bundle: the bundle config named in error messages.

    Raises:
        FileNotFoundError: the folder does not exist.
        ValueError: a 2D folder for a 3D bundle, a case folder for a 2D bundle, or an empty folder.
    """
    root = Path(data_dir).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(
            f"dataset_dir '{root}' does not exist; pass an images/ + masks/ folder (2D, e.g. Kvasir-SEG) or a folder "
            "of NIfTI case folders (3D, e.g. BRATS), or leave dataset_dir empty to use phantoms."
        )
    has_images = (root / "images").is_dir()
    subdirs = [p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")]
    if spatial_dims == 3:
        if has_images:
            raise ValueError(
                f"dataset_dir '{root}' is a 2D images/ + masks/ folder but {bundle} is 3D and reads one NIfTI folder "
                "per case; use the 2D config (configs/inference.json) for it."
            )
        if not subdirs:
            raise ValueError(f"dataset_dir '{root}' holds no case folders; {bundle} reads one NIfTI folder per case.")
        return "cases"
    if spatial_dims == 2:
        if not has_images:
            raise ValueError(
                f"dataset_dir '{root}' has no images/ folder; {bundle} is 2D and reads images/ (+ masks/). A folder of "
                "NIfTI case folders (3D volumes) goes to the 3D config (configs/inference_3d.json)."
            )
        return "paired" if (root / "masks").is_dir() else "images"
    raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}.")


def bundle_data_dir(
    dataset_dir: str | os.PathLike | None,
    phantom_dir: str | os.PathLike | None = None,
    spatial_dims: int = 2,
    kind: str | None = None,
    num: int = 40,
    spatial_size: Sequence[int] | None = None,
    num_classes: int = 3,
    seed: int = 0,
    bundle: str = "this bundle",
) -> str:
    """The data folder of a bundle run: ``dataset_dir`` (layout checked) or a phantom data set written once.

    Args:
        dataset_dir: a real data folder, or None / "" for phantoms.
        phantom_dir: where phantoms are written (required without ``dataset_dir``).
        spatial_dims: 2 or 3 (2D folders are refused by 3D bundles and the reverse).
        kind: phantom kind (default ``"endoscopy"`` in 2D, ``"mri"`` in 3D).
        num: number of phantoms.
        spatial_size: phantom size (default 64 x 64 in 2D, 32^3 in 3D).
        num_classes: tumour classes of the MRI phantoms.
        seed: phantom seed.
        bundle: the bundle config named in error messages.
    """
    if not is_empty_path(dataset_dir):
        check_layout(dataset_dir, spatial_dims, bundle)
        return str(Path(dataset_dir).expanduser())
    kind = kind or DEFAULT_PHANTOM_KIND.get(spatial_dims)
    if kind is None:
        raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}.")
    size = spatial_size or ((64, 64) if spatial_dims == 2 else (32, 32, 32))
    if len(size) != spatial_dims:
        raise ValueError(f"phantom spatial_size {tuple(size)} must have {spatial_dims} values.")
    return gms_data_dir(None, phantom_dir, kind=kind, num=num, spatial_size=size, num_classes=num_classes, seed=seed)


def _image_only_datalist(root: Path, image_key: str = "image") -> list[dict]:
    items = []
    for p in sorted((root / "images").iterdir()):
        parts = split_name(p.name, IMAGE_EXTENSIONS)
        if p.is_file() and parts is not None and not p.name.startswith("."):
            items.append({image_key: str(p.resolve()), "id": parts[0]})
    if not items:
        raise ValueError(f"'{root / 'images'}' holds no images with extensions {IMAGE_EXTENSIONS}.")
    return items


def add_constant_keys(datalist: Sequence[Mapping[str, Any]], keys: Mapping[str, Any] | None) -> list[dict]:
    """Copies of the datalist entries with constant extra keys, e.g. ``{"prompt": 0}`` for generator training."""
    keys = dict(keys or {})
    return [{**item, **keys} for item in datalist]


def bundle_datalist(
    data_dir: str | os.PathLike,
    split: str = "test",
    spatial_dims: int = 2,
    val_fraction: float = 0.1,
    test_fraction: float = 0.2,
    seed: int = 0,
    max_items: int | None = None,
    patterns: Mapping[str, str] | None = None,
    extra_keys: Mapping[str, Any] | None = None,
    drop_keys: Sequence[str] = (),
    bundle: str = "this bundle",
) -> list[dict]:
    """One split of the fixed, seeded split of a bundle data folder (entries ``image`` [+ ``label``], ``id``).

    Args:
        data_dir: the folder (from :func:`bundle_data_dir`).
        split: ``"training"``, ``"validation"``, ``"test"`` or ``"all"`` (no split).
        spatial_dims: 2 or 3 (layout check).
        val_fraction: validation fraction.
        test_fraction: test fraction.
        seed: split seed.
        max_items: keep the first ``max_items`` entries (quick runs), None for all.
        patterns: NIfTI file patterns of the 3D case folders (default FLAIR, T1c and the ``OTMultiClass`` label).
        extra_keys: constant keys added to every entry (e.g. ``{"prompt": 0}``).
        drop_keys: keys removed from every entry (e.g. ``["label"]`` for autoencoder training, whose trainer
            reconstructs ``label`` instead of ``image`` when a batch has one).
        bundle: the bundle config named in error messages.
    """
    max_items = optional_count(max_items)  # --max_items null arrives as the text 'null'
    layout = check_layout(data_dir, spatial_dims, bundle)
    if layout == "images":
        items = _image_only_datalist(Path(data_dir))
        if split != "all":
            items = split_datalist(items, val_fraction=val_fraction, test_fraction=test_fraction, seed=seed)[split]
    elif split == "all":
        items = []
        for part in ("training", "validation", "test"):
            try:
                items += gms_datalist(data_dir, part, layout, val_fraction, test_fraction, seed, None, patterns)
            except ValueError:  # an empty split
                continue
    else:
        items = gms_datalist(data_dir, split, layout, val_fraction, test_fraction, seed, None, patterns)
    if not items:
        raise ValueError(f"the {split!r} split of '{data_dir}' is empty; add data or change the split fractions.")
    for item in items:
        if "id" not in item:
            item["id"] = item.get("case_id") or Path(str(item.get("image", item.get("label", "")))).name.split(".")[0]
    items = limit_items(items, max_items)
    items = [{k: v for k, v in item.items() if k not in set(drop_keys)} for item in items]
    return add_constant_keys(items, extra_keys)


def has_labels(datalist: Sequence[Mapping[str, Any]], label_key: str = "label") -> bool:
    """True when every entry of the datalist has a label."""
    return bool(datalist) and all(not is_empty_path(item.get(label_key)) for item in datalist)


def bundle_transforms(
    spatial_dims: int = 2,
    spatial_size: Sequence[int] = (64, 64),
    image_channels: int = 3,
    modality_keys: Sequence[str] = ("flair", "t1c"),
    label_mode: str = "binary",
    num_classes: int = 1,
    resize_label: bool = False,
    augment: bool = False,
    intensity_augment: bool = False,
    min_size: int = 1,
    spatial_multiple: int = 1,
    image_mode: str | None = None,
    image_key: str = "image",
    label_key: str = "label",
    config_name: str = "this bundle",
) -> Compose:
    """Loading pipeline of a 2D (``images/ + masks/``) or 3D (NIfTI cases) segmentation bundle.

    2D: RGB (``image_channels=3``) or grey PNG/JPEG/TIFF in ``(C, H, W)`` order, intensities to [0, 1] by the file's
    bit depth (8-bit ``/ 255``, 16-bit ``/ 65535``; :class:`~monai_genaug.transforms.io.ScaleIntensityByDtype` logs
    which), mask
    binarised (``"auto"`` threshold: 0/255 and JPEG masks) or kept as label values. 3D: one channel per modality
    (concatenated in ``modality_keys`` order), RAS orientation, per-channel percentile scaling (0.5 %, 99.5 %) to
    [0, 1], label kept (``"multiclass"``) or made whole-tumour (``"binary"``: label > 0). Then the image is resized
    to ``spatial_size`` (recorded, so ``Invertd`` brings predictions back to the file's grid and affine); the label
    is resized only with ``resize_label`` (training). Images are validated right after loading
    (:class:`~monai_genaug.transforms.validation.ValidateImaged`: dimensions, channels, NaN, constant, size) and labels
    after conversion (:class:`~monai_genaug.transforms.validation.ValidateLabeld`: values <= ``num_classes``). Every
    label step tolerates a missing label.

    Args:
        spatial_dims: 2 or 3.
        spatial_size: network input size.
        image_channels: image channels the networks take (2D: 3 or 1; 3D: ``len(modality_keys)``).
        modality_keys: 3D datalist keys of the modality files.
        label_mode: ``"binary"`` (foreground = label > 0) or ``"multiclass"`` (values kept).
        num_classes: foreground classes the segmenter predicts (its ``out_channels - 1``).
        resize_label: resize the label to ``spatial_size`` (nearest) too.
        augment: random flips and 90-degree rotations of image and label (training).
        intensity_augment: random Gaussian smoothing, noise and contrast changes of the image (segmenter training:
            makes the segmenter robust to the slight blur of autoencoder reconstructions, i.e. of generated views).
        min_size: smallest accepted spatial size of an image file (e.g. the generator's autoencoder factor).
        spatial_multiple: ``spatial_size`` must be a multiple of it (e.g. the product of the segmenter UNet's
            strides); checked before any image is read, with a valid size in the message.
        image_mode: ``Resized`` mode of the image (default ``"area"`` in 2D, ``"trilinear"`` in 3D).
        image_key: image key.
        label_key: label key.
        config_name: the bundle config named in error messages.
    """
    if label_mode not in ("binary", "multiclass"):
        raise ValueError(f"label_mode must be 'binary' or 'multiclass', got {label_mode!r}.")
    size = [int(s) for s in spatial_size]
    if len(size) != spatial_dims:
        raise ValueError(f"spatial_size {tuple(size)} must have {spatial_dims} values for a {spatial_dims}D bundle.")
    check_spatial_multiple(size, spatial_multiple, f"{config_name}'s segmenter down-sampling factor")
    validate_image = ValidateImaged(
        keys=image_key, spatial_dims=spatial_dims, num_channels=image_channels, min_size=min_size,
        config_name=config_name,
    )
    validate_label = ValidateLabeld(keys=label_key, num_classes=num_classes, allow_missing_keys=True)
    keys = [image_key, label_key]
    if spatial_dims == 2:
        if image_channels not in (1, 3):
            raise ValueError(f"2D images are RGB (image_channels=3) or grey (1), got {image_channels}.")
        xforms: list = [
            LoadImaged(keys=image_key, image_only=True,
                       reader=PILReader(converter=PILConvert("RGB" if image_channels == 3 else "L"),
                                        reverse_indexing=False)),
            LoadImaged(keys=label_key, image_only=True, allow_missing_keys=True,
                       reader=PILReader(converter=PILConvert("mask"), reverse_indexing=False)),
            EnsureChannelFirstd(keys=keys, allow_missing_keys=True),
            ScaleIntensityByDtyped(keys=image_key, channels=image_channels),
            validate_image,
            BinarizeLabeld(keys=label_key, threshold="auto", channel_reduction="max", allow_missing_keys=True)
            if label_mode == "binary"
            else EnsureTyped(keys=label_key, allow_missing_keys=True),
        ]
        mode = image_mode or "area"
    elif spatial_dims == 3:
        mods = list(modality_keys)
        if len(mods) != image_channels:
            raise ValueError(
                f"image_channels={image_channels} but modality_keys={mods}: the networks take one channel per "
                "modality; give one modality key per channel."
            )
        xforms = [
            LoadImaged(keys=mods, image_only=True),
            LoadImaged(keys=label_key, image_only=True, allow_missing_keys=True),
            EnsureChannelFirstd(keys=[*mods, label_key], allow_missing_keys=True),
            ConcatItemsd(keys=mods, name=image_key, dim=0),
            DeleteItemsd(keys=mods),
            Orientationd(keys=keys, axcodes="RAS", labels=None, allow_missing_keys=True),
            validate_image,
            ScaleIntensityRangePercentilesd(keys=image_key, lower=0.5, upper=99.5, b_min=0.0, b_max=1.0, clip=True,
                                            channel_wise=True),
            BinarizeLabeld(keys=label_key, threshold=0.0, allow_missing_keys=True)
            if label_mode == "binary"
            else EnsureTyped(keys=label_key, allow_missing_keys=True),
        ]
        mode = image_mode or "trilinear"
    else:
        raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}.")
    xforms.append(validate_label)
    xforms.append(Resized(keys=image_key, spatial_size=size, mode=mode))
    if resize_label:
        xforms.append(Resized(keys=label_key, spatial_size=size, mode="nearest", allow_missing_keys=True))
    if augment:
        xforms += [
            RandFlipd(keys=keys, prob=0.5, spatial_axis=0, allow_missing_keys=True),
            RandFlipd(keys=keys, prob=0.5, spatial_axis=1, allow_missing_keys=True),
            RandRotate90d(keys=keys, prob=0.5, max_k=3, spatial_axes=(0, 1), allow_missing_keys=True),
        ]
    if intensity_augment:
        xforms += [
            RandGaussianSmoothd(keys=image_key, sigma_x=(0.25, 1.2), sigma_y=(0.25, 1.2), sigma_z=(0.25, 1.2), prob=0.4),
            RandGaussianNoised(keys=image_key, prob=0.3, mean=0.0, std=0.03),
            RandAdjustContrastd(keys=image_key, prob=0.3, gamma=(0.7, 1.5)),
        ]
    return Compose(xforms)


# ----------------------------------------------------------------------------------------------------------------
# bundle data plumbing
# ----------------------------------------------------------------------------------------------------------------
_PHANTOM_KINDS = ("endoscopy", "grey", "mri")


def gms_data_dir(
    dataset_dir: str | os.PathLike | None,
    phantom_dir: str | os.PathLike | None = None,
    kind: str = "endoscopy",
    num: int = 120,
    spatial_size: Sequence[int] = (64, 64),
    num_classes: int = 3,
    seed: int = 0,
) -> str:
    """The data folder of a GMS run: ``dataset_dir`` when given, else a phantom data set written on the fly.

    Phantoms (:mod:`monai_genaug.data.phantoms`) are written once to ``phantom_dir/<kind>_<num>_<size>_s<seed>`` (a
    folder whose manifest matches is reused): ``"endoscopy"`` (RGB, binary, Kvasir-SEG layout ``images/ +
    masks/``), ``"grey"`` (grey ultrasound-like, binary) or ``"mri"`` (3D BRATS-like case folders with
    ``Flair``, ``T1c`` and a multi-class ``OTMultiClass`` label, ``num_classes`` tumour classes).

    Args:
        dataset_dir: a real data folder, or None / "" for phantoms.
        phantom_dir: where phantoms are written (required without ``dataset_dir``).
        kind: phantom kind.
        num: number of phantoms.
        spatial_size: phantom size.
        num_classes: tumour classes of the MRI phantoms.
        seed: phantom seed.

    Raises:
        FileNotFoundError: ``dataset_dir`` does not exist.
    """
    if not is_empty_path(dataset_dir):
        path = Path(dataset_dir).expanduser()
        if not path.is_dir():
            raise FileNotFoundError(
                f"dataset_dir '{path}' does not exist; pass an images/ + masks/ folder (Kvasir-SEG) or a folder of NIfTI "
                "case folders (BRATS), or leave dataset_dir empty to use phantoms."
            )
        return str(path)
    if kind not in _PHANTOM_KINDS:
        raise ValueError(f"phantom kind must be one of {_PHANTOM_KINDS}, got {kind!r}.")
    if phantom_dir is None:
        raise ValueError("without dataset_dir, pass phantom_dir (where the phantom data set is written).")
    size = tuple(int(s) for s in spatial_size)
    name = f"{kind}_{num}_{'x'.join(map(str, size))}_s{seed}" + (f"_k{num_classes}" if kind == "mri" else "")
    folder = Path(phantom_dir) / name
    kwargs: dict[str, Any] = {"spatial_size": size}
    if kind == "mri":
        kwargs["num_classes"] = int(num_classes)
    manifest = folder / MANIFEST_NAME
    if manifest.is_file():
        try:
            m = json.loads(manifest.read_text())
            if m.get("kind") == kind and m.get("num") == num and m.get("seed") == seed:
                return str(folder)
        except (OSError, ValueError):
            pass
    write_phantom_dataset(kind, folder, num, seed=seed, overwrite=True, **kwargs)
    return str(folder)


def gms_datalist(
    data_dir: str | os.PathLike,
    split: str = "training",
    layout: str = "auto",
    val_fraction: float = 0.1,
    test_fraction: float = 0.2,
    seed: int = 0,
    max_items: int | None = None,
    patterns: Mapping[str, str] | None = None,
) -> list[dict]:
    """One split of a fixed, seeded train / validation / test split of a GMS data folder.

    Layouts: ``"paired"`` (``images/ + masks/``, e.g. Kvasir-SEG; entries ``image``, ``label``, ``id``), ``"cases"``
    (one folder per case with ``Flair*``, ``T1c*``, ``OTMultiClass*``, e.g. BRATS; entries ``flair``, ``t1c``,
    ``label``, ``case_id``; cases are never split), or ``"auto"`` (paired when ``images/`` exists).

    Args:
        data_dir: the data folder.
        split: ``"training"``, ``"validation"`` (checkpoint selection), ``"test"`` (final numbers only) or
            ``"all"`` (every item).
        layout: see above.
        val_fraction: validation fraction.
        test_fraction: test fraction.
        seed: split seed (the split depends only on the file set and the seed).
        max_items: keep the first ``max_items`` entries of the split (quick runs), None (or ``"null"``) for all.
        patterns: NIfTI file patterns for ``"cases"`` (see :func:`~monai_genaug.data.folders.nifti_case_datalist`).
    """
    max_items = optional_count(max_items)  # --max_items null arrives as the text 'null'
    root = Path(data_dir)
    if layout == "auto":
        layout = "paired" if (root / "images").is_dir() else "cases"
    if layout == "paired":
        items = paired_image_mask_datalist(root)
        group = None
    elif layout == "cases":
        items = nifti_case_datalist(root, patterns=patterns)
        group = "case_id"
    else:
        raise ValueError(f"layout must be 'auto', 'paired' or 'cases', got {layout!r}.")
    splits = split_datalist(items, val_fraction=val_fraction, test_fraction=test_fraction, seed=seed, group_key=group)
    if split == "all":  # every item, in split order (as the other bundles' ``--split all``)
        splits["all"] = [item for part in ("training", "validation", "test") for item in splits.get(part, [])]
    if split not in splits:
        raise ValueError(f"split must be one of {[*splits, 'all']}, got {split!r}.")
    out = splits[split]
    if not out:
        raise ValueError(
            f"the {split!r} split of {root} is empty ({len(items)} items, val_fraction={val_fraction}, "
            f"test_fraction={test_fraction}); add data or change the fractions."
        )
    return limit_items(out, max_items)
