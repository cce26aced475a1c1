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
"""Folders on disk -> MONAI datalists (lists of dicts of file paths) -> seeded splits -> datalist JSON.

Three folder layouts are understood:

* paired 2D (or 3D) segmentation data, ``root/images/<stem>.<ext>`` + ``root/masks/<stem>.<ext>``
  (Kvasir-SEG, the endoscopy phantoms): :func:`paired_image_mask_datalist`;
* one folder per case holding one file per modality, ``root/<case>/{Flair*, T1c*, OTMultiClass*}``
  (BRATS as distributed by DeepMedic, the brain phantoms): :func:`nifti_case_datalist`;
* one folder per class, ``root/<class>/<file>`` (Kather histology, the histology phantoms):
  :func:`class_folder_datalist`.

Every reader checks what it can check cheaply, from file headers only (PIL ``Image.open(...).size``,
nibabel header shapes; no pixel data is decoded), so a folder of thousands of pairs is listed in
well under a second. Problems (a missing partner, a size mismatch, an unreadable or non-image
file, an ambiguous pattern) raise one ``ValueError`` that names the files, or, with ``strict=False``,
the offending entries are skipped and listed in one logged warning.

:func:`split_datalist` makes a deterministic, seeded train/validation/test split (optionally keeping
groups such as patients together), :func:`write_datalist` writes the split as the usual MONAI
datalist JSON (``{"training": [...], "validation": [...], "test": [...]}``) that
``monai.data.load_decathlon_datalist`` reads, and :func:`load_datalist` reads it back.

Example::

    items = paired_image_mask_datalist("/data/kvasir_seg")
    splits = split_datalist(items, val_fraction=0.1, test_fraction=0.2, seed=0)
    write_datalist(splits, "/data/kvasir_seg/datalist.json", base_dir="/data/kvasir_seg")
    train_files = load_datalist("/data/kvasir_seg/datalist.json", "training")
"""

from __future__ import annotations

import fnmatch
import json
import logging
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from monai.utils import optional_import

from monai_genaug.utils.options import optional_count
from monai_genaug.utils.outputs import check_file_destination

nib, _has_nib = optional_import("nibabel")
PILImage, _has_pil = optional_import("PIL.Image")
sitk, _has_sitk = optional_import("SimpleITK")

from monai_genaug.utils.io import atomic_write_text

__all__ = [
    "IMAGE_EXTENSIONS",
    "NIFTI_EXTENSIONS",
    "SPLIT_NAMES",
    "read_spatial_size",
    "split_name",
    "paired_image_mask_datalist",
    "nifti_case_datalist",
    "class_folder_datalist",
    "split_datalist",
    "limit_items",
    "write_datalist",
    "load_datalist",
]

logger = logging.getLogger(__name__)

#: default file extensions of images and masks (matched case-insensitively, longest first)
IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".nii", ".nii.gz")
#: default file extensions of volumes in case folders
NIFTI_EXTENSIONS: tuple[str, ...] = (".nii", ".nii.gz")
#: names of the splits, as MONAI's ``load_decathlon_datalist`` expects them
SPLIT_NAMES: tuple[str, str, str] = ("training", "validation", "test")

_PIL_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".gif", ".webp", ".ppm", ".pgm")
_NIFTI_SUFFIXES = (".nii", ".nii.gz", ".hdr", ".img")
_SITK_SUFFIXES = (".mha", ".mhd", ".nrrd", ".nhdr")
_MAX_LISTED = 5  # files named per problem in an error message


# ----------------------------------------------------------------------------------------------
# small helpers
# ----------------------------------------------------------------------------------------------


def _norm_extensions(extensions: Sequence[str] | str, arg: str = "extensions") -> tuple[str, ...]:
    """Lower-case, dot-prefixed extensions sorted longest first (so ``.nii.gz`` wins over ``.gz``)."""
    if isinstance(extensions, str):
        extensions = (extensions,)
    exts = []
    for e in extensions:
        if not isinstance(e, str) or not e.strip("."):
            raise ValueError(f"{arg} must be file extensions such as '.png' or '.nii.gz', got {extensions!r}.")
        exts.append("." + e.lower().lstrip("."))
    if not exts:
        raise ValueError(f"{arg} is empty; give at least one file extension such as '.png'.")
    return tuple(sorted(set(exts), key=lambda s: (-len(s), s)))


