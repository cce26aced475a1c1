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
"""Read Stable Diffusion weights from disk into MONAI networks, and write them as MONAI checkpoints.

Sources (never downloaded):

* a diffusers pipeline folder: ``model_index.json``, ``vae/`` and ``unet/`` (``config.json`` +
  ``diffusion_pytorch_model.safetensors`` or ``.bin``, fp16 variants and sharded files accepted), optionally
  ``scheduler/scheduler_config.json``, ``text_encoder/`` and ``tokenizer/``;
* a diffusers component folder (``config.json`` of an ``AutoencoderKL`` or ``UNet2DConditionModel`` + weights), e.g. a
  stand-alone fine-tuned VAE;
* a single-file ldm / CompVis checkpoint (``.ckpt`` / ``.safetensors``) with ``first_stage_model.*``,
  ``model.diffusion_model.*`` and ``cond_stage_model.*`` keys, or a VAE-only file (``encoder.*``, ``decoder.*``).

:func:`load_stable_diffusion` returns the MONAI networks (:class:`SDModels`); :func:`save_converted` writes

========================= =====================================================================================
``generator.pt``          :class:`~monai_genaug.generative.latent_generator.LatentGenerator` checkpoint
                          (autoencoder + UNet + training noise schedule + latent scale factor), for TTGA
``autoencoder.pt``        the VAE, in GMS's autoencoder checkpoint format (``methods.gms.save_autoencoder``)
``unet.pt``               the UNet (``monai_genaug.DiffusionModelUNet``: full constructor config + weights)
``embeddings.pt``         prompt / null CLIP embeddings (when prompts or an embeddings file are given)
``conversion.json``       what was converted from where, the MONAI configs and notes
========================= =====================================================================================
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from monai.networks.schedulers import DDPMScheduler
from monai.utils import optional_import
from torch import nn

from monai_genaug.networks.sd.configs import (
    SD_SCALE_FACTOR,
    SDImportError,
    UnsupportedModelError,
    autoencoder_config_from_diffusers,
    diffusers_unet_config_from_ldm,
    diffusers_vae_config_from_state_dict,
    read_original_config,
    reference_diffusers_configs,
    scheduler_config_from_diffusers,
    sd_variant,
    unet_config_from_diffusers,
)
from monai_genaug.networks.sd.mapping import (
    ldm_unet_to_diffusers,
    ldm_vae_to_diffusers,
    unet_state_dict_to_monai,
    vae_state_dict_to_monai,
)
from monai_genaug.networks.sd.networks import build_network
from monai_genaug.networks.sd.text import (
    encode_prompts,
    load_prompt_embeddings,
    save_prompt_embeddings,
)
from monai_genaug.utils.checkpoint import (
    atomic_save,
    check_state_dict_compatible,
    load_checkpoint,
    to_json_config,
)

safetensors_torch, _has_safetensors = optional_import("safetensors.torch")

__all__ = [
    "AUTOENCODER_FORMAT",
    "UNET_FORMAT",
    "SDModels",
    "load_weights",
    "convert_vae",
    "convert_unet",
    "load_stable_diffusion",
    "save_converted",
    "convert_stable_diffusion",
    "load_converted_network",
    "reference_generator_config",
]

AUTOENCODER_FORMAT = "monai_genaug.AutoencoderKL"
UNET_FORMAT = "monai_genaug.DiffusionModelUNet"
_WEIGHT_FILES = (
    "diffusion_pytorch_model.safetensors",
    "diffusion_pytorch_model.bin",
    "diffusion_pytorch_model.fp16.safetensors",
    "diffusion_pytorch_model.fp16.bin",
    "model.safetensors",
    "pytorch_model.bin",
)
_INDEX_FILES = ("diffusion_pytorch_model.safetensors.index.json", "diffusion_pytorch_model.bin.index.json")
_SINGLE_FILE_SUFFIXES = (".ckpt", ".safetensors", ".pt", ".pth", ".bin")
# pipelines whose components MONAI cannot hold, with what gives them away
_UNSUPPORTED_FOLDERS = {
    "text_encoder_2": "a second text encoder (SDXL)",
    "tokenizer_2": "a second tokenizer (SDXL)",
    "transformer": "a transformer denoiser (SD3 / Flux / PixArt)",
    "prior": "a prior network (Kandinsky / Stable Cascade / unCLIP)",
}
# ldm buffers that hold the noise schedule (used to check it) or training state
_LDM_SCHEDULE_BUFFERS = {
    "betas",
    "alphas_cumprod",
    "alphas_cumprod_prev",
    "sqrt_alphas_cumprod",
    "sqrt_one_minus_alphas_cumprod",
    "log_one_minus_alphas_cumprod",
    "sqrt_recip_alphas_cumprod",
    "sqrt_recipm1_alphas_cumprod",
    "posterior_variance",
    "posterior_log_variance_clipped",
    "posterior_mean_coef1",
    "posterior_mean_coef2",
    "logvar",
}


@dataclass
class SDModels:
    """MONAI networks and configs converted from a Stable Diffusion source (see :func:`load_stable_diffusion`).

    Args:
        source: the path converted.
        source_format: ``"diffusers"`` or ``"single_file"``.
        autoencoder: the ``SDAutoencoderKL`` (``None`` when the source has no VAE).
        autoencoder_config: its full constructor config (with ``"type"``).
        unet: the ``SDDiffusionModelUNet`` (``None`` when the source has no UNet).
        unet_config: its full constructor config (with ``"type"``).
        scheduler_config: MONAI ``DDPMScheduler`` config (with ``"type"``) of the training noise schedule.
        scale_factor: the latent scale factor (diffusers ``scaling_factor``).
        text_encoder_dir: the source's CLIP text encoder folder, if any.
        tokenizer_dir: the source's tokenizer folder, if any.
        notes: what was ignored or assumed, for the conversion report.
    """

    source: str
    source_format: str
    autoencoder: nn.Module | None = None
    autoencoder_config: dict[str, Any] | None = None
    unet: nn.Module | None = None
    unet_config: dict[str, Any] | None = None
    scheduler_config: dict[str, Any] | None = None
    scale_factor: float = SD_SCALE_FACTOR
    text_encoder_dir: Path | None = None
    tokenizer_dir: Path | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def variant(self) -> str:
        """``"SD1.x-like"``, ``"SD2.x-like"``, ``"VAE only"`` or ``"custom (...)"``."""
        return sd_variant(self.unet_config)


# ---------------------------------------------------------------------------------------------------- reading files
def load_weights(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a weights file as a float32 state dict: safetensors, or torch (``.bin``/``.ckpt``/``.pt``) with
    ``weights_only=True``; a sharded ``*.index.json`` reads all its shards. A ``{"state_dict": ...}`` wrapper is
    removed and non-tensor entries are dropped (ldm checkpoints store e.g. ``global_step``).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file '{path}' does not exist.")
    if path.name.endswith(".index.json"):
        with open(path) as f:
            shards = sorted(set(json.load(f).get("weight_map", {}).values()))
        if not shards:
            raise SDImportError(f"'{path}' lists no shards in its weight_map.")
        state: dict[str, torch.Tensor] = {}
        for shard in shards:
            state.update(load_weights(path.parent / shard))
        return state
    if path.suffix == ".safetensors":
        if not _has_safetensors:
            raise ImportError(f"reading '{path}' needs the 'safetensors' package (pip install 'monai-genaug[sd]').")
        try:
            data: Any = safetensors_torch.load_file(str(path), device="cpu")
        except Exception as e:
            raise SDImportError(f"'{path}' is not a readable safetensors file ({type(e).__name__}: {e}).") from e
    elif path.suffix in (".bin", ".ckpt", ".pt", ".pth"):
        try:
            data = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:
            raise SDImportError(
                f"'{path}' cannot be read with torch.load(weights_only=True) ({type(e).__name__}: {e}). Checkpoints "
                "holding arbitrary Python objects are refused for safety; use the .safetensors release of the model "
                "or re-save its state dict."
            ) from e
    else:
        raise SDImportError(
            f"'{path}' has an unknown weights suffix '{path.suffix}'; expected .safetensors, .bin, .ckpt, .pt or .pth."
        )
    if isinstance(data, Mapping) and isinstance(data.get("state_dict"), Mapping):
        data = data["state_dict"]
    if not isinstance(data, Mapping):
        raise SDImportError(f"'{path}' holds a {type(data).__name__}, not a state dict.")
    return {k: (v.float() if v.is_floating_point() else v) for k, v in data.items() if isinstance(v, torch.Tensor)}


def _read_json(path: Path) -> dict[str, Any]:
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise SDImportError(f"cannot read '{path}' as JSON ({e}).") from e
    if not isinstance(data, dict):
        raise SDImportError(f"'{path}' holds a JSON {type(data).__name__}, expected an object.")
    return data


def _read_component(folder: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(config, weights) of a diffusers model folder."""
    if not folder.is_dir():
        raise FileNotFoundError(f"component folder '{folder}' does not exist.")
    found = sorted(p.name for p in folder.iterdir())
    if not (folder / "config.json").is_file():
        raise SDImportError(f"'{folder}' has no config.json; expected config.json + {_WEIGHT_FILES[0]}, found {found}.")
    config = _read_json(folder / "config.json")
    for name in _WEIGHT_FILES + _INDEX_FILES:
        if (folder / name).is_file():
            return config, load_weights(folder / name)
    raise FileNotFoundError(
        f"'{folder}' has a config.json but no weights; expected one of {list(_WEIGHT_FILES + _INDEX_FILES)}, found "
        f"{found}."
    )


