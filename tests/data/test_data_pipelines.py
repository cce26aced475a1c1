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
"""Loading pipelines on written PNG/JPEG/TIFF/NIfTI files and on the real data sets."""

from __future__ import annotations

import pickle

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import DataLoader, Dataset, MetaTensor
from PIL import Image

from monai_genaug.data.folders import (
    class_folder_datalist,
    nifti_case_datalist,
    paired_image_mask_datalist,
)
from monai_genaug.data.pipelines import (
    PILConvert,
    classification_2d_transforms,
    segmentation_2d_transforms,
    volume_3d_transforms,
)

H, W = 12, 20  # non-square on purpose: catches swapped axes


@pytest.fixture
def pair(tmp_path):
    """One RGB PNG image and a 0/255 PNG mask under images/ and masks/ (the phantom layout)."""
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, size=(H, W, 3), dtype=np.uint8)
    mask = np.zeros((H, W), dtype=np.uint8)
    mask[2:7, 3:15] = 255
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    Image.fromarray(img).save(tmp_path / "images" / "p0.png")
    Image.fromarray(mask).save(tmp_path / "masks" / "p0.png")
    return paired_image_mask_datalist(tmp_path)[0], img, mask


def test_segmentation_2d_axes_values_and_meta(pair):
    entry, img, mask = pair
    out = segmentation_2d_transforms(spatial_size=None)(entry)
    image, label = out["image"], out["label"]
    assert isinstance(image, MetaTensor) and isinstance(label, MetaTensor)
    assert image.shape == (3, H, W) and label.shape == (1, H, W)  # (C, H, W) like numpy/PIL
    np.testing.assert_allclose(image.numpy(), img.transpose(2, 0, 1) / 255.0, atol=1e-6)
    np.testing.assert_array_equal(label[0].numpy(), (mask > 127).astype(np.float32))
    assert image.meta["filename_or_obj"].endswith("p0.png") and label.meta["filename_or_obj"].endswith("p0.png")
    assert image.affine.shape == (4, 4)

    monai_axes = segmentation_2d_transforms(spatial_size=None, reverse_indexing=True)(entry)
    assert monai_axes["image"].shape == (3, W, H) and monai_axes["label"].shape == (1, W, H)
    np.testing.assert_array_equal(monai_axes["label"][0].numpy(), label[0].numpy().T)


def test_segmentation_2d_resize_grey_and_binary(pair):
    entry, _, mask = pair
    out = segmentation_2d_transforms(spatial_size=(16, 8), rgb=False, mask_threshold=127)(entry)
    assert out["image"].shape == (1, 16, 8) and out["label"].shape == (1, 16, 8)
    assert 0.0 <= float(out["image"].min()) and float(out["image"].max()) <= 1.0
    assert set(out["label"].unique().tolist()) == {0.0, 1.0}
    # the resized affine records the new pixel size (12 -> 16 rows, 20 -> 8 columns)
    np.testing.assert_allclose(torch.diagonal(out["image"].affine)[:2].numpy(), [12 / 16, 20 / 8], rtol=1e-5)


def test_segmentation_2d_rgb_jpeg_mask_and_zero_one_mask(tmp_path):
    img = np.full((H, W, 3), 100, dtype=np.uint8)
    rgb_mask = np.zeros((H, W, 3), dtype=np.uint8)
    rgb_mask[4:9, 5:12] = 255
    for d in ("images", "masks"):
        (tmp_path / d).mkdir()
    Image.fromarray(img).save(tmp_path / "images" / "a.jpg")
    Image.fromarray(rgb_mask).save(tmp_path / "masks" / "a.jpg", quality=80)  # Kvasir-style RGB JPEG mask
    Image.fromarray(img).save(tmp_path / "images" / "b.png")
    Image.fromarray((rgb_mask[..., 0] > 0).astype(np.uint8)).save(tmp_path / "masks" / "b.png")  # 0/1 values
    a, b = paired_image_mask_datalist(tmp_path)
    xform = segmentation_2d_transforms(spatial_size=None)  # mask_threshold="auto"
    for entry in (a, b):
        label = xform(entry)["label"]
        assert label.shape == (1, H, W)
        assert set(label.unique().tolist()) == {0.0, 1.0}
        assert abs(float(label.sum()) - 35) <= 4  # 5 x 7 box, a few JPEG edge pixels either way
    raw = segmentation_2d_transforms(spatial_size=None, mask_threshold=None)(b)["label"]
    assert set(raw.unique().tolist()) == {0.0, 1.0} and raw.shape == (1, H, W)


def test_segmentation_2d_in_dataloader_and_picklable(pair):
    entry, _, _ = pair
    xform = segmentation_2d_transforms(spatial_size=(8, 8))
    xform2 = pickle.loads(pickle.dumps(xform))  # worker processes need a picklable pipeline
    batch = next(iter(DataLoader(Dataset([entry, entry], transform=xform2), batch_size=2)))
    assert batch["image"].shape == (2, 3, 8, 8) and batch["label"].shape == (2, 1, 8, 8)
    assert batch["id"] == ["p0", "p0"]


