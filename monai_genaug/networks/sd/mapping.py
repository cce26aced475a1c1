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
"""Weight mapping from Stable Diffusion state dicts (diffusers or ldm / CompVis names) to MONAI networks.

diffusers names are the hub: an ldm (single-file) state dict is first renamed to diffusers names
(:func:`ldm_vae_to_diffusers`, :func:`ldm_unet_to_diffusers`, the inverse of diffusers' own single-file loader), then
:func:`vae_state_dict_to_monai` / :func:`unet_state_dict_to_monai` fill every key of the MONAI network:

* renames (``conv1`` -> ``conv1.conv``, ``to_out.0`` -> ``out_proj``, ``ff.net.0.proj`` -> ``ff.linear1``,
  ``mid_block.resnets.0`` -> ``middle_block.resnet_1``, VAE blocks by position in ``encoder.blocks`` /
  ``decoder.blocks``);
* reshapes between a 1x1 convolution and a linear layer (ldm's VAE attention q/k/v/proj_out are 1x1 convs, SD 2.x's
  ``proj_in`` / ``proj_out`` are linear, MONAI's ``proj_in`` / ``proj_out`` are 1x1 convs);
* SD's VAE ``quant_conv`` (``2z -> 2z``) split into MONAI's ``quant_conv_mu`` (its first ``z`` rows) and
  ``quant_conv_log_sigma`` (its last ``z`` rows), both reading the ``2z`` encoder outputs (``double_z``).

Every source tensor must be used and every MONAI parameter filled with a tensor of the right size; otherwise
:class:`~monai_genaug.networks.sd.configs.SDImportError` lists the missing, unexpected and mis-shaped keys.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from monai_genaug.networks.sd.configs import SDImportError

__all__ = [
    "normalize_legacy_vae_keys",
    "ldm_vae_to_diffusers",
    "ldm_unet_to_diffusers",
    "vae_key_map",
    "unet_key_map",
    "vae_state_dict_to_monai",
    "unet_state_dict_to_monai",
]

# ---------------------------------------------------------------------------------------------------- helpers
_LEGACY_VAE_ATTN = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}


def normalize_legacy_vae_keys(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename the VAE attention weights of diffusers < 0.14 (``query``/``key``/``value``/``proj_attn``) to today's."""
    rx = re.compile(r"^(.*mid_block\.attentions\.\d+\.)(query|key|value|proj_attn)\.(weight|bias)$")
    out = {}
    for k, v in state_dict.items():
        m = rx.match(k)
        out[f"{m.group(1)}{_LEGACY_VAE_ATTN[m.group(2)]}.{m.group(3)}" if m else k] = v
    return out


def _short(items: list[str], n: int = 8) -> str:
    return ", ".join(items[:n]) + (f" (+{len(items) - n} more)" if len(items) > n else "") if items else "none"


def _fit(value: torch.Tensor, shape: torch.Size) -> torch.Tensor | None:
    """value reshaped to shape when they differ only by trailing singleton dims (linear <-> 1x1 conv), else None."""
    if value.shape == shape:
        return value
    a = [s for s in value.shape]
    b = [s for s in shape]
    while a and a[-1] == 1 and len(a) > len(b):
        a.pop()
    while b and b[-1] == 1 and len(b) > len(a):
        b.pop()
    return value.reshape(shape) if a == b else None


def _fill(
    target: Mapping[str, torch.Tensor],
    source: Mapping[str, torch.Tensor],
    key_map: Mapping[str, str],
    special: Mapping[str, torch.Tensor] | None = None,
    special_sources: set[str] | None = None,
    what: str = "network",
) -> dict[str, torch.Tensor]:
    """A state dict with target's keys filled from source through key_map; raise listing every problem."""
    special = dict(special or {})
    used = set(special_sources or ())
    out: dict[str, torch.Tensor] = {}
    missing, shapes = [], []
    for key, ref in target.items():
        if key in special:
            value = special[key]
        else:
            src = key_map.get(key)
            if src is None or src not in source:
                missing.append(f"{src or '?'} (for {key})")
                continue
            used.add(src)
            value = source[src]
        fitted = _fit(value, ref.shape)
        if fitted is None:
            shapes.append(f"{key_map.get(key, key)}: {tuple(value.shape)} vs MONAI {key} {tuple(ref.shape)}")
            continue
        out[key] = fitted.detach().to(dtype=ref.dtype).clone()
    unexpected = sorted(set(source) - used)
    if missing or unexpected or shapes:
        raise SDImportError(
            f"the {what} weights do not match the architecture derived from its config: missing keys: "
            f"{_short(missing)}; unexpected keys: {_short(unexpected)}; shape mismatches: {_short(shapes)}. "
            "Check that the weights and config.json come from the same model (and, for a single-file checkpoint, the "
            "attention head settings)."
        )
    return out