# ---------------------------------------------------------------------------------------------------- building
def _build(config: dict[str, Any]) -> nn.Module:
    with torch.device("meta"):  # no memory for the random init of a 1B-parameter model
        return build_network(config)


def _load_assign(net: nn.Module, state: dict[str, torch.Tensor]) -> nn.Module:
    net.load_state_dict(state, strict=True, assign=True)
    for module in net.modules():  # plain tensor attributes created under the meta device (MONAI's att_mat)
        for name in ("att_mat", "causal_mask"):
            value = getattr(module, name, None)
            if isinstance(value, torch.Tensor) and value.is_meta and name not in module._buffers:
                setattr(module, name, torch.Tensor())
    return net.eval()


def convert_vae(
    state_dict: Mapping[str, torch.Tensor], config: Mapping[str, Any], use_flash_attention: bool = False
) -> tuple[nn.Module, dict[str, Any]]:
    """A MONAI ``SDAutoencoderKL`` holding a diffusers ``AutoencoderKL``'s weights, and its constructor config.

    Args:
        state_dict: the diffusers VAE weights (e.g. ``vae.state_dict()``).
        config: the diffusers VAE config (e.g. ``dict(vae.config)``).
        use_flash_attention: PyTorch scaled-dot-product attention in the mid attention blocks.
    """
    cfg = autoencoder_config_from_diffusers(config, use_flash_attention=use_flash_attention)
    net = _build(cfg)
    if not config.get("use_quant_conv", True) and "quant_conv.weight" in state_dict:
        raise SDImportError("the VAE config sets use_quant_conv=False but the weights contain quant_conv.")
    return _load_assign(net, vae_state_dict_to_monai(state_dict, net, cfg)), cfg


