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
"""A small learned frame encoder: a MONAI ``AutoEncoder`` trained to reconstruct real frames, whose encoder gives
spatial feature maps of a frame.

Ctrl-GenAug (Zhou et al., arXiv:2409.17091) takes its image prior from a frozen foundation-model encoder (MedSAM) and
its temporal-consistency features from its fine-tuned VAE. Where neither is at hand, this autoencoder, trained on the
real frames of the task and then frozen, stands in for both: ``forward(frames)`` is the encoding (``(B, C, H, W) ->
(B, channels[-1], H / s, W / s)``, ``s`` the product of the strides), :meth:`FrameAutoencoder.reconstruct` the
reconstruction it was trained with (:func:`train_frame_autoencoder`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from monai.networks.nets import AutoEncoder
from torch import nn

__all__ = ["FrameAutoencoder", "train_frame_autoencoder"]


class FrameAutoencoder(nn.Module):
    """MONAI ``AutoEncoder`` over 2D frames whose ``forward`` returns the encoding (a frozen frame encoder).

    Args:
        in_channels: channels per frame.
        channels: encoder widths (one stage each).
        strides: stride of every stage (same length as ``channels``).
        num_res_units: residual units per stage.
    """

    def __init__(
        self,
        in_channels: int = 1,
        channels: Sequence[int] = (16, 16),
        strides: Sequence[int] = (2, 1),
        num_res_units: int = 0,
    ) -> None:
        super().__init__()
        if len(channels) != len(strides) or not channels:
            raise ValueError(f"channels {tuple(channels)} and strides {tuple(strides)} must be non-empty and of equal length.")
        self.in_channels = int(in_channels)
        self.out_channels = int(channels[-1])
        self.factor = 1
        for s in strides:
            self.factor *= int(s)
        self.autoencoder = AutoEncoder(
            spatial_dims=2, in_channels=self.in_channels, out_channels=self.in_channels,
            channels=tuple(int(c) for c in channels), strides=tuple(int(s) for s in strides),
            num_res_units=int(num_res_units), norm=("GROUP", {"num_groups": 1}),
        )

    def _check(self, frames: torch.Tensor) -> None:
        if frames.ndim != 4 or frames.shape[1] != self.in_channels:
            raise ValueError(
                f"frames must be (B, {self.in_channels}, H, W), got shape {tuple(frames.shape)}; fold clip frames into "
                "the batch first (clips.transpose(1, 2).flatten(0, 1))."
            )
        if frames.shape[-1] % self.factor or frames.shape[-2] % self.factor:
            raise ValueError(f"frame size {tuple(frames.shape[-2:])} must be divisible by the strides' product {self.factor}.")

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        """The encoding ``(B, channels[-1], H / s, W / s)`` of frames ``(B, C, H, W)``."""
        self._check(frames)
        return self.autoencoder.intermediate(self.autoencoder.encode(frames.float()))

    def reconstruct(self, frames: torch.Tensor) -> torch.Tensor:
        """The reconstruction of frames (what the autoencoder is trained on)."""
        return self.autoencoder.decode(self.forward(frames))


def train_frame_autoencoder(
    autoencoder: FrameAutoencoder,
    frames: torch.Tensor,
    num_steps: int = 300,
    batch_size: int = 32,
    lr: float = 3e-3,
    seed: int = 0,
) -> list[float]:
    """Train a :class:`FrameAutoencoder` to reconstruct ``frames`` (MSE, AdamW, batches drawn with replacement);
    returns the loss of every step and leaves it frozen (eval mode, ``requires_grad=False``).

    Args:
        autoencoder: the network.
        frames: real frames ``(N, C, H, W)``, e.g. every frame of the training clips.
        num_steps: optimisation steps.
        batch_size: frames per step.
        lr: learning rate.
        seed: seed of the batches.
    """
    if frames.ndim != 4 or frames.shape[0] == 0:
        raise ValueError(f"frames must be a non-empty (N, C, H, W) tensor, got shape {tuple(frames.shape)}.")
    autoencoder.requires_grad_(True).train()
    opt = torch.optim.AdamW(autoencoder.parameters(), lr=lr)
    rng = torch.Generator().manual_seed(int(seed))
    device = next(autoencoder.parameters()).device
    losses = []
    for _ in range(int(num_steps)):
        x = frames[torch.randint(0, frames.shape[0], (min(int(batch_size), frames.shape[0]),), generator=rng)]
        x = x.float().to(device)
        loss = F.mse_loss(autoencoder.reconstruct(x), x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    autoencoder.eval().requires_grad_(False)
    return losses
