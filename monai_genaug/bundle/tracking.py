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
"""``--tracking mlflow`` for trainers whose iteration output is one dict.

MONAI's bundle tracking (``python -m monai.bundle run ... --tracking mlflow``) appends an ``MLFlowHandler`` to
``train#handlers`` whose loss transform, ``from_engine(['loss'], first=True)``, expects the decollated list output of
a default ``SupervisedTrainer``. The package's diffusion and autoencoder trainers keep the batch output as one dict
(``decollate=False``); :func:`loss_tracking_handlers` gives such handlers the package's
:func:`~monai_genaug.engines.tracking.loss_from_output`, which reads the loss from either form.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from monai.handlers import MLFlowHandler

from monai_genaug.engines.tracking import loss_from_output

__all__ = ["loss_tracking_handlers"]


def loss_tracking_handlers(handlers: Sequence[Any] | None) -> list[Any]:
    """The handlers, with every ``MLFlowHandler``'s ``output_transform`` replaced by ``loss_from_output``.

    Args:
        handlers: a bundle's ``train#handlers`` (None: none).
    """
    out = list(handlers or [])
    for h in out:
        if isinstance(h, MLFlowHandler):
            h.output_transform = loss_from_output
    return out