def convert_unet(
    state_dict: Mapping[str, torch.Tensor], config: Mapping[str, Any], use_flash_attention: bool = False
) -> tuple[nn.Module, dict[str, Any]]:
    """A MONAI ``SDDiffusionModelUNet`` holding a diffusers ``UNet2DConditionModel``'s weights, and its config.

    Args:
        state_dict: the diffusers UNet weights (e.g. ``unet.state_dict()``).
        config: the diffusers UNet config (e.g. ``dict(unet.config)``).
        use_flash_attention: PyTorch scaled-dot-product attention (faster; no attention maps for TTGA).
    """
    cfg = unet_config_from_diffusers(config, use_flash_attention=use_flash_attention)
    net = _build(cfg)
    return _load_assign(net, unet_state_dict_to_monai(state_dict, net)), cfg


# ---------------------------------------------------------------------------------------------------- sources
def _want(components: Sequence[str] | None, name: str) -> bool:
    return components is None or name in components


def _load_folder(
    root: Path, components: Sequence[str] | None, prediction_type: str | None, use_flash_attention: bool
) -> SDModels:
    found = sorted(p.name for p in root.iterdir())
    models = SDModels(source=str(root), source_format="diffusers")
    if (root / "config.json").is_file() and not (root / "model_index.json").is_file():  # one component
        name = _read_json(root / "config.json").get("_class_name")
        kinds = {"AutoencoderKL": "vae", "UNet2DConditionModel": "unet"}
        if name not in kinds:
            raise UnsupportedModelError(
                f"'{root}/config.json' describes a {name!r}; only 'AutoencoderKL' (vae) and 'UNet2DConditionModel' "
                "(unet) components convert."
            )
        if not _want(components, kinds[name]):
            raise SDImportError(
                f"'{root}' holds only the {kinds[name]} ({name}), but components={list(components)} were asked for."
            )
        config, weights = _read_component(root)
        if kinds[name] == "vae":
            models.autoencoder, models.autoencoder_config = convert_vae(weights, config, use_flash_attention)
            models.scale_factor = float(config.get("scaling_factor", SD_SCALE_FACTOR))
        else:
            models.unet, models.unet_config = convert_unet(weights, config, use_flash_attention)
            models.scheduler_config = scheduler_config_from_diffusers(None, prediction_type)
            models.notes.append("no scheduler config in a UNet folder: Stable Diffusion's training schedule assumed.")
        return models
    index = _read_json(root / "model_index.json") if (root / "model_index.json").is_file() else {}
    pipeline = str(index.get("_class_name", ""))
    markers = [f"{name}/ ({why})" for name, why in _UNSUPPORTED_FOLDERS.items() if (root / name).is_dir()]
    if markers or any(tag in pipeline for tag in ("XL", "StableDiffusion3", "Flux", "Cascade", "Kandinsky")):
        raise UnsupportedModelError(
            f"'{root}' is a {pipeline or 'diffusers'} pipeline with {', '.join(markers) or 'an unsupported layout'}; "
            "only Stable Diffusion 1.x / 2.x (one CLIP text encoder, UNet2DConditionModel, AutoencoderKL) converts."
        )
    if not (root / "vae").is_dir() and not (root / "unet").is_dir():
        raise SDImportError(
            f"'{root}' is not a Stable Diffusion checkpoint folder: expected model_index.json with vae/ and unet/ "
            f"subfolders (config.json + {_WEIGHT_FILES[0]} or .bin each), a component folder (config.json + "
            f"weights), or a single .ckpt/.safetensors file; found {found}."
        )
    for name, wanted in (("vae", _want(components, "vae")), ("unet", _want(components, "unet"))):
        if wanted and not (root / name).is_dir():
            if components is not None:
                raise FileNotFoundError(
                    f"'{root}' has no {name}/ folder (asked for {list(components)}); found {found}."
                )
            models.notes.append(f"no {name}/ folder in the source: {name} not converted.")
    if _want(components, "vae") and (root / "vae").is_dir():
        config, weights = _read_component(root / "vae")
        models.autoencoder, models.autoencoder_config = convert_vae(weights, config, use_flash_attention)
        models.scale_factor = float(config.get("scaling_factor", SD_SCALE_FACTOR))
    if _want(components, "unet") and (root / "unet").is_dir():
        config, weights = _read_component(root / "unet")
        models.unet, models.unet_config = convert_unet(weights, config, use_flash_attention)
        sched_file = root / "scheduler" / "scheduler_config.json"
        if sched_file.is_file():
            models.scheduler_config = scheduler_config_from_diffusers(_read_json(sched_file), prediction_type)
        else:
            models.scheduler_config = scheduler_config_from_diffusers(None, prediction_type)
            models.notes.append("no scheduler/scheduler_config.json: Stable Diffusion's training schedule assumed.")
    if (root / "text_encoder").is_dir():
        models.text_encoder_dir = root / "text_encoder"
        models.tokenizer_dir = root / "tokenizer" if (root / "tokenizer").is_dir() else None
    return models


