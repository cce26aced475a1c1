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
"""Timestep-conditioned classifier of noisy (latent) images with an attention-pooling head, 2D and 3D.

The classifier of classifier guidance (Dhariwal & Nichol, "Diffusion Models Beat GANs on Image Synthesis",
arXiv:2105.05233), as used by HistoDiffusion (Ye et al., "Synthetic Augmentation with Large-scale Unconditional
Pre-training", arXiv:2308.04020) on the latents of a latent diffusion model: the encoder half of a diffusion UNet
(MONAI's ``DiffusionUNetResnetBlock`` / attention down blocks and an attention mid block, all conditioned on the
sinusoidal timestep embedding), then GroupNorm, SiLU and an attention pool.

The attention pool turns the final ``(C, *grid)`` feature map into ``prod(grid)`` tokens, prepends their mean, adds
a learned positional embedding, runs one multi-head self-attention and projects the mean token's output to the
class logits. The original hard-codes a 2 x 2 final grid (64 x 64 latents only); here the positional embedding is
sized from ``input_shape`` at construction and interpolated (bilinear / trilinear) whenever the input gives another
grid, so one network serves any latent size and both 2D and 3D.

Example::

    clf = NoisyLatentClassifier(spatial_dims=2, in_channels=3, num_classes=9, input_shape=(64, 64))
    logits = clf(z_t, timesteps)                       # (B, 9)
    guidance = ClassifierGuidance(clf, class_labels=3, scale=10.0)
"""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from monai.networks.blocks import Convolution, SABlock
from monai.networks.nets.diffusion_model_unet import (
    get_down_block,
    get_mid_block,
    get_timestep_embedding,
)
from monai.utils import ensure_tuple_rep
from torch import nn

from monai_genaug.utils.checkpoint import (
    register_checkpoint_format,
    atomic_save,
    check_state_dict_compatible,
    load_checkpoint,
    to_json_config,
)

__all__ = ["CLASSIFIER_CHECKPOINT_FORMAT", "AttentionPool", "NoisyLatentClassifier", "classifier_config"]

CLASSIFIER_CHECKPOINT_FORMAT = register_checkpoint_format(
    "monai_genaug.NoisyLatentClassifier", "NoisyLatentClassifier", "save classifiers with NoisyLatentClassifier.save()"
)

_PRESETS: dict[str, dict[str, Any]] = {
    # unit tests: a few ten thousand parameters
    "tiny": {
        "channels": [16, 32],
        "attention_levels": [False, True],
        "num_res_blocks": 1,
        "num_head_channels": 16,
        "norm_num_groups": 8,
        "resblock_updown": True,
    },
    # CPU demos and bundle weights: 16-32 px latents
    "small": {
        "channels": [32, 64, 64],
        "attention_levels": [False, True, True],
        "num_res_blocks": 1,
        "num_head_channels": 32,
        "norm_num_groups": 16,
        "resblock_updown": True,
    },
    # the original (guided-diffusion EncoderUNetModel, width 128, depth 2, attention at 8x8 and 4x4 of 64x64)
    "paper": {
        "channels": [128, 128, 256, 256, 512, 512],
        "attention_levels": [False, False, False, True, True, False],
        "num_res_blocks": 2,
        "num_head_channels": 64,
        "norm_num_groups": 32,
        "resblock_updown": True,
    },
}


