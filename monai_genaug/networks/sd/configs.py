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
"""MONAI network configs derived from Stable Diffusion (diffusers / ldm) configs, with checks of what MONAI can hold.

A diffusers ``AutoencoderKL`` / ``UNet2DConditionModel`` config becomes the constructor config of
:class:`~monai_genaug.networks.sd.networks.SDAutoencoderKL` /
:class:`~monai_genaug.networks.sd.networks.SDDiffusionModelUNet` (with a ``"type"`` key, JSON-serialisable).
A single-file (CompVis / ldm) checkpoint carries no config: its diffusers config is inferred from the tensor shapes,
plus the attention head layout, which shapes cannot tell (SD 1.x: 8 heads per level; SD 2.x: 64 channels per head;
or the original ldm YAML file, or explicit arguments).

Every feature MONAI's networks cannot represent (SDXL's added text-time embedding, per-level transformer depths,
time-conditioning projections, ...) raises :class:`UnsupportedModelError` naming the config key and its value.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

import torch

__all__ = [
    "SDImportError",
    "UnsupportedModelError",
    "SD_SCALE_FACTOR",
    "SD_REFERENCE_CONFIGS",
    "reference_diffusers_configs",
    "autoencoder_config_from_diffusers",
    "unet_config_from_diffusers",
    "scheduler_config_from_diffusers",
    "diffusers_vae_config_from_state_dict",
    "diffusers_unet_config_from_ldm",
    "read_original_config",
    "sd_variant",
]

#: latent scale factor of the SD 1.x / 2.x VAE (``scaling_factor`` in diffusers, ``scale_factor`` in ldm)
SD_SCALE_FACTOR = 0.18215


_SD_VAE = {
    "_class_name": "AutoencoderKL",
    "act_fn": "silu",
    "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "in_channels": 3,
    "out_channels": 3,
    "latent_channels": 4,
    "layers_per_block": 2,
    "norm_num_groups": 32,
}
_SD_UNET = {
    "_class_name": "UNet2DConditionModel",
    "block_out_channels": [320, 640, 1280, 1280],
    "down_block_types": ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
    "up_block_types": ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3,
    "in_channels": 4,
    "out_channels": 4,
    "layers_per_block": 2,
    "norm_num_groups": 32,
    "norm_eps": 1e-5,
}

#: diffusers configs (``vae/config.json``, ``unet/config.json``) of the public Stable Diffusion architectures, without
#: weights: random-weight stand-ins of the real sizes (speed and memory checks) are built from them
SD_REFERENCE_CONFIGS: dict[str, dict[str, dict[str, Any]]] = {
    "sd-1.5": {"vae": _SD_VAE, "unet": {**_SD_UNET, "cross_attention_dim": 768, "attention_head_dim": 8}},
    "sd-2": {
        "vae": _SD_VAE,
        "unet": {
            **_SD_UNET,
            "cross_attention_dim": 1024,
            "attention_head_dim": [5, 10, 20, 20],
            "use_linear_projection": True,
        },
    },
}


def reference_diffusers_configs(
    name: str, vae: Mapping[str, Any] | None = None, unet: Mapping[str, Any] | None = None
) -> dict[str, dict[str, Any]]:
    """Copies of the diffusers configs ``{"vae": ..., "unet": ...}`` of a reference architecture, with overrides.

    Args:
        name: a key of :data:`SD_REFERENCE_CONFIGS` (``"sd-1.5"``, ``"sd-2"``).
        vae: keys replacing those of the VAE config (e.g. smaller ``block_out_channels`` for a CPU smoke run).
        unet: keys replacing those of the UNet config.

    Raises:
        ValueError: unknown ``name``.
    """
    if name not in SD_REFERENCE_CONFIGS:
        raise ValueError(f"unknown reference architecture '{name}'; choose one of {sorted(SD_REFERENCE_CONFIGS)}.")
    ref = SD_REFERENCE_CONFIGS[name]
    return {"vae": {**ref["vae"], **dict(vae or {})}, "unet": {**ref["unet"], **dict(unet or {})}}


class SDImportError(ValueError):
    """A Stable Diffusion source that cannot be read: not a checkpoint, missing files, missing / unexpected keys."""


class UnsupportedModelError(SDImportError):
    """A Stable Diffusion variant (or one of its features) that MONAI's networks cannot represent."""