def _schedule_from_betas(betas: torch.Tensor) -> dict[str, Any]:
    b = betas.double().flatten()
    n = b.numel()
    start, end = float(b[0]), float(b[-1])
    candidates = {
        "scaled_linear": torch.linspace(start**0.5, end**0.5, n, dtype=torch.float64) ** 2,
        "linear": torch.linspace(start, end, n, dtype=torch.float64),
    }
    for name, ref in candidates.items():
        if torch.allclose(b, ref, rtol=1e-4, atol=1e-8):
            return {"beta_schedule": name, "beta_start": start, "beta_end": end, "num_train_timesteps": n}
    raise UnsupportedModelError(
        f"the checkpoint's noise schedule (its {n} 'betas') is neither scaled-linear nor linear between {start:.6g} "
        f"and {end:.6g}; MONAI's schedulers cannot hold it."
    )


def _load_single_file(
    path: Path,
    components: Sequence[str] | None,
    attention_heads: int | Sequence[int] | None,
    head_channels: int | None,
    original_config: str | os.PathLike | None,
    prediction_type: str | None,
    upcast_attention: bool | None,
    use_ema: bool,
    use_flash_attention: bool,
    norm_num_groups: int,
) -> SDModels:
    state = load_weights(path)
    keys = list(state)
    models = SDModels(source=str(path), source_format="single_file")
    for marker, what in (
        ("model.diffusion_model.joint_blocks.", "SD3 (MMDiT transformer)"),
        ("double_blocks.", "Flux (transformer)"),
        ("conditioner.embedders.1.", "SDXL (two text encoders)"),
        ("control_model.", "a ControlNet"),
    ):
        if any(marker in k for k in keys):
            raise UnsupportedModelError(
                f"'{path}' is {what} (keys containing '{marker}'); only Stable Diffusion 1.x / 2.x checkpoints convert."
            )
    orig = read_original_config(original_config) if original_config is not None else {}
    unet_prefix = "model.diffusion_model."
    vae_prefix = next((p for p in ("first_stage_model.", "vae.") if any(k.startswith(p) for k in keys)), None)
    groups: dict[str, list[str]] = {
        "unet": [],
        "vae": [],
        "text": [],
        "ema": [],
        "loss": [],
        "schedule": [],
        "other": [],
    }
    bare_vae = (
        vae_prefix is None and "encoder.conv_in.weight" in state and not any(k.startswith(unet_prefix) for k in keys)
    )
    for k in keys:
        if k.startswith(unet_prefix):
            groups["unet"].append(k)
        elif vae_prefix and k.startswith(vae_prefix):
            groups["vae"].append(k)
        elif k.startswith(("cond_stage_model.", "conditioner.")):
            groups["text"].append(k)
        elif k.startswith("model_ema."):
            groups["ema"].append(k)
        elif k.startswith("loss."):
            groups["loss"].append(k)
        elif k in _LDM_SCHEDULE_BUFFERS:
            groups["schedule"].append(k)
        elif bare_vae and k.startswith(("encoder.", "decoder.", "quant_conv.", "post_quant_conv.")):
            groups["vae"].append(k)
        else:
            groups["other"].append(k)
    if not groups["unet"] and not groups["vae"]:
        raise SDImportError(
            f"'{path}' is not a Stable Diffusion checkpoint: expected keys starting with '{unet_prefix}' (UNet) "
            f"and/or 'first_stage_model.' (VAE), or a VAE-only file (encoder.*, decoder.*); found {len(keys)} keys "
            f"such as {keys[:5]}."
        )
    if groups["other"]:
        raise SDImportError(
            f"'{path}' has {len(groups['other'])} unexpected keys outside the UNet / VAE / text encoder: "
            f"{groups['other'][:8]}{' ...' if len(groups['other']) > 8 else ''}; it is not a plain Stable Diffusion "
            "1.x / 2.x checkpoint."
        )
    if groups["text"]:
        models.notes.append(
            f"{len(groups['text'])} text encoder keys (cond_stage_model) not converted: a single file holds no "
            "tokenizer; encode prompts with a text encoder folder or pass precomputed embeddings."
        )
    if groups["loss"]:
        models.notes.append(f"{len(groups['loss'])} training-loss keys (loss.*: discriminator / LPIPS) ignored.")
    if groups["schedule"]:
        models.notes.append(
            f"{len(groups['schedule'])} noise-schedule buffers ({', '.join(groups['schedule'][:3])}, ...) not copied: "
            "the schedule is rebuilt from 'betas' (checked to be linear or scaled-linear)."
        )
    if _want(components, "vae") and groups["vae"]:
        cut = len(vae_prefix) if vae_prefix else 0
        vae = {k[cut:]: state[k] for k in groups["vae"]}
        if "encoder.down.0.block.0.conv1.weight" in vae:
            vae = ldm_vae_to_diffusers(vae)
        config = diffusers_vae_config_from_state_dict(
            vae, scaling_factor=orig.get("scale_factor"), norm_num_groups=norm_num_groups
        )
        models.autoencoder, models.autoencoder_config = convert_vae(vae, config, use_flash_attention)
        models.scale_factor = float(config["scaling_factor"])
        if "scale_factor" not in orig:
            models.notes.append(f"latent scale factor {models.scale_factor} assumed (Stable Diffusion's).")
    elif _want(components, "vae") and components is not None:
        raise SDImportError(f"'{path}' holds no VAE weights (first_stage_model.*), but the VAE was asked for.")
    if _want(components, "unet") and groups["unet"]:
        if use_ema:
            ema = {}
            for k in groups["unet"]:
                flat = "model_ema." + k[len("model.") :].replace(".", "")
                if flat not in state:
                    raise SDImportError(f"use_ema=True but '{path}' has no EMA copy '{flat}' of '{k}'.")
                ema[k[len(unet_prefix) :]] = state[flat]
            unet = ema
            models.notes.append("EMA weights (model_ema.*) converted.")
        else:
            unet = {k[len(unet_prefix) :]: state[k] for k in groups["unet"]}
            if groups["ema"]:
                models.notes.append(f"{len(groups['ema'])} EMA keys (model_ema.*) ignored; use_ema=True converts them.")
        if "input_blocks.0.0.weight" not in unet:
            raise UnsupportedModelError(
                f"'{path}' has UNet keys that are not in ldm naming (input_blocks.*); convert the diffusers folder "
                "instead."
            )
        if head_channels is None and attention_heads is None:
            head_channels = orig.get("num_head_channels")
            attention_heads = orig.get("num_heads") if head_channels is None else None
            if head_channels is None and attention_heads is None:
                models.notes.append(
                    "attention heads inferred from the context size (SD 1.x: 8 heads; SD 2.x: 64 channels)."
                )
        config = diffusers_unet_config_from_ldm(
            unet,
            attention_heads=attention_heads,
            head_channels=head_channels,
            upcast_attention=bool(upcast_attention),
            norm_num_groups=norm_num_groups,
        )
        models.unet, models.unet_config = convert_unet(
            ldm_unet_to_diffusers(unet, config["layers_per_block"]), config, use_flash_attention
        )
        sched: dict[str, Any] = {}
        if "betas" in state:
            sched = _schedule_from_betas(state["betas"])
        for src, dst in (
            ("num_train_timesteps", "num_train_timesteps"),
            ("beta_start", "beta_start"),
            ("beta_end", "beta_end"),
        ):
            if src in orig and "betas" not in state:
                sched[dst] = orig[src]
        pred = prediction_type or orig.get("prediction_type")
        if pred is None:
            models.notes.append(
                "a single file does not record the prediction type: 'epsilon' assumed (SD 2.x 768-v models need "
                "prediction_type='v_prediction')."
            )
        models.scheduler_config = scheduler_config_from_diffusers(sched, pred)
    elif _want(components, "unet") and components is not None:
        raise SDImportError(f"'{path}' holds no UNet weights (model.diffusion_model.*), but the UNet was asked for.")
    return models


