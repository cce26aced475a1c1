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
"""Ignite handler that sets a model's latent scale factor from the data when training starts (Rombach et al.,
arXiv:2112.10752: the latents are scaled to unit variance before diffusion or latent mapping).
"""

from __future__ import annotations

import logging
from typing import Any

from ignite.engine import Events
import torch

from monai_genaug.networks.gms import GMSSegmenter

__all__ = ["ScaleFactorInitializer"]

logger = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------------------------------
# handlers
# ----------------------------------------------------------------------------------------------------------------
class ScaleFactorInitializer:
    """On ``STARTED``, set the segmenter's latent scale factor to 1 / std of the image latents of ``loader``.

    Attach it before a resume handler: a resumed run then restores the saved scale factor.

    Args:
        segmenter: the :class:`GMSSegmenter`.
        loader: data loader of dicts with ``image_key``.
        image_key: batch key of the images.
        max_batches: batches used for the estimate (None: all).
    """

    def __init__(
        self, segmenter: GMSSegmenter, loader: Any, image_key: str = "image", max_batches: int | None = 8
    ) -> None:
        self.segmenter = segmenter
        self.loader = loader
        self.image_key = image_key
        self.max_batches = max_batches
        self.value: float | None = None

    def attach(self, engine) -> None:
        engine.add_event_handler(Events.STARTED, self)

    def __call__(self, engine=None) -> float:
        with torch.random.fork_rng(devices=[]):
            self.value = self.segmenter.estimate_scale_factor(self.loader, self.image_key, max_batches=self.max_batches)
        logger.info(f"GMS latent scale factor set to {self.value:.4f}.")
        return self.value