def split_name(name: str, extensions: Sequence[str] = IMAGE_EXTENSIONS) -> tuple[str, str] | None:
    """Split a file name into (stem, extension) using the longest matching extension.

    Handles double suffixes (``a.nii.gz`` -> ``("a", ".nii.gz")``) and dots inside the stem
    (``x.tif_Row_1.tif`` -> ``("x.tif_Row_1", ".tif")``). Matching ignores case.

    Args:
        name: a file name (not a path).
        extensions: the recognised extensions.

    Returns:
        ``(stem, extension)`` with the extension as spelled in ``name``, or ``None`` when no extension matches.
    """
    lower = name.lower()
    for ext in _norm_extensions(extensions):
        if lower.endswith(ext) and len(name) > len(ext):
            return name[: -len(ext)], name[-len(ext) :]
    return None


def read_spatial_size(path: str | os.PathLike) -> tuple[int, ...]:
    """Read the spatial size of an image from its header only (no pixel data is decoded).

    The size is in index order ``(x, y[, z])``: PIL's ``(width, height)`` for 2D files, the first three
    header dimensions for NIfTI (a 4th, channel/time dimension is ignored), SimpleITK's ``GetSize()`` for
    MetaImage/NRRD. Trailing singleton dimensions beyond the second are dropped, so a 2D image and a NIfTI
    slice stored as ``(x, y, 1)`` compare equal.

    Args:
        path: the image file.

    Raises:
        ValueError: when the file cannot be read as an image; the message names the file.
    """
    path = Path(path)
    lower = path.name.lower()
    try:
        if lower.endswith(_NIFTI_SUFFIXES):
            size = tuple(int(s) for s in nib.load(str(path)).header.get_data_shape()[:3])
        elif lower.endswith(_SITK_SUFFIXES):
            reader = sitk.ImageFileReader()
            reader.SetFileName(str(path))
            reader.ReadImageInformation()
            size = tuple(int(s) for s in reader.GetSize())
        else:
            with PILImage.open(path) as im:
                size = tuple(int(s) for s in im.size)
    except Exception as e:  # PIL.UnidentifiedImageError, nibabel ImageFileError, gzip/OSError...
        raise ValueError(f"cannot read image file {path}: {type(e).__name__}: {e}") from e
    while len(size) > 2 and size[-1] == 1:
        size = size[:-1]
    return size


def _fmt_size(size: Sequence[int]) -> str:
    return "x".join(str(s) for s in size)


def _listing(names: Sequence[str], limit: int = _MAX_LISTED) -> str:
    names = list(names)
    shown = ", ".join(str(n) for n in names[:limit])
    return shown + (f", ... ({len(names) - limit} more)" if len(names) > limit else "")


def _visible(entries: Sequence[Path]) -> list[Path]:
    return [p for p in entries if not p.name.startswith(".")]


def _list_files(folder: Path) -> list[Path]:
    """Visible regular files of a folder (not recursive), sorted by name."""
    return sorted(_visible([p for p in folder.iterdir() if p.is_file()]), key=lambda p: p.name)


def _list_dirs(folder: Path) -> list[Path]:
    """Visible sub-folders of a folder, sorted by name."""
    return sorted(_visible([p for p in folder.iterdir() if p.is_dir()]), key=lambda p: p.name)


def _require_dir(folder: Path, what: str, hint: str = "") -> None:
    if folder.is_dir():
        return
    if folder.exists():
        raise NotADirectoryError(f"{what} {folder} is a file, not a folder.{hint}")
    parent = folder.parent
    near = ""
    if parent.is_dir():
        near = f" {parent} contains: {_listing([p.name for p in sorted(parent.iterdir())], 10) or 'nothing'}."
    raise FileNotFoundError(f"{what} {folder} does not exist.{near}{hint}")


def _abs(p: Path) -> str:
    """Absolute path as a string, without resolving symbolic links."""
    return os.path.abspath(os.fspath(p))


class _Problems:
    """Collects problems of one listing; raises them together (strict) or warns once and skips."""

    def __init__(self, what: str):
        self.what = what
        self.sections: list[str] = []
        self.skipped: set[str] = set()

    def add(self, section: str, skip: Sequence[str] = ()) -> None:
        self.sections.append(section)
        self.skipped.update(skip)

    def __bool__(self) -> bool:
        return bool(self.sections)

    def resolve(self, strict: bool, fix: str) -> None:
        if not self.sections:
            return
        body = "\n  - ".join(self.sections)
        if strict:
            raise ValueError(
                f"{self.what}: {len(self.sections)} problem(s):\n  - {body}\n{fix} "
                "Or pass strict=False to skip these entries with a warning."
            )
        logger.warning(
            "%s: skipping %d entr%s because of %d problem(s):\n  - %s",
            self.what,
            len(self.skipped),
            "y" if len(self.skipped) == 1 else "ies",
            len(self.sections),
            body,
        )


