"""16-bit PNG / TIFF images are read at their real bit depth (issue #21 item 1): scaled by 65535, not clipped to
white by a fixed 0..255 window, in the bundles' and the package's 2D loading pipelines; the scaling is logged."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from PIL import Image

from monai_genaug.data.bundle import bundle_transforms
from monai_genaug.data.pipelines import classification_2d_transforms, segmentation_2d_transforms
from monai_genaug.methods.gms import gms_transforms
from monai_genaug.transforms.io import ScaleIntensityByDtype, ScaleIntensityByDtyped, intensity_range_of


def _ramp16() -> np.ndarray:
    """A 16-bit grey image using the full range (most pixels far above 255)."""
    y, x = np.mgrid[0:32, 0:32]
    return ((x + 32 * y) * 64).astype(np.uint16)  # 0 .. 65472


def _write(tmp_path, ext: str):
    img16 = _ramp16()
    (tmp_path / "images").mkdir(exist_ok=True)
    (tmp_path / "masks").mkdir(exist_ok=True)
    path = tmp_path / "images" / f"case16{ext}"
    Image.fromarray(img16).save(path)
    mask = np.zeros((32, 32), np.uint8)
    mask[8:24, 8:24] = 255
    Image.fromarray(mask).save(tmp_path / "masks" / "case16.png")
    assert Image.open(path).mode.startswith("I;16")  # really written as 16-bit
    return path, img16.astype(np.float64) / 65535.0


PIPELINES = {
    "bundle_rgb": lambda: bundle_transforms(2, (32, 32), image_channels=3),
    "bundle_grey": lambda: bundle_transforms(2, (32, 32), image_channels=1),
    "segmentation_2d": lambda: segmentation_2d_transforms(spatial_size=None),
    "segmentation_2d_grey": lambda: segmentation_2d_transforms(spatial_size=None, rgb=False),
    "classification_2d": lambda: classification_2d_transforms(spatial_size=None),
    "gms_bundle": lambda: gms_transforms(2, (32, 32), num_classes=1, image_channels=3),
}


@pytest.mark.parametrize("ext", [".png", ".tif"])
@pytest.mark.parametrize("name", list(PIPELINES))
def test_16bit_image_scaled_by_its_bit_depth(tmp_path, ext, name, caplog):
    path, expected = _write(tmp_path, ext)
    item = {"image": str(path), "label": str(tmp_path / "masks" / "case16.png")}
    if name == "classification_2d":
        item = {"image": str(path)}
    with caplog.at_level(logging.INFO, logger="monai_genaug.transforms.io"):
        out = PIPELINES[name]()(item)["image"]
    out = torch.as_tensor(np.asarray(out))
    assert out.shape[0] in (1, 3)
    assert float((out >= 0.999).float().mean()) < 0.02  # was about 99 % white with the fixed 0..255 window
    for c in range(out.shape[0]):  # every channel holds the grey image at its real scale
        np.testing.assert_allclose(out[c].numpy(), expected, atol=1e-5)
    assert "16-bit image / 65535" in caplog.text


def test_8bit_images_keep_the_division_by_255(tmp_path):
    arr = (np.arange(32 * 32).reshape(32, 32) % 256).astype(np.uint8)
    rgb = np.stack([arr, 255 - arr, arr // 2], -1)
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    load = segmentation_2d_transforms(label_key=None, spatial_size=None)
    out = np.asarray(load({"image": str(tmp_path / "rgb.png")})["image"])
    np.testing.assert_allclose(out, np.moveaxis(rgb, -1, 0) / 255.0, atol=1e-6)


@pytest.mark.parametrize(
    "array, meta_mode, expected",
    [
        (np.array([[0, 255]], np.uint8), None, (0.0, 255.0)),
        (np.array([[0, 4000]], np.uint16), None, (0.0, 65535.0)),
        (torch.tensor([[0, 4000]], dtype=torch.int32), "I;16", (0.0, 65535.0)),
        (torch.tensor([[0.0, 255.0]]), "L", (0.0, 255.0)),
        (torch.tensor([[0.0, 0.5]]), None, (0.0, 1.0)),
        (torch.tensor([[-3.0, 5.0]]), None, (-3.0, 5.0)),
        (np.array([[0, 100000]], np.int32), None, (float(np.iinfo(np.int32).min), float(np.iinfo(np.int32).max))),
    ],
)
def test_intensity_range_of(array, meta_mode, expected):
    from monai.data import MetaTensor

    img = MetaTensor(array, meta={"mode": meta_mode}) if meta_mode else array
    assert intensity_range_of(img)[:2] == expected


def test_scale_by_dtype_dict_and_channels():
    x = np.array([[[0, 65535], [32768, 0]]], np.uint16)
    out = ScaleIntensityByDtyped(keys="image", channels=3)({"image": x})["image"]
    assert out.shape == (3, 2, 2) and out.dtype == np.float32
    np.testing.assert_allclose(out[2], [[0, 1], [32768 / 65535, 0]], atol=1e-6)
    with pytest.raises(ValueError, match="channels must be >= 1"):
        ScaleIntensityByDtype(channels=0)
