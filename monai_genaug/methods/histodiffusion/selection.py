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
"""Choosing HistoDiffusion's guidance on a validation split: the guidance scale and the timestep range by the class
agreement of an **independent oracle** (:class:`monai_genaug.evaluation.Oracle`: a model trained on real labels,
never the generator or the guidance classifier), not by hand and not by the guide's own confidence (which is
circular: guided samples always convince their guide).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import torch

from monai_genaug.methods.histodiffusion.pipeline import HistoDiffusion

__all__ = ["AgreementScorer", "select_guidance"]


class AgreementScorer(Protocol):
    """What :func:`select_guidance` needs of an oracle: per-sample 1 / 0 class agreement."""

    def score(self, images: torch.Tensor, conditions: torch.Tensor) -> torch.Tensor: ...


def select_guidance(
    pipeline: HistoDiffusion,
    oracle: AgreementScorer,
    spatial_size: Sequence[int],
    scales: Sequence[float] = (0.0, 3.0, 10.0, 30.0),
    max_timesteps: Sequence[int | None] = (None,),
    num_per_class: int = 16,
    num_inference_steps: int = 25,
    eta: float = 1.0,
    batch_size: int = 16,
    seed: int = 10_000,
) -> dict[str, Any]:
    """Synthesise ``num_per_class`` samples per class for every (scale, guidance range) candidate from the same seeds
    and keep the candidate whose samples the oracle most often assigns to their intended class (ties: the smaller
    scale, then the narrower range).

    Args:
        pipeline: the trained pipeline (generator + noisy classifier).
        oracle: an independent scorer, e.g. ``Oracle("classification", K).fit(validation_images, labels)``.
        spatial_size: image size of the samples.
        scales: candidate guidance scales (0: unguided, the reference; tried once).
        max_timesteps: candidate ``guidance_max_timestep`` values (None: guidance at every step).
        num_per_class: samples per class and candidate.
        num_inference_steps: DDIM steps.
        eta: DDIM stochasticity.
        batch_size: samples per sampler call.
        seed: base seed of the samples (the same for every candidate; keep it apart from the final synthesis).

    Returns:
        ``{"scale", "max_timestep", "agreement": chosen candidate's agreement, "candidates": [{"scale",
        "max_timestep", "agreement", "per_class": [...], "num_samples", "scores": per-sample 1 / 0}, ...]}``.
    """
    if not scales:
        raise ValueError("scales is empty; give at least one candidate guidance scale.")
    if not max_timesteps:
        raise ValueError("max_timesteps is empty; give None (every step) or candidate timesteps.")
    if any(not float(s) >= 0 for s in scales):
        raise ValueError(f"guidance scales must be >= 0, got {list(scales)}.")
    if int(num_per_class) < 1:
        raise ValueError(f"num_per_class must be >= 1, got {num_per_class}.")
    candidates = []
    for scale in sorted({float(s) for s in scales}):
        ranges = [None] if scale == 0.0 else list(dict.fromkeys(max_timesteps))
        for t_max in ranges:
            res = pipeline.synthesize(
                int(num_per_class), spatial_size, guidance_scale=scale, guidance_max_timestep=t_max, eta=eta,
                num_inference_steps=num_inference_steps, batch_size=batch_size, seed=seed,
            )
            agree = oracle.score(res.images, res.labels).float()
            per_class = [float(agree[res.labels == c].mean()) for c in range(pipeline.num_classes)]
            candidates.append({
                "scale": scale, "max_timestep": t_max, "agreement": float(agree.mean()), "per_class": per_class,
                "num_samples": int(agree.numel()), "scores": agree.tolist(),
            })
    horizon = int(pipeline.generator.scheduler.num_train_timesteps)

    def rank(c: dict[str, Any]) -> tuple[float, float, int]:
        t_max = horizon if c["max_timestep"] is None else int(c["max_timestep"])
        return c["agreement"], -c["scale"], -t_max

    best = max(candidates, key=rank)
    return {
        "scale": best["scale"], "max_timestep": best["max_timestep"], "agreement": best["agreement"],
        "candidates": candidates,
    }