def load_stable_diffusion(
    source: str | os.PathLike,
    components: Sequence[str] | None = None,
    attention_heads: int | Sequence[int] | None = None,
    head_channels: int | None = None,
    original_config: str | os.PathLike | None = None,
    prediction_type: str | None = None,
    upcast_attention: bool | None = None,
    use_ema: bool = False,
    use_flash_attention: bool = False,
    norm_num_groups: int = 32,
) -> SDModels:
    """Convert a local Stable Diffusion 1.x / 2.x checkpoint into MONAI networks (nothing is downloaded).

    Args:
        source: a diffusers pipeline folder, a diffusers component folder, or a single ``.ckpt`` /
            ``.safetensors`` file.
        components: ``("vae",)``, ``("unet",)`` or both; ``None`` converts whatever the source holds.
        attention_heads: single file only: heads per UNet level (SD 1.x: 8).
        head_channels: single file only: channels per attention head (SD 2.x: 64).
        original_config: single file only: the ldm YAML (heads, prediction type, scale factor, schedule).
        prediction_type: overrides the source's (``"epsilon"``, ``"v_prediction"``, ``"sample"``).
        upcast_attention: single file only: float32 attention scores (SD 2.1-v); diffusers folders store it.
        use_ema: single file only: convert the EMA weights (``model_ema.*``) of the UNet.
        use_flash_attention: PyTorch scaled-dot-product attention in the converted networks.
        norm_num_groups: single file only: GroupNorm groups (not stored in the weights; 32 in SD).

    Raises:
        FileNotFoundError: the source or a needed file is missing (the message lists what was found).
        SDImportError: not a checkpoint, or its weights do not match its config (missing / unexpected keys listed).
        UnsupportedModelError: SDXL, SD3, Flux or another layout MONAI's networks cannot represent.
    """
    path = Path(source)
    if components is not None:
        components = tuple(components)
        bad = sorted(set(components) - {"vae", "unet"})
        if bad or not components:
            raise ValueError(f"components must be a non-empty subset of ('vae', 'unet'), got {list(components)}.")
    if not path.exists():
        raise FileNotFoundError(
            f"Stable Diffusion source '{path}' does not exist; pass a local diffusers folder or a .ckpt/.safetensors "
            "file."
        )
    if path.is_dir():
        return _load_folder(path, components, prediction_type, use_flash_attention)
    if path.suffix not in _SINGLE_FILE_SUFFIXES:
        raise SDImportError(
            f"'{path}' is neither a folder nor a checkpoint file (expected one of {list(_SINGLE_FILE_SUFFIXES)})."
        )
    return _load_single_file(
        path,
        components,
        attention_heads,
        head_channels,
        original_config,
        prediction_type,
        upcast_attention,
        use_ema,
        use_flash_attention,
        norm_num_groups,
    )