def _check_defaults(config: Mapping[str, Any], expected: Mapping[str, Any], what: str) -> None:
    """Raise UnsupportedModelError for every key of ``config`` whose value differs from ``expected``."""
    bad = []
    for key, ok in expected.items():
        if key not in config:
            continue
        value = config[key]
        allowed = ok if isinstance(ok, tuple) else (ok,)
        if value not in allowed:
            bad.append(f"{key}={value!r} (supported: {' or '.join(repr(a) for a in allowed)})")
    if bad:
        raise UnsupportedModelError(
            f"{what} uses features that MONAI's networks cannot represent: {'; '.join(bad)}. Only Stable Diffusion "
            "1.x / 2.x style models convert (SDXL, SD3, Flux and other variants are not supported)."
        )


def _per_level(value: Any, n: int, name: str) -> list:
    if isinstance(value, (list, tuple)):
        if len(value) != n:
            raise SDImportError(f"config key {name} has {len(value)} entries, expected one per level ({n}).")
        return list(value)
    return [value] * n


# ---------------------------------------------------------------------------------------------------- autoencoder
_VAE_EXPECTED = {
    "_class_name": "AutoencoderKL",
    "act_fn": "silu",
    "shift_factor": None,
    "latents_mean": None,
    "latents_std": None,
    "mid_block_add_attention": True,
    "norm_type": "group",
}


def autoencoder_config_from_diffusers(config: Mapping[str, Any], use_flash_attention: bool = False) -> dict[str, Any]:
    """MONAI ``SDAutoencoderKL`` constructor config (with ``"type"``) for a diffusers ``AutoencoderKL`` config.

    Args:
        config: the diffusers config (``vae/config.json``).
        use_flash_attention: use PyTorch scaled-dot-product attention in the mid attention blocks.

    Raises:
        UnsupportedModelError: a feature MONAI cannot represent (names the key and value).
    """
    _check_defaults(config, _VAE_EXPECTED, "the VAE config")
    try:
        channels = [int(c) for c in config["block_out_channels"]]
    except KeyError as e:
        raise SDImportError(f"the VAE config lacks {e}; expected a diffusers AutoencoderKL config.json.") from e
    n = len(channels)
    down = list(config.get("down_block_types", ["DownEncoderBlock2D"] * n))
    up = list(config.get("up_block_types", ["UpDecoderBlock2D"] * n))
    if down != ["DownEncoderBlock2D"] * n or up != ["UpDecoderBlock2D"] * n:
        raise UnsupportedModelError(
            f"VAE block types down={down}, up={up} are not supported; expected {n} x 'DownEncoderBlock2D' / "
            "'UpDecoderBlock2D' (the Stable Diffusion VAE)."
        )
    layers = config.get("layers_per_block", 1)
    if not isinstance(layers, int):
        raise UnsupportedModelError(f"VAE layers_per_block={layers!r}: only one int for all levels is supported.")
    groups = int(config.get("norm_num_groups", 32))
    if any(c % groups for c in channels):
        raise SDImportError(f"VAE block_out_channels {channels} are not all divisible by norm_num_groups={groups}.")
    return {
        "type": "SDAutoencoderKL",
        "spatial_dims": 2,
        "in_channels": int(config.get("in_channels", 3)),
        "out_channels": int(config.get("out_channels", 3)),
        "channels": channels,
        "num_res_blocks": [layers] * n,
        "decoder_num_res_blocks": [layers + 1] * n,
        "attention_levels": [False] * n,
        "latent_channels": int(config.get("latent_channels", 4)),
        "norm_num_groups": groups,
        "norm_eps": 1e-6,
        "with_encoder_nonlocal_attn": True,
        "with_decoder_nonlocal_attn": True,
        "include_fc": True,
        "use_combined_linear": False,
        "use_flash_attention": bool(use_flash_attention),
        "double_z": True,
        "output_activation": True,
    }


