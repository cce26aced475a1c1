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
"""Motion fields of clips (torch only) and a ControlNet-style encoder that turns them into UNet features.

Ctrl-GenAug (Zhou et al., arXiv:2409.17091) conditions its sequence UNet on per-frame motion fields: the original
reads codec motion vectors of an MP4 written from the clip (``mvextractor``). Here the motion fields are computed
directly from the frames with PyTorch, no codec:

- ``"flow"``: dense Lucas-Kanade optical flow between consecutive frames (windowed least squares on image gradients,
  coarse-to-fine over a small pyramid);
- ``"difference"``: the frame difference (channel 0) and its magnitude-weighted gradient direction (channel 1), a
  cheap proxy for where and how much things move.

:class:`MotionEncoder` is MONAI's ControlNet conditioning embedding
(:class:`monai.networks.nets.controlnet.ControlNetConditioningEmbedding`, zero-initialised output) applied per frame
to the ``F - 1`` fields, with a zero feature for frame 0, giving ``(B, C0, F, h, w)`` to add after the UNet's first
convolution.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from monai.networks.nets.controlnet import ControlNetConditioningEmbedding
from torch import nn

__all__ = ["MOTION_METHODS", "MotionEncoder", "check_motion", "estimate_motion"]

MOTION_METHODS = ("flow", "difference")


def _check_clip(clip: torch.Tensor) -> torch.Tensor:
    if not isinstance(clip, torch.Tensor):
        raise TypeError(f"clips must be a torch.Tensor (B, C, F, H, W), got {type(clip).__name__}.")
    if clip.ndim != 5:
        raise ValueError(
            f"clips must be (B, C, F, H, W) (batch, channel, frame, height, width), got shape {tuple(clip.shape)}; "
            "for one clip use clip.unsqueeze(0)."
        )
    if clip.shape[2] < 2:
        raise ValueError(f"motion needs at least 2 frames, the clips have {clip.shape[2]}.")
    return clip.float()


def _box(x: torch.Tensor, window: int) -> torch.Tensor:
    return F.avg_pool2d(x, window, stride=1, padding=window // 2, count_include_pad=False)


def _gradients(img: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    gy = torch.zeros_like(img)
    gx = torch.zeros_like(img)
    gy[..., 1:-1, :] = (img[..., 2:, :] - img[..., :-2, :]) / 2
    gx[..., :, 1:-1] = (img[..., :, 2:] - img[..., :, :-2]) / 2
    return gy, gx


def _warp(img: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """Sample ``img`` (N, 1, H, W) at ``p + flow`` (flow (N, 2, H, W) in pixels along (H, W))."""
    n, _, h, w = img.shape
    ys, xs = torch.meshgrid(torch.arange(h, device=img.device), torch.arange(w, device=img.device), indexing="ij")
    y = (ys[None] + flow[:, 0]) / max(h - 1, 1) * 2 - 1
    x = (xs[None] + flow[:, 1]) / max(w - 1, 1) * 2 - 1
    return F.grid_sample(img, torch.stack([x, y], dim=-1), align_corners=True, padding_mode="border")


def _lucas_kanade(a: torch.Tensor, b: torch.Tensor, window: int, levels: int, iterations: int) -> torch.Tensor:
    """Dense flow (N, 2, H, W) from ``a`` to ``b`` (N, 1, H, W): ``b(p + flow) ~ a(p)``."""
    pyramid = [(a, b)]
    for _ in range(levels - 1):
        if min(pyramid[-1][0].shape[-2:]) < 2 * window:
            break
        pyramid.append((F.avg_pool2d(pyramid[-1][0], 2), F.avg_pool2d(pyramid[-1][1], 2)))
    flow = torch.zeros(a.shape[0], 2, *pyramid[-1][0].shape[-2:], device=a.device)
    for level, (pa, pb) in enumerate(reversed(pyramid)):
        if level:
            flow = 2 * F.interpolate(flow, size=pa.shape[-2:], mode="bilinear", align_corners=False)
        gy, gx = _gradients(pa)
        syy, sxx, sxy = _box(gy * gy, window), _box(gx * gx, window), _box(gx * gy, window)
        det = syy * sxx - sxy * sxy
        ok = det > 1e-9
        for _ in range(iterations):
            it = _warp(pb, flow) - pa
            by, bx = -_box(gy * it, window), -_box(gx * it, window)
            dy = torch.where(ok, (sxx * by - sxy * bx) / det.clamp_min(1e-9), torch.zeros_like(det))
            dx = torch.where(ok, (syy * bx - sxy * by) / det.clamp_min(1e-9), torch.zeros_like(det))
            flow = flow + torch.cat([dy, dx], dim=1).clamp(-2.0, 2.0)
    return flow


@torch.no_grad()
def estimate_motion(
    clips: torch.Tensor, method: str = "flow", window: int = 5, levels: int = 3, iterations: int = 3
) -> torch.Tensor:
    """Motion fields between consecutive frames of clips, ``(B, 2, F - 1, H, W)``, computed with torch only.

    Args:
        clips: ``(B, C, F, H, W)`` clips (channels are averaged).
        method: ``"flow"`` (Lucas-Kanade optical flow in pixels, channels (dy, dx): frame ``t + 1`` at ``p + flow``
            matches frame ``t`` at ``p``) or ``"difference"`` (frame difference and its gradient-weighted direction).
        window: odd size of the Lucas-Kanade window.
        levels: pyramid levels of the flow.
        iterations: warping iterations per level.
    """
    clips = _check_clip(clips)
    if method not in MOTION_METHODS:
        raise ValueError(f"unknown motion method '{method}'; choose one of {list(MOTION_METHODS)}.")
    if window < 1 or window % 2 == 0:
        raise ValueError(f"window must be a positive odd number, got {window}.")
    b, _, nf, h, w = clips.shape
    grey = clips.mean(dim=1)  # (B, F, H, W)
    a = grey[:, :-1].reshape(-1, 1, h, w)
    nxt = grey[:, 1:].reshape(-1, 1, h, w)
    if method == "flow":
        field = _lucas_kanade(a, nxt, window, max(1, levels), max(1, iterations))
    else:
        diff = nxt - a
        gy, gx = _gradients((a + nxt) / 2)
        mag = (gy * gy + gx * gx).sqrt().clamp_min(1e-6)
        field = torch.cat([diff, -diff * (gy + gx) / mag], dim=1)
    return field.reshape(b, nf - 1, 2, h, w).transpose(1, 2).contiguous()


def check_motion(motion: torch.Tensor, batch: int, num_frames: int, spatial_size: Sequence[int]) -> torch.Tensor:
    """Check a motion field against the clips it conditions; returns it as float.

    Raises:
        ValueError: not ``(batch, 2, num_frames - 1, *spatial_size)``, with the fix in the message.
    """
    expected = (batch, 2, num_frames - 1, *[int(s) for s in spatial_size])
    if not isinstance(motion, torch.Tensor) or tuple(motion.shape) != expected:
        got = tuple(motion.shape) if isinstance(motion, torch.Tensor) else type(motion).__name__
        raise ValueError(
            f"motion field must have shape (B, 2, F-1, H, W) = {expected} (two displacement channels between "
            f"consecutive frames, at the frame size), got {got}; compute it with "
            "monai_genaug.networks.motion_encoder.estimate_motion(clips)."
        )
    return motion.float()


class MotionEncoder(nn.Module):
    """ControlNet-style encoder of motion fields ``(B, 2, F - 1, H, W)`` -> per-frame features ``(B, C, F, h, w)``.

    Frame 0 gets a zero feature (it has no motion); the other frames are encoded by MONAI's
    ``ControlNetConditioningEmbedding`` (per frame, frames folded into the batch), which downsamples by
    ``2 ** (len(channels) - 1)`` and zero-initialises its output convolution, so an untrained encoder adds nothing.

    Args:
        spatial_dims: 2 (frames are 2D).
        in_channels: motion channels (2: dy, dx).
        out_channels: feature channels ``C`` (the UNet's ``channels[0]``).
        channels: encoder widths; ``len(channels) - 1`` stride-2 stages (match the autoencoder factor; ``(16,)``
            for pixel-space diffusion, ``(16, 32, 96, 256)`` for an f=8 autoencoder as in the original).
        scale: multiplies the motion fields before encoding (e.g. ``1 / max displacement``).
        zero_init: zero-initialise the output convolution (ControlNet: an untrained encoder adds nothing; right when
            the feature is *added* to the UNet's). With ``False`` the output convolution keeps PyTorch's default
            initialisation, for a feature that is concatenated and convolved by a zero-initialised insert unit
            (then both the insert unit and the encoder get gradients from the first step).
    """

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 2,
        out_channels: int = 32,
        channels: Sequence[int] = (16,),
        scale: float = 1.0,
        zero_init: bool = True,
    ) -> None:
        super().__init__()
        if spatial_dims != 2:
            raise ValueError(f"MotionEncoder encodes 2D frames, got spatial_dims={spatial_dims}.")
        if not channels:
            raise ValueError("channels must name at least one width, e.g. (16,).")
        self.in_channels = int(in_channels)
        self.out_channels = int(out_channels)
        self.factor = 2 ** (len(channels) - 1)
        self.scale = float(scale)
        self.embedding = ControlNetConditioningEmbedding(2, in_channels, out_channels, tuple(int(c) for c in channels))
        if not zero_init:
            self.embedding.conv_out.conv.reset_parameters()

    def forward(self, motion: torch.Tensor) -> torch.Tensor:
        if motion.ndim != 5 or motion.shape[1] != self.in_channels:
            raise ValueError(
                f"motion must be (B, {self.in_channels}, F-1, H, W), got shape {tuple(motion.shape)}; compute it "
                "with estimate_motion(clips)."
            )
        b, c, nm, h, w = motion.shape
        if h % self.factor or w % self.factor:
            raise ValueError(f"motion size {(h, w)} is not divisible by the encoder's downsampling {self.factor}.")
        hh, ww = h // self.factor, w // self.factor
        zero = motion.new_zeros(b, self.out_channels, 1, hh, ww)
        if nm == 0:
            return zero
        frames = (motion.float() * self.scale).transpose(1, 2).reshape(b * nm, c, h, w)
        feat = self.embedding(frames).reshape(b, nm, self.out_channels, hh, ww).transpose(1, 2)
        return torch.cat([zero, feat], dim=2)