# ---------------------------------------------------------------------------------------------------- writing
_ENDPOINT_KEYS = ("spatial_dims", "in_channels", "out_channels")


def _generator_config(models: SDModels) -> tuple[dict[str, Any] | None, str]:
    ae, unet = models.autoencoder_config, models.unet_config
    if ae is None or unet is None:
        return None, "no generator.pt: the source lacks a VAE or a UNet."
    if unet.get("num_class_embeds"):
        return (
            None,
            "no generator.pt: the UNet has class embeddings (an upscaler?), which LatentGenerator does not map.",
        )
    if ae["latent_channels"] != unet["out_channels"] or ae["in_channels"] != ae["out_channels"]:
        return None, (
            f"no generator.pt: VAE latent channels {ae['latent_channels']} / UNet output channels "
            f"{unet['out_channels']} "
            "differ, or the VAE's input and output channels differ."
        )
    skip = set(_ENDPOINT_KEYS) | {"with_conditioning", "cross_attention_dim", "num_class_embeds"}
    config = {
        "spatial_dims": 2,
        "image_channels": ae["in_channels"],
        "autoencoder": {k: v for k, v in ae.items() if k not in _ENDPOINT_KEYS},
        "unet": {k: v for k, v in unet.items() if k not in skip},
        "scheduler": dict(models.scheduler_config or scheduler_config_from_diffusers(None)),
        "conditioning": {
            "num_prompts": None,
            "prompt_tokens": None,
            "cross_attention_dim": unet["cross_attention_dim"],
            "num_classes": None,
            "seg_channels": None,
            "concat_channels": unet["in_channels"] - unet["out_channels"],
        },
        "scale_factor": models.scale_factor,
    }
    return to_json_config(config), ""


