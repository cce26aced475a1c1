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
"""MONAI networks with the two Stable Diffusion layout details that stock MONAI lacks.

Stable Diffusion's VAE (Rombach et al., "High-Resolution Image Synthesis with Latent Diffusion Models",
arXiv:2112.10752) and MONAI's :class:`monai.networks.nets.AutoencoderKL` share their blocks (residual blocks,
asymmetric-pad stride-2 down-sampling, nearest up-sampling + conv, single-head mid attention) but differ in three
places that renaming weights cannot bridge:

* SD applies ``SiLU`` between the last ``GroupNorm`` and the last conv of the encoder and of the decoder; MONAI's
  encoder/decoder end in ``GroupNorm -> conv`` with no activation.
* SD's decoder has ``layers_per_block + 1`` residual blocks per level; MONAI's decoder reuses the encoder's count.
* SD's encoder emits ``2 * latent_channels`` (mean and log-variance) mixed by one 1x1 ``quant_conv``; MONAI's encoder
  emits ``latent_channels`` followed by two separate 1x1 convs (``quant_conv_mu``, ``quant_conv_log_sigma``).
  Folding the mean rows of ``quant_conv`` into the encoder's last conv converts the mean exactly but loses the
  log-variance, which depends on all ``2 * latent_channels`` encoder outputs.

:class:`SDAutoencoderKL` is an ``AutoencoderKL`` with three switches for these (``output_activation``,
``decoder_num_res_blocks``, ``double_z``); with ``double_z`` the two quant convs read the ``2 * latent_channels``
encoder outputs, so both the posterior mean **and** sigma are exact. With all switches off it is exactly
``AutoencoderKL``. Module names are MONAI's, so LoRA targets, activation checkpointing and every ``AutoencoderKL``
method work unchanged.

SD's UNet maps onto :class:`monai.networks.nets.DiffusionModelUNet` by renaming, except for one constant: diffusers'
``Transformer2DModel`` normalises with ``GroupNorm(eps=1e-6)`` while the UNet's residual blocks use ``norm_eps``
(1e-5 for SD); MONAI uses ``norm_eps`` for both. :class:`SDDiffusionModelUNet` adds ``transformer_norm_eps``.
Its state dict is that of ``DiffusionModelUNet``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from monai.networks.blocks import Convolution
from monai.networks.nets import AutoencoderKL, DiffusionModelUNet
from monai.networks.nets.autoencoderkl import Decoder
from monai.networks.nets.diffusion_model_unet import SpatialTransformer
from monai.utils import ensure_tuple_rep
from torch import nn

__all__ = [
    "GroupNormSiLU",
    "SDAutoencoderKL",
    "SDDiffusionModelUNet",
    "AUTOENCODER_TYPES",
    "UNET_TYPES",
    "build_network",
]


class GroupNormSiLU(nn.GroupNorm):
    """``GroupNorm`` followed by ``SiLU``; its state dict is that of ``nn.GroupNorm`` (``weight``, ``bias``)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.silu(super().forward(x))