# ---------------------------------------------------------------------------------------------------- UNet
_UNET_EXPECTED = {
    "_class_name": "UNet2DConditionModel",
    "center_input_sample": False,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "mid_block_type": "UNetMidBlock2DCrossAttn",
    "only_cross_attention": (False, None),
    "mid_block_only_cross_attention": (None, False),
    "downsample_padding": 1,
    "mid_block_scale_factor": (1, 1.0),
    "act_fn": "silu",
    "reverse_transformer_layers_per_block": None,
    "encoder_hid_dim": None,
    "encoder_hid_dim_type": None,
    "dual_cross_attention": False,
    "class_embed_type": None,
    "addition_embed_type": None,
    "resnet_time_scale_shift": "default",
    "resnet_skip_time_act": False,
    "resnet_out_scale_factor": (1, 1.0),
    "time_embedding_type": "positional",
    "time_embedding_dim": None,
    "time_embedding_act_fn": None,
    "timestep_post_act": None,
    "time_cond_proj_dim": None,
    "conv_in_kernel": 3,
    "conv_out_kernel": 3,
    "projection_class_embeddings_input_dim": None,
    "attention_type": "default",
    "class_embeddings_concat": False,
    "cross_attention_norm": None,
}
_DOWN_TYPES = {"CrossAttnDownBlock2D": True, "DownBlock2D": False}
_UP_TYPES = {"CrossAttnUpBlock2D": True, "UpBlock2D": False}