def _index_by_stem(
    files: Sequence[Path], extensions: tuple[str, ...], stem_suffix: str, problems: _Problems, role: str
):
    """Map stem -> file for the files with a recognised extension; report non-image files and duplicates."""
    by_stem: dict[str, list[Path]] = {}
    others: list[str] = []
    for f in files:
        parts = split_name(f.name, extensions)
        if parts is None:
            others.append(f.name)
            continue
        stem = parts[0]
        if stem_suffix:
            if not stem.endswith(stem_suffix):
                others.append(f.name)
                continue
            stem = stem[: -len(stem_suffix)]
        by_stem.setdefault(stem, []).append(f)
    if others:
        folder = files[0].parent
        problems.add(
            f"{len(others)} file(s) in {folder} are not {role}s with an extension in {list(extensions)}"
            + (f" and the name suffix {stem_suffix!r}" if stem_suffix else "")
            + f": {_listing(others)}",
            skip=[str(folder / o) for o in others],
        )
    dups = {s: fs for s, fs in by_stem.items() if len(fs) > 1}
    for s, fs in sorted(dups.items()):
        problems.add(
            f"{role} stem {s!r} is ambiguous, several files share it: {_listing([f.name for f in fs])}",
            skip=[_abs(f) for f in fs],
        )
    return {s: fs[0] for s, fs in by_stem.items() if len(fs) == 1}, set(dups)


# ----------------------------------------------------------------------------------------------
# the three folder layouts
# ----------------------------------------------------------------------------------------------


def paired_image_mask_datalist(
    root: str | os.PathLike,
    image_dir: str = "images",
    mask_dir: str = "masks",
    image_key: str = "image",
    label_key: str = "label",
    extensions: Sequence[str] = IMAGE_EXTENSIONS,
    strict: bool = True,
    check_sizes: bool = True,
    mask_suffix: str = "",
    id_key: str | None = "id",
) -> list[dict]:
    """List image/mask pairs of ``root/image_dir`` and ``root/mask_dir``, matched by file stem.

    ``images/a.jpg`` pairs with ``masks/a.png`` (the extensions may differ; ``.nii.gz`` counts as one
    extension). With ``mask_suffix="_mask"``, ``images/a.jpg`` pairs with ``masks/a_mask.png``. Folders are
    not searched recursively; hidden files (``.DS_Store``) are ignored. Sizes are compared from the file
    headers only.

    Args:
        root: the data folder holding ``image_dir`` and ``mask_dir``.
        image_dir: name (or path relative to ``root``) of the image folder.
        mask_dir: name (or path relative to ``root``) of the mask folder.
        image_key: key of the image path in each entry.
        label_key: key of the mask path in each entry.
        extensions: recognised file extensions (case-insensitive); any other file is a problem.
        strict: raise on problems (True) or skip the offending entries with one logged warning (False).
        check_sizes: compare the header sizes of image and mask; also detects unreadable files.
        mask_suffix: text between the stem and the extension in mask names (e.g. ``"_mask"``, ISIC's
            ``"_segmentation"``).
        id_key: key of the stem in each entry (handy to name outputs), or None to leave it out.

    Returns:
        entries ``{image_key: abs_path, label_key: abs_path, id_key: stem}`` sorted by stem.

    Raises:
        FileNotFoundError: when ``root``, the image folder or the mask folder is missing.
        ValueError: when a folder holds no image, an image has no mask or a mask no image, a stem is
            ambiguous, a file is not an image or cannot be read, or image and mask sizes differ
            (``strict=True``), or nothing is left after skipping (``strict=False``).
    """
    root = Path(root).expanduser()
    exts = _norm_extensions(extensions)
    _require_dir(root, "data folder")
    layout = f" Expected {root}/{image_dir}/<stem><ext> and {root}/{mask_dir}/<stem>{mask_suffix}<ext>."
    img_folder, mask_folder = root / image_dir, root / mask_dir
    _require_dir(img_folder, "image folder", layout)
    _require_dir(mask_folder, "mask folder", layout)
    img_files, mask_files = _list_files(img_folder), _list_files(mask_folder)
    for folder, files in ((img_folder, img_files), (mask_folder, mask_files)):
        if not files:
            raise ValueError(f"folder {folder} holds no files; expected images with an extension in {list(exts)}.")

    problems = _Problems(f"paired images/masks under {root}")
    images, img_dups = _index_by_stem(img_files, exts, "", problems, "image")
    masks, mask_dups = _index_by_stem(mask_files, exts, mask_suffix, problems, "mask")
    if not images:
        raise ValueError(
            f"no image with an extension in {list(exts)} in {img_folder} "
            f"(it holds: {_listing([f.name for f in img_files])}); pass extensions=... to accept other types."
        )

    no_mask = sorted(s for s in images if s not in masks and s not in mask_dups)
    no_image = sorted(s for s in masks if s not in images and s not in img_dups)
    if no_mask:
        problems.add(
            f"{len(no_mask)} of {len(images)} image(s) have no mask in {mask_folder}: "
            f"{_listing([images[s].name for s in no_mask])}",
            skip=[_abs(images[s]) for s in no_mask],
        )
    if no_image:
        problems.add(
            f"{len(no_image)} of {len(masks)} mask(s) have no image in {img_folder}: "
            f"{_listing([masks[s].name for s in no_image])}",
            skip=[_abs(masks[s]) for s in no_image],
        )

    stems = sorted(s for s in images if s in masks)
    bad: set[str] = set()
    if check_sizes:
        unreadable: list[str] = []
        mismatched: list[str] = []
        for s in stems:
            sizes = []
            for f in (images[s], masks[s]):
                try:
                    sizes.append(read_spatial_size(f))
                except ValueError as e:
                    unreadable.append(str(e))
                    bad.add(s)
            if s not in bad and sizes[0] != sizes[1]:
                mismatched.append(
                    f"{images[s]} is {_fmt_size(sizes[0])} but {masks[s]} is {_fmt_size(sizes[1])}"
                )
                bad.add(s)
        if unreadable:
            problems.add(
                f"{len(unreadable)} file(s) cannot be read as images: " + "; ".join(unreadable[:_MAX_LISTED])
                + (f"; ... ({len(unreadable) - _MAX_LISTED} more)" if len(unreadable) > _MAX_LISTED else ""),
                skip=[_abs(images[s]) for s in bad],
            )
        if mismatched:
            problems.add(
                f"{len(mismatched)} pair(s) differ in size (x, y[, z] from the file headers): "
                + "; ".join(mismatched[:_MAX_LISTED])
                + (f"; ... ({len(mismatched) - _MAX_LISTED} more)" if len(mismatched) > _MAX_LISTED else ""),
                skip=[_abs(images[s]) for s in stems if s in bad],
            )
    problems.resolve(strict, "Fix the files (masks are matched to images by file name without extension).")

    items = []
    for s in stems:
        if s in bad:
            continue
        entry = {image_key: _abs(images[s]), label_key: _abs(masks[s])}
        if id_key is not None:
            entry[id_key] = s
        items.append(entry)
    if not items:
        raise ValueError(f"no usable image/mask pair left under {root} after skipping the problems logged above.")
    return items


