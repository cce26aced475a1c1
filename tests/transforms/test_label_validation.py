"""ValidateLabeld, the one label validator: values-only and full-map checks, the hint, and the deprecated alias."""

from __future__ import annotations

import pytest
import torch
from monai.data import MetaTensor

from monai_genaug.transforms import CheckLabelMapd, ValidateLabeld


def _label(values, name="case_7_seg.nii.gz"):
    return MetaTensor(torch.tensor(values, dtype=torch.float32), meta={"filename_or_obj": name})


def test_values_only_mode_accepts_any_shape_and_names_the_file():
    check = ValidateLabeld("label", num_classes=2)
    out = check({"label": _label([[[0.0, 2.0]], [[1.0, 0.0]]])})  # two channels: the values-only mode ignores shape
    assert out["label"].shape == (2, 1, 2)
    assert check({"image": 1}) == {"image": 1}  # unlabelled item
    with pytest.raises(ValueError, match=r"'case_7_seg.nii.gz' has values in \[0, 3\].*classes 0..2.*label_mode"):
        check({"label": _label([[[0.0, 3.0]]])})
    with pytest.raises(ValueError, match="has values in"):
        check({"label": _label([[[0.0, 0.5]]])})  # soft values


def test_full_mode_checks_shape_and_values_and_appends_the_hint():
    check = ValidateLabeld("label", num_classes=1, spatial_dims=2, hint="Train with --num_classes 4.")
    check({"label": _label([[[0.0, 1.0], [1.0, 0.0]]])})
    with pytest.raises(ValueError, match=r"label file 'case_7_seg.nii.gz'.*binary.*Train with --num_classes 4\."):
        check({"label": _label([[[0.0, 4.0], [1.0, 0.0]]])})
    with pytest.raises(ValueError, match=r"\(B, 1, H, W\).*Train with --num_classes 4"):
        check({"label": _label([[[[0.0, 1.0]]]])})  # a 3D map into a 2D check
    with pytest.raises(ValueError, match="spatial_dims must be None"):
        ValidateLabeld("label", 1, spatial_dims=4)
    with pytest.raises(ValueError, match="num_classes must be >= 1"):
        ValidateLabeld("label", 0)


def test_deprecated_alias_is_the_full_check():
    with pytest.warns(DeprecationWarning, match=r"ValidateLabeld\('label', num_classes=3, spatial_dims=2"):
        alias = CheckLabelMapd("label", 3, 2)
    assert isinstance(alias, ValidateLabeld) and alias.spatial_dims == 2
    with pytest.raises(ValueError, match=r"outside the declared labels 0..3.*--num_classes"):
        alias({"label": _label([[[0.0, 5.0]]])})
