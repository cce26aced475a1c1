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
"""The TTGA bundle's inferer: TTGA-fused probability, uncertainty maps and the segmenter-alone probability, stacked.

:class:`~monai_genaug.inferers.generative_tta.GenerativeTTAInferer` with ``output="concat"`` returns
``[mean probability (C) | entropy | mutual information | variance]``; this subclass appends the segmenter's own
probability on the unaugmented image (C channels, one extra forward pass) so one evaluator run gives the prediction
with and without TTGA. :data:`BUNDLE_OUTPUT_NAMES` / :func:`bundle_output_sizes` describe the channel layout for
:class:`~monai_genaug.bundle.transforms.SplitChannelsd`.
"""

from __future__ import annotations

from typing import Any

import torch
from monai.data import MetaTensor
from monai.inferers import Inferer
from monai.utils import convert_to_dst_type

from monai_genaug.inferers.generative_tta import (
    CONCAT_UNCERTAINTY,
    GenerativeTTAInferer,
)

__all__ = ["BUNDLE_OUTPUT_NAMES", "GenerativeTTAWithBaselineInferer", "ProbabilitiesAsLogits", "bundle_output_sizes"]

#: keys of the channel blocks of :class:`GenerativeTTAWithBaselineInferer`'s output, in order
BUNDLE_OUTPUT_NAMES = ("prob", *CONCAT_UNCERTAINTY, "prob_base")


def bundle_output_sizes(num_classes: int) -> list[int]:
    """Channels of each block of :data:`BUNDLE_OUTPUT_NAMES` for a segmenter with ``num_classes + 1`` outputs."""
    c = int(num_classes) + 1
    return [c, *([1] * len(CONCAT_UNCERTAINTY)), c]


class GenerativeTTAWithBaselineInferer(GenerativeTTAInferer):
    """:class:`GenerativeTTAInferer` (``output="concat"``) plus the segmenter-alone probability as last channels.

    Output channels: ``[mean probability (C) | entropy | mutual information | variance | segmenter alone (C)]``
    (see :data:`BUNDLE_OUTPUT_NAMES`). Arguments are those of :class:`GenerativeTTAInferer` except ``output``.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        if kwargs.pop("output", "concat") != "concat":
            raise ValueError("GenerativeTTAWithBaselineInferer always returns the 'concat' layout.")
        super().__init__(*args, output="concat", **kwargs)

    def __call__(self, inputs: torch.Tensor, network: Any, *args: Any, **kwargs: Any) -> Any:
        """TTGA on every image of ``inputs`` (B, C, *spatial), plus the segmenter alone on ``inputs`` (reused from the
        ensemble when it includes the original image)."""
        fused = super().__call__(inputs, network, *args, **kwargs)
        if self.include_original:  # the ensemble's first member is the segmenter on the original image
            base = self.last_output["original"]
        else:
            plain = inputs.as_tensor() if isinstance(inputs, MetaTensor) else inputs
            base = self._activate(self._segment(plain, network, *args, **kwargs))
        fused_t = fused.as_tensor() if isinstance(fused, MetaTensor) else fused
        out = torch.cat([fused_t, base.to(fused_t)], dim=1)
        return convert_to_dst_type(out, inputs, dtype=out.dtype)[0]


class ProbabilitiesAsLogits(Inferer):
    """Wrap an inferer that returns probabilities (e.g. :class:`GenerativeTTAInferer`, whose output is the mean
    probability of the views) so that it returns logits whose activation gives exactly those probabilities:
    ``log p`` for softmax, ``log(p / (1 - p))`` for sigmoid. A bundle whose postprocessing applies its own
    ``Activationsd`` then recovers the fused probability unchanged (TTGA on a foreign bundle, ``overlay.json``).

    Args:
        inferer: the wrapped inferer.
        activation: the activation the bundle's postprocessing applies, ``"softmax"`` or ``"sigmoid"``.
        eps: probabilities are clamped to ``[eps, 1 - eps]`` first (finite logits).
    """

    def __init__(self, inferer: Inferer, activation: str = "softmax", eps: float = 1e-6) -> None:
        super().__init__()
        if activation not in ("softmax", "sigmoid"):
            raise ValueError(f"activation must be 'softmax' or 'sigmoid', got {activation!r}.")
        self.inferer = inferer
        self.activation = activation
        self.eps = float(eps)

    def __call__(self, inputs: torch.Tensor, network: Any, *args: Any, **kwargs: Any) -> torch.Tensor:
        """The wrapped inferer's probabilities on ``inputs`` as logits (same type and meta data)."""
        p = self.inferer(inputs, network, *args, **kwargs).clamp(self.eps, 1.0 - self.eps)
        return torch.log(p) if self.activation == "softmax" else torch.log(p) - torch.log1p(-p)