def nifti_case_datalist(
    root: str | os.PathLike,
    patterns: Mapping[str, str] | None = None,
    strict: bool = True,
    case_key: str = "case_id",
    extensions: Sequence[str] = NIFTI_EXTENSIONS,
    optional_keys: Sequence[str] = (),
    check_shapes: bool = True,
) -> list[dict]:
    """List cases stored one folder per case, one file per modality, found by glob patterns.

    With the default patterns, ``root/brats_2013_pat0001_1/Flair_subtrMeanDivStd.nii.gz`` and
    ``root/case_0000/Flair.nii.gz`` both match ``"Flair*"``. Only files with an extension in ``extensions``
    are considered (so a ``Flair.json`` sidecar does not make the pattern ambiguous). Files in ``root`` and
    hidden folders are ignored.

    Args:
        root: folder holding one sub-folder per case.
        patterns: ``{key: glob pattern}`` matched against file names inside each case folder (case-sensitive);
            defaults to ``{"flair": "Flair*", "t1c": "T1c*", "label": "OTMultiClass*"}``.
        strict: raise on problems (True) or skip the offending cases with one logged warning (False).
        case_key: key of the case folder name in each entry.
        extensions: recognised volume extensions (case-insensitive).
        optional_keys: keys of ``patterns`` that may be missing (e.g. ``("label",)`` for unlabelled cases);
            the entry then has no such key.
        check_shapes: compare the spatial header shapes of all files of a case; also detects unreadable files.

    Returns:
        entries ``{case_key: folder name, key: abs_path, ...}`` sorted by case name.

    Raises:
        FileNotFoundError: when ``root`` is missing.
        ValueError: when ``root`` has no case folder, a case lacks a modality, a pattern matches several files,
            a file cannot be read or the shapes of a case differ (``strict=True``), or no case is left.
    """
    root = Path(root).expanduser()
    patterns = dict(patterns) if patterns is not None else {"flair": "Flair*", "t1c": "T1c*", "label": "OTMultiClass*"}
    if not patterns:
        raise ValueError("patterns is empty; give {key: glob pattern} such as {'flair': 'Flair*'}.")
    if case_key in patterns:
        raise ValueError(f"case_key {case_key!r} is also a key of patterns {list(patterns)}; rename one of them.")
    unknown = [k for k in optional_keys if k not in patterns]
    if unknown:
        raise ValueError(f"optional_keys {unknown} are not keys of patterns {list(patterns)}.")
    exts = _norm_extensions(extensions)
    _require_dir(root, "case folder root")
    cases = _list_dirs(root)
    if not cases:
        files = [f.name for f in _list_files(root)]
        hint = (
            f" It holds files ({_listing(files)}): did you pass one case folder instead of the folder above it?"
            if files
            else ""
        )
        raise ValueError(f"no case folders in {root}; expected {root}/<case>/<files matching {patterns}>.{hint}")

    problems = _Problems(f"NIfTI cases under {root}")
    items = []
    for case in cases:
        files = [f for f in _list_files(case) if split_name(f.name, exts) is not None]
        entry: dict[str, Any] = {case_key: case.name}
        ok = True
        for key, pattern in patterns.items():
            hits = [f for f in files if fnmatch.fnmatchcase(f.name, pattern)]
            if len(hits) > 1:
                problems.add(
                    f"case {case.name}: pattern {pattern!r} for {key!r} is ambiguous, it matches "
                    f"{_listing([f.name for f in hits])}; make the pattern more specific",
                    skip=[case.name],
                )
                ok = False
            elif not hits and key not in optional_keys:
                problems.add(
                    f"case {case.name}: no file for {key!r} matches pattern {pattern!r} with an extension in "
                    f"{list(exts)}; the folder holds: {_listing([f.name for f in _list_files(case)], 10) or 'nothing'}",
                    skip=[case.name],
                )
                ok = False
            elif hits:
                entry[key] = hits[0]
        if ok and check_shapes:
            shapes = {}
            for key in patterns:
                if key in entry:
                    try:
                        shapes[key] = read_spatial_size(entry[key])
                    except ValueError as e:
                        problems.add(f"case {case.name}: {e}", skip=[case.name])
                        ok = False
            if ok and len(set(shapes.values())) > 1:
                problems.add(
                    f"case {case.name}: spatial shapes differ between modalities (from the headers): "
                    + ", ".join(f"{entry[k].name} is {_fmt_size(s)}" for k, s in shapes.items()),
                    skip=[case.name],
                )
                ok = False
        if ok:
            items.append({k: (_abs(v) if isinstance(v, Path) else v) for k, v in entry.items()})
    problems.resolve(strict, "Fix or remove those case folders, or adjust patterns=.")
    if not items:
        raise ValueError(f"no usable case left under {root} after skipping the problems logged above.")
    return items


