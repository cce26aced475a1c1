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
"""A pseudo-3D (2D + t) diffusion UNet built around a MONAI 2D ``DiffusionModelUNet``, for sequence generation.

Ctrl-GenAug (Zhou et al., "Ctrl-GenAug: Controllable Generative Augmentation for Medical Sequence Classification",
arXiv:2409.17091) inflates an image diffusion UNet to clips: every convolution and ResNet block runs per frame
(frames folded into the batch, no temporal convolutions), and each attention block gets

- **key-frame attention**: the spatial self-attention of frame ``i`` takes its keys and values from frame 0 and frame
  ``i - 1`` (sparse-causal, as in Tune-A-Video), reusing the 2D self-attention's weights; with one frame it is the
  plain self-attention (frame 0 attends to itself twice, which gives the same softmax);
- **temporal attention**: after the spatial attention block, every spatial position attends over the ``F`` frames
  (LayerNorm, multi-head attention, zero-initialised output projection, residual), so at initialisation the
  sequence UNet is exactly the image UNet applied frame by frame.

The 2D UNet's modules keep their names (the attention classes are swapped in place, the new temporal modules are
added as ``<attention block>.temporal``), so the weights of an image UNet pre-trained on frames load directly
(:meth:`SequenceDiffusionUNet.from_image_unet`) and :func:`set_trainable_modules` selects what fine-tuning updates.
An optional input feature (a motion embedding, see :class:`~monai_genaug.networks.motion_encoder.MotionEncoder`)
enters after the first convolution: added (ControlNet-style), or - as Ctrl-GenAug does (``insert_strategy="concat"``)
- concatenated to the features and convolved back by an ``insert_unit`` trained with the clip stage.

Differences from the original: temporal attention sits after each attention block (not inside each transformer
block after its feed-forward); the motion-field attention along precomputed trajectories (MFA) is not implemented.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from monai.networks.blocks import SABlock, SpatialAttentionBlock
from monai.networks.nets import DiffusionModelUNet
from monai.networks.nets.diffusion_model_unet import SpatialTransformer
from torch import nn

__all__ = [
    "INPUT_FEATURE_MODES",
    "SEQUENCE_TRAINABLE_MODULES",
    "ImagePriorTokenizer",
    "KeyFrameSABlock",
    "SequenceDiffusionUNet",
    "TemporalAttention",
    "set_trainable_modules",
]

#: name substrings of the modules trained when fine-tuning an image UNet on clips (spec C.2: key-frame attention,
#: temporal attention, the motion encoder, the query projections of the cross-attention)
SEQUENCE_TRAINABLE_MODULES = ("attn1", "attn.to_q", "attn.to_k", "attn.to_v", "attn.out_proj", "temporal",
                              "motion_encoder", "insert_unit", "attn2.to_q")

#: how an input feature (the motion embedding) enters after the UNet's first convolution
INPUT_FEATURE_MODES = ("add", "concat")


class _FrameState:
    """Per-call state shared by the swapped-in modules: the number of frames and an optional input feature."""

    def __init__(self) -> None:
        self.num_frames = 1
        self.input_feature: torch.Tensor | None = None
        self.insert_unit: nn.Module | None = None


class TemporalAttention(nn.Module):
    """Self-attention across the frames at every spatial position, with a zero-initialised output projection.

    Args:
        channels: feature channels ``C``.
        num_heads: attention heads (``C`` must be divisible by it).
    """

    def __init__(self, channels: int, num_heads: int = 1) -> None:
        super().__init__()
        if channels % num_heads:
            raise ValueError(f"temporal attention: channels {channels} must be divisible by num_heads {num_heads}.")
        self.num_heads = int(num_heads)
        self.norm = nn.LayerNorm(channels)
        self.to_qkv = nn.Linear(channels, 3 * channels, bias=False)
        self.out_proj = nn.Linear(channels, channels)
        nn.init.zeros_(self.out_proj.weight)
        nn.init.zeros_(self.out_proj.bias)

    def forward(self, x: torch.Tensor, num_frames: int) -> torch.Tensor:
        """``x``: ``(B*F, C, *spatial)`` frame features; returns the same shape."""
        if num_frames <= 1:
            return x
        bf, c = x.shape[:2]
        spatial = x.shape[2:]
        b = bf // num_frames
        tokens = x.reshape(b, num_frames, c, -1).permute(0, 3, 1, 2).reshape(-1, num_frames, c)  # (B*L, F, C)
        q, k, v = self.to_qkv(self.norm(tokens)).chunk(3, dim=-1)
        h = self.num_heads

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.reshape(t.shape[0], num_frames, h, c // h).transpose(1, 2)

        out = F.scaled_dot_product_attention(split(q), split(k), split(v))
        out = self.out_proj(out.transpose(1, 2).reshape(-1, num_frames, c))
        out = out.reshape(b, -1, num_frames, c).permute(0, 2, 3, 1).reshape(bf, c, *spatial)
        return x + out


class KeyFrameSABlock(SABlock):
    """MONAI's ``SABlock`` whose keys and values come from frame 0 and the previous frame (key-frame attention).

    Instances are made by swapping the class of an existing ``SABlock`` (its weights and names unchanged, see
    :class:`SequenceDiffusionUNet`); the number of frames is read from the shared frame state.
    """

    _frame_state: _FrameState

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:  # type: ignore[override]
        nf = getattr(self, "_frame_state", None)
        nf = nf.num_frames if nf is not None else 1
        if nf <= 1 or attn_mask is not None:
            return super().forward(x, attn_mask)
        if self.use_combined_linear:
            q, k, v = self.input_rearrange(self.qkv(x))
        else:
            q = self.input_rearrange(self.to_q(x))
            k = self.input_rearrange(self.to_k(x))
            v = self.input_rearrange(self.to_v(x))
        bf, heads, length, d = k.shape
        b = bf // nf
        prev = torch.tensor([0] + list(range(nf - 1)), device=x.device)

        def key_frames(t: torch.Tensor) -> torch.Tensor:
            t = t.reshape(b, nf, heads, length, d)
            first = t[:, :1].expand(-1, nf, -1, -1, -1)
            return torch.cat([first, t[:, prev]], dim=3).reshape(bf, heads, 2 * length, d)

        k, v = key_frames(k), key_frames(v)
        if self.attention_dtype is not None:
            q, k = q.to(self.attention_dtype), k.to(self.attention_dtype)
        att = (torch.einsum("bhxd,bhyd->bhxy", q, k) * self.scale).softmax(dim=-1)
        att = self.drop_weights(att)
        out = self.out_rearrange(torch.einsum("bhxy,bhyd->bhxd", att, v.to(att.dtype)))
        if self.include_fc:
            out = self.out_proj(out)
        return self.drop_output(out)


class _TemporalSpatialTransformer(SpatialTransformer):
    _frame_state: _FrameState

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:  # type: ignore[override]
        return self.temporal(super().forward(x, context), self._frame_state.num_frames)


class _TemporalSpatialAttentionBlock(SpatialAttentionBlock):
    _frame_state: _FrameState

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return self.temporal(super().forward(x), self._frame_state.num_frames)


def _add_input_feature(module: nn.Module, inputs: Any, output: torch.Tensor) -> torch.Tensor:
    """Forward hook of ``conv_in``: merge the shared state's input feature (motion embedding) when one is set: added,
    or concatenated and convolved by the insert unit (``h = insert_unit(cat[h, feature])``)."""
    state = module._frame_state  # type: ignore[attr-defined]
    feat = state.input_feature
    if feat is None:
        return output
    if feat.shape[0] != output.shape[0] or feat.shape[2:] != output.shape[2:]:
        raise ValueError(
            f"the input feature has shape {tuple(feat.shape)} but the UNet's first convolution gives "
            f"{tuple(output.shape)}; the motion encoder must downsample motion fields to the latent size."
        )
    if state.insert_unit is not None:
        return state.insert_unit(torch.cat([output, feat.to(output.dtype)], dim=1))
    if feat.shape != output.shape:
        raise ValueError(f"an added input feature must have shape {tuple(output.shape)}, got {tuple(feat.shape)}.")
    return output + feat.to(output.dtype)


def _identity_insert_unit(channels: int, feature_channels: int) -> nn.Conv2d:
    """The insert unit of ``"concat"``: a 3x3 convolution ``channels + feature_channels -> channels``, initialised
    to pass the UNet's features through unchanged (Dirac kernel) and to ignore the feature (zero kernel), so the
    inflated UNet starts as the frame-trained one while the feature's weights get gradients from the first step."""
    conv = nn.Conv2d(channels + feature_channels, channels, 3, padding=1)
    with torch.no_grad():
        conv.weight.zero_()
        nn.init.dirac_(conv.weight[:, :channels])
        conv.bias.zero_()
    return conv


