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
"""Checkpoint I/O of a MONAI ``AutoencoderKL`` (weights + the JSON config it was built from).

One format (``"monai_genaug.AutoencoderKL"``) shared by GMS (its frozen tokenizer), the Stable Diffusion import
(``autoencoder.pt``) and any method that trains an autoencoder on its own. ``build_autoencoder`` also builds the
converted Stable Diffusion VAE (``type="SDAutoencoderKL"``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import torch
from monai.networks.nets import AutoencoderKL
from torch import nn

from monai_genaug.utils.checkpoint import (
    register_checkpoint_format,
    atomic_save,
    check_state_dict_compatible,
    load_checkpoint,
    to_json_config,
)

__all__ = [
    "AUTOENCODER_CHECKPOINT_FORMAT",
    "autoencoder_factor",
    "build_autoencoder",
    "load_autoencoder",
    "save_autoencoder",
]


AUTOENCODER_CHECKPOINT_FORMAT = register_checkpoint_format(
    "monai_genaug.AutoencoderKL", "AutoencoderKL", "write it with monai_genaug.networks.autoencoder.save_autoencoder()"
)

# ----------------------------------------------------------------------------------------------------------------
# the frozen tokenizer
# ----------------------------------------------------------------------------------------------------------------
def build_autoencoder(spatial_dims: int, image_channels: int, **kwargs: Any) -> AutoencoderKL:
    """A MONAI ``AutoencoderKL`` with ``in_channels = out_channels = image_channels``.

    Args:
        spatial_dims: 2 or 3.
        image_channels: channels of the images (masks are encoded with the same number of channels).
        kwargs: the other ``AutoencoderKL`` arguments (``channels``, ``latent_channels``, ...).
    """
    from monai_genaug.networks.sd.networks import AUTOENCODER_TYPES  # networks.sd reads this module's format

    ae_type = kwargs.pop("type", "AutoencoderKL")  # "SDAutoencoderKL": converted Stable Diffusion VAE
    if ae_type not in AUTOENCODER_TYPES:
        raise ValueError(f"unknown autoencoder type '{ae_type}'; choose one of {sorted(AUTOENCODER_TYPES)}.")
    return AUTOENCODER_TYPES[ae_type](
        spatial_dims=spatial_dims, in_channels=image_channels, out_channels=image_channels, **kwargs
    )


def autoencoder_factor(autoencoder: nn.Module) -> int:
    """Spatial down-sampling factor of a MONAI ``AutoencoderKL`` (2 ** (number of levels - 1))."""
    channels = getattr(getattr(autoencoder, "encoder", None), "channels", None)
    if channels is None:
        raise TypeError(
            f"cannot read the down-sampling factor of {type(autoencoder).__name__}; GMS expects a MONAI AutoencoderKL "
            "(encoder.channels), or wrap yours to expose it."
        )
    return 2 ** (len(channels) - 1)


def save_autoencoder(autoencoder: nn.Module, path: str | os.PathLike, config: Mapping[str, Any]) -> None:
    """Write an autoencoder checkpoint (weights + the config it was built from) atomically.

    Args:
        autoencoder: the ``AutoencoderKL``.
        path: destination file.
        config: ``{"spatial_dims", "image_channels", "autoencoder": {AutoencoderKL kwargs}}`` (a :func:`gms_config`
            works); extra JSON-like entries are kept.
    """
    config = to_json_config(config)
    for key in ("spatial_dims", "image_channels", "autoencoder"):
        if key not in config:
            raise ValueError(f"autoencoder config lacks '{key}'; pass a gms_config() or the same keys.")
    state = {k: v.detach().cpu() for k, v in autoencoder.state_dict().items()}
    atomic_save({"format": AUTOENCODER_CHECKPOINT_FORMAT, "config": config, "autoencoder": state}, path)


def load_autoencoder(
    path: str | os.PathLike, map_location: str | torch.device | None = "cpu"
) -> tuple[AutoencoderKL, dict[str, Any]]:
    """Rebuild an autoencoder written by :func:`save_autoencoder`; returns ``(autoencoder, config)``."""
    ckpt = load_checkpoint(path, map_location=map_location, expected_format=AUTOENCODER_CHECKPOINT_FORMAT)
    cfg = ckpt.get("config") or {}
    missing = [k for k in ("spatial_dims", "image_channels", "autoencoder") if k not in cfg]
    if missing:
        raise ValueError(
            f"autoencoder checkpoint '{path}' has no {missing} in its config, so the network cannot be rebuilt; train it "
            "with monai_genaug.methods.gms.create_gms_autoencoder_trainer or save it with save_autoencoder(config=...)."
        )
    ae = build_autoencoder(int(cfg["spatial_dims"]), int(cfg["image_channels"]), **cfg["autoencoder"])
    check_state_dict_compatible(ae, ckpt["autoencoder"], name=f"autoencoder in {path}")
    ae.load_state_dict(ckpt["autoencoder"])
    return ae, cfg