def class_folder_datalist(
    root: str | os.PathLike,
    extensions: Sequence[str] = IMAGE_EXTENSIONS,
    class_names: Sequence[str] | None = None,
    strict: bool = True,
    image_key: str = "image",
    label_key: str = "label",
    class_name_key: str | None = "class_name",
    check_readable: bool = True,
) -> list[dict]:
    """List images stored one folder per class, ``root/<class>/<file>``.

    The class index is the position of the folder name in ``class_names`` when given (folders not listed there
    are left out, as logged at INFO level), else in the sorted list of sub-folder names.

    Args:
        root: folder holding one sub-folder per class.
        extensions: recognised image extensions (case-insensitive); any other file is a problem.
        class_names: class folder names in label order, or None for all sub-folders sorted by name.
        strict: raise on problems (True) or skip the offending files with one logged warning (False).
        image_key: key of the image path in each entry.
        label_key: key of the integer class index in each entry.
        class_name_key: key of the class (folder) name in each entry, or None to leave it out.
        check_readable: open every file's header to check it is a readable image.

    Returns:
        entries ``{image_key: abs_path, label_key: int, class_name_key: str}`` sorted by class, then file name.

    Raises:
        FileNotFoundError: when ``root`` or a folder of ``class_names`` is missing.
        ValueError: when there is no class folder, a class folder has no image, or a file is not a readable
            image (``strict=True``), or nothing is left.
    """
    root = Path(root).expanduser()
    exts = _norm_extensions(extensions)
    _require_dir(root, "class folder root")
    present = _list_dirs(root)
    if class_names is None:
        if not present:
            raise ValueError(
                f"no class folders in {root}; expected {root}/<class name>/<image files>. "
                f"It holds: {_listing([p.name for p in sorted(root.iterdir())]) or 'nothing'}."
            )
        classes = [p.name for p in present]
    else:
        classes = [str(c) for c in class_names]
        if not classes:
            raise ValueError("class_names is empty; give the class folder names in label order, or None.")
        if len(set(classes)) != len(classes):
            raise ValueError(f"class_names has duplicates: {classes}.")
        missing = [c for c in classes if not (root / c).is_dir()]
        if missing:
            raise FileNotFoundError(
                f"class folder(s) {missing} of class_names not found in {root}, which holds: "
                f"{_listing([p.name for p in present], 20) or 'no folder'}."
            )
        ignored = [p.name for p in present if p.name not in classes]
        if ignored:
            logger.info("class_folder_datalist: folders not in class_names are left out: %s", ignored)

    problems = _Problems(f"class folders under {root}")
    items = []
    for index, name in enumerate(classes):
        folder = root / name
        files = _list_files(folder)
        images = [f for f in files if split_name(f.name, exts) is not None]
        others = [f for f in files if split_name(f.name, exts) is None]
        if others:
            problems.add(
                f"{len(others)} file(s) in {folder} are not images with an extension in {list(exts)}: "
                f"{_listing([f.name for f in others])}",
                skip=[_abs(f) for f in others],
            )
        if not images:
            subdirs = [p.name for p in _list_dirs(folder)]
            hint = f" It has sub-folders ({_listing(subdirs)}): did you mean root={folder}?" if subdirs else ""
            problems.add(f"class folder {folder} holds no image.{hint}", skip=[str(folder)])
        for f in images:
            if check_readable:
                try:
                    read_spatial_size(f)
                except ValueError as e:
                    problems.add(str(e), skip=[_abs(f)])
                    continue
            entry: dict[str, Any] = {image_key: _abs(f), label_key: index}
            if class_name_key is not None:
                entry[class_name_key] = name
            items.append(entry)
    problems.resolve(strict, "Remove or fix those files and folders, or pass class_names= to choose the classes.")
    if not items:
        raise ValueError(f"no usable image left under {root} after skipping the problems logged above.")
    return items


