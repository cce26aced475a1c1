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
"""The GMS latent mapping network: image latent -> mask latent, at one resolution, in 2D or 3D.

Huo et al., "Generative Medical Segmentation" (GMS), arXiv:2403.18198. The network regresses the latent of a
mask from the latent of its image, both given by one frozen autoencoder. It is a U-shaped stack of residual
blocks with global self-attention but **no down-sampling**: every tensor keeps the latent's spatial size, and
the "U" is only a widening then narrowing of channels with concatenated skips. Deep-supervision heads read the
decoder levels.

For ``channels=32, channel_mult=(1, 2, 4, 4)`` (the paper's configuration, 4 latent channels in and out) the
layout is::

    x0   = Conv3(in -> 32)
    x1   = ResAttn(32 -> 32)(x0)       x3_1 = ResAttn(128+128 -> 128)(x3, x4)   -> head "level3"
    x2   = ResAttn(32 -> 64)(x1)       x2_2 = ResAttn(64+128 -> 64)(x2, x3_1)   -> head "level2"
    x3   = ResAttn(64 -> 128)(x2)      x1_3 = ResAttn(32+64 -> 32)(x1, x2_2)    -> head "level1"
    x4   = ResAttn(128 -> 128)(x3)     x0_4 = ResAttn(32+32 -> 32)(x0, x1_3)    -> head "out"

with ResAttn = residual block ([GroupNorm -> PReLU -> Conv3] x 2, 1x1 skip when the width changes) followed by
MONAI's :class:`~monai.networks.blocks.SpatialAttentionBlock` (GroupNorm, single-head attention over all
positions, residual). Heads are GroupNorm -> SiLU -> Conv3 without bias. With the default heads
``("level2", "level1", "out")`` the 2D network has 1.56 M parameters, as in the paper (1.5 M).

Attention over all positions costs memory quadratic in the number of latent positions: fine for 2D latents and
3D latents up to about 16^3-24^3; beyond that pass ``use_flash_attention=True`` (PyTorch scaled-dot-product
attention) or switch attention off in some blocks with ``attention``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.blocks import SpatialAttentionBlock
from monai.networks.layers.factories import Conv
from torch import nn

__all__ = ["LatentMappingNet", "head_names"]


def head_names(num_levels: int) -> tuple[str, ...]:
    """Names of the possible heads of a mapping network with ``num_levels`` stages, deepest first.

    ``head_names(4) == ("level3", "level2", "level1", "out")``.
    """
    return tuple(f"level{j}" for j in range(num_levels - 1, 0, -1)) + ("out",)


def _conv(spatial_dims: int, cin: int, cout: int, kernel_size: int, bias: bool = True) -> nn.Module:
    return Conv[Conv.CONV, spatial_dims](cin, cout, kernel_size=kernel_size, padding=kernel_size // 2, bias=bias)


class _ResBlock(nn.Module):
    """[GroupNorm -> PReLU -> Conv3] twice plus a skip (1x1 conv without bias when the width changes)."""

    def __init__(self, spatial_dims: int, cin: int, cout: int, norm_num_groups: int, norm_eps: float) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(norm_num_groups, cin, eps=norm_eps)
        self.act1 = nn.PReLU()
        self.conv1 = _conv(spatial_dims, cin, cout, 3)
        self.norm2 = nn.GroupNorm(norm_num_groups, cout, eps=norm_eps)
        self.act2 = nn.PReLU()
        self.conv2 = _conv(spatial_dims, cout, cout, 3)
        self.skip = nn.Identity() if cin == cout else _conv(spatial_dims, cin, cout, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(self.act1(self.norm1(x)))
        h = self.conv2(self.act2(self.norm2(h)))
        return self.skip(x) + h


class _ResAttnBlock(nn.Module):
    """A residual block followed (optionally) by global spatial self-attention."""

    def __init__(
        self,
        spatial_dims: int,
        cin: int,
        cout: int,
        attention: bool,
        norm_num_groups: int,
        norm_eps: float,
        num_head_channels: int | None,
        use_flash_attention: bool,
    ) -> None:
        super().__init__()
        self.res = _ResBlock(spatial_dims, cin, cout, norm_num_groups, norm_eps)
        self.attn: nn.Module = (
            SpatialAttentionBlock(
                spatial_dims=spatial_dims,
                num_channels=cout,
                num_head_channels=num_head_channels,
                norm_num_groups=norm_num_groups,
                norm_eps=norm_eps,
                use_flash_attention=use_flash_attention,
            )
            if attention
            else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.attn(self.res(x))


class _Head(nn.Module):
    """GroupNorm -> SiLU -> Conv3 (no bias) to the output channels."""

    def __init__(self, spatial_dims: int, cin: int, cout: int, norm_num_groups: int, norm_eps: float) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(norm_num_groups, cin, eps=norm_eps)
        self.act = nn.SiLU()
        self.conv = _conv(spatial_dims, cin, cout, 3, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.act(self.norm(x)))


class LatentMappingNet(nn.Module):
    """GMS latent mapping network (``ResAttnUNet_DS`` of the paper): no down-sampling, self-attention, deep supervision.

    Huo et al., "Generative Medical Segmentation", arXiv:2403.18198 (AAAI 2025).

    ``forward(x)`` returns the ``"out"`` head, a tensor shaped like ``x`` but with ``out_channels`` channels, so the
    network drops into any MONAI inferer. :meth:`forward_heads` returns every head as a dict (deep supervision).

    Args:
        spatial_dims: 2 or 3.
        in_channels: channels of the input (image) latent.
        out_channels: channels of the output (mask) latent; ``K * latent_channels`` for a K-class GMS model.
        channels: base width ``ch``; stage ``i`` has ``ch * channel_mult[i]`` channels.
        channel_mult: width multipliers of the stages (at least two); the paper uses ``(1, 2, 4, 4)``.
        deep_supervision: heads to build, a subset of :func:`head_names` (``"out"`` is always built); ``True``
            for the paper's ``("level2", "level1", "out")``, ``False`` for ``("out",)``.
        attention: self-attention after every residual block (``True``), none (``False``), or one flag per block:
            the ``len(channel_mult)`` encoder blocks then the ``len(channel_mult)`` decoder blocks.
        norm_num_groups: GroupNorm groups (the paper uses 16); every width and concatenation must be divisible.
        norm_eps: GroupNorm epsilon.
        num_head_channels: channels per attention head; None for one head over all channels (the paper).
        use_flash_attention: use PyTorch's scaled-dot-product attention (memory-efficient; recommended in 3D).

    Example::

        net = LatentMappingNet(spatial_dims=2, in_channels=4, out_channels=4)   # 1.56 M parameters
        heads = net.forward_heads(torch.randn(2, 4, 28, 28))                    # {"level2", "level1", "out"}
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int = 4,
        out_channels: int = 4,
        channels: int = 32,
        channel_mult: Sequence[int] = (1, 2, 4, 4),
        deep_supervision: bool | Sequence[str] = True,
        attention: bool | Sequence[bool] = True,
        norm_num_groups: int = 16,
        norm_eps: float = 1e-6,
        num_head_channels: int | None = None,
        use_flash_attention: bool = False,
    ) -> None:
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}.")
        for name, value in (("in_channels", in_channels), ("out_channels", out_channels), ("channels", channels)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}.")
        mult = tuple(int(m) for m in channel_mult)
        if len(mult) < 2 or any(m < 1 for m in mult):
            raise ValueError(f"channel_mult needs at least two positive multipliers, e.g. (1, 2, 4, 4); got {channel_mult!r}.")
        num_levels = len(mult)
        widths = [channels * m for m in mult]
        all_heads = head_names(num_levels)
        if deep_supervision is True:
            heads = tuple(h for h in ("level2", "level1", "out") if h in all_heads)
        elif deep_supervision is False:
            heads = ("out",)
        else:
            heads = tuple(dict.fromkeys([*deep_supervision, "out"]))
            unknown = [h for h in heads if h not in all_heads]
            if unknown:
                raise ValueError(f"unknown deep-supervision heads {unknown}; a {num_levels}-stage network has {list(all_heads)}.")
        if isinstance(attention, bool):
            attn = [attention] * (2 * num_levels)
        else:
            attn = [bool(a) for a in attention]
            if len(attn) != 2 * num_levels:
                raise ValueError(
                    f"attention needs {2 * num_levels} flags (the {num_levels} encoder blocks, then the {num_levels} "
                    f"decoder blocks), got {len(attn)}."
                )
        cat_widths = [widths[-2] + widths[-1]] + [widths[j] + widths[j + 1] for j in range(num_levels - 3, -1, -1)]
        cat_widths.append(channels + widths[0])
        bad = sorted({w for w in [channels, *widths, *cat_widths] if w % norm_num_groups})
        if bad:
            raise ValueError(
                f"norm_num_groups={norm_num_groups} does not divide the widths {bad} of this network "
                f"(channels={channels}, channel_mult={mult}); choose channels as a multiple of norm_num_groups."
            )

        self.spatial_dims = spatial_dims
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.num_levels = num_levels
        self.heads = heads

        def block(cin: int, cout: int, i: int) -> _ResAttnBlock:
            return _ResAttnBlock(
                spatial_dims, cin, cout, attn[i], norm_num_groups, norm_eps, num_head_channels, use_flash_attention
            )

        self.conv_in = _conv(spatial_dims, in_channels, channels, 3)
        enc_in = [channels, *widths[:-1]]
        self.encoder = nn.ModuleList([block(enc_in[i], widths[i], i) for i in range(num_levels)])
        # decoder block j consumes [encoder output of stage j, previous decoder output] -> widths[j]
        dec: list[_ResAttnBlock] = []
        prev = widths[-1]
        for k, j in enumerate(range(num_levels - 2, -1, -1)):
            dec.append(block(widths[j] + prev, widths[j], num_levels + k))
            prev = widths[j]
        dec.append(block(channels + prev, channels, 2 * num_levels - 1))  # with conv_in's output -> "out"
        self.decoder = nn.ModuleList(dec)
        dec_widths = [widths[j] for j in range(num_levels - 2, -1, -1)] + [channels]
        self.head_modules = nn.ModuleDict(
            {
                name: _Head(spatial_dims, dec_widths[all_heads.index(name)], out_channels, norm_num_groups, norm_eps)
                for name in heads
            }
        )
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Conv3d)):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="leaky_relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def _check_input(self, x: torch.Tensor) -> None:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"the latent input must be a torch.Tensor, got {type(x).__name__}.")
        if x.ndim != self.spatial_dims + 2 or x.shape[1] != self.in_channels:
            axes = ", ".join("HWD"[: self.spatial_dims])
            raise ValueError(
                f"LatentMappingNet ({self.spatial_dims}D, in_channels={self.in_channels}) expects a (B, "
                f"{self.in_channels}, {axes}) latent, got shape {tuple(x.shape)}."
            )

    def forward_heads(self, x: torch.Tensor, heads: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
        """Return the requested heads (default: all built heads) as ``{name: (B, out_channels, *spatial)}``.

        Args:
            x: the image latent (B, in_channels, *spatial).
            heads: names among :attr:`heads`; None for all of them.
        """
        self._check_input(x)
        wanted = self.heads if heads is None else tuple(heads)
        missing = [h for h in wanted if h not in self.head_modules]
        if missing:
            raise ValueError(f"heads {missing} were not built; this network has {list(self.heads)}.")
        names = head_names(self.num_levels)
        x0 = self.conv_in(x)
        skips = []
        h = x0
        for blk in self.encoder:
            h = blk(h)
            skips.append(h)
        out: dict[str, torch.Tensor] = {}
        h = skips[-1]
        for k, blk in enumerate(self.decoder):
            j = self.num_levels - 2 - k
            skip = skips[j] if j >= 0 else x0
            h = blk(torch.cat([skip, h], dim=1))
            if names[k] in wanted:
                out[names[k]] = self.head_modules[names[k]](h)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The ``"out"`` head: the mapped latent (B, out_channels, *spatial)."""
        return self.forward_heads(x, heads=("out",))["out"]