def test_pil_convert_modes():
    rgba = Image.new("RGBA", (3, 2), (10, 20, 30, 0))
    assert PILConvert("RGB")(rgba).mode == "RGB" and PILConvert("mask")(rgba).mode == "RGB"
    assert PILConvert("L")(Image.new("I;16", (3, 2))).mode == "I;16"
    assert PILConvert("mask")(Image.new("P", (3, 2))).mode == "P"
    with pytest.raises(ValueError, match="mode"):
        PILConvert("CMYK")


def test_classification_2d_tiff(tmp_path):
    for cls in ("a", "b"):
        (tmp_path / cls).mkdir()
        Image.fromarray(np.full((10, 14, 3), 255 if cls == "b" else 0, dtype=np.uint8)).save(tmp_path / cls / "x.tif")
    items = class_folder_datalist(tmp_path)
    xform = classification_2d_transforms(spatial_size=(6, 6))
    outs = [xform(e) for e in items]
    assert [o["image"].shape for o in outs] == [(3, 6, 6)] * 2
    assert float(outs[0]["image"].max()) == 0.0 and float(outs[1]["image"].min()) == pytest.approx(1.0)
    assert [o["label"] for o in outs] == [0, 1] and outs[1]["class_name"] == "b"


@pytest.fixture
def case(tmp_path):
    """One BRATS-like case folder (the phantom layout) with a non-identity affine."""
    rng = np.random.default_rng(1)
    shape = (10, 8, 6)
    affine = np.array([[-2.0, 0, 0, 30], [0, -2.0, 0, 20], [0, 0, 3.0, -5], [0, 0, 0, 1]])
    label = np.zeros(shape, dtype=np.uint8)
    label[3:7, 2:6, 1:5] = 2
    label[4:6, 3:5, 2:4] = 4
    label[4, 3, 2] = 1
    folder = tmp_path / "case_0000"
    folder.mkdir()
    vols = {"Flair.nii.gz": rng.normal(5, 2, shape), "T1c.nii.gz": rng.normal(-1, 3, shape)}
    for name, data in vols.items():
        nib.save(nib.Nifti1Image(data.astype(np.float32), affine), str(folder / name))
    nib.save(nib.Nifti1Image(label, affine), str(folder / "OTMultiClass.nii.gz"))
    return nifti_case_datalist(tmp_path)[0], vols, label, affine


def test_volume_3d_keeps_affine_and_labels(case):
    entry, vols, label, affine = case
    out = volume_3d_transforms(axcodes=None, normalise=None)(entry)
    assert set(out) == {"case_id", "image", "label"}
    image = out["image"]
    assert isinstance(image, MetaTensor) and image.shape == (2, 10, 8, 6)
    np.testing.assert_allclose(image.affine.numpy(), affine)
    np.testing.assert_allclose(out["label"].affine.numpy(), affine)
    np.testing.assert_allclose(image[0].numpy(), vols["Flair.nii.gz"], rtol=1e-5, atol=1e-5)  # flair first
    np.testing.assert_array_equal(out["label"][0].numpy(), label)
    assert image.meta["filename_or_obj"].endswith("Flair.nii.gz")


def test_volume_3d_ras_zscore_resize(case):
    entry, _, label, _ = case
    out = volume_3d_transforms(spatial_size=(5, 4, 3), normalise="zscore", label_mode="whole_tumour")(entry)
    image, lab = out["image"], out["label"]
    assert image.shape == (2, 5, 4, 3) and lab.shape == (1, 5, 4, 3)
    assert set(lab.unique().tolist()) <= {0.0, 1.0} and lab.sum() > 0
    signs = np.sign(np.diag(image.affine.numpy())[:3])
    np.testing.assert_array_equal(signs, [1, 1, 1])  # RAS after Orientationd
    np.testing.assert_allclose(np.abs(np.diag(image.affine.numpy())[:3]), [4.0, 4.0, 6.0], rtol=1e-5)
    full = volume_3d_transforms(normalise="zscore")(entry)["image"]
    np.testing.assert_allclose(full.mean(dim=(1, 2, 3)).numpy(), 0.0, atol=1e-4)
    np.testing.assert_allclose(full.std(dim=(1, 2, 3), unbiased=False).numpy(), 1.0, atol=1e-3)


