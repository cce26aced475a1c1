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
"""Bundle weights: load with a message that names the train config making a missing file, and export.

Bundle configs reference weights by path (``models/model.pt`` for the segmenter, as MONAI Label expects, and
generator files written by :func:`monai_genaug.methods.ttga.save_generator`). A missing file raises
``FileNotFoundError`` telling which command makes it, instead of a bare ``No such file``.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from monai_genaug.generative.latent_generator import LatentGenerator
from monai_genaug.utils.checkpoint import (
    CheckpointMismatchError,
    atomic_save,
    check_state_dict_compatible,
    load_checkpoint,
)

__all__ = ["export_network", "load_generator", "load_network_weights", "missing_weights_message"]


def missing_weights_message(path: str | os.PathLike, made_by: str | None, what: str = "weights") -> str:
    """The message of a missing weights file: the path and the command that writes it."""
    msg = f"{what} file '{path}' does not exist."
    if made_by:
        msg += f" It is written by: {made_by}"
    return msg


def load_generator(
    path: str | os.PathLike,
    device: str | torch.device = "cpu",
    made_by: str | None = None,
    image_channels: int | None = None,
    spatial_dims: int | None = None,
) -> LatentGenerator:
    """Load a :class:`LatentGenerator` for inference: eval mode, frozen, on ``device``.

    Args:
        path: generator file.
        device: target device.
        made_by: the command (train config) that writes this file, quoted when the file is missing.
        image_channels: expected image channels (checked).
        spatial_dims: expected spatial dimensions (checked).

    Raises:
        FileNotFoundError: the file is missing (the message names ``made_by``).
        ValueError: the generator does not fit the expected channels / dimensions.
    """
    if not Path(path).is_file():
        raise FileNotFoundError(missing_weights_message(path, made_by, "generator"))
    gen = LatentGenerator.load(str(path))
    if spatial_dims is not None and gen.spatial_dims != int(spatial_dims):
        raise ValueError(
            f"generator '{path}' is {gen.spatial_dims}D but this config is {spatial_dims}D; use the "
            f"{gen.spatial_dims}D config or a {spatial_dims}D generator."
        )
    if image_channels is not None and gen.image_channels != int(image_channels):
        raise ValueError(
            f"generator '{path}' takes {gen.image_channels}-channel images but the data has {image_channels}; "
            "train a generator on this data (train_generator.json) or convert the images."
        )
    return gen.to(device).eval().requires_grad_(False)


def load_network_weights(
    network: nn.Module,
    path: str | os.PathLike,
    device: str | torch.device = "cpu",
    made_by: str | None = None,
    key: str | None = None,
) -> nn.Module:
    """Load a state dict (MONAI bundle ``models/model.pt`` style, optionally under ``key``) into ``network``.

    Returns the network on ``device`` in eval mode.

    Raises:
        FileNotFoundError: the file is missing (the message names ``made_by``).
        CheckpointMismatchError: the weights do not fit the network (keys / shapes listed).
    """
    if not Path(path).is_file():
        raise FileNotFoundError(missing_weights_message(path, made_by, "segmenter weights"))
    state = load_checkpoint(path)
    if key is not None and isinstance(state, dict) and key in state:
        state = state[key]
    elif isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    try:
        check_state_dict_compatible(network, state, name=str(path))
    except CheckpointMismatchError as e:
        raise CheckpointMismatchError(
            f"{e} The network_def of the config must match the one the weights were trained with"
            + (f" ({made_by})." if made_by else ".")
        ) from e
    network.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
    return network.to(device).eval()


def export_network(network: nn.Module, path: str | os.PathLike) -> Path:
    """Write ``network``'s state dict (CPU, float32) to ``path`` atomically (the MONAI ``models/model.pt`` format)."""
    state = {k: v.detach().cpu() for k, v in network.state_dict().items()}
    return atomic_save(state, path)