def reference_generator_config(
    name: str = "sd-1.5",
    vae: Mapping[str, Any] | None = None,
    unet: Mapping[str, Any] | None = None,
    use_flash_attention: bool = False,
) -> dict[str, Any]:
    """The :class:`~monai_genaug.generative.latent_generator.LatentGenerator` config of a reference Stable Diffusion
    architecture (SD 1.5: 0.86 B-parameter UNet, 768-d context, x8 VAE), built through the same config conversion as
    imported weights; ``LatentGenerator.from_config`` gives it random weights (nothing is downloaded).

    Args:
        name: ``"sd-1.5"`` or ``"sd-2"`` (see :data:`~monai_genaug.networks.sd.configs.SD_REFERENCE_CONFIGS`).
        vae: diffusers VAE config keys to override (e.g. ``{"block_out_channels": [32, 32, 64, 64]}``).
        unet: diffusers UNet config keys to override.
        use_flash_attention: PyTorch scaled-dot-product attention in the UNet and the VAE.

    Example::

        gen = LatentGenerator.from_config(reference_generator_config("sd-1.5")).to("cuda")
    """
    ref = reference_diffusers_configs(name, vae, unet)
    models = SDModels(
        source=f"reference:{name}",
        source_format="diffusers",
        autoencoder_config=autoencoder_config_from_diffusers(ref["vae"], use_flash_attention),
        unet_config=unet_config_from_diffusers(ref["unet"], use_flash_attention),
        scheduler_config=scheduler_config_from_diffusers(None),
    )
    config, why = _generator_config(models)
    if config is None:
        raise SDImportError(f"reference architecture '{name}' with these overrides: {why}")
    return config


def save_converted(
    models: SDModels,
    out_dir: str | os.PathLike,
    prompts: Sequence[str] | None = None,
    null_prompt: str = "",
    embeddings: str | os.PathLike | None = None,
    text_encoder_dir: str | os.PathLike | None = None,
    tokenizer_dir: str | os.PathLike | None = None,
    device: str | torch.device = "cpu",
    outputs: Sequence[str] | None = None,
) -> dict[str, Path]:
    """Write converted networks as MONAI checkpoints (atomically) into ``out_dir``; see the module docstring.

    Args:
        models: from :func:`load_stable_diffusion`.
        out_dir: destination folder (created).
        prompts: prompts to encode into ``embeddings.pt`` (needs a text encoder).
        null_prompt: the unconditional prompt (``""`` in Stable Diffusion).
        embeddings: a precomputed embeddings file to check and copy instead of encoding prompts.
        text_encoder_dir: CLIP text encoder folder; ``None`` uses the source's ``text_encoder/``.
        tokenizer_dir: tokenizer folder; ``None`` uses the source's ``tokenizer/``.
        device: where to run the text encoder.
        outputs: which network files to write, among ``"generator"``, ``"autoencoder"``, ``"unet"``; ``None``
            writes all that the converted networks allow (``unet.pt`` duplicates the UNet of ``generator.pt``:
            leave it out to save 3.4 GB for SD).

    Returns:
        ``{"generator" | "autoencoder" | "unet" | "embeddings" | "report": path}`` for the files written.
    """
    from monai_genaug.generative.latent_generator import LatentGenerator

    wanted = set(outputs) if outputs is not None else {"generator", "autoencoder", "unet"}
    if not wanted <= {"generator", "autoencoder", "unet"}:
        raise ValueError(f"outputs must be among 'generator', 'autoencoder', 'unet', got {sorted(wanted)}.")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    notes = list(models.notes)
    source = {"source": models.source, "source_format": models.source_format, "variant": models.variant}
    if prompts and embeddings is not None:
        raise ValueError(
            "give either prompts (encoded with a text encoder) or a precomputed embeddings file, not both."
        )
    dim = models.unet_config["cross_attention_dim"] if models.unet_config else None
    if embeddings is not None:
        emb = load_prompt_embeddings(embeddings, cross_attention_dim=dim)
        written["embeddings"] = save_prompt_embeddings(
            out / "embeddings.pt", emb["prompt_embeds"], emb["null_embeds"], emb["prompts"], emb["null_prompt"]
        )
    elif prompts:
        enc = text_encoder_dir or models.text_encoder_dir
        if enc is None:
            raise SDImportError(
                f"prompts were given but '{models.source}' has no text_encoder/ folder; pass a text encoder folder "
                "(text_encoder_dir) or precomputed embeddings."
            )
        tok = tokenizer_dir or (models.tokenizer_dir if text_encoder_dir is None else None)
        emb_all = encode_prompts([*prompts, null_prompt], enc, tok, device=device)
        if dim is not None and emb_all.shape[-1] != dim:
            raise SDImportError(
                f"the text encoder '{enc}' gives {emb_all.shape[-1]}-d embeddings but the UNet's context is {dim}-d."
            )
        written["embeddings"] = save_prompt_embeddings(
            out / "embeddings.pt", emb_all[:-1], emb_all[-1:], list(prompts), null_prompt
        )
    if models.autoencoder is not None and "autoencoder" in wanted:
        from monai_genaug.methods.gms import (
            save_autoencoder,  # the GMS autoencoder checkpoint format
        )

        ae = models.autoencoder_config
        if ae["in_channels"] == ae["out_channels"]:
            cfg = {
                "spatial_dims": ae["spatial_dims"],
                "image_channels": ae["in_channels"],
                "autoencoder": {k: v for k, v in ae.items() if k not in _ENDPOINT_KEYS},
                "scale_factor": models.scale_factor,
                **source,
            }
            save_autoencoder(models.autoencoder, out / "autoencoder.pt", cfg)
            written["autoencoder"] = out / "autoencoder.pt"
        else:
            notes.append(
                f"no autoencoder.pt: the VAE maps {ae['in_channels']} to {ae['out_channels']} channels, which the GMS "
                "autoencoder format (image_channels in and out) cannot describe."
            )
    if models.unet is not None and "unet" in wanted:
        state = {k: v.detach().cpu() for k, v in models.unet.state_dict().items()}
        cfg = {"network": models.unet_config, "scheduler": models.scheduler_config, **source}
        written["unet"] = atomic_save(
            {"format": UNET_FORMAT, "config": to_json_config(cfg), "state_dict": state}, out / "unet.pt"
        )
    gen_cfg, why = _generator_config(models) if "generator" in wanted else (None, "")
    if gen_cfg is not None:
        sched = {k: v for k, v in gen_cfg["scheduler"].items() if k != "type"}
        generator = LatentGenerator(
            unet=models.unet,
            scheduler=DDPMScheduler(**sched),
            autoencoder=models.autoencoder,
            concat_channels=gen_cfg["conditioning"]["concat_channels"],
            scale_factor=models.scale_factor,
            config=gen_cfg,
        )
        generator.save(str(out / "generator.pt"), extra=source)
        written["generator"] = out / "generator.pt"
    elif why:
        notes.append(why)
    report = {
        "format": "monai_genaug.SDConversion",
        **source,
        "files": {k: v.name for k, v in written.items()},
        "autoencoder": models.autoencoder_config,
        "unet": models.unet_config,
        "scheduler": models.scheduler_config,
        "scale_factor": models.scale_factor,
        "notes": notes,
    }
    tmp = out / ".conversion.json.tmp"
    tmp.write_text(json.dumps(to_json_config(report), indent=2))
    os.replace(tmp, out / "conversion.json")
    written["report"] = out / "conversion.json"
    return written


