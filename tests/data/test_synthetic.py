"""Synthetic data sets: deterministic writer (names, layout, read-back), mixing at a ratio, per-epoch redraws."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from monai_genaug.data.folders import class_folder_datalist
from monai_genaug.data.pipelines import classification_2d_transforms
from monai_genaug.data.synthetic import (
    SYNTHETIC_KEY,
    SyntheticMixDataset,
    match_class_counts,
    mix_synthetic_datalist,
    synthetic_name,
    write_synthetic_images,
)


def _real(n_per_class=(6, 4)):
    return [{"image": f"r{c}_{i}", "label": c, "extra": "x"} for c, n in enumerate(n_per_class) for i in range(n)]


def _synth(n_per_class=(10, 10)):
    return [{"image": f"s{c}_{i}", "label": c, "seed": i} for c, n in enumerate(n_per_class) for i in range(n)]


def test_writer_names_layout_and_read_back(tmp_path):
    g = torch.Generator().manual_seed(0)
    images = torch.rand(4, 3, 8, 8, generator=g)
    entries = write_synthetic_images(images, [0, 0, 1, 1], [5, 6, 5, 6], tmp_path, source="hd", class_names=["a", "b"])
    assert [e["image"].split("/")[-1] for e in entries] == ["hd_0_5.png", "hd_0_6.png", "hd_1_5.png", "hd_1_6.png"]
    assert all(e[SYNTHETIC_KEY] == 1 and e["source"] == "hd" for e in entries)
    assert (tmp_path / "b" / "hd_1_6.png").is_file()
    items = class_folder_datalist(tmp_path)  # the output is a class-per-folder data set
    assert [i["label"] for i in items] == [0, 0, 1, 1]
    loaded = classification_2d_transforms(spatial_size=None)(items[3])["image"]
    assert torch.allclose(torch.as_tensor(loaded), images[3], atol=1 / 255)  # (C, H, W), rows first
    # 3D volumes become NIfTI
    vol = write_synthetic_images(torch.rand(1, 1, 4, 4, 4), [0], [0], tmp_path / "v", source="hd")
    assert vol[0]["image"].endswith("class_0/hd_0_0.nii.gz")
    assert synthetic_name("src", 3, 7) == "src_3_7"


def test_writer_bad_input(tmp_path):
    with pytest.raises(ValueError, match="collide"):
        write_synthetic_images(torch.rand(2, 1, 4, 4), [0, 0], [1, 1], tmp_path)
    with pytest.raises(ValueError, match="one each"):
        write_synthetic_images(torch.rand(2, 1, 4, 4), [0], [1, 2], tmp_path)
    with pytest.raises(ValueError, match="file-name-safe"):
        write_synthetic_images(torch.rand(1, 1, 4, 4), [0], [1], tmp_path, source="a/b")
    with pytest.raises(ValueError, match="1 or 3 channels"):
        write_synthetic_images(torch.rand(1, 2, 4, 4), [0], [1], tmp_path)
    write_synthetic_images(torch.rand(1, 1, 4, 4), [0], [1], tmp_path)
    with pytest.raises(FileExistsError):
        write_synthetic_images(torch.rand(1, 1, 4, 4), [0], [1], tmp_path, overwrite=False)


@pytest.mark.parametrize(
    "ratio, per_class, expected", [(0.5, False, 5), (1.0, False, 10), (1.5, True, 15), (0.0, False, 0)]
)
def test_mix_ratio_honoured(ratio, per_class, expected):
    real, synth = _real(), _synth()
    mixed = mix_synthetic_datalist(real, synth, ratio, seed=1, per_class=per_class)
    n_syn = sum(m[SYNTHETIC_KEY] for m in mixed)
    assert n_syn == expected and len(mixed) == len(real) + expected
    assert all(set(m) == {"image", "label", SYNTHETIC_KEY} for m in mixed)  # collatable
    if per_class:
        counts = np.bincount([m["label"] for m in mixed if m[SYNTHETIC_KEY]])
        assert counts.tolist() == [9, 6]  # 1.5 x (6, 4)
    assert mixed == mix_synthetic_datalist(real, synth, ratio, seed=1, per_class=per_class)  # deterministic
    if expected:
        assert mixed != mix_synthetic_datalist(real, synth, ratio, seed=2, per_class=per_class)


def test_mix_all_too_few_and_replace():
    real, synth = _real(), _synth((3, 3))
    assert sum(m[SYNTHETIC_KEY] for m in mix_synthetic_datalist(real, synth, None)) == 6
    with pytest.raises(ValueError, match="only 6 exist"):
        mix_synthetic_datalist(real, synth, 1.0)
    assert sum(m[SYNTHETIC_KEY] for m in mix_synthetic_datalist(real, synth, 1.0, replace=True)) == 10
    with pytest.raises(ValueError, match="ratio must be"):
        mix_synthetic_datalist(real, synth, -1)
    with pytest.raises(ValueError, match="none"):
        mix_synthetic_datalist(real, _synth((4, 0)), 0.5, per_class=True)


def test_dataset_redraws_per_epoch_deterministically():
    real, synth = _real(), _synth((20, 20))
    ds = SyntheticMixDataset(real, synth, ratio=0.5, seed=3)
    assert len(ds) == 15 and ds.num_synthetic == 5
    first = [d["image"] for d in ds.data]
    ds.set_epoch(1)
    second = [d["image"] for d in ds.data]
    assert len(ds) == 15 and first != second
    again = SyntheticMixDataset(real, synth, ratio=0.5, seed=3)
    again.set_epoch(1)
    assert [d["image"] for d in again.data] == second
    fixed = SyntheticMixDataset(real, synth, ratio=0.5, seed=3, resample_each_epoch=False)
    fixed.set_epoch(5)
    assert [d["image"] for d in fixed.data] == first


def test_match_class_counts():
    synth = _synth((10, 10))
    like = [{"label": 0}] * 3 + [{"label": 1}] * 1
    sub = match_class_counts(synth, like, seed=0)
    assert np.bincount([s["label"] for s in sub]).tolist() == [3, 1]
    assert sub == match_class_counts(synth, like, seed=0)
    with pytest.raises(ValueError, match="only 10 available"):
        match_class_counts(synth, [{"label": 0}] * 11)


def test_default_class_folders_sort_in_label_order(tmp_path):
    """Eleven classes: default folder names are zero-padded, so class_folder_datalist reads the labels back."""
    images = np.random.default_rng(0).random((11, 1, 8, 8)).astype(np.float32)
    written = write_synthetic_images(images, list(range(11)), list(range(11)), tmp_path)
    read = class_folder_datalist(tmp_path)
    by_file = {Path(d["image"]).name: d["label"] for d in read}
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir())[:3] == ["class_00", "class_01", "class_02"]
    assert all(by_file[Path(d["image"]).name] == d["label"] for d in written)
