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
"""Label corruption, contrast inversion and mask-conditioned inputs (array and dictionary versions)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from monai_genaug.transforms import (
    MaskConditionedInput,
    MaskConditionedInputd,
    RandIntensityInversion,
    RandIntensityInversiond,
    RandLabelCorruption,
    RandLabelCorruptiond,
)


def test_label_corruption_is_seeded_and_does_what_it_says():
    lab = torch.zeros(1, 32, 32, dtype=torch.long)
    lab[:, 8:24, 8:24] = 1
    assert torch.equal(RandLabelCorruption()(lab), lab)
    assert RandLabelCorruption(erosion=2)(lab).sum() == 12 * 12
    assert RandLabelCorruption(dilation=1)(lab).sum() == 18 * 18
    drop = RandLabelCorruption(dropout=0.5, block_size=4).set_random_state(0)(lab)
    assert 0 < drop.sum() < lab.sum() and (drop <= lab).all()
    a = RandLabelCorruption(fp_rate=0.1, fn_rate=0.2).set_random_state(1)(lab)
    b = RandLabelCorruption(fp_rate=0.1, fn_rate=0.2).set_random_state(1)(lab)
    assert torch.equal(a, b)
    fn = ((lab == 1) & (a == 0)).sum() / lab.sum()
    fp = ((lab == 0) & (a == 1)).sum() / (lab == 0).sum()
    assert 0.1 < fn < 0.3 and 0.05 < fp < 0.15
    with pytest.raises(ValueError, match="fp_rate"):
        RandLabelCorruption(fp_rate=1.5)
    with pytest.raises(ValueError, match="binary"):
        RandLabelCorruption()(lab * 255)


def test_mask_conditioned_input():
    d = MaskConditionedInputd()({"image": torch.full((1, 4, 4), 0.25), "label": torch.ones(1, 4, 4)})
    assert torch.allclose(d["image"], torch.full((1, 4, 4), -0.5)) and d["seg"].shape == (2, 4, 4)
    assert d["seg"][1].eq(1).all()
    with pytest.raises(ValueError, match="spatial size"):
        MaskConditionedInputd()({"image": torch.zeros(1, 4, 4), "label": torch.zeros(1, 2, 2)})


def test_intensity_inversion_array_and_dict_agree():
    x = torch.linspace(0, 1, 16).view(1, 4, 4)
    assert torch.allclose(RandIntensityInversion(prob=1.0)(x), 1 - x)
    assert torch.equal(RandIntensityInversion(prob=0.0)(x), x)
    assert np.allclose(RandIntensityInversion(prob=1.0, value_range=(-1, 1))(x.numpy()), -x.numpy())
    # same random stream: the dict version inverts every key of an item or none, as often as the array version
    arr = RandIntensityInversion(prob=0.5).set_random_state(3)
    dic = RandIntensityInversiond(["a", "b"], prob=0.5).set_random_state(3)
    for _ in range(8):
        out = dic({"a": x, "b": 2 * x})
        flipped = not torch.equal(out["a"], x)
        assert torch.equal(arr(x), out["a"]) and flipped == (not torch.equal(out["b"], 2 * x))
    with pytest.raises(ValueError, match="low < high"):
        RandIntensityInversion(value_range=(1.0, 0.0))


def test_mask_conditioned_input_array_matches_dict():
    image, label = torch.rand(1, 6, 6), torch.randint(0, 3, (1, 6, 6))
    x, seg = MaskConditionedInput(num_classes=2, minmax=True)(image, label)
    d = MaskConditionedInputd(num_classes=2, minmax=True)({"image": image, "label": label})
    assert torch.equal(x, d["image"]) and torch.equal(seg, d["seg"])
    assert seg.shape == (3, 6, 6) and torch.equal(seg.argmax(0), label[0])
    assert float(x.min()) == -1.0 and float(x.max()) == 1.0
    with pytest.raises(ValueError, match="spatial size"):
        MaskConditionedInput()(torch.zeros(1, 4, 4), torch.zeros(1, 2, 2))


def test_label_corruption_dict_uses_one_draw_per_item():
    lab = torch.zeros(1, 16, 16, dtype=torch.long)
    lab[:, 4:12, 4:12] = 1
    out = RandLabelCorruptiond(["label"], dropout=0.5, block_size=4).set_random_state(0)({"label": lab})
    ref = RandLabelCorruption(dropout=0.5, block_size=4).set_random_state(0)(lab)
    assert out["label"].shape == lab.shape and (out["label"] <= lab).all()
    assert torch.equal(out["label"], ref)