def convert_stable_diffusion(
    source: str | os.PathLike,
    out_dir: str | os.PathLike,
    prompts: Sequence[str] | None = None,
    null_prompt: str = "",
    embeddings: str | os.PathLike | None = None,
    text_encoder_dir: str | os.PathLike | None = None,
    tokenizer_dir: str | os.PathLike | None = None,
    device: str | torch.device = "cpu",
    outputs: Sequence[str] | None = None,
    **load_kwargs: Any,
) -> dict[str, Path]:
    """:func:`load_stable_diffusion` then :func:`save_converted` (what ``python -m monai_genaug.sd_import`` runs).

    Args:
        source: see :func:`load_stable_diffusion`.
        out_dir: see :func:`save_converted`.
        prompts: see :func:`save_converted`.
        null_prompt: see :func:`save_converted`.
        embeddings: see :func:`save_converted`.
        text_encoder_dir: see :func:`save_converted`.
        tokenizer_dir: see :func:`save_converted`.
        device: see :func:`save_converted`.
        outputs: see :func:`save_converted`.
        load_kwargs: keyword arguments of :func:`load_stable_diffusion`.
    """
    if prompts and text_encoder_dir is None and embeddings is None and Path(source).is_file():
        raise SDImportError(
            f"prompts were given but the single file '{source}' holds no usable text encoder (no tokenizer); pass "
            "text_encoder_dir or precomputed embeddings."
        )
    models = load_stable_diffusion(source, **load_kwargs)
    return save_converted(
        models,
        out_dir,
        prompts=prompts,
        null_prompt=null_prompt,
        embeddings=embeddings,
        text_encoder_dir=text_encoder_dir,
        tokenizer_dir=tokenizer_dir,
        device=device,
        outputs=outputs,
    )


def load_converted_network(
    path: str | os.PathLike, map_location: str | torch.device | None = "cpu"
) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the network of an ``autoencoder.pt`` or ``unet.pt`` written by :func:`save_converted`.

    Returns:
        ``(network in eval mode, checkpoint config)``.
    """
    ckpt = load_checkpoint(path, map_location=map_location)
    fmt = ckpt.get("format") if isinstance(ckpt, dict) else None
    if fmt not in (AUTOENCODER_FORMAT, UNET_FORMAT):
        raise ValueError(
            f"'{path}' is not a converted autoencoder / UNet checkpoint (format {fmt!r}, expected "
            f"{AUTOENCODER_FORMAT!r} or {UNET_FORMAT!r}); write it with monai_genaug.sd_import."
        )
    cfg = ckpt["config"]
    if fmt == AUTOENCODER_FORMAT:  # the GMS format: weights under "autoencoder"
        ae = {"type": "AutoencoderKL", **cfg["autoencoder"]}
        channels = {"in_channels": cfg["image_channels"], "out_channels": cfg["image_channels"]}
        net = build_network({"spatial_dims": cfg["spatial_dims"], **channels, **ae})
        state = ckpt["autoencoder"]
    else:
        net = build_network(cfg["network"])
        state = ckpt["state_dict"]
    check_state_dict_compatible(net, state, name=str(path))
    net.load_state_dict(state)
    return net.eval(), cfg