# ----------------------------------------------------------------------------------------------
# splits and datalist JSON
# ----------------------------------------------------------------------------------------------


def _check_fraction(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
        raise TypeError(f"{name} must be a number in [0, 1), got {type(value).__name__} {value!r}.")
    value = float(value)
    if not (0.0 <= value < 1.0) or math.isnan(value):
        raise ValueError(f"{name} must be in [0, 1), got {value}.")
    return value


def _canonical(item: Any) -> str:
    return json.dumps(item, sort_keys=True, default=str)


def limit_items(items: Sequence[Any], max_items: Any, name: str = "max_items") -> list:
    """The first ``max_items`` entries of a datalist (quick runs); None (or the text ``null``) keeps all.

    ``0`` is refused rather than read as "no cap": a run that was asked for no items must not process the whole split.

    Args:
        items: the datalist.
        max_items: a positive number of entries, or None / ``"null"`` for all of them (parsed by
            :func:`~monai_genaug.utils.options.optional_count`).
        name: the option named in error messages.

    Raises:
        ValueError: ``max_items`` is 0, negative or not a whole number.
    """
    count = optional_count(max_items, name)
    if count is None:
        return list(items)
    if count < 1:
        raise ValueError(
            f"{name}={count} selects no items; give a positive number (e.g. --{name} 4), or null to process "
            "every item of the split."
        )
    return list(items)[:count]


def split_datalist(
    datalist: Sequence[Mapping],
    val_fraction: float = 0.1,
    test_fraction: float = 0.2,
    seed: int | np.random.Generator = 0,
    group_key: str | None = None,
) -> dict[str, list]:
    """Split a datalist into training, validation and test, deterministically for a given seed.

    The split depends only on the set of items (or groups) and the seed, not on the order of ``datalist``:
    groups are sorted by a canonical form before a seeded permutation assigns them. With ``group_key``
    (e.g. ``"case_id"`` or a patient id), all items sharing that value land in the same split and the
    fractions count groups, as in ``sklearn.model_selection.GroupShuffleSplit``. Counts are rounded half up;
    when there are few groups, every split with a non-zero fraction still gets at least one group if there
    are enough groups for training to keep at least one (larger fractions are served first). Items keep
    their input order inside each split.

    Args:
        datalist: the entries (dicts), e.g. from :func:`paired_image_mask_datalist`.
        val_fraction: fraction of groups for validation, in [0, 1).
        test_fraction: fraction of groups for test, in [0, 1); ``val_fraction + test_fraction < 1``.
        seed: seed of ``numpy.random.default_rng`` or a ``numpy.random.Generator``.
        group_key: key whose value keeps items together, or None to split item by item.

    Returns:
        ``{"training": [...], "validation": [...], "test": [...]}``; every item is in exactly one list.

    Raises:
        TypeError: when an entry is not a dict or a fraction is not a number.
        ValueError: when the datalist is empty, the fractions are out of range, or an entry lacks ``group_key``.
    """
    val_fraction = _check_fraction(val_fraction, "val_fraction")
    test_fraction = _check_fraction(test_fraction, "test_fraction")
    if val_fraction + test_fraction >= 1.0:
        raise ValueError(
            f"val_fraction + test_fraction must be < 1 so that training gets items, got "
            f"{val_fraction} + {test_fraction} = {val_fraction + test_fraction}."
        )
    items = list(datalist)
    if not items:
        raise ValueError("datalist is empty; there is nothing to split.")
    groups: dict[str, list[int]] = {}
    for i, item in enumerate(items):
        if not isinstance(item, Mapping):
            raise TypeError(f"datalist entry {i} must be a dict, got {type(item).__name__}: {item!r}.")
        if group_key is None:
            gid = _canonical(item)
        else:
            if group_key not in item:
                raise ValueError(
                    f"datalist entry {i} has no group_key {group_key!r}; its keys are {sorted(item)}. "
                    "Pass group_key=None or add the key to every entry."
                )
            gid = _canonical(item[group_key])
        groups.setdefault(gid, []).append(i)
    # duplicates of one item without group_key form one "group" of identical items; keep them apart by index
    if group_key is None:
        keys = sorted((g, j) for g, idx in groups.items() for j in range(len(idx)))
        members = [[groups[g][j]] for g, j in keys]
    else:
        members = [groups[g] for g in sorted(groups)]
    n = len(members)

    counts = {"validation": math.floor(val_fraction * n + 0.5), "test": math.floor(test_fraction * n + 0.5)}
    wanted = {"validation": val_fraction, "test": test_fraction}
    order = sorted(wanted, key=lambda k: (-wanted[k], k != "validation"))  # larger fraction served first
    for name in order:  # at least one group for every non-zero fraction, when training keeps one
        if wanted[name] > 0 and counts[name] == 0 and sum(counts.values()) < n - 1:
            counts[name] = 1
    for name in reversed(order):  # training keeps at least one group
        while sum(counts.values()) > n - 1 and counts[name] > 0:
            counts[name] -= 1
    empty = [k for k in order if wanted[k] > 0 and counts[k] == 0]
    if empty:
        logger.warning(
            "split_datalist: only %d group(s); split(s) %s stay empty although their fraction is > 0.", n, empty
        )

    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    perm = rng.permutation(n)
    n_test, n_val = counts["test"], counts["validation"]
    assign = np.empty(n, dtype=object)
    assign[perm[:n_test]] = "test"
    assign[perm[n_test : n_test + n_val]] = "validation"
    assign[perm[n_test + n_val :]] = "training"
    where: dict[int, str] = {}
    for g, idx in enumerate(members):
        for i in idx:
            where[i] = assign[g]
    return {name: [items[i] for i in range(len(items)) if where[i] == name] for name in SPLIT_NAMES}


def _is_path_value(v: Any) -> bool:
    if isinstance(v, os.PathLike):
        return True
    return isinstance(v, str) and os.path.isabs(v)


def write_datalist(
    splits: Mapping[str, Sequence[Mapping]],
    path: str | os.PathLike,
    base_dir: str | os.PathLike | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> Path:
    """Write splits as a MONAI datalist JSON, atomically (temporary file + rename).

    Path values (absolute path strings or ``os.PathLike``, also inside lists) are written relative to
    ``base_dir`` with ``/`` separators when it is given, else as absolute paths. The keys holding paths are
    recorded in a top-level ``"path_keys"`` entry, which :func:`load_datalist` uses. Empty splits are left out
    because ``monai.data.load_decathlon_datalist`` fails on an empty ``"test"`` list.

    Note:
        ``monai.data.load_decathlon_datalist(path, data_list_key=split, base_dir=base_dir)`` reads the file too,
        but joins *any* string value that names an existing path under ``base_dir`` (e.g. a ``case_id`` equal to
        its case folder name when the JSON lives in the data root); :func:`load_datalist` joins only the
        recorded path keys.

    Args:
        splits: ``{split name: entries}``, e.g. from :func:`split_datalist`; a plain list is written as "training".
        path: the JSON file to write; its folder is created when missing.
        base_dir: folder the paths are made relative to (typically the data root or the JSON's folder), or None
            for absolute paths.
        metadata: extra top-level entries (e.g. ``{"name": ..., "labels": {...}}``); must not use split names.

    Returns:
        the path written.
    """
    if isinstance(splits, Sequence) and not isinstance(splits, (str, bytes)):
        splits = {"training": splits}
    if not isinstance(splits, Mapping):
        raise TypeError(f"splits must be a dict {{split name: list of dicts}}, got {type(splits).__name__}.")
    path = check_file_destination(path, "write_datalist path")
    base = os.path.abspath(os.fspath(Path(base_dir).expanduser())) if base_dir is not None else None

    def convert(v: Any) -> Any:
        if isinstance(v, (list, tuple)) and v and all(_is_path_value(e) for e in v):
            return [convert(e) for e in v]
        if _is_path_value(v):
            p = os.path.abspath(os.fspath(v))
            return Path(os.path.relpath(p, base)).as_posix() if base is not None else p
        return v

    out: dict[str, Any] = {}
    path_keys: set[str] = set()
    for name, entries in splits.items():
        if isinstance(entries, (str, bytes, Mapping)) or not isinstance(entries, Sequence):
            raise TypeError(f"split {name!r} must be a list of dicts, got {type(entries).__name__}.")
        rows = []
        for i, e in enumerate(entries):
            if not isinstance(e, Mapping):
                raise TypeError(f"entry {i} of split {name!r} must be a dict, got {type(e).__name__}: {e!r}.")
            row = {}
            for k, v in e.items():
                row[str(k)] = convert(v)
                if _is_path_value(v) or (isinstance(v, (list, tuple)) and v and all(_is_path_value(x) for x in v)):
                    path_keys.add(str(k))
            rows.append(row)
        if rows:
            out[str(name)] = rows
    if metadata:
        clash = [k for k in metadata if k in out or k in SPLIT_NAMES or k == "path_keys"]
        if clash:
            raise ValueError(f"metadata keys {clash} clash with split names or 'path_keys'; rename them.")
    doc = {**dict(metadata or {}), "path_keys": sorted(path_keys), **out}
    try:
        text = json.dumps(doc, indent=2)
    except TypeError as e:
        raise TypeError(f"the datalist holds a value that is not JSON-serialisable: {e}") from e

    return atomic_write_text(path, text + "\n")


def load_datalist(
    path: str | os.PathLike, split: str = "training", base_dir: str | os.PathLike | None = None
) -> list[dict]:
    """Read one split of a datalist JSON written by :func:`write_datalist` (or any MONAI datalist JSON).

    Relative paths are joined to ``base_dir`` (default: the JSON's folder, as in
    ``monai.data.load_decathlon_datalist``). Only the keys listed in the file's ``"path_keys"`` are joined;
    for a file without ``"path_keys"`` this falls back to ``monai.data.load_decathlon_datalist``.

    Args:
        path: the datalist JSON.
        split: the list to read, e.g. ``"training"``, ``"validation"`` or ``"test"``.
        base_dir: folder relative paths are joined to, or None for the JSON's folder.

    Raises:
        FileNotFoundError: when the file is missing.
        ValueError: when ``split`` is not in the file (the message lists the splits it has).
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"datalist file {path} does not exist.")
    with open(path) as f:
        try:
            doc = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"datalist file {path} is not valid JSON: {e}") from e
    if not isinstance(doc, dict) or split not in doc:
        have = [k for k, v in doc.items() if isinstance(v, list) and k != "path_keys"] if isinstance(doc, dict) else []
        raise ValueError(f"datalist file {path} has no split {split!r}; it has {have}.")
    if "path_keys" not in doc:
        from monai.data import load_decathlon_datalist

        return load_decathlon_datalist(path, is_segmentation=True, data_list_key=split, base_dir=base_dir)
    base = Path(base_dir).expanduser() if base_dir is not None else path.parent
    keys = set(doc["path_keys"])

    def join(v: Any) -> Any:
        if isinstance(v, list):
            return [join(e) for e in v]
        return os.path.normpath(os.path.join(base, v)) if isinstance(v, str) else v

    entries = doc[split]
    if entries and not isinstance(entries[0], dict):  # decathlon "test" may be a plain list of images
        entries = [{"image": e} for e in entries]
    return [{k: (join(v) if k in keys else v) for k, v in e.items()} for e in entries]
