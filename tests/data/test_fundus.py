"""Fundus data loading (DRIVE / CHASE_DB1 layouts) on tiny synthetic fundus-like images; real data when present."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from monai_genaug.data.fundus import (
    chase_datalist,
    child_of,
    drive_datalist,
    estimate_fov,
    load_fundus,
    random_fov_crops,
)
from monai_genaug.utils.paths import shared_data_dir


def _fundus(size: int = 40, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """An RGB 'fundus': a bright disk on black, darker vessels (two lines) in the green channel."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    fov = (yy - size / 2) ** 2 + (xx - size / 2) ** 2 < (0.45 * size) ** 2
    vessels = np.zeros((size, size), bool)
    vessels[size // 2 - 1 : size // 2 + 1, 4:-4] = True
    vessels[6:-6, size // 3] = True
    vessels &= fov
    rgb = np.zeros((size, size, 3), np.uint8)
    rgb[..., 0] = 200 * fov
    rgb[..., 1] = (120 + rng.integers(0, 20, (size, size))) * fov - 70 * vessels
    rgb[..., 2] = 40 * fov
    return rgb, (vessels * 255).astype(np.uint8), (fov * 255).astype(np.uint8)


def _write(folder: Path, name: str, arr: np.ndarray) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(folder / f"{name}.png")


@pytest.fixture()
def layouts(tmp_path):
    drive, chase = tmp_path / "drive", tmp_path / "chase"
    rows = ["id,split"]
    for i, split in ((21, "train"), (22, "train"), (1, "test")):
        sid = f"{i:02d}_{'training' if split == 'train' else 'test'}"
        rgb, ves, fov = _fundus(seed=i)
        _write(drive / "images", sid, rgb)
        _write(drive / "masks", sid, ves)
        _write(drive / "fov", sid, fov)
        rows.append(f"{sid},{split}")
    (drive / "split.csv").write_text("\n".join(rows) + "\n")
    for child in (1, 2):
        for eye in "LR":
            rgb, ves, _ = _fundus(48, seed=child * 10 + ord(eye))
            sid = f"Image_{child:02d}{eye}"
            _write(chase / "images", sid, rgb)
            _write(chase / "masks", sid, ves)
            _write(chase / "masks_2ndHO", sid, ves)
    return drive, chase


def test_datalists_follow_the_official_split_and_children(layouts):
    drive, chase = layouts
    assert [it["id"] for it in drive_datalist(drive, "train")] == ["21_training", "22_training"]
    assert [it["id"] for it in drive_datalist(drive, "test")] == ["01_test"]
    items = chase_datalist(chase)
    assert [it["group"] for it in items] == ["Image_01", "Image_01", "Image_02", "Image_02"]
    assert all("label_2nd" in it for it in items)
    assert child_of("Image_10R") == "Image_10" and child_of("21_training") == "21_training"
    with pytest.raises(ValueError, match="split must be one of"):
        drive_datalist(drive, "validation")
    (drive / "split.csv").unlink()
    with pytest.raises(FileNotFoundError, match="split.csv"):
        drive_datalist(drive)


def test_load_fundus_green_channel_in_fov(layouts):
    drive, chase = layouts
    loaded = load_fundus(drive_datalist(drive, "train"), size=32)
    it = loaded[0]
    assert it["image"].shape == (1, 32, 32) and it["fov"].dtype == torch.bool and it["label"].dtype == torch.long
    assert float(it["image"].min()) >= 0 and float(it["image"].max()) <= 1
    assert float(it["image"][~it["fov"]].abs().max()) == 0  # 0 outside the field of view
    assert not bool((it["label"].bool() & ~it["fov"]).any())  # labels inside the field of view only
    vessel, background = it["image"][it["label"].bool()].mean(), it["image"][it["fov"] & ~it["label"].bool()].mean()
    assert vessel < background - 0.2  # dark vessels in the green channel
    c = load_fundus(chase_datalist(chase), size=32)[0]  # no fov files: estimated from the red channel
    disk = torch.from_numpy(np.asarray(Image.open(chase / "images" / "Image_01L.png"))[..., 0] > 100)
    rgb = torch.from_numpy(np.array(Image.open(chase / "images" / "Image_01L.png"))).permute(2, 0, 1) / 255.0
    assert float((estimate_fov(rgb, kernel=1)[0] == disk).float().mean()) > 0.99
    assert bool((estimate_fov(rgb)[0] | ~disk).all())  # the smoothed default keeps the whole disk
    with pytest.raises(ValueError, match="RGB"):
        estimate_fov(rgb[:1])
    assert "label_2nd" in c and c["label_2nd"].shape == (1, 32, 32)


def test_random_fov_crops_are_seeded_and_inside_the_fov(layouts):
    drive, _ = layouts
    loaded = load_fundus(drive_datalist(drive, "train"), size=32)
    a = random_fov_crops(loaded, 12, 5, seed=3)
    b = random_fov_crops(loaded, 12, 5, seed=3)
    assert len(a) == 10 and a[0]["image"].shape == (1, 12, 12) and a[0]["label"].shape == (1, 12, 12)
    assert all(torch.equal(x["image"], y["image"]) for x, y in zip(a, b))
    assert all(float(c["fov"].float().mean()) >= 0.5 for c in a)
    assert a[0]["id"] == "21_training__c000" and a[0]["group"] == "21_training"
    with pytest.raises(ValueError, match="larger than the image"):
        random_fov_crops(loaded, 40, 1)


@pytest.mark.skipif(not (shared_data_dir() / "chase_db1" / "images").is_dir(), reason="CHASE_DB1 not present")
def test_real_chase_and_drive_load():
    data = shared_data_dir()
    chase = chase_datalist(data / "chase_db1")
    assert len({it["group"] for it in chase}) == 10 and len(chase) == 20
    it = load_fundus(chase[:1], size=64)[0]
    frac = float(it["label"].sum() / it["fov"].sum())
    assert 0.02 < frac < 0.25 and 0.4 < float(it["fov"].float().mean()) < 0.95
    assert len(drive_datalist(data / "drive", "train")) == 20 and len(drive_datalist(data / "drive", "test")) == 20
    from monai_genaug.data.fundus import _read

    for it in drive_datalist(data / "drive", "test")[:3]:  # the estimate against DRIVE's own field-of-view files
        est, fov = estimate_fov(_read(it["image"], "RGB")), _read(it["fov"], "L") > 0.5
        assert float((est == fov).float().mean()) > 0.98
