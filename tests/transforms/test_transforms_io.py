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
"""Label transforms: BinarizeLabel(d) and LabelToRegions(d)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from monai_genaug.transforms.io import (
    BRATS2013_REGIONS,
    BinarizeLabel,
    BinarizeLabeld,
    LabelToRegions,
    LabelToRegionsd,
)

AFFINE = torch.tensor([[2.0, 0, 0, 5], [0, 3.0, 0, -1], [0, 0, 1, 0], [0, 0, 0, 1]], dtype=torch.float64)


def _rgb_mask():
    """A 3-channel JPEG-like mask: grey foreground with compression noise, one pure-red pixel."""
    m = np.zeros((3, 4, 5), dtype=np.float32)
    m[:, 1:3, 1:4] = 250.0
    m[:, 0, 0] = 126.0  # below 127 in every channel: background
    m[:, 3, 4] = 129.0  # above: foreground
    m[0, 0, 4] = 255.0  # pure red: foreground with "max", background with "mean"
    return m


def test_binarize_rgb_mask_max_keeps_meta():
    img = MetaTensor(torch.as_tensor(_rgb_mask()), affine=AFFINE, meta={"filename_or_obj": "m.jpg"})
    out = BinarizeLabel(threshold=127, channel_reduction="max")(img)
    assert isinstance(out, MetaTensor) and out.shape == (1, 4, 5) and out.dtype == torch.float32
    assert torch.equal(out.affine, AFFINE) and out.meta["filename_or_obj"] == "m.jpg"
    expected = (_rgb_mask().max(0, keepdims=True) > 127).astype(np.float32)
    np.testing.assert_array_equal(out.numpy(), expected)
    assert out[0, 0, 4] == 1 and out[0, 0, 0] == 0 and out[0, 3, 4] == 1


@pytest.mark.parametrize(
    "reduction, red_pixel, channels", [("mean", 0.0, 1), ("first", 1.0, 1), ("max", 1.0, 1), (None, 1.0, 3)]
)
def test_binarize_channel_reductions(reduction, red_pixel, channels):
    out = BinarizeLabel(threshold=127, channel_reduction=reduction)(_rgb_mask())
    assert isinstance(out, np.ndarray) and out.dtype == np.float32
    assert out.shape == (channels, 4, 5) and out[0, 0, 4] == red_pixel
    assert set(np.unique(out)) <= {0.0, 1.0}


def test_binarize_threshold_is_strict_and_auto():
    labels = torch.tensor([[[0, 1, 2, 3, 4]]])
    assert BinarizeLabel(threshold=0)(labels).tolist() == [[[0, 1, 1, 1, 1]]]  # whole tumour: label > 0
    assert BinarizeLabel(threshold=2)(labels).tolist() == [[[0, 0, 0, 1, 1]]]
    zero_one = np.array([[[0, 1, 1, 0]]], dtype=np.uint8)
    np.testing.assert_array_equal(BinarizeLabel("auto")(zero_one), zero_one.astype(np.float32))
    jpeg = np.array([[[0, 3, 120, 128, 250]]], dtype=np.uint8)
    np.testing.assert_array_equal(BinarizeLabel("auto")(jpeg), [[[0, 0, 0, 1, 1]]])
    assert BinarizeLabel("auto")(np.zeros((1, 2, 2))).sum() == 0


def test_binarize_dtype_and_errors():
    out = BinarizeLabel(0.5, dtype=torch.uint8)(torch.tensor([[[0.2, 0.7]]]))
    assert out.dtype == torch.uint8 and out.tolist() == [[[0, 1]]]
    assert BinarizeLabel(0.5, dtype=np.uint8)(np.array([[[0.2, 0.7]]])).dtype == np.uint8
    with pytest.raises(ValueError, match="channel_reduction"):
        BinarizeLabel(channel_reduction="median")
    with pytest.raises(ValueError, match="auto"):
        BinarizeLabel(threshold="otsu")
    with pytest.raises(TypeError, match="threshold"):
        BinarizeLabel(threshold=None)
    with pytest.raises(ValueError, match="channel-first"):
        BinarizeLabel()(np.zeros(4))


def test_binarized_dict():
    data = {"label": MetaTensor(torch.as_tensor(_rgb_mask()), affine=AFFINE), "image": torch.ones(3, 4, 5)}
    out = BinarizeLabeld(keys="label", threshold=127, channel_reduction="max")(data)
    assert out["image"] is data["image"] and out["label"].shape == (1, 4, 5)
    assert torch.equal(out["label"].affine, AFFINE)
    with pytest.raises(KeyError):
        BinarizeLabeld(keys="mask")(data)
    assert BinarizeLabeld(keys="mask", allow_missing_keys=True)(data).keys() == data.keys()


def test_label_to_brats2013_regions():
    rng = np.random.default_rng(0)
    lab = rng.integers(0, 5, size=(1, 4, 5, 3)).astype(np.float32)
    img = MetaTensor(torch.as_tensor(lab), affine=AFFINE, meta={"filename_or_obj": "seg.nii.gz"})
    out = LabelToRegions(BRATS2013_REGIONS)(img)
    assert isinstance(out, MetaTensor) and out.shape == (3, 4, 5, 3)
    assert torch.equal(out.affine, AFFINE) and out.meta["filename_or_obj"] == "seg.nii.gz"
    np.testing.assert_array_equal(out[0].numpy(), lab[0] > 0)
    np.testing.assert_array_equal(out[1].numpy(), (lab[0] == 1) | (lab[0] == 3) | (lab[0] == 4))
    np.testing.assert_array_equal(out[2].numpy(), lab[0] == 4)
    # numpy in, numpy out; regions as a sequence of sequences (or single ints)
    out_np = LabelToRegions([[2], 3])(lab)
    assert isinstance(out_np, np.ndarray) and out_np.shape == (2, 4, 5, 3)
    np.testing.assert_array_equal(out_np[1], lab[0] == 3)


def test_label_to_regions_dict_and_errors():
    data = {"label": torch.tensor([[[0, 1], [2, 4]]])}
    out = LabelToRegionsd(keys="label", regions=BRATS2013_REGIONS)(data)
    assert out["label"].tolist() == [[[0, 1], [1, 1]], [[0, 1], [0, 1]], [[0, 0], [0, 1]]]
    with pytest.raises(ValueError, match="single-channel"):
        LabelToRegions([[1]])(torch.zeros(2, 3, 3))
    with pytest.raises(ValueError, match="empty"):
        LabelToRegions([])
    with pytest.raises(ValueError, match="region 0"):
        LabelToRegions([[1.5]])