def _rename(key: str, rules: list[tuple[re.Pattern, str | Callable[[re.Match], str]]]) -> str:
    for rx, repl in rules:
        key = rx.sub(repl, key)
    return key


# ---------------------------------------------------------------------------------------------------- ldm -> diffusers
_LDM_RES = [
    (re.compile(r"\.in_layers\.0\."), ".norm1."),
    (re.compile(r"\.in_layers\.2\."), ".conv1."),
    (re.compile(r"\.emb_layers\.1\."), ".time_emb_proj."),
    (re.compile(r"\.out_layers\.0\."), ".norm2."),
    (re.compile(r"\.out_layers\.3\."), ".conv2."),
    (re.compile(r"\.skip_connection\."), ".conv_shortcut."),
]


def ldm_vae_to_diffusers(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename an ldm (CompVis) VAE state dict (``first_stage_model.`` prefix removed) to diffusers names.

    Keys that are not VAE weights are kept unchanged, so that the conversion reports them as unexpected.
    """
    keys = list(state_dict)
    n_up = len({int(m.group(1)) for k in keys if (m := re.match(r"decoder\.up\.(\d+)\.", k))})
    attn = {"norm": "group_norm", "q": "to_q", "k": "to_k", "v": "to_v", "proj_out": "to_out.0"}
    rules: list[tuple[re.Pattern, Any]] = [
        (re.compile(r"^encoder\.down\.(\d+)\.block\.(\d+)\."), r"encoder.down_blocks.\1.resnets.\2."),
        (re.compile(r"^encoder\.down\.(\d+)\.downsample\.conv\."), r"encoder.down_blocks.\1.downsamplers.0.conv."),
        (
            re.compile(r"^decoder\.up\.(\d+)\.block\.(\d+)\."),
            lambda m: f"decoder.up_blocks.{n_up - 1 - int(m.group(1))}.resnets.{m.group(2)}.",
        ),
        (
            re.compile(r"^decoder\.up\.(\d+)\.upsample\.conv\."),
            lambda m: f"decoder.up_blocks.{n_up - 1 - int(m.group(1))}.upsamplers.0.conv.",
        ),
        (re.compile(r"^(encoder|decoder)\.mid\.block_1\."), r"\1.mid_block.resnets.0."),
        (re.compile(r"^(encoder|decoder)\.mid\.block_2\."), r"\1.mid_block.resnets.1."),
        (
            re.compile(r"^(encoder|decoder)\.mid\.attn_1\.(norm|q|k|v|proj_out)\."),
            lambda m: f"{m.group(1)}.mid_block.attentions.0.{attn[m.group(2)]}.",
        ),
        (re.compile(r"^(encoder|decoder)\.norm_out\."), r"\1.conv_norm_out."),
        (re.compile(r"\.nin_shortcut\."), ".conv_shortcut."),
    ]
    out = {}
    for k, v in state_dict.items():
        new = _rename(k, rules)
        if ".mid_block.attentions." in new and v.ndim > 2:  # ldm attention uses 1x1 convs
            v = v.reshape(v.shape[0], -1)
        out[new] = v
    return out


def ldm_unet_to_diffusers(state_dict: Mapping[str, torch.Tensor], layers_per_block: int) -> dict[str, torch.Tensor]:
    """Rename an ldm (CompVis) UNet state dict (``model.diffusion_model.`` prefix removed) to diffusers names.

    Args:
        state_dict: the UNet weights in ldm naming.
        layers_per_block: residual blocks per down level (``num_res_blocks`` of the ldm config).
    """
    per = layers_per_block + 1

    def down(m: re.Match) -> str:
        n, sub, rest = int(m.group(1)), m.group(2), m.group(3)
        b, j = (n - 1) // per, (n - 1) % per
        if sub == "0" and rest.startswith("op."):
            return f"down_blocks.{b}.downsamplers.0.conv.{rest[3:]}"
        return f"down_blocks.{b}.{'resnets' if sub == '0' else 'attentions'}.{j}.{rest}"

    def up(m: re.Match) -> str:
        n, sub, rest = int(m.group(1)), m.group(2), m.group(3)
        b, j = n // per, n % per
        if sub in ("1", "2") and rest.startswith("conv."):
            return f"up_blocks.{b}.upsamplers.0.conv.{rest[5:]}"
        return f"up_blocks.{b}.{'resnets' if sub == '0' else 'attentions'}.{j}.{rest}"

    rules: list[tuple[re.Pattern, Any]] = [
        (re.compile(r"^time_embed\.0\."), "time_embedding.linear_1."),
        (re.compile(r"^time_embed\.2\."), "time_embedding.linear_2."),
        (re.compile(r"^input_blocks\.0\.0\."), "conv_in."),
        (re.compile(r"^input_blocks\.(\d+)\.(\d+)\.(.*)$"), down),
        (re.compile(r"^middle_block\.0\."), "mid_block.resnets.0."),
        (re.compile(r"^middle_block\.1\."), "mid_block.attentions.0."),
        (re.compile(r"^middle_block\.2\."), "mid_block.resnets.1."),
        (re.compile(r"^output_blocks\.(\d+)\.(\d+)\.(.*)$"), up),
        (re.compile(r"^out\.0\."), "conv_norm_out."),
        (re.compile(r"^out\.2\."), "conv_out."),
        (re.compile(r"^label_emb\.weight$"), "class_embedding.weight"),
    ]
    out = {}
    for k, v in state_dict.items():
        new = _rename(k, rules)
        if ".resnets." in new:
            new = _rename(new, _LDM_RES)
        out[new] = v
    return out


# ---------------------------------------------------------------------------------------------------- VAE -> MONAI
_VAE_PARTS = {
    "conv": [("conv.", "")],
    "norm": [("", "")],
    "res": [
        ("norm1.", "norm1."),
        ("conv1.conv.", "conv1."),
        ("norm2.", "norm2."),
        ("conv2.conv.", "conv2."),
        ("nin_shortcut.conv.", "conv_shortcut."),
    ],
    "down": [("conv.conv.", "conv.")],
    "up": [("postconv.conv.", "conv.")],
    "attn": [
        ("norm.", "group_norm."),
        ("attn.to_q.", "to_q."),
        ("attn.to_k.", "to_k."),
        ("attn.to_v.", "to_v."),
        ("attn.out_proj.", "to_out.0."),
    ],
}


def _vae_blocks(config: Mapping[str, Any]) -> list[tuple[str, str, str]]:
    """(MONAI prefix, diffusers prefix, part kind) for every block of an SDAutoencoderKL built from config."""
    n = len(config["channels"])
    enc_layers = list(config["num_res_blocks"])
    dec_layers = list(config.get("decoder_num_res_blocks") or enc_layers)
    enc: list[tuple[str, str]] = [("encoder.conv_in", "conv")]
    for i in range(n):
        enc += [(f"encoder.down_blocks.{i}.resnets.{j}", "res") for j in range(enc_layers[i])]
        if i < n - 1:
            enc.append((f"encoder.down_blocks.{i}.downsamplers.0", "down"))
    enc += [("encoder.mid_block.resnets.0", "res"), ("encoder.mid_block.attentions.0", "attn")]
    enc += [("encoder.mid_block.resnets.1", "res"), ("encoder.conv_norm_out", "norm"), ("encoder.conv_out", "conv")]
    dec: list[tuple[str, str]] = [("decoder.conv_in", "conv"), ("decoder.mid_block.resnets.0", "res")]
    dec += [("decoder.mid_block.attentions.0", "attn"), ("decoder.mid_block.resnets.1", "res")]
    for k in range(n):  # diffusers up_blocks[k] is MONAI's k-th decoder level (lowest resolution first)
        dec += [(f"decoder.up_blocks.{k}.resnets.{j}", "res") for j in range(dec_layers[n - 1 - k])]
        if k < n - 1:
            dec.append((f"decoder.up_blocks.{k}.upsamplers.0", "up"))
    dec += [("decoder.conv_norm_out", "norm"), ("decoder.conv_out", "conv")]
    return [(f"encoder.blocks.{i}", s, kind) for i, (s, kind) in enumerate(enc)] + [
        (f"decoder.blocks.{i}", s, kind) for i, (s, kind) in enumerate(dec)
    ]


def vae_key_map(config: Mapping[str, Any], monai_keys: list[str]) -> dict[str, str]:
    """MONAI key -> diffusers key for every encoder/decoder key of an ``SDAutoencoderKL`` built from ``config``.

    The quant convs are not in the map (see :func:`vae_state_dict_to_monai`).
    """
    blocks = sorted(_vae_blocks(config), key=lambda b: -len(b[0]))
    out: dict[str, str] = {}
    for key in monai_keys:
        for prefix, src, kind in blocks:
            if key.startswith(prefix + "."):
                rest = key[len(prefix) + 1 :]
                for mine, theirs in _VAE_PARTS[kind]:
                    if rest.startswith(mine):
                        out[key] = f"{src}.{theirs}{rest[len(mine):]}"
                        break
                break
    return out


def vae_state_dict_to_monai(
    state_dict: Mapping[str, torch.Tensor], autoencoder: nn.Module, config: Mapping[str, Any]
) -> dict[str, torch.Tensor]:
    """MONAI state dict for ``autoencoder`` (an ``SDAutoencoderKL`` built from ``config``) from diffusers VAE weights.

    Args:
        state_dict: diffusers ``AutoencoderKL`` weights (legacy attention names accepted).
        autoencoder: the target network (only its state-dict keys and shapes are read).
        config: its constructor config (``channels``, ``num_res_blocks``, ``decoder_num_res_blocks``,
            ``latent_channels``).
    """
    if not config.get("double_z") or not config.get("output_activation"):
        raise SDImportError(
            "Stable Diffusion VAE weights need an SDAutoencoderKL with double_z=True and output_activation=True."
        )
    source = normalize_legacy_vae_keys(state_dict)
    target = autoencoder.state_dict()
    z = int(config["latent_channels"])
    key_map = vae_key_map(config, list(target))
    special: dict[str, torch.Tensor] = {}
    used: set[str] = set()
    ref = target["quant_conv_mu.conv.weight"]
    if "quant_conv.weight" in source:
        qw, qb = source["quant_conv.weight"], source.get("quant_conv.bias")
        used |= {"quant_conv.weight", "quant_conv.bias"}
        if qb is None or qw.shape[:2] != (2 * z, 2 * z):
            raise SDImportError(
                f"quant_conv must be a (2z, 2z, 1, 1) conv with bias for latent_channels z={z}, got "
                f"{tuple(qw.shape)} (bias {'present' if qb is not None else 'missing'})."
            )
    else:  # use_quant_conv=False: the encoder's moments are the mean and log-variance
        qw = torch.eye(2 * z, dtype=ref.dtype).reshape(2 * z, 2 * z, 1, 1)
        qb = torch.zeros(2 * z, dtype=ref.dtype)
    special["quant_conv_mu.conv.weight"], special["quant_conv_mu.conv.bias"] = qw[:z], qb[:z]
    special["quant_conv_log_sigma.conv.weight"], special["quant_conv_log_sigma.conv.bias"] = qw[z:], qb[z:]
    if "post_quant_conv.weight" in source:
        special["post_quant_conv.conv.weight"] = source["post_quant_conv.weight"]
        special["post_quant_conv.conv.bias"] = source["post_quant_conv.bias"]
        used |= {"post_quant_conv.weight", "post_quant_conv.bias"}
    else:
        special["post_quant_conv.conv.weight"] = torch.eye(z, dtype=ref.dtype).reshape(z, z, 1, 1)
        special["post_quant_conv.conv.bias"] = torch.zeros(z, dtype=ref.dtype)
    return _fill(target, source, key_map, special, used & set(source), what="VAE")


# ---------------------------------------------------------------------------------------------------- UNet -> MONAI
_UNET_RULES = [
    (re.compile(r"^conv_in\.conv\."), "conv_in."),
    (re.compile(r"^time_embed\.0\."), "time_embedding.linear_1."),
    (re.compile(r"^time_embed\.2\."), "time_embedding.linear_2."),
    (re.compile(r"^middle_block\.resnet_1\."), "mid_block.resnets.0."),
    (re.compile(r"^middle_block\.attention\."), "mid_block.attentions.0."),
    (re.compile(r"^middle_block\.resnet_2\."), "mid_block.resnets.1."),
    (re.compile(r"^out\.0\."), "conv_norm_out."),
    (re.compile(r"^out\.2\.conv\."), "conv_out."),
    (re.compile(r"\.conv1\.conv\."), ".conv1."),
    (re.compile(r"\.conv2\.conv\."), ".conv2."),
    (re.compile(r"\.skip_connection\.conv\."), ".conv_shortcut."),
    (re.compile(r"\.downsampler\.op\.conv\."), ".downsamplers.0.conv."),
    (re.compile(r"\.upsampler\.postconv\.conv\."), ".upsamplers.0.conv."),
    (re.compile(r"\.proj_in\.conv\."), ".proj_in."),
    (re.compile(r"\.proj_out\.conv\."), ".proj_out."),
    (re.compile(r"\.out_proj\."), ".to_out.0."),
    (re.compile(r"\.ff\.linear1\."), ".ff.net.0.proj."),
    (re.compile(r"\.ff\.linear2\."), ".ff.net.2."),
]


def unet_key_map(monai_keys: list[str]) -> dict[str, str]:
    """MONAI ``DiffusionModelUNet`` key -> diffusers ``UNet2DConditionModel`` key."""
    return {k: _rename(k, _UNET_RULES) for k in monai_keys}


def unet_state_dict_to_monai(state_dict: Mapping[str, torch.Tensor], unet: nn.Module) -> dict[str, torch.Tensor]:
    """MONAI state dict for ``unet`` (a ``DiffusionModelUNet`` built from the derived config) from diffusers weights.

    Args:
        state_dict: diffusers ``UNet2DConditionModel`` weights.
        unet: the target network (only its state-dict keys and shapes are read).
    """
    target = unet.state_dict()
    return _fill(target, state_dict, unet_key_map(list(target)), what="UNet")