def classifier_config(
    preset: str = "small",
    spatial_dims: int = 2,
    in_channels: int = 3,
    num_classes: int = 2,
    input_shape: Sequence[int] | None = None,
    **overrides: Any,
) -> dict[str, Any]:
    """A JSON-serialisable :class:`NoisyLatentClassifier` config from a size preset.

    Args:
        preset: ``"tiny"`` (tests), ``"small"`` (CPU, 16-32 px latents) or ``"paper"`` (HistoDiffusion's
            width-128, depth-2 classifier for 64 x 64 latents).
        spatial_dims: 2 or 3.
        in_channels: latent channels of the generator.
        num_classes: number of classes.
        input_shape: latent spatial shape the positional embedding is sized for (default 16 per axis).
        overrides: any other constructor argument (e.g. ``channels``, ``dropout``).
    """
    if preset not in _PRESETS:
        raise ValueError(f"unknown classifier preset '{preset}'; choose one of {sorted(_PRESETS)}.")
    cfg = copy.deepcopy(_PRESETS[preset])
    cfg.update(
        spatial_dims=int(spatial_dims),
        in_channels=int(in_channels),
        num_classes=int(num_classes),
        input_shape=list(input_shape) if input_shape is not None else [16] * int(spatial_dims),
    )
    cfg.update(overrides)
    return to_json_config(cfg)


class AttentionPool(nn.Module):
    """Attention pooling of a ``(B, C, *grid)`` feature map into ``(B, out_channels)``, for any grid size.

    Tokens are the grid positions; their mean is prepended as a query token; a learned positional embedding (one
    vector for the mean token, a ``(C, *grid_shape)`` map for the grid, interpolated to the actual grid) is added;
    one multi-head self-attention (MONAI ``SABlock``) runs over all tokens and the mean token's output is projected to
    ``out_channels`` (guided-diffusion's ``AttentionPool2d``, without its fixed spatial size).

    Args:
        spatial_dims: 2 or 3.
        channels: feature channels C.
        out_channels: output size (number of classes).
        grid_shape: the grid the positional embedding is created for.
        num_head_channels: channels per attention head (``channels`` must be divisible by it).
        dropout: dropout on the pooled features before the projection.
        use_flash_attention: use PyTorch's scaled-dot-product attention.
    """

    def __init__(
        self,
        spatial_dims: int,
        channels: int,
        out_channels: int,
        grid_shape: Sequence[int],
        num_head_channels: int = 64,
        dropout: float = 0.0,
        use_flash_attention: bool = False,
    ) -> None:
        super().__init__()
        if len(grid_shape) != spatial_dims:
            raise ValueError(f"grid_shape {tuple(grid_shape)} must have {spatial_dims} entries.")
        num_head_channels = min(int(num_head_channels), int(channels))
        if channels % num_head_channels:
            raise ValueError(
                f"attention pool channels ({channels}) must be divisible by num_head_channels ({num_head_channels})."
            )
        self.spatial_dims = spatial_dims
        self.grid_shape = tuple(int(s) for s in grid_shape)
        scale = channels**-0.5
        self.pos_mean = nn.Parameter(torch.randn(1, 1, channels) * scale)
        self.pos_grid = nn.Parameter(torch.randn(1, channels, *self.grid_shape) * scale)
        self.attn = SABlock(
            hidden_size=channels,
            num_heads=channels // num_head_channels,
            qkv_bias=True,
            include_fc=False,
            use_flash_attention=use_flash_attention,
        )
        self.dropout = nn.Dropout(dropout)
        self.proj = nn.Linear(channels, out_channels)

    def positional_grid(self, grid: Sequence[int]) -> torch.Tensor:
        """The grid positional embedding resized to ``grid`` (``(1, C, *grid)``)."""
        grid = tuple(int(g) for g in grid)
        if grid == self.grid_shape:
            return self.pos_grid
        mode = "bilinear" if self.spatial_dims == 2 else "trilinear"
        return F.interpolate(self.pos_grid, size=grid, mode=mode, align_corners=False)

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        """The mean token after attention: ``(B, C)`` features before the projection."""
        tokens = (x + self.positional_grid(x.shape[2:]).to(x.dtype)).flatten(2).transpose(1, 2)  # (B, N, C)
        mean = x.flatten(2).mean(dim=2)[:, None, :] + self.pos_mean.to(x.dtype)
        out = self.attn(torch.cat([mean, tokens], dim=1))
        return out[:, 0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.dropout(self.pooled(x)))


