"""Motion fields from clips (torch only) and the ControlNet-style motion encoder."""

from __future__ import annotations

import pytest
import torch

from monai_genaug.networks.motion_encoder import (
    MotionEncoder,
    check_motion,
    estimate_motion,
)


def _moving_blob(shift=(1.0, 0.0), frames=4, size=16):
    ys, xs = torch.meshgrid(torch.arange(size).float(), torch.arange(size).float(), indexing="ij")
    clip = [torch.exp(-((ys - 6 - shift[0] * t) ** 2 + (xs - 6 - shift[1] * t) ** 2) / 8.0) for t in range(frames)]
    return torch.stack(clip)[None, None]  # (1, 1, F, H, W)


def test_flow_recovers_translation_direction():
    for shift, channel in (((1.0, 0.0), 0), ((0.0, 1.0), 1)):
        clip = _moving_blob(shift)
        flow = estimate_motion(clip, "flow")
        assert flow.shape == (1, 2, 3, 16, 16)
        support = clip[0, 0, :-1] > 0.3
        moving = flow[0, channel][support].mean()
        other = flow[0, 1 - channel][support].abs().mean()
        assert 0.5 < moving < 1.5 and other < 0.3
    static = estimate_motion(_moving_blob((0.0, 0.0)))
    assert static.abs().max() < 1e-4
    diff = estimate_motion(_moving_blob(), "difference")
    assert diff.shape == (1, 2, 3, 16, 16) and diff.abs().sum() > 0


def test_encoder_shapes_zero_frame_and_errors():
    enc = MotionEncoder(2, 2, 8, channels=(4, 8))
    motion = torch.randn(2, 2, 3, 16, 16)
    feat = enc(motion)
    assert feat.shape == (2, 8, 4, 8, 8)
    assert feat.abs().max() == 0  # zero-initialised output: an untrained encoder adds nothing
    torch.nn.init.normal_(enc.embedding.conv_out.conv.weight)
    feat = enc(motion)
    assert feat[:, :, 0].abs().max() == 0 and feat[:, :, 1:].abs().max() > 0
    with pytest.raises(ValueError, match=r"motion must be \(B, 2"):
        enc(torch.randn(2, 3, 3, 16, 16))
    with pytest.raises(ValueError, match="estimate_motion"):
        check_motion(torch.randn(2, 2, 5, 16, 16), batch=2, num_frames=4, spatial_size=(16, 16))
    with pytest.raises(ValueError, match="at least 2 frames"):
        estimate_motion(torch.randn(1, 1, 1, 16, 16))
    with pytest.raises(ValueError, match=r"\(B, C, F, H, W\)"):
        estimate_motion(torch.randn(1, 4, 16, 16))
    with pytest.raises(ValueError, match="unknown motion method"):
        estimate_motion(torch.randn(1, 1, 3, 16, 16), "codec")
