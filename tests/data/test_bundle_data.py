"""Bundle data plumbing: dataset_dir or phantoms, layout checks (2D vs 3D), datalists, pipelines, input validation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from PIL import Image

from monai_genaug.data.bundle import (
    add_constant_keys,
    bundle_data_dir,
    bundle_datalist,
    bundle_transforms,
    check_layout,
    has_labels,
)
from monai_genaug.transforms.validation import (
    ForegroundProbabilityd,
    SplitChannelsd,
    ValidateImaged,
    ValidateLabeld,
)
from monai_genaug.data.phantoms import write_phantom_dataset


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    d2 = write_phantom_dataset("endoscopy", root / "endo", 10, seed=0, spatial_size=(24, 20))
    d3 = write_phantom_dataset("mri", root / "mri", 5, seed=0, spatial_size=(16, 16, 16))
    return d2, d3


def test_phantoms_when_dataset_dir_is_empty_and_layout_checks(tmp_path, folders):
    d2, d3 = folders
    folder = bundle_data_dir(None, tmp_path / "ph", spatial_dims=2, num=6, spatial_size=(16, 16))
    assert (tmp_path / "ph").is_dir() and check_layout(folder, 2) == "paired"
    assert bundle_data_dir(folder, spatial_dims=2) == folder  # a given folder is used as is
    assert check_layout(d3, 3) == "cases"
    with pytest.raises(ValueError, match="2D images/ \\+ masks/ folder.*inference.json"):
        bundle_data_dir(str(d2), spatial_dims=3, bundle="configs/inference_3d.json")
    with pytest.raises(ValueError, match="no images/ folder.*inference_3d.json"):
        check_layout(d3, 2)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        check_layout(tmp_path / "nope", 2)


def test_datalist_splits_keys_and_image_only_folders(tmp_path, folders):
    d2, d3 = folders
    test = bundle_datalist(d2, "test", 2, val_fraction=0.2, test_fraction=0.3, seed=0)
    train = bundle_datalist(d2, "training", 2, val_fraction=0.2, test_fraction=0.3, seed=0,
                            extra_keys={"prompt": 0}, drop_keys=["label"])
    assert test and train and not {t["id"] for t in test} & {t["id"] for t in train}
    assert has_labels(test) and not has_labels(train) and all(t["prompt"] == 0 and "label" not in t for t in train)
    assert bundle_datalist(d2, "test", 2, val_fraction=0.2, test_fraction=0.3, seed=0, max_items=1) == test[:1]
    assert len(bundle_datalist(d2, "all", 2)) == 10
    cases = bundle_datalist(d3, "all", 3)
    assert len(cases) == 5 and {"flair", "t1c", "label", "id"} <= set(cases[0])
    # images/ without masks/: unlabelled inference
    (tmp_path / "imgs" / "images").mkdir(parents=True)
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "imgs" / "images" / "a.png")
    only = bundle_datalist(tmp_path / "imgs", "all", 2)
    assert only == [{"image": str((tmp_path / "imgs" / "images" / "a.png").resolve()), "id": "a"}]
    assert not has_labels(only) and add_constant_keys(only, {"k": 1})[0]["k"] == 1


def test_pipelines_2d_3d_with_and_without_labels(folders):
    d2, d3 = folders
    item = bundle_datalist(d2, "all", 2)[0]
    out = bundle_transforms(2, (16, 16), image_channels=3)(item)
    assert out["image"].shape == (3, 16, 16) and 0 <= out["image"].min() and out["image"].max() <= 1
    assert out["label"].shape == (1, 24, 20) and set(out["label"].unique().tolist()) <= {0, 1}  # native grid
    resized = bundle_transforms(2, (16, 16), resize_label=True, augment=True, intensity_augment=True)(item)
    assert resized["label"].shape == (1, 16, 16)
    assert bundle_transforms(2, (16, 16))({"image": item["image"]})["image"].shape == (3, 16, 16)
    case = bundle_datalist(d3, "all", 3)[0]
    vol = bundle_transforms(3, (8, 8, 8), image_channels=2)(case)
    assert vol["image"].shape == (2, 8, 8, 8) and vol["label"].shape == (1, 16, 16, 16)
    assert set(vol["label"].unique().tolist()) <= {0, 1}  # whole tumour
    multi = bundle_transforms(3, (8, 8, 8), image_channels=2, label_mode="multiclass", num_classes=3)(case)
    assert multi["label"].max() > 1
    with pytest.raises(ValueError, match="one modality key per channel"):
        bundle_transforms(3, (8, 8, 8), image_channels=3)


def test_validate_image_messages_name_the_file():
    def img(x, name="a.png"):
        return MetaTensor(x, meta={"filename_or_obj": name})

    check = ValidateImaged("image", spatial_dims=2, num_channels=3, min_size=4, config_name="configs/inference.json")
    check({"image": img(torch.rand(3, 8, 8))})
    with pytest.raises(ValueError, match="'v.nii.gz' is a 3D volume.*configs/inference.json is 2D.*inference_3d.json"):
        check({"image": img(torch.rand(3, 8, 8, 8), "v.nii.gz")})
    with pytest.raises(ValueError, match="'a.png' has 1 channel"):
        check({"image": img(torch.rand(1, 8, 8))})
    with pytest.raises(ValueError, match="NaN"):
        check({"image": img(torch.full((3, 8, 8), float("nan")))})
    with pytest.raises(ValueError, match="constant"):
        check({"image": img(torch.ones(3, 8, 8))})
    with pytest.raises(ValueError, match="smaller than 4"):
        check({"image": img(torch.rand(3, 2, 8))})
    check3 = ValidateImaged("image", spatial_dims=3, config_name="configs/inference_3d.json")
    with pytest.raises(ValueError, match="2D image.*inference_3d.json is 3D.*configs/inference.json"):
        check3({"image": img(torch.rand(1, 8, 8))})
    assert ValidateImaged("image", 2, allow_constant=True)({"image": torch.ones(3, 4, 4)})


def test_validate_label_split_and_foreground():
    ValidateLabeld("label", num_classes=1)({"label": torch.tensor([[[0.0, 1.0]]])})
    ValidateLabeld("label", num_classes=1)({"image": 1})  # missing label: fine
    with pytest.raises(ValueError, match="classes 0..1.*train_segmenter.json"):
        ValidateLabeld("label", num_classes=1)({"label": torch.tensor([[[0.0, 4.0]]])})
    x = MetaTensor(torch.arange(6.0).view(6, 1, 1), meta={"filename_or_obj": "f"})
    d = SplitChannelsd("pred", names=["a", "b", "c"], sizes=[2, 1, 3], delete_original=True)({"pred": x})
    assert "pred" not in d and d["a"].shape[0] == 2 and d["c"].flatten().tolist() == [3.0, 4.0, 5.0]
    assert d["b"].meta["filename_or_obj"] == "f"
    with pytest.raises(ValueError, match="needs 4"):
        SplitChannelsd("pred", names=["a", "b"], sizes=[2, 2])({"pred": x})
    p = torch.tensor([[[0.25]], [[0.75]]])
    assert ForegroundProbabilityd("p", "fg")({"p": p})["fg"].item() == pytest.approx(0.75)