def unet_config_from_diffusers(config: Mapping[str, Any], use_flash_attention: bool = False) -> dict[str, Any]:
    """MONAI ``SDDiffusionModelUNet`` constructor config (with ``"type"``) for a diffusers ``UNet2DConditionModel``.

    diffusers' ``attention_head_dim`` is, for historical reasons, the number of heads when ``num_attention_heads`` is
    unset (SD 1.x: 8 heads; SD 2.x: ``(5, 10, 20, 20)`` heads of 64 channels); MONAI's ``num_head_channels`` is the
    channels per head, ``channels[i] // heads[i]``. A linear ``proj_in`` / ``proj_out``
    (``use_linear_projection``, SD 2.x) becomes MONAI's 1x1 convolution.

    Args:
        config: the diffusers config (``unet/config.json``).
        use_flash_attention: use PyTorch scaled-dot-product attention (faster; no attention maps for TTGA).

    Raises:
        UnsupportedModelError: a feature MONAI cannot represent (names the key and value).
    """
    only_cross = config.get("only_cross_attention", False)
    if isinstance(only_cross, (list, tuple)) and not any(only_cross):
        config = {**config, "only_cross_attention": False}
    _check_defaults(config, _UNET_EXPECTED, "the UNet config")
    try:
        channels = [int(c) for c in config["block_out_channels"]]
        down = list(config["down_block_types"])
        up = list(config["up_block_types"])
    except KeyError as e:
        raise SDImportError(f"the UNet config lacks {e}; expected a diffusers UNet2DConditionModel config.json.") from e
    n = len(channels)
    if len(down) != n or len(up) != n:
        raise SDImportError(f"UNet down/up block types {down} / {up} do not have one entry per level ({n}).")
    unknown = [t for t in down if t not in _DOWN_TYPES] + [t for t in up if t not in _UP_TYPES]
    if unknown:
        raise UnsupportedModelError(
            f"UNet block types {sorted(set(unknown))} are not supported; expected {sorted(_DOWN_TYPES)} / "
            f"{sorted(_UP_TYPES)}."
        )
    attention = [_DOWN_TYPES[t] for t in down]
    if [_UP_TYPES[t] for t in up] != attention[::-1]:
        raise UnsupportedModelError(
            f"UNet up blocks {up} do not mirror the down blocks {down}; MONAI's DiffusionModelUNet puts "
            "cross-attention at the same levels on both paths."
        )
    cross = config.get("cross_attention_dim", 1280)
    if isinstance(cross, (list, tuple)):
        if len(set(cross)) != 1:
            raise UnsupportedModelError(
                f"UNet cross_attention_dim={list(cross)}: per-level context sizes are not supported."
            )
        cross = cross[0]
    depth = config.get("transformer_layers_per_block", 1)
    if isinstance(depth, (list, tuple)):
        flat = [d for d in depth]
        if any(isinstance(d, (list, tuple)) for d in flat) or len(set(flat)) != 1:
            raise UnsupportedModelError(
                f"UNet transformer_layers_per_block={list(depth)}: MONAI uses one transformer depth for all levels "
                "(per-level depths are an SDXL feature)."
            )
        depth = flat[0]
    layers = _per_level(config.get("layers_per_block", 2), n, "layers_per_block")
    heads = config.get("num_attention_heads") or config.get("attention_head_dim", 8)
    heads = [
        int(h) if h is not None else c
        for h, c in zip(_per_level(heads, n, "attention_head_dim"), channels, strict=True)
    ]
    head_channels = []
    for i, (c, h) in enumerate(zip(channels, heads, strict=True)):
        used = attention[i] or i == n - 1  # the last level's value also sets the mid block
        if used and c % h:
            raise SDImportError(f"UNet level {i}: {c} channels are not divisible into {h} attention heads.")
        head_channels.append(c // h if c % h == 0 else c)
    groups = config.get("norm_num_groups", 32)
    if groups is None:
        raise UnsupportedModelError("UNet norm_num_groups=None (no output GroupNorm) is not supported.")
    if any(c % int(groups) for c in channels):
        raise SDImportError(f"UNet block_out_channels {channels} are not all divisible by norm_num_groups={groups}.")
    out = {
        "type": "SDDiffusionModelUNet",
        "spatial_dims": 2,
        "in_channels": int(config.get("in_channels", 4)),
        "out_channels": int(config.get("out_channels", 4)),
        "channels": channels,
        "num_res_blocks": [int(v) for v in layers],
        "attention_levels": attention,
        "norm_num_groups": int(groups),
        "norm_eps": float(config.get("norm_eps", 1e-5)),
        "resblock_updown": False,
        "num_head_channels": head_channels,
        "with_conditioning": True,
        "transformer_num_layers": int(depth),
        "cross_attention_dim": int(cross),
        "num_class_embeds": int(config["num_class_embeds"]) if config.get("num_class_embeds") else None,
        "upcast_attention": bool(config.get("upcast_attention", False)),
        "include_fc": True,
        "use_combined_linear": False,
        "use_flash_attention": bool(use_flash_attention),
        "transformer_norm_eps": 1e-6,
    }
    return out


# ---------------------------------------------------------------------------------------------------- scheduler
_SCHEDULES = {"scaled_linear": "scaled_linear_beta", "linear": "linear_beta"}


def scheduler_config_from_diffusers(
    config: Mapping[str, Any] | None, prediction_type: str | None = None
) -> dict[str, Any]:
    """MONAI ``DDPMScheduler`` config (with ``"type"``) holding the training noise schedule of a diffusers scheduler.

    Only the training schedule is kept (the sampler picks its own steps). ``None`` gives Stable Diffusion's
    schedule: 1000 steps, scaled-linear betas 0.00085 -> 0.012, epsilon prediction.

    Args:
        config: ``scheduler/scheduler_config.json`` (any diffusers scheduler), or ``None``.
        prediction_type: overrides the config's (``"epsilon"``, ``"v_prediction"`` or ``"sample"``).
    """
    config = dict(config or {})
    _check_defaults(config, {"trained_betas": None, "rescale_betas_zero_snr": False}, "the scheduler config")
    schedule = config.get("beta_schedule", "scaled_linear")
    if schedule not in _SCHEDULES:
        raise UnsupportedModelError(
            f"scheduler beta_schedule={schedule!r} is not supported; MONAI holds {sorted(_SCHEDULES)} exactly."
        )
    pred = prediction_type or config.get("prediction_type", "epsilon")
    if pred not in ("epsilon", "v_prediction", "sample"):
        raise UnsupportedModelError(f"prediction_type={pred!r}; expected 'epsilon', 'v_prediction' or 'sample'.")
    return {
        "type": "DDPMScheduler",
        "num_train_timesteps": int(config.get("num_train_timesteps", 1000)),
        "schedule": _SCHEDULES[schedule],
        "beta_start": float(config.get("beta_start", 0.00085)),
        "beta_end": float(config.get("beta_end", 0.012)),
        "prediction_type": pred,
        "clip_sample": False,
    }


def sd_variant(unet_config: Mapping[str, Any] | None) -> str:
    """A label for reports: ``"SD1.x-like"`` (768-d context), ``"SD2.x-like"`` (1024-d), else ``"custom"``."""
    if not unet_config:
        return "VAE only"
    dim = unet_config.get("cross_attention_dim")
    return {768: "SD1.x-like", 1024: "SD2.x-like"}.get(dim, f"custom ({dim}-d context)")


# ---------------------------------------------------------------------------------------------------- single file
def _ids(keys: Sequence[str], pattern: str) -> list[int]:
    rx = re.compile(pattern)
    return sorted({int(m.group(1)) for k in keys if (m := rx.match(k))})


def diffusers_vae_config_from_state_dict(
    state_dict: Mapping[str, torch.Tensor], scaling_factor: float | None = None, norm_num_groups: int = 32
) -> dict[str, Any]:
    """Infer the diffusers ``AutoencoderKL`` config of a VAE state dict (diffusers key names) from tensor shapes.

    Args:
        state_dict: VAE weights with diffusers names (``encoder.down_blocks.0.resnets.0.conv1.weight``...).
        scaling_factor: latent scale factor; ``None`` gives SD's 0.18215.
        norm_num_groups: GroupNorm groups (not stored in the weights; 32 in every ldm VAE).
    """
    keys = list(state_dict)
    levels = _ids(keys, r"encoder\.down_blocks\.(\d+)\.")
    if not levels or "encoder.conv_in.weight" not in state_dict or "decoder.conv_in.weight" not in state_dict:
        raise SDImportError(
            "cannot infer the VAE layout: expected encoder.conv_in / encoder.down_blocks.* / decoder.conv_in weights, "
            f"found keys such as {keys[:5]}."
        )
    channels = [int(state_dict[f"encoder.down_blocks.{i}.resnets.0.conv1.weight"].shape[0]) for i in levels]
    layers = len(_ids(keys, r"encoder\.down_blocks\.0\.resnets\.(\d+)\."))
    latent = int(state_dict["decoder.conv_in.weight"].shape[1])
    moments = int(state_dict["encoder.conv_out.weight"].shape[0])
    if moments != 2 * latent:
        raise UnsupportedModelError(
            f"the VAE encoder emits {moments} channels for {latent} latent channels; only the KL VAE with mean and "
            "log-variance outputs (double_z) is supported."
        )
    return {
        "_class_name": "AutoencoderKL",
        "in_channels": int(state_dict["encoder.conv_in.weight"].shape[1]),
        "out_channels": int(state_dict["decoder.conv_out.weight"].shape[0]),
        "down_block_types": ["DownEncoderBlock2D"] * len(channels),
        "up_block_types": ["UpDecoderBlock2D"] * len(channels),
        "block_out_channels": channels,
        "layers_per_block": layers,
        "latent_channels": latent,
        "norm_num_groups": int(norm_num_groups),
        "act_fn": "silu",
        "scaling_factor": SD_SCALE_FACTOR if scaling_factor is None else float(scaling_factor),
        "use_quant_conv": "quant_conv.weight" in state_dict,
        "use_post_quant_conv": "post_quant_conv.weight" in state_dict,
    }


def read_original_config(path: str | os.PathLike) -> dict[str, Any]:
    """Read the settings a single-file checkpoint needs from its original ldm YAML (e.g. ``v2-inference-v.yaml``).

    Returns a dict with any of ``num_heads``, ``num_head_channels``, ``use_linear_in_transformer``,
    ``prediction_type``, ``scale_factor``, ``num_train_timesteps``, ``beta_start``, ``beta_end``.
    """
    import yaml

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"original config '{path}' does not exist; pass the ldm YAML file of the checkpoint.")
    with open(path) as f:
        cfg = yaml.safe_load(f)
    try:
        params = cfg["model"]["params"]
        unet = (params.get("unet_config") or params.get("network_config"))["params"]
    except (KeyError, TypeError) as e:
        raise SDImportError(
            f"'{path}' is not an ldm model config (expected model.params.unet_config.params); found top-level keys "
            f"{sorted(cfg) if isinstance(cfg, dict) else type(cfg).__name__}."
        ) from e
    out: dict[str, Any] = {}
    if unet.get("num_heads", -1) not in (-1, None):
        out["num_heads"] = int(unet["num_heads"])
    if unet.get("num_head_channels", -1) not in (-1, None):
        out["num_head_channels"] = int(unet["num_head_channels"])
    if "use_linear_in_transformer" in unet:
        out["use_linear_in_transformer"] = bool(unet["use_linear_in_transformer"])
    param = params.get("parameterization", "eps")
    out["prediction_type"] = {"eps": "epsilon", "v": "v_prediction", "x0": "sample"}.get(param, param)
    for src, dst in (("scale_factor", "scale_factor"), ("linear_start", "beta_start"), ("linear_end", "beta_end")):
        if src in params:
            out[dst] = float(params[src])
    if "timesteps" in params:
        out["num_train_timesteps"] = int(params["timesteps"])
    return out


