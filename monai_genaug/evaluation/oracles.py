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
"""Independent oracles: a model trained on *all* real labels (never the generator, never the classifier that guided
the sampling) scores synthetic samples, so a guided sample is not graded by its own guide.

* class-conditional samples: does the oracle classify the sample as the class it was generated for (agreement)?
* mask-conditioned samples: the Dice of the oracle's segmentation of the sample against the conditioning mask.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from monai_genaug.evaluation.downstream import DEFAULT_SEEDS, default_learner, metric_name
from monai_genaug.evaluation.learners import case_scores, predict, train_learner
from monai_genaug.evaluation.statistics import ResultsTable

__all__ = ["Oracle"]


class Oracle:
    """A learner trained on all real labels that scores synthetic samples against their conditions.

    Args:
        task: ``"classification"`` (class agreement) or ``"segmentation"`` (Dice against the conditioning mask).
        num_classes: classes / foreground classes.
        learner_fn: builds the network (default: the protocol's learner for the task).
        iterations: training steps.
        batch_size: items per step.
        lr: learning rate.
        seed: training seed.
        device: device.

    Example::

        oracle = Oracle("classification", num_classes=4).fit(real_images, real_labels)
        oracle.test_score(test_images, test_labels)        # how far the oracle itself can be trusted
        oracle.score(synthetic_images, intended_labels)    # per-sample agreement (1 / 0)
    """

    def __init__(
        self,
        task: str,
        num_classes: int,
        learner_fn: Callable[[], nn.Module] | None = None,
        iterations: int = 500,
        batch_size: int = 16,
        lr: float = 3e-3,
        seed: int = DEFAULT_SEEDS[0],
        device: str | torch.device = "cpu",
    ) -> None:
        self.task = task
        self.metric = metric_name(task)
        self.num_classes = int(num_classes)
        self.learner_fn = learner_fn
        self.iterations = int(iterations)
        self.batch_size = int(batch_size)
        self.lr = float(lr)
        self.seed = int(seed)
        self.device = device
        self.network: nn.Module | None = None

    @classmethod
    def from_network(cls, task: str, network: nn.Module, num_classes: int, device: str | torch.device = "cpu") -> Oracle:
        """Wrap a model already trained on all real labels (e.g. a benchmark's upper bound) as the oracle.

        Args:
            task: ``"classification"`` or ``"segmentation"``.
            network: the trained model (logits ``(N, K)`` or ``(N, K + 1, ...)``).
            num_classes: classes / foreground classes.
            device: device.
        """
        oracle = cls(task, num_classes, device=device)
        oracle.network = network.eval()
        return oracle

    def fit(self, images: torch.Tensor, targets: torch.Tensor) -> Oracle:
        """Train the oracle on every real labelled item (augmentation on)."""
        factory = self.learner_fn or default_learner(self.task, images, self.num_classes)
        torch.manual_seed(self.seed)
        self.network = train_learner(
            factory(), images, targets, self.task, self.iterations, self.batch_size, self.lr, seed=self.seed,
            device=self.device,
        )
        return self

    def score(self, images: torch.Tensor, conditions: torch.Tensor) -> torch.Tensor:
        """Per-sample scores of synthetic ``images`` against the ``conditions`` they were generated for: 1 / 0
        class agreement, or the Dice of the oracle's label map against the conditioning mask."""
        if self.network is None:
            raise RuntimeError("the oracle is not trained; call fit(real_images, real_targets) first.")
        if images.shape[0] != conditions.shape[0]:
            raise ValueError(f"{images.shape[0]} samples but {conditions.shape[0]} conditions.")
        return case_scores(predict(self.network, images, device=self.device), conditions, self.task)

    def test_score(self, images: torch.Tensor, targets: torch.Tensor) -> float:
        """Mean score of the oracle on real held-out data (its own competence; report it next to its verdicts)."""
        return float(self.score(images, targets).mean())

    def table(
        self, samples: dict[str, tuple[torch.Tensor, torch.Tensor]], case_ids: dict[str, Sequence[str]] | None = None
    ) -> ResultsTable:
        """Score several synthetic sets (``{name: (images, conditions)}``) into one tidy table (seed = oracle seed)."""
        table = ResultsTable()
        for name, (x, c) in samples.items():
            ids: Any = (case_ids or {}).get(name) or [f"{name}_{i:04d}" for i in range(x.shape[0])]
            for case, value in zip(ids, self.score(x, c).tolist()):
                table.add(name, case=case, seed=self.seed, value=value, metric=f"oracle_{self.metric}")
        return table
