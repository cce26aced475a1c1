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
"""The ``evaluator`` of the synthesis bundles (HistoDiffusion, Ctrl-GenAug inference).

A generative bundle's inference draws images instead of segmenting them; :class:`SynthesisEvaluator` gives it the
model zoo's inference properties (``dataset`` = the synthesis requests, ``evaluator``, ``handlers``) so that
``create_workflow(..., workflow_type="infer").check_properties()`` finds nothing missing, MONAI's
``--tracking mlflow`` attaches its ``MLFlowHandler`` as to any evaluator, and the progress bar ticks per request.
"""

from __future__ import annotations

import dataclasses
import numbers
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from ignite.engine import Engine

__all__ = ["SynthesisEvaluator", "synthesis_summary"]


def synthesis_summary(output: Any) -> dict[str, Any]:
    """The scalar / string fields of a synthesis result (a mapping or a dataclass), e.g. ``num``, ``seconds``.

    Args:
        output: what the synthesis callable returned.
    """
    if dataclasses.is_dataclass(output) and not isinstance(output, type):
        output = {f.name: getattr(output, f.name) for f in dataclasses.fields(output)}
    if not isinstance(output, Mapping):
        return {}
    out = {k: v for k, v in output.items() if isinstance(v, (numbers.Number, str)) and not isinstance(v, bool)}
    if "num" not in out and isinstance(output.get("datalist"), Sequence) and not isinstance(output["datalist"], str):
        out["num"] = len(output["datalist"])
    return out


class SynthesisEvaluator(Engine):
    """An Ignite engine that runs one synthesis call per request of ``dataset``.

    Each iteration calls ``synthesize(**settings, **request)``; ``state.output`` holds the result,
    ``state.summary`` its scalar fields (:func:`synthesis_summary`) and ``state.metrics`` the numeric ones (logged
    by an attached ``MLFlowHandler``).

    Args:
        dataset: the synthesis requests (dicts of keyword arguments, e.g. ``{"num_per_class": 32}``).
        synthesize: the pipeline's synthesis method (e.g. ``HistoDiffusion.synthesize``).
        settings: keyword arguments shared by every request (output folder, steps, ...).
        val_handlers: handlers attached to the engine (MONAI's name, so bundle tracking patches them in).
    """

    def __init__(
        self,
        dataset: Iterable[Mapping[str, Any]],
        synthesize: Callable[..., Any],
        settings: Mapping[str, Any] | None = None,
        val_handlers: Sequence[Any] | None = None,
    ) -> None:
        super().__init__(self._iteration)
        self.dataset = list(dataset)
        if not self.dataset or not all(isinstance(r, Mapping) for r in self.dataset):
            raise ValueError(f"dataset must be a non-empty list of request dicts, got {dataset!r}.")
        if not callable(synthesize):
            raise TypeError(f"synthesize must be callable, got {type(synthesize).__name__}.")
        self.synthesize = synthesize
        self.settings = dict(settings or {})
        for handler in val_handlers or []:
            handler.attach(self)

    def _iteration(self, engine: Engine, request: Mapping[str, Any]) -> Any:
        output = self.synthesize(**{**self.settings, **request})
        engine.state.summary = synthesis_summary(output)
        engine.state.metrics.update({k: v for k, v in engine.state.summary.items() if not isinstance(v, str)})
        return output

    def run(self, data: Iterable[Any] | None = None, max_epochs: int = 1, **kwargs: Any) -> Any:  # type: ignore[override]
        """Run every request once (or the given ``data``)."""
        return super().run(self.dataset if data is None else data, max_epochs=max_epochs, **kwargs)
