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
"""GMS, the method facade: size presets (:func:`gms_config`) and the bundle helpers that build or load a :class:`~monai_genaug.networks.gms.GMSSegmenter`.

Huo et al., "Generative Medical Segmentation", arXiv:2403.18198 (AAAI 2025). The network (frozen autoencoder +
latent mapping net) lives in :mod:`monai_genaug.networks.gms`, its loss :class:`~monai_genaug.methods.gms.training.GMSLoss`
and trainers in :mod:`monai_genaug.methods.gms.training`, the bundle data helpers in :mod:`monai_genaug.methods.gms.data`.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from monai_genaug.networks.autoencoder import load_autoencoder
from monai_genaug.networks.gms import GMS_CHECKPOINT_FORMAT, GMSSegmenter
from monai_genaug.utils.paths import is_empty_path
from monai_genaug.utils.checkpoint import to_json_config

__all__ = [
    "GMS_CHECKPOINT_FORMAT",
    "build_gms_segmenter",
    "gms_config",
    "load_gms_segmenter",
]


_PRESETS: dict[str, dict[str, Any]] = {
    # unit tests: a few thousand parameters, 16-32 px
    "tiny": {
        "autoencoder": {
            "channels": [8, 16],
            "num_res_blocks": [1, 1],
            "attention_levels": [False, False],
            "latent_channels": 2,
            "norm_num_groups": 4,
            "with_encoder_nonlocal_attn": False,
            "with_decoder_nonlocal_attn": False,
        },
        "mapping": {"channels": 8, "channel_mult": [1, 2], "norm_num_groups": 4},
    },
    # CPU: 2D 64-128 px, 3D 32-64 voxels (x4 down-sampling); 2D: 0.51 M parameters in all, 0.39 M trainable
    "small": {
        "autoencoder": {
            "channels": [16, 32, 32],
            "num_res_blocks": [1, 1, 1],
            "attention_levels": [False, False, False],
            "latent_channels": 4,
            "norm_num_groups": 8,
            "with_encoder_nonlocal_attn": False,
            "with_decoder_nonlocal_attn": False,
        },
        "mapping": {"channels": 16, "channel_mult": [1, 2, 4, 4], "norm_num_groups": 8},
        "3d": {
            "autoencoder": {"channels": [8, 16, 16], "norm_num_groups": 4},
            "mapping": {"channels": 8, "channel_mult": [1, 2, 4, 4], "norm_num_groups": 8},
        },
    },
    # the paper's mapping network (ch 32, 1.56 M parameters) on a MONAI autoencoder with x4 down-sampling
    "paper": {
        "autoencoder": {
            "channels": [32, 64, 64],
            "num_res_blocks": [1, 1, 1],
            "attention_levels": [False, False, False],
            "latent_channels": 4,
            "norm_num_groups": 16,
            "with_encoder_nonlocal_attn": False,
            "with_decoder_nonlocal_attn": False,
        },
        "mapping": {"channels": 32, "channel_mult": [1, 2, 4, 4], "norm_num_groups": 16},
    },
    # GPU: an SD-like autoencoder (x8 down-sampling, 4 latent channels) and the paper's mapping network
    "base": {
        "autoencoder": {
            "channels": [64, 128, 256, 256],
            "num_res_blocks": [2, 2, 2, 2],
            "attention_levels": [False, False, False, False],
            "latent_channels": 4,
            "norm_num_groups": 32,
            "with_encoder_nonlocal_attn": True,
            "with_decoder_nonlocal_attn": True,
        },
        "mapping": {"channels": 32, "channel_mult": [1, 2, 4, 4], "norm_num_groups": 16},
    },
}


def gms_config(
    preset: str = "small",
    spatial_dims: int = 2,
    image_channels: int = 3,
    num_classes: int = 1,
    mask_value_range: Sequence[float] = (0.0, 1.0),
    deep_supervision: bool | Sequence[str] = True,
    use_flash_attention: bool = False,
    mapping_channels: int | None = None,
) -> dict[str, Any]:
    """A JSON-serialisable :class:`GMSSegmenter` config from a size preset.

    Args:
        preset: ``"tiny"`` (tests), ``"small"`` (CPU: 2D 64-128 px, 3D 32-64 voxels; thinner nets in 3D; mapping
            width 16), ``"paper"`` (the paper's 1.56 M-parameter mapping network, width 32, on a x4 autoencoder) or
            ``"base"`` (GPU: SD-like x8 autoencoder and the paper's mapping network).
        spatial_dims: 2 or 3.
        image_channels: image channels (3 RGB, 1 grey, one per MRI modality).
        num_classes: foreground classes K (1 = binary).
        mask_value_range: the values (outside, inside) a mask takes when encoded as an image.
        deep_supervision: heads of the mapping network (see :class:`LatentMappingNet`).
        use_flash_attention: memory-efficient attention in the mapping network (recommended in 3D).
        mapping_channels: override the base width of the mapping network.
    """
    if preset not in _PRESETS:
        raise ValueError(f"unknown GMS preset '{preset}'; choose one of {sorted(_PRESETS)}.")
    if spatial_dims not in (2, 3):
        raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}.")
    p = copy.deepcopy(_PRESETS[preset])
    over = p.pop("3d", None)
    if spatial_dims == 3 and over:
        p["autoencoder"].update(over["autoencoder"])
        p["mapping"].update(over["mapping"])
    latent = int(p["autoencoder"]["latent_channels"])
    mapping = dict(p["mapping"])
    if mapping_channels is not None:
        mapping["channels"] = int(mapping_channels)
    mapping.update(
        in_channels=latent,
        out_channels=latent * int(num_classes),
        deep_supervision=deep_supervision if isinstance(deep_supervision, bool) else list(deep_supervision),
        use_flash_attention=bool(use_flash_attention),
    )
    return to_json_config(
        {
            "spatial_dims": int(spatial_dims),
            "image_channels": int(image_channels),
            "num_classes": int(num_classes),
            "mask_value_range": [float(v) for v in mask_value_range],
            "scale_factor": 1.0,
            "autoencoder": p["autoencoder"],
            "mapping": mapping,
        }
    )


def load_gms_segmenter(
    path: str | os.PathLike,
    map_location: str | torch.device | None = "cpu",
    include_background: bool = True,
    made_by: str | None = None,
    latent_roi_size: Sequence[int] | int | None = None,
    latent_overlap: float = 0.25,
) -> GMSSegmenter:
    """Load a :class:`GMSSegmenter` checkpoint (a function for bundle configs: ``"_target_": "...load_gms_segmenter"``).

    Args:
        path: the checkpoint written by :meth:`GMSSegmenter.save`.
        map_location: device the tensors are loaded to.
        include_background: see :class:`GMSSegmenter`.
        made_by: the command (train config) that writes this file, quoted when the file is missing.
        latent_roi_size: the latent sliding window for images or volumes larger than the training size
            (:meth:`GMSSegmenter.set_latent_window`; e.g. the training ``spatial_size`` divided by the autoencoder
            factor); None maps the whole latent at once.
        latent_overlap: overlap of the latent windows.

    Raises:
        FileNotFoundError: the file is missing (the message names ``made_by``).
    """
    if made_by and not Path(path).is_file():
        raise FileNotFoundError(f"GMS model file '{path}' does not exist. It is written by: {made_by}")
    seg = GMSSegmenter.load(path, map_location=map_location, include_background=include_background)
    seg.set_latent_window(latent_roi_size, latent_overlap)
    return seg


def build_gms_segmenter(
    config: Mapping[str, Any], autoencoder_path: str | os.PathLike | None = None, map_location: str | torch.device | None = "cpu"
) -> GMSSegmenter:
    """A new segmenter from a :func:`gms_config`, optionally on a trained autoencoder file (a bundle-config helper).

    Args:
        config: the GMS config (its ``autoencoder`` block, ``spatial_dims`` and ``image_channels`` are replaced by the
            autoencoder checkpoint's when ``autoencoder_path`` is given).
        autoencoder_path: an autoencoder written by :func:`save_autoencoder` (or the GMS autoencoder trainer), or None
            for a new, untrained autoencoder.
        map_location: where the autoencoder weights are loaded.
    """
    config = dict(to_json_config(config))
    if is_empty_path(autoencoder_path):
        return GMSSegmenter.from_config(config)
    ae, ae_cfg = load_autoencoder(autoencoder_path, map_location=map_location)
    for key in ("spatial_dims", "image_channels", "autoencoder"):
        config[key] = ae_cfg[key]
    config["mapping"] = dict(config["mapping"], in_channels=int(ae.latent_channels))
    config["mapping"]["out_channels"] = int(ae.latent_channels) * int(config["num_classes"])
    return GMSSegmenter.from_config(config, autoencoder=ae)