def diffusers_unet_config_from_ldm(
    state_dict: Mapping[str, torch.Tensor],
    attention_heads: int | Sequence[int] | None = None,
    head_channels: int | None = None,
    upcast_attention: bool = False,
    norm_num_groups: int = 32,
) -> dict[str, Any]:
    """Infer the diffusers ``UNet2DConditionModel`` config of an ldm UNet state dict (``model.diffusion_model.``
    prefix removed) from tensor shapes.

    The attention head layout is not stored in the weights. Give ``attention_heads`` (heads per level, SD 1.x: 8) or
    ``head_channels`` (channels per head, SD 2.x: 64); with neither, a 768-d context means SD 1.x (8 heads) and a
    1024-d context SD 2.x (64 channels per head), and any other context size is an error.

    Args:
        state_dict: the UNet weights in ldm naming (``input_blocks.*``, ``middle_block.*``, ``output_blocks.*``).
        attention_heads: heads per level (int or one per level).
        head_channels: channels per head.
        upcast_attention: compute attention scores in float32 (SD 2.1-v; no effect in float32 inference).
        norm_num_groups: GroupNorm groups (not stored in the weights; 32 in every ldm UNet).
    """
    keys = list(state_dict)
    if "input_blocks.0.0.weight" not in state_dict or "out.2.weight" not in state_dict:
        raise SDImportError(
            "cannot infer the UNet layout: expected input_blocks.0.0.weight and out.2.weight (ldm UNet), found keys "
            f"such as {keys[:5]}."
        )
    if "label_emb.0.0.weight" in state_dict:
        raise UnsupportedModelError(
            "the UNet has a vector ('sequential' label_emb) conditioning, as SDXL's text-time or unCLIP's image "
            "embedding; MONAI's DiffusionModelUNet cannot represent it."
        )
    blocks = _ids(keys, r"input_blocks\.(\d+)\.")
    downs = _ids(keys, r"input_blocks\.(\d+)\.0\.op\.weight")
    layers = (downs[0] - 1) if downs else len(blocks) - 1
    if layers < 1 or len(blocks) % (layers + 1):
        raise SDImportError(f"cannot infer the UNet levels from input blocks {blocks} and down-samplers {downs}.")
    n = len(blocks) // (layers + 1)
    first = [1 + i * (layers + 1) for i in range(n)]
    channels = [int(state_dict[f"input_blocks.{b}.0.out_layers.3.weight"].shape[0]) for b in first]
    attention = [f"input_blocks.{b}.1.proj_in.weight" in state_dict for b in first]
    ctx_keys = [k for k in keys if k.endswith("attn2.to_k.weight")]
    if not ctx_keys:
        raise UnsupportedModelError(
            "the UNet has no cross-attention (attn2) layers; only text-conditioned UNets convert."
        )
    context = int(state_dict[ctx_keys[0]].shape[1])
    linear = (
        state_dict["middle_block.1.proj_in.weight"].ndim == 2
        if "middle_block.1.proj_in.weight" in state_dict
        else False
    )
    depth = len(_ids(keys, r"middle_block\.1\.transformer_blocks\.(\d+)\."))
    if attention_heads is None and head_channels is None:
        if context == 768:
            attention_heads = 8
        elif context == 1024:
            head_channels = 64
        else:
            raise SDImportError(
                f"the UNet has a {context}-d context, neither SD 1.x (768) nor SD 2.x (1024): the attention head "
                "layout cannot be inferred from the weights. Pass attention_heads (heads per level) or head_channels "
                "(channels per head), or the checkpoint's original ldm YAML."
            )
    if head_channels is not None:
        bad = [c for c in channels if c % int(head_channels)]
        if bad:
            raise SDImportError(f"level channels {bad} are not divisible by head_channels={head_channels}.")
        heads = [c // int(head_channels) for c in channels]
    else:
        heads = [int(h) for h in _per_level(attention_heads, n, "attention_heads")]
    config: dict[str, Any] = {
        "_class_name": "UNet2DConditionModel",
        "in_channels": int(state_dict["input_blocks.0.0.weight"].shape[1]),
        "out_channels": int(state_dict["out.2.weight"].shape[0]),
        "block_out_channels": channels,
        "layers_per_block": layers,
        "down_block_types": ["CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attention],
        "up_block_types": ["CrossAttnUpBlock2D" if a else "UpBlock2D" for a in attention[::-1]],
        "cross_attention_dim": context,
        "attention_head_dim": heads,
        "use_linear_projection": bool(linear),
        "transformer_layers_per_block": max(depth, 1),
        "upcast_attention": bool(upcast_attention),
        "norm_num_groups": int(norm_num_groups),
        "norm_eps": 1e-5,
    }
    if "label_emb.weight" in state_dict:
        config["num_class_embeds"] = int(state_dict["label_emb.weight"].shape[0])
    return config
