"""Order-sensitive phantoms: the class is the motion, a frame-averaging classifier is at chance by construction."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from monai_genaug.data.motion_phantoms import make_motion_phantoms
from monai_genaug.evaluation import classification_learner


def test_class_is_the_time_direction_and_frame_averaging_is_at_chance():
    items = make_motion_phantoms(8, num_frames=6, spatial_size=(16, 16), seed=3)
    assert [i["label"] for i in items] == [0, 1] * 4
    clips = torch.stack([torch.as_tensor(i["image"]) for i in items])
    assert clips.shape == (8, 1, 6, 16, 16) and 0 <= clips.min() and clips.max() <= 1
    # clip 2j + 1 is clip 2j played backwards: identical frames, reversed order
    assert torch.equal(clips[1::2], clips[0::2].flip(2))
    # the disk grows in class 0: the bright area rises over the clip
    area = (clips[0::2] > 0.5).float().sum((1, 3, 4))
    assert (area[:, -1] > area[:, 0]).float().mean() >= 0.75
    # any frame-averaging classifier gives a clip and its reversal the same output, so it is at chance
    torch.manual_seed(0)
    frame_avg = classification_learner(2, 1, 2, frames=True).eval()
    with torch.no_grad():
        out = frame_avg(clips)
    assert torch.allclose(out[0::2], out[1::2], atol=1e-5)
    pred = out.argmax(1)
    assert float((pred == torch.tensor([0, 1] * 4)).float().mean()) == 0.5
    # a 3D CNN over (t, h, w) is not order-invariant
    temporal = classification_learner(3, 1, 2).eval()
    with torch.no_grad():
        t_out = temporal(clips)
    assert (t_out[0::2] - t_out[1::2]).abs().max() > 1e-4
    # reproducible, and unpaired draws differ between the classes' clips
    again = make_motion_phantoms(2, num_frames=6, spatial_size=(16, 16), seed=3)
    assert np.array_equal(again[0]["image"], items[0]["image"])
    unpaired = make_motion_phantoms(2, num_frames=6, spatial_size=(16, 16), seed=3, paired=False)
    assert not np.array_equal(unpaired[1]["image"], unpaired[0]["image"][:, ::-1])


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="num_frames"):
        make_motion_phantoms(2, num_frames=2)
    with pytest.raises(ValueError, match="spatial_size"):
        make_motion_phantoms(2, spatial_size=(8, 8))
    with pytest.raises(ValueError, match="amplitude"):
        make_motion_phantoms(2, amplitude=(0.2, 0.1))