class NoisyLatentClassifier(nn.Module):
    """Timestep-conditioned encoder with an attention-pooling head: ``classifier(x_t, t) -> logits``.

    Args:
        spatial_dims: 2 or 3.
        in_channels: input (latent) channels.
        num_classes: number of classes (>= 2).
        input_shape: spatial shape of the inputs the positional embedding is created for; other shapes work too
            (the embedding is interpolated).
        channels: output channels of every level; each level but the last halves the spatial size.
        attention_levels: self-attention in the residual blocks of each level.
        num_res_blocks: residual blocks per level (int or one per level).
        num_head_channels: channels per attention head (int or one per level); the mid block and the pool use the
            last level's value.
        norm_num_groups: GroupNorm groups (every entry of ``channels`` must be divisible by it).
        norm_eps: GroupNorm epsilon.
        resblock_updown: down-sample with a residual block (average pooling) instead of a strided convolution.
        with_mid_block: a ResBlock - attention - ResBlock block after the last level.
        dropout: dropout before the final projection.
        use_flash_attention: use PyTorch's scaled-dot-product attention.

    Example::

        clf = NoisyLatentClassifier(2, in_channels=2, num_classes=3, input_shape=(16, 16))
        logits = clf(torch.randn(4, 2, 16, 16), torch.tensor([0, 10, 500, 999]))
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        num_classes: int,
        input_shape: Sequence[int] | None = None,
        channels: Sequence[int] = (32, 64, 64),
        attention_levels: Sequence[bool] = (False, True, True),
        num_res_blocks: Sequence[int] | int = 1,
        num_head_channels: Sequence[int] | int = 32,
        norm_num_groups: int = 16,
        norm_eps: float = 1e-6,
        resblock_updown: bool = True,
        with_mid_block: bool = True,
        dropout: float = 0.0,
        use_flash_attention: bool = False,
    ) -> None:
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}.")
        if int(num_classes) < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}.")
        if int(in_channels) < 1:
            raise ValueError(f"in_channels must be >= 1, got {in_channels}.")
        channels = [int(c) for c in channels]
        if not channels:
            raise ValueError("channels is empty; give the output channels of every level, e.g. (32, 64, 64).")
        if len(attention_levels) != len(channels):
            raise ValueError(
                f"attention_levels has {len(attention_levels)} entries for {len(channels)} levels; give one per level."
            )
        bad = [c for c in channels if c % norm_num_groups]
        if bad:
            raise ValueError(f"channels {bad} are not divisible by norm_num_groups={norm_num_groups}.")
        num_res_blocks = list(ensure_tuple_rep(num_res_blocks, len(channels)))
        heads = ensure_tuple_rep(num_head_channels, len(channels))
        num_head_channels = [min(int(h), c) for h, c in zip(heads, channels)]
        for level, (c, h, attn) in enumerate(zip(channels, num_head_channels, attention_levels)):
            if attn and c % h:
                raise ValueError(f"level {level}: channels {c} not divisible by num_head_channels {h}.")
        if input_shape is None:
            input_shape = [16] * spatial_dims
        input_shape = [int(s) for s in input_shape]
        if len(input_shape) != spatial_dims:
            raise ValueError(f"input_shape {tuple(input_shape)} must have {spatial_dims} entries for {spatial_dims}D.")

        self.spatial_dims = int(spatial_dims)
        self.in_channels = int(in_channels)
        self.num_classes = int(num_classes)
        self.input_shape = tuple(input_shape)
        self.block_out_channels = tuple(channels)
        self.resblock_updown = bool(resblock_updown)
        self.config: dict[str, Any] = to_json_config(
            {
                "spatial_dims": self.spatial_dims,
                "in_channels": self.in_channels,
                "num_classes": self.num_classes,
                "input_shape": list(input_shape),
                "channels": channels,
                "attention_levels": [bool(a) for a in attention_levels],
                "num_res_blocks": num_res_blocks,
                "num_head_channels": num_head_channels,
                "norm_num_groups": int(norm_num_groups),
                "norm_eps": float(norm_eps),
                "resblock_updown": bool(resblock_updown),
                "with_mid_block": bool(with_mid_block),
                "dropout": float(dropout),
                "use_flash_attention": bool(use_flash_attention),
            }
        )

        self.conv_in = Convolution(
            spatial_dims=spatial_dims,
            in_channels=in_channels,
            out_channels=channels[0],
            strides=1,
            kernel_size=3,
            padding=1,
            conv_only=True,
        )
        time_embed_dim = channels[0] * 4
        self.time_embed = nn.Sequential(
            nn.Linear(channels[0], time_embed_dim), nn.SiLU(), nn.Linear(time_embed_dim, time_embed_dim)
        )
        self.down_blocks = nn.ModuleList()
        out_ch = channels[0]
        for i, ch in enumerate(channels):
            in_ch, out_ch = out_ch, ch
            self.down_blocks.append(
                get_down_block(
                    spatial_dims=spatial_dims,
                    in_channels=in_ch,
                    out_channels=out_ch,
                    temb_channels=time_embed_dim,
                    num_res_blocks=num_res_blocks[i],
                    norm_num_groups=norm_num_groups,
                    norm_eps=norm_eps,
                    add_downsample=i < len(channels) - 1,
                    resblock_updown=resblock_updown,
                    with_attn=bool(attention_levels[i]),
                    with_cross_attn=False,
                    num_head_channels=num_head_channels[i],
                    transformer_num_layers=1,
                    cross_attention_dim=None,
                    use_flash_attention=use_flash_attention,
                )
            )
        self.mid_block = (
            get_mid_block(
                spatial_dims=spatial_dims,
                in_channels=channels[-1],
                temb_channels=time_embed_dim,
                norm_num_groups=norm_num_groups,
                norm_eps=norm_eps,
                with_conditioning=False,
                num_head_channels=num_head_channels[-1],
                transformer_num_layers=1,
                cross_attention_dim=None,
                use_flash_attention=use_flash_attention,
            )
            if with_mid_block
            else None
        )
        self.out_norm = nn.GroupNorm(num_groups=norm_num_groups, num_channels=channels[-1], eps=norm_eps, affine=True)
        self.out_act = nn.SiLU()
        self.pool = AttentionPool(
            spatial_dims,
            channels[-1],
            self.num_classes,
            grid_shape=self.grid_shape(input_shape),
            num_head_channels=num_head_channels[-1],
            dropout=dropout,
            use_flash_attention=use_flash_attention,
        )

    # ------------------------------------------------------------------ shapes
    @property
    def downsample_factor(self) -> int:
        """Total spatial down-sampling of the encoder."""
        return 2 ** (len(self.block_out_channels) - 1)

    def grid_shape(self, spatial_shape: Sequence[int]) -> tuple[int, ...]:
        """Spatial shape of the final feature map for an input of ``spatial_shape``."""
        shape = [int(s) for s in spatial_shape]
        for _ in range(len(self.block_out_channels) - 1):
            shape = [s // 2 if self.resblock_updown else (s + 1) // 2 for s in shape]
        return tuple(shape)

    def _check_input(self, x: torch.Tensor) -> None:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"the classifier input must be a torch.Tensor, got {type(x).__name__}.")
        if x.ndim != self.spatial_dims + 2:
            raise ValueError(
                f"the classifier input must be (B, {self.in_channels}, {', '.join('HWD'[: self.spatial_dims])}) for "
                f"this {self.spatial_dims}D classifier, got shape {tuple(x.shape)}."
            )
        if x.shape[1] != self.in_channels:
            raise ValueError(
                f"the classifier input has {x.shape[1]} channels, this classifier takes {self.in_channels} "
                "(the generator's latent channels)."
            )
        too_small = [s for s in x.shape[2:] if s < self.downsample_factor]
        if too_small:
            raise ValueError(
                f"input spatial size {tuple(x.shape[2:])} is smaller than the encoder's down-sampling factor "
                f"{self.downsample_factor}; use fewer levels (channels) or larger inputs."
            )

    def _timesteps(self, timesteps: torch.Tensor | int, x: torch.Tensor) -> torch.Tensor:
        t = torch.as_tensor(timesteps, device=x.device).reshape(-1)
        if t.numel() == 1:
            t = t.expand(x.shape[0])
        if t.numel() != x.shape[0]:
            raise ValueError(f"got {t.numel()} timesteps for a batch of {x.shape[0]}; give one per item or one int.")
        return t

    # ------------------------------------------------------------------ forward
    def features(self, x: torch.Tensor, timesteps: torch.Tensor | int = 0) -> torch.Tensor:
        """The pooled ``(B, C_last)`` features (the attention pool's mean token, before the class projection)."""
        return self.pool.pooled(self._feature_map(x, timesteps))

    def _feature_map(self, x: torch.Tensor, timesteps: torch.Tensor | int) -> torch.Tensor:
        self._check_input(x)
        t = self._timesteps(timesteps, x)
        emb = self.time_embed(get_timestep_embedding(t, self.block_out_channels[0]).to(x.dtype))
        h = self.conv_in(x)
        for block in self.down_blocks:
            h, _ = block(hidden_states=h, temb=emb, context=None)
        if self.mid_block is not None:
            h = self.mid_block(hidden_states=h, temb=emb, context=None)
        return self.out_act(self.out_norm(h))

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor | int = 0) -> torch.Tensor:
        """Class logits ``(B, num_classes)`` of noisy inputs ``x`` at ``timesteps`` (an int or one per item)."""
        return self.pool(self._feature_map(x, timesteps))

    # ------------------------------------------------------------------ construction and checkpoints
    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> NoisyLatentClassifier:
        """Build an untrained classifier from a config (see :func:`classifier_config` or ``classifier.config``)."""
        config = dict(config)
        for key in ("spatial_dims", "in_channels", "num_classes"):
            if key not in config:
                raise ValueError(f"classifier config lacks '{key}'; build it with classifier_config().")
        return cls(**config)

    @classmethod
    def from_preset(cls, preset: str = "small", **kwargs: Any) -> NoisyLatentClassifier:
        """Shortcut for ``NoisyLatentClassifier.from_config(classifier_config(preset, **kwargs))``."""
        return cls.from_config(classifier_config(preset, **kwargs))

    def save(self, path: str | os.PathLike, extra: Mapping[str, Any] | None = None) -> None:
        """Write weights + config atomically; ``extra`` (JSON-like) holds e.g. class names and training settings."""
        state = {k: v.detach().cpu() for k, v in self.state_dict().items()}
        atomic_save(
            {
                "format": CLASSIFIER_CHECKPOINT_FORMAT,
                "config": self.config,
                "state_dict": state,
                "extra": to_json_config(dict(extra or {})),
            },
            path,
        )

    @staticmethod
    def read_extra(path: str | os.PathLike) -> dict[str, Any]:
        """The ``extra`` dict stored by :meth:`save` (class names, training settings)."""
        return dict(_load(path).get("extra") or {})

    @classmethod
    def load(cls, path: str | os.PathLike, map_location: str | torch.device | None = "cpu") -> NoisyLatentClassifier:
        """Rebuild a classifier written by :meth:`save` (``weights_only=True``)."""
        ckpt = _load(path, map_location)
        clf = cls.from_config(ckpt["config"])
        check_state_dict_compatible(clf, ckpt["state_dict"], name=str(path))
        clf.load_state_dict(ckpt["state_dict"])
        return clf

    def num_parameters(self) -> int:
        """Number of parameters."""
        return sum(p.numel() for p in self.parameters())

    def extra_repr(self) -> str:
        return (
            f"spatial_dims={self.spatial_dims}, in_channels={self.in_channels}, num_classes={self.num_classes}, "
            f"input_shape={self.input_shape}, grid={self.pool.grid_shape}, params={self.num_parameters():,}"
        )


def _load(path: str | os.PathLike, map_location: str | torch.device | None = "cpu") -> dict:
    return load_checkpoint(path, map_location=map_location, expected_format=CLASSIFIER_CHECKPOINT_FORMAT)

