"""PNG grids: sizes, channels, 3D middle slice, sequences, normalisation, atomic write, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from monai_genaug.utils.images import make_image_grid, save_image_grid


def test_grey_grid_size_and_layout(tmp_path):
    batch = torch.zeros(5, 1, 16, 12)
    for i in range(5):
        batch[i, 0, 0, 0] = 1.0  # distinct min/max so normalisation maps the corner to 255
    path = save_image_grid(batch, tmp_path / "g.png", nrow=3, padding=2)
    im = Image.open(path)
    assert im.mode == "L"
    # 3 columns x 2 rows of 16x12 tiles, 2 px padding between and around
    assert im.size == (3 * (12 + 2) + 2, 2 * (16 + 2) + 2)
    arr = np.asarray(im)
    assert arr[2, 2] == 255 and arr[2 + 18, 2 + 14] == 255  # tile 0 and tile 4 corners
    assert arr[0, 0] == 0  # padding
    assert arr[2 + 18, 2 + 2 * 14] == 0  # empty slot of the last row stays padding


def test_rgb_grid_default_nrow(tmp_path):
    path = save_image_grid(torch.rand(4, 3, 8, 8), tmp_path / "rgb.png", padding=0)
    im = Image.open(path)
    assert im.mode == "RGB" and im.size == (16, 16)  # ceil(sqrt(4)) = 2 per row


def test_3d_middle_slice():
    vol = torch.zeros(1, 1, 6, 6, 9)
    vol[0, 0, :, :, 4] = torch.arange(36.0).reshape(6, 6)  # middle of the last axis
    grid = make_image_grid(vol, padding=0)
    assert grid.shape == (6, 6)
    assert grid[0, 0] == 0 and grid[-1, -1] == 255 and (np.diff(grid.reshape(-1).astype(int)) >= 0).all()
    # slicing another axis gives another shape
    assert make_image_grid(torch.rand(1, 1, 6, 7, 9), padding=0, slice_axis=0).shape == (7, 9)


def test_sequence_rows_of_frames(tmp_path):
    seq = torch.rand(2, 1, 5, 8, 8)  # (B, C, T, H, W)
    path = save_image_grid(seq, tmp_path / "seq.png", nrow=99, sequence_dim=2, padding=1)
    assert Image.open(path).size == (5 * 9 + 1, 2 * 9 + 1)  # one row of 5 frames per sample


def test_normalise_false_clips():
    batch = torch.tensor([[-1.0, 0.5], [2.0, 0.25]]).view(1, 1, 2, 2)
    grid = make_image_grid(batch, normalise=False, padding=0)
    assert grid.tolist() == [[0, 128], [255, 64]]
    normed = make_image_grid(batch, normalise=True, padding=0)
    assert normed.min() == 0 and normed.max() == 255


def test_non_finite_values_warn():
    batch = torch.rand(2, 1, 4, 4)
    batch[0, 0, 0, 0] = float("nan")
    with pytest.warns(UserWarning, match="non-finite"):
        grid = make_image_grid(batch)
    assert grid.dtype == np.uint8


def test_atomic_write_leaves_no_temp_file(tmp_path):
    save_image_grid(torch.rand(2, 1, 4, 4), tmp_path / "sub" / "a.png")
    save_image_grid(torch.rand(2, 1, 4, 4), tmp_path / "sub" / "a.png")  # overwrite
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["a.png"]


@pytest.mark.parametrize(
    "batch, kwargs, match",
    [
        (torch.rand(2, 2, 4, 4), {}, "channels"),
        (torch.rand(4, 4), {}, "batch-first"),
        (torch.rand(2, 1, 4, 4), {"sequence_dim": 2}, "sequence"),
        (torch.rand(2, 1, 4, 4, 4), {"sequence_dim": 1}, "batch or channel"),
        (torch.rand(0, 1, 4, 4), {}, "empty"),
    ],
)
def test_bad_input(batch, kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_image_grid(batch, **kwargs)


def test_bad_suffix(tmp_path):
    with pytest.raises(ValueError, match=".png"):
        save_image_grid(torch.rand(1, 1, 4, 4), tmp_path / "a.jpg")