class SequenceDiffusionUNet(nn.Module):
    """A MONAI 2D ``DiffusionModelUNet`` made temporal (frames folded into the batch, key-frame + temporal attention).

    Args:
        spatial_dims: must be 2 (frames are 2D; slice stacks of 3D volumes are sequences of 2D slices).
        in_channels: input channels per frame.
        out_channels: output channels per frame.
        temporal_heads: heads of the temporal attentions (each block's channels must be divisible by it).
        key_frame_attention: swap the spatial self-attentions for key-frame attention.
        input_feature_mode: how ``input_feature`` enters after the first convolution: ``"add"`` (a ControlNet-style
            residual) or ``"concat"`` (Ctrl-GenAug's ``insert_strategy="concat"``: concatenated to the features and
            convolved back to ``channels[0]`` by ``insert_unit``, see :func:`_identity_insert_unit`).
        input_feature_channels: channels of the input feature (``"concat"`` only; default ``channels[0]``).
        unet: an existing 2D ``DiffusionModelUNet`` to wrap (e.g. pre-trained on frames); ``None`` builds one from
            ``unet_kwargs``.
        unet_kwargs: further ``DiffusionModelUNet`` arguments (``channels``, ``attention_levels``,
            ``num_res_blocks``, ``num_head_channels``, ``norm_num_groups``, ``with_conditioning``,
            ``cross_attention_dim``, ``num_class_embeds`` ...). At least one attention level is needed for
            temporal attention.

    Inputs are clips ``(B, C, F, H, W)``; ``forward(x, timesteps, context=None, class_labels=None,
    input_feature=None)`` returns ``(B, out_channels, F, H, W)``. ``context`` ``(B, L, D)`` and ``class_labels``
    ``(B,)`` are shared by all frames of a clip; ``input_feature`` ``(B, C0, F, H, W)`` is added after the first
    convolution (``C0 = channels[0]``) or concatenated and convolved (``input_feature_mode="concat"``).
    """

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 1,
        out_channels: int = 1,
        temporal_heads: int = 1,
        key_frame_attention: bool = True,
        unet: DiffusionModelUNet | None = None,
        input_feature_mode: str = "add",
        input_feature_channels: int | None = None,
        **unet_kwargs: Any,
    ) -> None:
        super().__init__()
        if input_feature_mode not in INPUT_FEATURE_MODES:
            raise ValueError(f"input_feature_mode must be one of {INPUT_FEATURE_MODES}, got {input_feature_mode!r}.")
        if spatial_dims != 2:
            raise ValueError(
                f"SequenceDiffusionUNet inflates a 2D UNet over frames; got spatial_dims={spatial_dims}. Treat 3D "
                "volumes as slice sequences (B, C, slices, H, W), or use DiffusionModelUNet(spatial_dims=3)."
            )
        if unet is None:
            unet = DiffusionModelUNet(spatial_dims=2, in_channels=in_channels, out_channels=out_channels, **unet_kwargs)
        elif not isinstance(unet, DiffusionModelUNet) or getattr(unet.conv_in.conv, "weight").ndim != 4:
            raise TypeError(f"unet must be a 2D monai DiffusionModelUNet, got {type(unet).__name__}.")
        self.unet = unet
        self.in_channels = int(unet.in_channels)
        self.out_channels = int(unet.out_channels)
        self.block_out_channels = tuple(unet.block_out_channels)
        self.with_conditioning = bool(unet.with_conditioning)
        self.num_class_embeds = unet.num_class_embeds
        self.spatial_dims = 2
        self._state = _FrameState()
        num_temporal = 0
        for module in list(self.unet.modules()):
            if isinstance(module, (SpatialTransformer, SpatialAttentionBlock)):
                channels = int(module.norm.num_channels)
                module.__class__ = (
                    _TemporalSpatialTransformer if isinstance(module, SpatialTransformer)
                    else _TemporalSpatialAttentionBlock
                )
                module.add_module("temporal", TemporalAttention(channels, temporal_heads))
                module._frame_state = self._state
                num_temporal += 1
        if num_temporal == 0:
            raise ValueError(
                "the UNet has no attention block to add temporal attention to; set at least one attention_levels entry "
                "to True (e.g. attention_levels=(False, True))."
            )
        if key_frame_attention:
            for name, module in list(self.unet.named_modules()):
                if type(module) is SABlock and not name.endswith("temporal"):
                    module.__class__ = KeyFrameSABlock
                    module._frame_state = self._state
        self.input_feature_mode = input_feature_mode
        self.insert_unit: nn.Module | None = None
        if input_feature_mode == "concat":
            c0 = int(self.block_out_channels[0])
            self.insert_unit = _identity_insert_unit(c0, int(input_feature_channels or c0))
            self._state.insert_unit = self.insert_unit
        self.unet.conv_in._frame_state = self._state
        self.unet.conv_in.register_forward_hook(_add_input_feature)

    @classmethod
    def from_image_unet(cls, unet: DiffusionModelUNet, temporal_heads: int = 1, key_frame_attention: bool = True):
        """Inflate a (pre-trained) 2D image UNet in place: its weights are kept, temporal modules are new (identity)."""
        return cls(2, temporal_heads=temporal_heads, key_frame_attention=key_frame_attention, unet=unet)

    def temporal_modules(self) -> list[TemporalAttention]:
        """All temporal attention modules."""
        return [m for m in self.modules() if isinstance(m, TemporalAttention)]

    def forward(
        self,
        x: torch.Tensor,
        timesteps: torch.Tensor,
        context: torch.Tensor | None = None,
        class_labels: torch.Tensor | None = None,
        input_feature: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if x.ndim != 5:
            raise ValueError(
                f"SequenceDiffusionUNet takes clips (B, C, F, H, W), got shape {tuple(x.shape)}; add the frame axis "
                "(x.unsqueeze(2) for single frames)."
            )
        b, c, nf, h, w = x.shape
        frames = x.transpose(1, 2).reshape(b * nf, c, h, w)
        t = torch.as_tensor(timesteps, device=x.device).long().reshape(-1)
        t = t.expand(b) if t.numel() == 1 else t
        t = t.repeat_interleave(nf)
        if context is not None:
            context = context.repeat_interleave(nf, dim=0)
        if class_labels is not None:
            class_labels = torch.as_tensor(class_labels, device=x.device).reshape(-1).repeat_interleave(nf)
        feat = None
        if input_feature is not None:
            if input_feature.ndim != 5 or input_feature.shape[0] != b or input_feature.shape[2] != nf:
                raise ValueError(
                    f"input_feature must be (B={b}, C, F={nf}, h, w), got shape {tuple(input_feature.shape)}."
                )
            feat = input_feature.transpose(1, 2).reshape(b * nf, *input_feature.shape[1:2], *input_feature.shape[3:])
        self._state.num_frames = nf
        self._state.input_feature = feat
        try:
            out = self.unet(frames, t, context=context, class_labels=class_labels)
        finally:
            self._state.num_frames = 1
            self._state.input_feature = None
        return out.reshape(b, nf, -1, h, w).transpose(1, 2)


class ImagePriorTokenizer(nn.Module):
    """Image-prior embedding ``(B, Cp, hp, wp)`` -> cross-attention tokens ``(B, L, D)`` (Ctrl-GenAug's
    ``ConditionEmbMedSAMProject``: normalisation, 3x3 stride-2 convolution, SiLU, flatten, linear, LayerNorm).

    Args:
        in_channels: channels ``Cp`` of the prior embedding (256 for MedSAM).
        context_dim: width ``D`` of the tokens (the UNet's ``cross_attention_dim``).
        hidden_channels: channels after the convolution (default ``in_channels``).
        stride: stride of the convolution (2 in the original: 64 x 64 MedSAM maps -> 1024 tokens).
    """

    def __init__(self, in_channels: int, context_dim: int, hidden_channels: int | None = None, stride: int = 2) -> None:
        super().__init__()
        hidden = int(hidden_channels or in_channels)
        self.in_channels = int(in_channels)
        self.norm = nn.GroupNorm(1, in_channels)  # batch-independent (the original's BatchNorm mixes null priors in)
        self.conv = nn.Conv2d(in_channels, hidden, 3, stride=stride, padding=1)
        self.proj = nn.Linear(hidden, context_dim)
        self.out_norm = nn.LayerNorm(context_dim)

    def forward(self, prior: torch.Tensor) -> torch.Tensor:
        if prior.ndim != 4 or prior.shape[1] != self.in_channels:
            raise ValueError(
                f"image prior must be (B, {self.in_channels}, h, w), got shape {tuple(prior.shape)}; compute it with "
                "the same frozen encoder the model was trained with."
            )
        h = F.silu(self.conv(self.norm(prior)))
        return self.out_norm(self.proj(h.flatten(2).transpose(1, 2)))


def set_trainable_modules(
    module: nn.Module, patterns: Sequence[str] | None = SEQUENCE_TRAINABLE_MODULES
) -> list[str]:
    """Freeze every parameter of ``module`` except those whose name contains one of ``patterns``.

    Args:
        module: e.g. a sequence generator or a :class:`SequenceDiffusionUNet`.
        patterns: name substrings of trainable parameters; ``None`` makes everything trainable.

    Returns:
        the names of the trainable parameters.

    Raises:
        ValueError: no parameter matches (a typo in ``patterns``).
    """
    names = []
    for name, p in module.named_parameters():
        train = patterns is None or any(s in name for s in patterns)
        p.requires_grad_(train)
        if train:
            names.append(name)
    if not names:
        raise ValueError(
            f"no parameter name contains any of {list(patterns or [])}; list names with module.named_parameters()."
        )
    return names
