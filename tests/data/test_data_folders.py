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
"""Folder -> datalist readers, seeded splits and the datalist JSON round trip."""

from __future__ import annotations

import json
import logging
import os
import random
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from monai.data import load_decathlon_datalist
from PIL import Image

from monai_genaug.data.folders import (
    class_folder_datalist,
    limit_items,
    load_datalist,
    nifti_case_datalist,
    paired_image_mask_datalist,
    read_spatial_size,
    split_datalist,
    split_name,
    write_datalist,
)

LOGGER = "monai_genaug.data.folders"


def _png(path: Path, size=(12, 10), mode="RGB", value=0):
    """Write an image of PIL size (width, height)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.full((size[1], size[0], 3) if mode == "RGB" else (size[1], size[0]), value, dtype=np.uint8)
    Image.fromarray(arr, mode=None).convert(mode).save(path)
    return path


def _nii(path: Path, shape=(6, 5, 4), value=1.0):
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.full(shape, value, dtype=np.float32), np.eye(4)), str(path))
    return path


@pytest.fixture
def paired(tmp_path):
    """The phantom layout: images/<stem>.png + masks/<stem>.png, plus a JPEG image with a PNG mask."""
    root = tmp_path / "paired"
    for stem in ("c", "a", "b"):
        _png(root / "images" / f"{stem}.png")
        _png(root / "masks" / f"{stem}.png", mode="L", value=255)
    _png(root / "images" / "d.jpg")
    _png(root / "masks" / "d.png", mode="L")
    return root


@pytest.fixture
def cases(tmp_path):
    """The phantom case layout: case_000k/{Flair,T1c,OTMultiClass}.nii.gz."""
    root = tmp_path / "cases"
    for k in range(3):
        for name in ("Flair.nii.gz", "T1c.nii.gz", "OTMultiClass.nii.gz"):
            _nii(root / f"case_{k:04d}" / name)
    (root / "README.md").write_text("not a case")
    return root


@pytest.fixture
def classes(tmp_path):
    root = tmp_path / "classes"
    for cls, n in (("tumour", 2), ("adipose", 3)):
        for i in range(n):
            _png(root / cls / f"{cls}_{i}.png", size=(8, 8))
    return root


# ------------------------------------------------------------------------------------------ helpers


def test_split_name_double_and_inner_suffixes():
    assert split_name("a.nii.gz") == ("a", ".nii.gz")
    assert split_name("A.JPG") == ("A", ".JPG")
    assert split_name("x.tif_Row_1_Col_2.tif") == ("x.tif_Row_1_Col_2", ".tif")
    assert split_name("notes.txt") is None
    assert split_name(".png") is None


def test_read_spatial_size_png_and_nifti(tmp_path):
    assert read_spatial_size(_png(tmp_path / "a.png", size=(7, 3))) == (7, 3)
    assert read_spatial_size(_nii(tmp_path / "v.nii.gz", shape=(4, 5, 6))) == (4, 5, 6)
    assert read_spatial_size(_nii(tmp_path / "s.nii", shape=(7, 3, 1))) == (7, 3)
    bad = tmp_path / "bad.png"
    bad.write_text("hello")
    with pytest.raises(ValueError, match="bad.png"):
        read_spatial_size(bad)


# ------------------------------------------------------------------------------------------ paired


def test_paired_datalist_sorted_absolute_and_mixed_extensions(paired):
    items = paired_image_mask_datalist(paired)
    assert [e["id"] for e in items] == ["a", "b", "c", "d"]
    for e in items:
        assert os.path.isabs(e["image"]) and os.path.isfile(e["image"]) and os.path.isfile(e["label"])
        assert Path(e["image"]).parent.name == "images" and Path(e["label"]).parent.name == "masks"
    assert items[3]["image"].endswith("d.jpg") and items[3]["label"].endswith("d.png")
    custom = paired_image_mask_datalist(paired, image_key="img", label_key="seg", id_key=None)
    assert set(custom[0]) == {"img", "seg"}


def test_paired_nifti_double_suffix_and_mask_suffix(tmp_path):
    root = tmp_path / "vol"
    _nii(root / "images" / "p1.nii.gz")
    _nii(root / "masks" / "p1_mask.nii.gz")
    items = paired_image_mask_datalist(root, mask_suffix="_mask")
    assert len(items) == 1 and items[0]["id"] == "p1" and items[0]["label"].endswith("p1_mask.nii.gz")


def test_paired_missing_and_empty_folders(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        paired_image_mask_datalist(tmp_path / "nowhere")
    (tmp_path / "images").mkdir()
    with pytest.raises(FileNotFoundError, match="masks"):
        paired_image_mask_datalist(tmp_path)
    (tmp_path / "masks").mkdir()
    with pytest.raises(ValueError, match="holds no files"):
        paired_image_mask_datalist(tmp_path)


def test_paired_unmatched_files_named_with_counts(paired):
    _png(paired / "images" / "lonely.png")
    _png(paired / "masks" / "orphan.png", mode="L")
    with pytest.raises(ValueError) as err:
        paired_image_mask_datalist(paired)
    msg = str(err.value)
    assert "1 of 5 image(s) have no mask" in msg and "lonely.png" in msg
    assert "1 of 5 mask(s) have no image" in msg and "orphan.png" in msg


def test_paired_many_unmatched_listing_is_capped(paired):
    for i in range(9):
        _png(paired / "images" / f"extra{i}.png")
    with pytest.raises(ValueError, match=r"9 of 13 image\(s\) have no mask.*\(4 more\)"):
        paired_image_mask_datalist(paired)


def test_paired_size_mismatch_names_both_files(paired):
    _png(paired / "masks" / "b.png", size=(5, 4), mode="L")
    with pytest.raises(ValueError) as err:
        paired_image_mask_datalist(paired)
    msg = str(err.value)
    assert "b.png is 12x10" in msg and "b.png is 5x4" in msg and "images" in msg and "masks" in msg
    assert len(paired_image_mask_datalist(paired, check_sizes=False)) == 4


def test_paired_unreadable_and_non_image_files(paired):
    (paired / "images" / "e.png").write_text("not a png")
    _png(paired / "masks" / "e.png", mode="L")
    with pytest.raises(ValueError, match=r"cannot read image file .*images/e\.png"):
        paired_image_mask_datalist(paired)
    (paired / "images" / "e.png").unlink()
    (paired / "masks" / "e.png").unlink()
    (paired / "images" / "notes.txt").write_text("hi")
    with pytest.raises(ValueError, match=r"not images with an extension.*notes\.txt"):
        paired_image_mask_datalist(paired)


def test_paired_ambiguous_stem(paired):
    _png(paired / "images" / "a.jpg")
    with pytest.raises(ValueError, match=r"stem 'a' is ambiguous.*a\.jpg, a\.png"):
        paired_image_mask_datalist(paired)


def test_paired_non_strict_skips_with_one_warning(paired, caplog):
    _png(paired / "images" / "lonely.png")
    _png(paired / "masks" / "c.png", size=(3, 3), mode="L")
    (paired / "images" / "notes.txt").write_text("hi")
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        items = paired_image_mask_datalist(paired, strict=False)
    assert [e["id"] for e in items] == ["a", "b", "d"]
    records = [r for r in caplog.records if r.name == LOGGER]
    assert len(records) == 1 and records[0].levelno == logging.WARNING
    text = records[0].getMessage()
    assert "lonely.png" in text and "c.png" in text and "notes.txt" in text


def test_paired_non_strict_nothing_left_raises(tmp_path):
    _png(tmp_path / "images" / "a.png")
    _png(tmp_path / "masks" / "b.png")
    with pytest.raises(ValueError, match="no usable image/mask pair"):
        paired_image_mask_datalist(tmp_path, strict=False)


# ------------------------------------------------------------------------------------------ NIfTI cases


def test_nifti_cases(cases):
    items = nifti_case_datalist(cases)
    assert [e["case_id"] for e in items] == ["case_0000", "case_0001", "case_0002"]
    assert set(items[0]) == {"case_id", "flair", "t1c", "label"}
    assert items[1]["t1c"].endswith(os.path.join("case_0001", "T1c.nii.gz")) and os.path.isabs(items[1]["t1c"])


def test_nifti_missing_modality_names_case_pattern_and_files(cases):
    (cases / "case_0001" / "T1c.nii.gz").unlink()
    with pytest.raises(ValueError) as err:
        nifti_case_datalist(cases)
    msg = str(err.value)
    assert "case_0001" in msg and "'T1c*'" in msg and "Flair.nii.gz" in msg and "OTMultiClass.nii.gz" in msg
    items = nifti_case_datalist(cases, optional_keys=("t1c",))
    assert "t1c" not in items[1] and "t1c" in items[0]


def test_nifti_ambiguous_pattern_and_extension_filter(cases):
    (cases / "case_0000" / "Flair.json").write_text("{}")  # a sidecar is not a volume: no ambiguity
    assert len(nifti_case_datalist(cases)) == 3
    _nii(cases / "case_0000" / "Flair_brain.nii.gz")
    with pytest.raises(ValueError, match=r"case_0000.*'Flair\*'.*ambiguous.*Flair\.nii\.gz, Flair_brain\.nii\.gz"):
        nifti_case_datalist(cases)


def test_nifti_shape_mismatch_and_unreadable(cases):
    _nii(cases / "case_0002" / "OTMultiClass.nii.gz", shape=(6, 5, 3))
    with pytest.raises(ValueError, match=r"case_0002.*Flair\.nii\.gz is 6x5x4.*OTMultiClass\.nii\.gz is 6x5x3"):
        nifti_case_datalist(cases)
    _nii(cases / "case_0002" / "OTMultiClass.nii.gz")
    (cases / "case_0001" / "Flair.nii.gz").write_bytes(b"garbage")
    with pytest.raises(ValueError, match=r"case_0001.*cannot read image file.*Flair\.nii\.gz"):
        nifti_case_datalist(cases)


def test_nifti_no_case_folders(tmp_path, cases):
    with pytest.raises(FileNotFoundError):
        nifti_case_datalist(tmp_path / "missing")
    with pytest.raises(ValueError, match="did you pass one case folder"):
        nifti_case_datalist(cases / "case_0000")
    with pytest.raises(ValueError, match="case_key"):
        nifti_case_datalist(cases, patterns={"case_id": "Flair*"})


def test_nifti_non_strict_skips_case(cases, caplog):
    (cases / "case_0001" / "Flair.nii.gz").unlink()
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        items = nifti_case_datalist(cases, strict=False)
    assert [e["case_id"] for e in items] == ["case_0000", "case_0002"]
    records = [r for r in caplog.records if r.name == LOGGER]
    assert len(records) == 1 and "case_0001" in records[0].getMessage()


# ------------------------------------------------------------------------------------------ class folders


def test_class_folders_sorted_and_given_names(classes):
    items = class_folder_datalist(classes)
    assert [(e["class_name"], e["label"]) for e in items] == [("adipose", 0)] * 3 + [("tumour", 1)] * 2
    given = class_folder_datalist(classes, class_names=["tumour", "adipose"])
    assert {e["class_name"]: e["label"] for e in given} == {"tumour": 0, "adipose": 1}
    only = class_folder_datalist(classes, class_names=["tumour"])
    assert len(only) == 2 and {e["label"] for e in only} == {0}
    with pytest.raises(FileNotFoundError, match="stroma"):
        class_folder_datalist(classes, class_names=["tumour", "stroma"])


def test_class_folders_errors(tmp_path, classes):
    with pytest.raises(ValueError, match="no class folders"):
        class_folder_datalist(_png(tmp_path / "flat" / "x.png").parent)
    (classes / "empty").mkdir()
    with pytest.raises(ValueError, match=r"class folder .*empty holds no image"):
        class_folder_datalist(classes)
    (classes / "empty").rmdir()
    (classes / "tumour" / "broken.png").write_text("nope")
    with pytest.raises(ValueError, match=r"broken\.png"):
        class_folder_datalist(classes)


def test_class_folders_non_strict(classes, caplog):
    (classes / "tumour" / "broken.png").write_text("nope")
    (classes / "empty").mkdir()
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        items = class_folder_datalist(classes, strict=False)
    assert len(items) == 5
    assert {e["class_name"]: e["label"] for e in items} == {"adipose": 0, "tumour": 2}  # "empty" keeps index 1
    records = [r for r in caplog.records if r.name == LOGGER]
    assert len(records) == 1 and "broken.png" in records[0].getMessage() and "empty" in records[0].getMessage()


# ------------------------------------------------------------------------------------------ splits


def _items(n, groups=None):
    return [{"image": f"/x/{i:03d}.png", **({"case_id": f"p{i % groups}"} if groups else {})} for i in range(n)]


def test_split_sizes_coverage_and_determinism():
    items = _items(50)
    s1 = split_datalist(items, val_fraction=0.1, test_fraction=0.2, seed=3)
    assert {k: len(v) for k, v in s1.items()} == {"training": 35, "validation": 5, "test": 10}
    flat = [e["image"] for v in s1.values() for e in v]
    assert sorted(flat) == sorted(e["image"] for e in items)  # every item exactly once
    assert split_datalist(items, 0.1, 0.2, seed=3) == s1
    assert split_datalist(items, 0.1, 0.2, seed=np.random.default_rng(3)) == s1
    assert split_datalist(items, 0.1, 0.2, seed=4)["test"] != s1["test"]
    # training keeps the input order
    assert s1["training"] == sorted(s1["training"], key=lambda e: e["image"])


def test_split_independent_of_input_order():
    items = _items(30)
    shuffled = items[:]
    random.Random(0).shuffle(shuffled)
    a, b = split_datalist(items, seed=1), split_datalist(shuffled, seed=1)
    for name in a:
        assert {e["image"] for e in a[name]} == {e["image"] for e in b[name]}


def test_split_group_key_keeps_groups_together():
    items = _items(40, groups=10)
    splits = split_datalist(items, val_fraction=0.2, test_fraction=0.2, seed=0, group_key="case_id")
    seen = {}
    for name, entries in splits.items():
        for e in entries:
            assert seen.setdefault(e["case_id"], name) == name
    assert [len({e["case_id"] for e in v}) for v in splits.values()] == [6, 2, 2]
    assert sum(len(v) for v in splits.values()) == 40
    with pytest.raises(ValueError, match="group_key 'patient'"):
        split_datalist(items, group_key="patient")


@pytest.mark.parametrize(
    "n, val, test, expected",
    [
        (3, 0.1, 0.2, (1, 1, 1)),  # both small fractions still get one item
        (2, 0.1, 0.2, (1, 0, 1)),  # only room for one: the larger fraction (test) wins
        (4, 0.0, 0.2, (3, 0, 1)),
        (10, 0.3, 0.4, (3, 3, 4)),
    ],
)
def test_split_small_n(n, val, test, expected):
    s = split_datalist(_items(n), val_fraction=val, test_fraction=test, seed=0)
    assert (len(s["training"]), len(s["validation"]), len(s["test"])) == expected


def test_split_single_item_warns(caplog):
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        s = split_datalist(_items(1))
    assert len(s["training"]) == 1 and not s["validation"] and not s["test"]
    assert any("stay empty" in r.getMessage() for r in caplog.records)


def test_split_bad_arguments():
    with pytest.raises(ValueError, match="val_fraction"):
        split_datalist(_items(5), val_fraction=-0.1)
    with pytest.raises(ValueError, match="< 1"):
        split_datalist(_items(5), val_fraction=0.5, test_fraction=0.5)
    with pytest.raises(TypeError, match="test_fraction"):
        split_datalist(_items(5), test_fraction="0.2")
    with pytest.raises(ValueError, match="empty"):
        split_datalist([])
    with pytest.raises(TypeError, match="entry 1"):
        split_datalist([{"image": "a"}, "b"])


# ------------------------------------------------------------------------------------------ JSON


def test_write_and_load_round_trip_through_monai(paired, tmp_path):
    items = paired_image_mask_datalist(paired)
    splits = split_datalist(items, val_fraction=0.25, test_fraction=0.25, seed=0)
    out = write_datalist(splits, paired / "datalist.json", base_dir=paired, metadata={"name": "tiny"})
    doc = json.loads(out.read_text())
    assert doc["name"] == "tiny" and set(doc["path_keys"]) == {"image", "label"}
    assert all(not os.path.isabs(e["image"]) and e["image"].startswith("images/") for e in doc["training"])
    assert not [p for p in out.parent.iterdir() if p.name.endswith(".tmp")]  # atomic write left no temp file
    for name in ("training", "validation", "test"):
        loaded = load_decathlon_datalist(out, is_segmentation=True, data_list_key=name)
        assert loaded == splits[name]
        assert load_datalist(out, name) == splits[name]


def test_write_absolute_paths_other_folder_and_empty_split(cases, tmp_path):
    items = nifti_case_datalist(cases)
    splits = split_datalist(items, val_fraction=0.0, test_fraction=0.3, seed=0, group_key="case_id")
    out = write_datalist(splits, tmp_path / "lists" / "cases.json")
    doc = json.loads(out.read_text())
    assert "validation" not in doc and os.path.isabs(doc["training"][0]["flair"])
    assert load_decathlon_datalist(out, data_list_key="test") == splits["test"]
    # relative to the data root while the JSON sits elsewhere; case_id must stay a plain name
    write_datalist(splits, out, base_dir=cases)
    assert load_datalist(out, "training", base_dir=cases) == splits["training"]
    with pytest.raises(ValueError, match=r"no split 'validation'.*training"):
        load_datalist(out, "validation")
    with pytest.raises(FileNotFoundError):
        load_datalist(tmp_path / "none.json")


def test_write_rejects_bad_input(tmp_path):
    with pytest.raises(TypeError, match="entry 0"):
        write_datalist({"training": ["a.png"]}, tmp_path / "x.json")
    with pytest.raises(ValueError, match="clash"):
        write_datalist({"training": [{"image": "/a.png"}]}, tmp_path / "x.json", metadata={"test": 1})
    assert not (tmp_path / "x.json").exists()


# ------------------------------------------------------------------------------------------ real data


@pytest.mark.real_data
def test_kvasir_real_pairs_and_fixed_split(kvasir_dir):
    start = time.perf_counter()
    items = paired_image_mask_datalist(kvasir_dir)
    elapsed = time.perf_counter() - start
    assert len(items) == 1000
    assert elapsed < 15.0, f"listing 1000 pairs from headers took {elapsed:.1f} s"
    s1 = split_datalist(items, val_fraction=0.1, test_fraction=0.2, seed=0)
    assert {k: len(v) for k, v in s1.items()} == {"training": 700, "validation": 100, "test": 200}
    s2 = split_datalist(paired_image_mask_datalist(kvasir_dir), val_fraction=0.1, test_fraction=0.2, seed=0)
    assert s1 == s2


@pytest.mark.real_data
def test_brats_real_cases(brats_dir):
    items = nifti_case_datalist(brats_dir)
    assert len(items) == 6
    assert all({"flair", "t1c", "label", "case_id"} <= set(e) for e in items)
    assert items[0]["case_id"] == "brats_2013_pat0001_1"
    splits = split_datalist(items, val_fraction=0.2, test_fraction=0.2, seed=0, group_key="case_id")
    assert [len(v) for v in splits.values()] == [4, 1, 1]


@pytest.mark.real_data
def test_histology_real_class_folders(histology_dir):
    items = class_folder_datalist(histology_dir / "kather2016_texture")
    names = {e["class_name"]: e["label"] for e in items}
    assert len(names) > 1 and len(items) == 24
    assert names["01_TUMOR"] == 0 and names["08_EMPTY"] == 7


@pytest.mark.parametrize("max_items, expected", [(None, 5), ("null", 5), (2, 2), (2.0, 2), (9, 5)])
def test_limit_items(max_items, expected):
    assert limit_items(list(range(5)), max_items) == list(range(expected))


@pytest.mark.parametrize("max_items", [0, -1, "0", 1.5, "many", True])
def test_limit_items_refuses_zero_and_nonsense(max_items):
    """Issue #21 item 4: 0 no longer means "the whole split"."""
    with pytest.raises(ValueError, match="max_items"):
        limit_items(list(range(5)), max_items)


def test_write_datalist_to_a_folder_names_the_folder(tmp_path):
    """Issue #21 item 10: the error names the folder the user gave, not an internal temporary file."""
    (tmp_path / "out").mkdir()
    with pytest.raises(IsADirectoryError) as err:
        write_datalist({"training": [{"image": str(tmp_path)}]}, tmp_path / "out")
    assert f"'{tmp_path / 'out'}' is an existing folder" in str(err.value) and ".tmp" not in str(err.value)
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError, match="its parent .* is a file"):
        write_datalist({"training": [{"image": str(tmp_path)}]}, tmp_path / "file" / "d.json")
    assert not list(tmp_path.rglob("*.tmp"))
