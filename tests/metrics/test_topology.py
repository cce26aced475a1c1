"""clDice and the soft skeleton on hand-made vessel masks (the values are counted by hand in the comments)."""

from __future__ import annotations

import pytest
import torch

from monai_genaug.metrics import cl_dice, soft_skeleton


def _bar() -> torch.Tensor:
    """A horizontal vessel 3 pixels thick (rows 4-6) and 20 long (columns 2-21) in an 11 x 24 image."""
    t = torch.zeros(1, 1, 11, 24)
    t[..., 4:7, 2:22] = 1
    return t


def test_skeleton_of_a_bar_is_its_centre_line():
    skel = soft_skeleton(_bar()) > 0.5
    rows = skel[0, 0].any(dim=1).nonzero().flatten().tolist()
    cols = skel[0, 0, 5].nonzero().flatten().tolist()
    assert rows == [5]  # one pixel thick, on the centre row
    assert cols == list(range(3, 21))  # 18 pixels: the bar minus one pixel at each end


def test_cut_vessel_loses_sensitivity_only():
    truth = _bar()
    pred = truth.clone()
    pred[..., 10:12] = 0  # a 2-pixel gap: 2 of the 18 skeleton pixels of the truth are missed
    cl, prec, sens = cl_dice(pred, truth, return_parts=True)
    assert float(prec) == pytest.approx(1.0)
    assert float(sens) == pytest.approx(16 / 18)
    assert float(cl) == pytest.approx(2 * (16 / 18) / (1 + 16 / 18))


def test_thick_prediction_keeps_cldice_but_not_dice():
    truth = _bar()
    pred = truth.clone()
    pred[..., 3:8, 2:22] = 1  # 5 pixels thick: Dice = 2 * 60 / (100 + 60) = 0.75
    assert float(cl_dice(pred, truth)) == pytest.approx(1.0)
    inter = (pred * truth).sum()
    assert float(2 * inter / (pred.sum() + truth.sum())) == pytest.approx(0.75)


def test_empty_masks_and_bad_input():
    empty = torch.zeros(2, 1, 8, 8)
    assert cl_dice(empty, empty).tolist() == [1.0, 1.0]
    one = empty.clone()
    one[0, 0, 2:5, 1:7] = 1
    assert cl_dice(one, empty)[0] == 0 and cl_dice(empty, one)[0] == 0
    with pytest.raises(ValueError, match="same shape"):
        cl_dice(empty, torch.zeros(2, 1, 8, 9))
    with pytest.raises(ValueError, match="B, C, H, W"):
        soft_skeleton(torch.zeros(8, 8))