def test_volume_3d_percentile_regions_and_mask(case, tmp_path):
    entry, vols, label, affine = case
    out = volume_3d_transforms(axcodes=None, normalise="percentile", label_mode="regions")(entry)
    assert float(out["image"].min()) >= 0.0 and float(out["image"].max()) <= 1.0
    assert out["label"].shape == (3, 10, 8, 6)
    np.testing.assert_array_equal(out["label"][0].numpy(), label > 0)
    np.testing.assert_array_equal(out["label"][2].numpy(), label == 4)

    brain = np.zeros(label.shape, dtype=np.float32)
    brain[1:9, 1:7, :] = 0.999
    path = tmp_path / "case_0000" / "brainmask.nii.gz"
    nib.save(nib.Nifti1Image(brain, affine), str(path))
    masked = volume_3d_transforms(axcodes=None, mask_key="brain", nonzero=True, image_key="img")(
        {**entry, "brain": str(path)}
    )
    assert set(masked) == {"case_id", "img", "label", "brain"}
    img = masked["img"].numpy()
    assert np.all(img[:, brain < 0.5] == 0)
    np.testing.assert_allclose(img[:, brain > 0.5].mean(axis=1), 0.0, atol=1e-4)


def test_volume_3d_bad_arguments():
    with pytest.raises(ValueError, match="normalise"):
        volume_3d_transforms(normalise="minmax")
    with pytest.raises(ValueError, match="label_mode"):
        volume_3d_transforms(label_mode="binary")
    with pytest.raises(ValueError, match="spatial_size"):
        volume_3d_transforms(spatial_size=(8, 8))
    with pytest.raises(ValueError, match="image_key"):
        volume_3d_transforms(keys=("image", "t1c"))
    with pytest.raises(ValueError, match="intensity_range"):
        segmentation_2d_transforms(intensity_range=(1.0, 1.0))


# ------------------------------------------------------------------------------------------ real data


@pytest.mark.real_data
def test_kvasir_real_two_pairs(kvasir_dir):
    items = paired_image_mask_datalist(kvasir_dir)[:2]
    xform = segmentation_2d_transforms(spatial_size=(64, 64), mask_threshold=127)
    for entry in items:
        out = xform(entry)
        assert out["image"].shape == (3, 64, 64) and out["label"].shape == (1, 64, 64)
        assert 0.0 <= float(out["image"].min()) < float(out["image"].max()) <= 1.0
        assert set(out["label"].unique().tolist()) == {0.0, 1.0}
        assert 0.0 < float(out["label"].mean()) < 0.9  # a polyp, not the whole frame


@pytest.mark.real_data
def test_brats_real_one_case(brats_dir):
    entry = nifti_case_datalist(brats_dir)[0]
    out = volume_3d_transforms(spatial_size=(32, 32, 32), label_mode="multiclass")(entry)
    assert out["image"].shape == (2, 32, 32, 32) and out["label"].shape == (1, 32, 32, 32)
    assert isinstance(out["image"], MetaTensor) and torch.equal(out["image"].affine, out["label"].affine)
    assert set(out["label"].unique().tolist()) <= {0.0, 1.0, 2.0, 3.0, 4.0} and out["label"].max() > 0
    np.testing.assert_allclose(out["image"].affine[:3, :3].abs().diagonal().numpy(), [7.5, 7.5, 155 / 32], rtol=1e-4)


@pytest.mark.real_data
def test_histology_real_one_patch(histology_dir):
    entry = class_folder_datalist(histology_dir / "kather2016_texture")[0]
    out = classification_2d_transforms(spatial_size=(32, 32))(entry)
    assert out["image"].shape == (3, 32, 32) and 0.0 <= float(out["image"].min()) <= float(out["image"].max()) <= 1.0
    assert out["label"] == 0


def test_phantom_folder_layouts_round_trip(tmp_path):
    """The layouts written by the phantom generators are read and loaded by the readers and pipelines."""
    phantoms = pytest.importorskip("monai_genaug.data.phantoms")
    write = phantoms.write_phantom_dataset

    endo = write("endoscopy", tmp_path / "endo", 2, spatial_size=(16, 16))
    items = paired_image_mask_datalist(endo)
    assert [e["id"] for e in items] == ["phantom_0000", "phantom_0001"]
    out = segmentation_2d_transforms(spatial_size=None)(items[0])
    assert out["image"].shape == (3, 16, 16) and set(out["label"].unique().tolist()) <= {0.0, 1.0}

    mri = write("mri", tmp_path / "mri", 2, spatial_size=(8, 8, 8))
    cases = nifti_case_datalist(mri)
    assert [e["case_id"] for e in cases] == ["case_0000", "case_0001"]
    vol = volume_3d_transforms(label_mode="whole_tumour")(cases[0])
    assert vol["image"].shape == (2, 8, 8, 8) and isinstance(vol["image"], MetaTensor)

    cls = write("classes", tmp_path / "cls", 4, spatial_size=(16, 16))
    entries = class_folder_datalist(cls)
    assert sorted({e["label"] for e in entries}) == [0, 1] and len(entries) == 4
    assert classification_2d_transforms(spatial_size=(8, 8))(entries[0])["image"].shape == (3, 8, 8)
