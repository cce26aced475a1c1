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
"""Guidance plug-ins for the one sampler: how a step's noise estimate is made from the UNet.

Every guidance evaluates its condition branches in **one** batched UNet call (the branches are stacked along the
batch axis), then combines the branch outputs linearly, and may correct the result with a gradient:

- :class:`NoGuidance`: the condition as given.
- :class:`ClassifierFreeGuidance`: ``null + s * (cond - null)`` with any null condition
  (Ho & Salimans, arXiv:2207.12598).
- :class:`MultiConditionGuidance`: any weighted sum of branches, e.g. TTGA's three-branch form
  ``s_u * eps(null) + s_c * eps(prompt) + s_i * eps(identity)`` ("Test-Time Generative Augmentation for
  Medical Image Segmentation", arXiv:2406.17608), see :meth:`MultiConditionGuidance.ttga`.
- :class:`ClassifierGuidance`: ``eps - s * sqrt(1 - a_t) * grad log p(y | x_t, t)`` from a noisy-input classifier
  (Dhariwal & Nichol, arXiv:2105.05233), on top of any of the above (HistoDiffusion).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch
from torch import nn

from monai_genaug.generative.latent_generator import concat_conditions
from monai_genaug.generative.protocols import DiffusionModel
from monai_genaug.utils.options import check_finite

__all__ = ["Guidance", "NoGuidance", "ClassifierFreeGuidance", "MultiConditionGuidance", "ClassifierGuidance"]

Condition = Mapping[str, torch.Tensor]


def _as_weight(w: float | torch.Tensor, ref: torch.Tensor) -> float | torch.Tensor:
    """A float, or a per-sample (B,) tensor reshaped to broadcast over ``ref``."""
    if isinstance(w, torch.Tensor):
        if w.numel() == 1:
            return float(w)
        if w.shape[0] != ref.shape[0]:
            raise ValueError(f"per-sample guidance weights have {w.shape[0]} entries for a batch of {ref.shape[0]}.")
        return w.to(ref.device, ref.dtype).view(-1, *([1] * (ref.ndim - 1)))
    return float(w)


class Guidance:
    """Base class: the branch conditions of a step and how their outputs combine.

    Subclasses override :meth:`branches` and :meth:`combine`; :meth:`correct` may modify the noise estimate with a
    gradient (classifier guidance). :meth:`predict` is what the sampler and the inversion call.
    """

    def branches(self, generator: DiffusionModel, condition: Condition | None, batch_size: int) -> list[Condition]:
        """Resolved condition of every branch (each with ``batch_size`` entries)."""
        return [generator.resolve_condition(condition, batch_size)]

    def combine(self, outputs: Sequence[torch.Tensor]) -> torch.Tensor:
        """Combine the branch outputs (same order as :meth:`branches`)."""
        return outputs[0]

    def correct(
        self, eps: torch.Tensor, x_t: torch.Tensor, timestep: int, a_t: float, generator: DiffusionModel
    ) -> torch.Tensor:
        """Optionally modify the noise estimate (default: unchanged)."""
        return eps

    def prepare(self, generator: DiffusionModel, condition: Condition | None, batch_size: int) -> dict:
        """Resolve and stack the branch conditions once per sampling run (not once per step)."""
        branches = self.branches(generator, condition, batch_size)
        return {"num_branches": len(branches), "condition": concat_conditions(branches)}

    def predict(
        self, generator: DiffusionModel, x_t: torch.Tensor, timestep: int, prepared: dict
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """One batched UNet call over all branches; returns (combined output, per-branch outputs)."""
        n = prepared["num_branches"]
        x_in = x_t if n == 1 else torch.cat([x_t] * n, dim=0)
        out = generator(x_in, timestep, prepared["condition"])
        outputs = list(out.chunk(n, dim=0)) if n > 1 else [out]
        return self.combine(outputs), outputs


class NoGuidance(Guidance):
    """The condition as given (or unconditional when none): one branch."""


class ClassifierFreeGuidance(Guidance):
    """Classifier-free guidance ``null + scale * (cond - null)``.

    Args:
        scale: guidance scale; 1 is the plain conditional prediction (one branch, no extra cost), 0 the null one.
        null_condition: the unconditional branch; ``None`` uses ``generator.null_condition`` (null prompt / class).
    """

    def __init__(self, scale: float = 3.0, null_condition: Condition | None = None) -> None:
        check_finite(type(self).__name__, scale=scale)
        self.scale = float(scale)
        self.null_condition = null_condition

    def branches(self, generator: DiffusionModel, condition: Condition | None, batch_size: int) -> list[Condition]:
        cond = generator.resolve_condition(condition, batch_size)
        if self.scale == 1.0:
            return [cond]
        null = self.null_condition if self.null_condition is not None else generator.null_condition(condition, batch_size)
        return [generator.resolve_condition(null, batch_size), cond]

    def combine(self, outputs: Sequence[torch.Tensor]) -> torch.Tensor:
        if len(outputs) == 1:
            return outputs[0]
        null, cond = outputs
        return null + self.scale * (cond - null)


class MultiConditionGuidance(Guidance):
    """Weighted sum of several condition branches, ``sum_k w_k * output(condition_k)``.

    Branches with a zero weight are skipped (no UNet cost). Weights are floats or per-sample (B,) tensors, so each
    generated view may use its own mixture. The ``condition`` passed to the sampler is ignored: the branches are
    given here.

    Args:
        conditions: one condition dict per branch (each for the full batch, or batch 1 to be repeated).
        weights: one weight per branch.
    """

    def __init__(self, conditions: Sequence[Condition], weights: Sequence[float | torch.Tensor]) -> None:
        if len(conditions) != len(weights) or not conditions:
            raise ValueError(f"need one weight per condition, got {len(conditions)} conditions, {len(weights)} weights.")
        check_finite(type(self).__name__, **{f"weights[{i}]": w for i, w in enumerate(weights)})
        keep = [
            i for i, w in enumerate(weights) if not (not isinstance(w, torch.Tensor) and float(w) == 0.0)
        ]
        self.conditions = [conditions[i] for i in keep]
        self.weights = [weights[i] for i in keep]

    @classmethod
    def ttga(
        cls,
        null: Condition,
        prompt: Condition,
        identity: Condition,
        guidance_scale: float = 2.0,
        lambda_c: float = 1.0,
        lambda_i: float | torch.Tensor = 1.2,
    ) -> MultiConditionGuidance:
        """TTGA's three-branch guidance (spec A5.2): ``eps(null) + l_c [eps(c) - eps(null)] + l_i [eps~(i, c) - eps(c)]``
        with ``eps~(i, c) = eps(i) + g [eps(c) - eps(i)]``, i.e. weights ``s_u = 1 - l_c``,
        ``s_c = l_c - l_i (1 - g)``, ``s_i = l_i (1 - g)`` (they sum to 1).

        Args:
            null: the plain unconditional condition.
            prompt: the semantic (domain prompt) condition c.
            identity: the optimised identity (null-text) embedding condition.
            guidance_scale: g, the CFG scale used when optimising the identity embedding.
            lambda_c: weight of the semantic direction.
            lambda_i: weight of the identity direction (a (B,) tensor sweeps it across views).
        """
        s_u = 1.0 - lambda_c
        s_i = lambda_i * (1.0 - guidance_scale)
        s_c = lambda_c - s_i
        return cls([null, prompt, identity], [s_u, s_c, s_i])

    def branches(self, generator: DiffusionModel, condition: Condition | None, batch_size: int) -> list[Condition]:
        out = []
        for c in self.conditions:
            resolved = generator.resolve_condition(c, batch_size)
            out.append(
                {k: (v.expand(batch_size, *v.shape[1:]) if v.shape[0] == 1 else v) for k, v in resolved.items()}
            )
        return out

    def combine(self, outputs: Sequence[torch.Tensor]) -> torch.Tensor:
        total = 0.0
        for w, o in zip(self.weights, outputs):
            total = total + _as_weight(w, o) * o
        return total


class ClassifierGuidance(Guidance):
    """Classifier guidance with a noisy-input classifier: ``eps' = eps - scale * sqrt(1 - a_t) * grad``.

    ``grad = d/dx_t log softmax(classifier(x_t, t))[y]`` is taken on a detached copy of ``x_t``; the guided ``eps'`` is
    used for both the clean estimate and the direction of the step (HistoDiffusion, spec A.5).

    Args:
        classifier: ``classifier(x_t, timesteps) -> logits`` (B, num_classes).
        class_labels: the target class per sample, (B,) long, or one int for the batch.
        scale: guidance scale s (HistoDiffusion uses 10).
        base: the guidance that makes the unguided estimate (default :class:`NoGuidance`, e.g. CFG can be stacked).
        max_timestep: apply the gradient only at timesteps ``t <= max_timestep`` (None: at every step), i.e. only
            where the noisy classifier still carries class information (its accuracy per t tells where).
    """

    def __init__(
        self,
        classifier: nn.Module | Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        class_labels: torch.Tensor | int,
        scale: float = 10.0,
        base: Guidance | None = None,
        max_timestep: int | None = None,
    ) -> None:
        check_finite(type(self).__name__, scale=scale)
        if max_timestep is not None and int(max_timestep) < 0:
            raise ValueError(
                f"ClassifierGuidance: max_timestep must be >= 0 or None (got {max_timestep}); use scale=0 for "
                "unguided sampling."
            )
        if float(scale) < 0:
            raise ValueError(
                f"ClassifierGuidance: scale must be >= 0 (got {scale}); a negative scale pushes samples away from the "
                "target class. Use scale=0 for unguided sampling."
            )
        self.classifier = classifier
        self.class_labels = class_labels
        self.scale = float(scale)
        self.base = base if base is not None else NoGuidance()
        self.max_timestep = None if max_timestep is None else int(max_timestep)

    def active(self, timestep: int) -> bool:
        """Whether the classifier gradient is applied at ``timestep`` (scale > 0 and within ``max_timestep``)."""
        return self.scale > 0.0 and (self.max_timestep is None or int(timestep) <= self.max_timestep)

    def branches(self, generator: DiffusionModel, condition: Condition | None, batch_size: int) -> list[Condition]:
        return self.base.branches(generator, condition, batch_size)

    def combine(self, outputs: Sequence[torch.Tensor]) -> torch.Tensor:
        return self.base.combine(outputs)

    def correct(
        self, eps: torch.Tensor, x_t: torch.Tensor, timestep: int, a_t: float, generator: DiffusionModel
    ) -> torch.Tensor:
        eps = self.base.correct(eps, x_t, timestep, a_t, generator)
        if not self.active(timestep):
            return eps
        labels = torch.as_tensor(self.class_labels, device=x_t.device).long().reshape(-1)
        if labels.numel() == 1:
            labels = labels.expand(x_t.shape[0])
        with torch.enable_grad():
            x = x_t.detach().requires_grad_(True)
            t = torch.full((x.shape[0],), int(timestep), device=x.device, dtype=torch.long)
            log_probs = torch.log_softmax(self.classifier(x, t).float(), dim=-1)
            selected = log_probs.gather(1, labels.view(-1, 1)).sum()
            grad = torch.autograd.grad(selected, x)[0]
        return eps - self.scale * (1.0 - a_t) ** 0.5 * grad.to(eps.dtype)