class SDAutoencoderKL(AutoencoderKL):
    """MONAI ``AutoencoderKL`` that can also hold the Stable Diffusion (ldm / diffusers) VAE layout exactly.

    Based on Rombach et al., "High-Resolution Image Synthesis with Latent Diffusion Models",
    https://arxiv.org/abs/2112.10752. The arguments of :class:`monai.networks.nets.AutoencoderKL` plus:

    Args:
        spatial_dims: number of spatial dimensions (1, 2 or 3).
        in_channels: number of input channels.
        out_channels: number of output channels.
        num_res_blocks: residual blocks per level of the encoder (and of the decoder unless
            ``decoder_num_res_blocks`` is given).
        channels: output channels of each level.
        attention_levels: levels with a self-attention block after each residual block.
        latent_channels: latent channels.
        norm_num_groups: groups of every GroupNorm.
        norm_eps: epsilon of every GroupNorm.
        with_encoder_nonlocal_attn: residual + attention + residual block at the end of the encoder.
        with_decoder_nonlocal_attn: residual + attention + residual block at the start of the decoder.
        use_checkpoint: activation checkpointing of the encoder and decoder.
        use_convtranspose: transposed convolutions for up-sampling in the decoder.
        include_fc: output projection in the attention blocks.
        use_combined_linear: one combined qkv linear layer in the attention blocks.
        use_flash_attention: PyTorch scaled-dot-product attention.
        decoder_num_res_blocks: residual blocks per level of the decoder (SD: ``num_res_blocks + 1``); ``None``
            uses ``num_res_blocks`` as MONAI does.
        double_z: the encoder emits ``2 * latent_channels`` channels and ``quant_conv_mu`` /
            ``quant_conv_log_sigma`` map them to the mean / log-variance (SD's ``quant_conv`` split in two), so that
            the posterior sigma converts exactly.
        output_activation: apply SiLU after the last GroupNorm of the encoder and of the decoder (as SD does).
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int = 1,
        out_channels: int = 1,
        num_res_blocks: Sequence[int] | int = (2, 2, 2, 2),
        channels: Sequence[int] = (32, 64, 64, 64),
        attention_levels: Sequence[bool] = (False, False, True, True),
        latent_channels: int = 3,
        norm_num_groups: int = 32,
        norm_eps: float = 1e-6,
        with_encoder_nonlocal_attn: bool = True,
        with_decoder_nonlocal_attn: bool = True,
        use_checkpoint: bool = False,
        use_convtranspose: bool = False,
        include_fc: bool = True,
        use_combined_linear: bool = False,
        use_flash_attention: bool = False,
        decoder_num_res_blocks: Sequence[int] | int | None = None,
        double_z: bool = False,
        output_activation: bool = False,
    ) -> None:
        super().__init__(
            spatial_dims=spatial_dims,
            in_channels=in_channels,
            out_channels=out_channels,
            num_res_blocks=num_res_blocks,
            channels=channels,
            attention_levels=attention_levels,
            latent_channels=latent_channels,
            norm_num_groups=norm_num_groups,
            norm_eps=norm_eps,
            with_encoder_nonlocal_attn=with_encoder_nonlocal_attn,
            with_decoder_nonlocal_attn=with_decoder_nonlocal_attn,
            use_checkpoint=use_checkpoint,
            use_convtranspose=use_convtranspose,
            include_fc=include_fc,
            use_combined_linear=use_combined_linear,
            use_flash_attention=use_flash_attention,
        )
        self.double_z = bool(double_z)
        self.output_activation = bool(output_activation)
        if decoder_num_res_blocks is not None:
            if isinstance(decoder_num_res_blocks, int):
                decoder_num_res_blocks = ensure_tuple_rep(decoder_num_res_blocks, len(channels))
            if len(decoder_num_res_blocks) != len(channels):
                raise ValueError(
                    f"decoder_num_res_blocks must be an int or have one entry per level ({len(channels)}), got "
                    f"{tuple(decoder_num_res_blocks)}."
                )
            self.decoder = Decoder(
                spatial_dims=spatial_dims,
                channels=channels,
                in_channels=latent_channels,
                out_channels=out_channels,
                num_res_blocks=decoder_num_res_blocks,
                norm_num_groups=norm_num_groups,
                norm_eps=norm_eps,
                attention_levels=attention_levels,
                with_nonlocal_attn=with_decoder_nonlocal_attn,
                use_convtranspose=use_convtranspose,
                include_fc=include_fc,
                use_combined_linear=use_combined_linear,
                use_flash_attention=use_flash_attention,
            )
        if self.double_z:
            moments = 2 * latent_channels

            def _conv(cin: int, cout: int, kernel: int) -> Convolution:
                return Convolution(
                    spatial_dims=spatial_dims,
                    in_channels=cin,
                    out_channels=cout,
                    strides=1,
                    kernel_size=kernel,
                    padding=kernel // 2,
                    conv_only=True,
                )

            self.encoder.blocks[-1] = _conv(channels[-1], moments, 3)
            self.encoder.out_channels = moments
            self.quant_conv_mu = _conv(moments, latent_channels, 1)
            self.quant_conv_log_sigma = _conv(moments, latent_channels, 1)
        if self.output_activation:
            for coder in (self.encoder, self.decoder):
                norm = coder.blocks[-2]
                if not isinstance(norm, nn.GroupNorm):  # pragma: no cover - guards against a MONAI layout change
                    raise RuntimeError(
                        f"expected the second-to-last block of the MONAI {type(coder).__name__} to be a GroupNorm, "
                        f"found {type(norm).__name__}; this MONAI version is not supported by SDAutoencoderKL."
                    )
                act = GroupNormSiLU(norm.num_groups, norm.num_channels, eps=norm.eps, affine=norm.affine)
                act.load_state_dict(norm.state_dict())
                coder.blocks[-2] = act


class SDDiffusionModelUNet(DiffusionModelUNet):
    """MONAI ``DiffusionModelUNet`` with a separate GroupNorm epsilon in its spatial transformers.

    diffusers' ``Transformer2DModel`` (and ldm's ``SpatialTransformer``) normalise with ``eps=1e-6`` whatever the
    UNet's ``norm_eps`` (1e-5 in Stable Diffusion); MONAI uses ``norm_eps`` everywhere. The state dict is exactly
    that of ``DiffusionModelUNet``. Takes every ``DiffusionModelUNet`` argument (``spatial_dims`` first) plus:

    Args:
        args: positional arguments of :class:`monai.networks.nets.DiffusionModelUNet`.
        transformer_norm_eps: epsilon of the GroupNorm at the input of every spatial transformer; ``None`` keeps
            ``norm_eps``.
        kwargs: keyword arguments of :class:`monai.networks.nets.DiffusionModelUNet`.
    """

    def __init__(self, *args: Any, transformer_norm_eps: float | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.transformer_norm_eps = transformer_norm_eps
        if transformer_norm_eps is not None:
            for module in self.modules():
                if isinstance(module, SpatialTransformer):
                    module.norm.eps = float(transformer_norm_eps)


#: ``"type"`` names accepted in autoencoder configs (``AutoencoderKL`` when absent)
AUTOENCODER_TYPES: dict[str, type[nn.Module]] = {"AutoencoderKL": AutoencoderKL, "SDAutoencoderKL": SDAutoencoderKL}
#: ``"type"`` names accepted in UNet configs (``DiffusionModelUNet`` when absent)
UNET_TYPES: dict[str, type[nn.Module]] = {
    "DiffusionModelUNet": DiffusionModelUNet,
    "SDDiffusionModelUNet": SDDiffusionModelUNet,
}


def build_network(config: Mapping[str, Any]) -> nn.Module:
    """Build an autoencoder or UNet from a full constructor config carrying a ``"type"`` key.

    Args:
        config: ``{"type": one of AUTOENCODER_TYPES / UNET_TYPES, **constructor kwargs}`` (``spatial_dims``,
            ``in_channels`` and ``out_channels`` included), as written by ``monai_genaug.sd_import``.
    """
    config = dict(config)
    name = config.pop("type", None)
    registry = {**AUTOENCODER_TYPES, **UNET_TYPES}
    if name not in registry:
        raise ValueError(f"network config has type {name!r}; expected one of {sorted(registry)}.")
    return registry[name](**config)
