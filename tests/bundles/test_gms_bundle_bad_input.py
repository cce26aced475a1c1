"""Bad input to the GMS bundle's inference configs gives clear errors (issue #5): label values outside the model's
classes, a mask missing for an image, a spatial size the autoencoder cannot take, a missing model file. A
multi-class mask given to a binary model is binarised (whole tumour / any label), as the bundle documents; the
module-level refusal (``GMSPrepareBatch``) is tested in tests/methods/test_gms.py."""

from __future__ import annotations

import re

import pytest
import torch

from monai_genaug.data.phantoms import write_phantom_dataset


def _expect(tools, pattern: str, fn) -> None:
    message = tools.errors(fn)
    assert re.search(pattern, message, flags=re.S), f"{pattern!r} not in {message[-800:]!r}"


@pytest.fixture(scope="module")
def mri4(tmp_path_factory):
    """Four tumour classes (labels 0..4, like BRATS) at 16^3."""
    return write_phantom_dataset("mri", tmp_path_factory.mktemp("mri4") / "data", 4, spatial_size=(16, 16, 16),
                                 num_classes=4)


def test_labels_outside_the_model_classes(mri4, bundle_tools):
    # the shipped 3D model has 3 tumour classes
    data = bundle_tools.parser("gms", "inference.json", "inference_3d.json", dataset_dir=str(mri4), split="training",
                               spatial_size=[16, 16, 16]).get_parsed_content("dataset")
    _expect(bundle_tools, r"OTMultiClass.*holds labels \[4\] outside the declared labels 0..3.*--num_classes 4",
            lambda: data[0])


def test_multiclass_mask_into_a_binary_model_is_whole_tumour(mri4, tmp_path, bundle_tools):
    from monai_genaug.methods.gms import GMSSegmenter, gms_config

    torch.manual_seed(0)
    GMSSegmenter.from_config(gms_config("tiny", 3, 2, 1)).save(tmp_path / "binary.pt")
    item = bundle_tools.parser("gms", "inference.json", "inference_3d.json", dataset_dir=str(mri4), split="training",
                               model_path=str(tmp_path / "binary.pt"), spatial_size=[16, 16, 16]
                               ).get_parsed_content("dataset")[0]
    assert set(item["label"].unique().tolist()) == {0.0, 1.0}


def test_mask_missing_for_an_image(tmp_path, bundle_tools):
    folder = write_phantom_dataset("endoscopy", tmp_path / "endo", 6, spatial_size=(16, 16))
    (folder / "masks" / "phantom_0002.png").unlink()
    parser = bundle_tools.parser("gms", "inference.json", dataset_dir=str(folder))
    _expect(bundle_tools, "phantom_0002.png", lambda: parser.get_parsed_content("datalist"))


def test_size_the_autoencoder_cannot_take_and_missing_model(tmp_path, bundle_tools):
    parser = bundle_tools.parser("gms", "inference.json", spatial_size=[62, 62])
    _expect(bundle_tools, r"spatial_size \(62, 62\) is not a multiple of .* factor 4.*--spatial_size \"\[64, 64\]\"",
            lambda: parser.get_parsed_content("preprocessing"))
    missing = bundle_tools.parser("gms", "inference.json", "inference_3d.json", model_path=str(tmp_path / "none.pt"))
    _expect(bundle_tools, r"none.pt' does not exist.*train.json.*train_3d.json",
            lambda: missing.get_parsed_content("network_def"))
