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
"""Bundle machinery shared by the bundles in ``bundles/``: run-time settings (:mod:`.runtime`: threads, progress bars,
``bundle_root``), ``--tracking mlflow`` support (:mod:`.tracking`) and the evaluator of the synthesis bundles
(:mod:`.synthesis`).

The other helpers that lived here moved to their homes, and the old import paths are kept for one release (aliases):
data helpers to :mod:`monai_genaug.data.bundle`, input checks to :mod:`monai_genaug.transforms.validation`, weights
to :mod:`monai_genaug.generative.weights`, the TTGA evaluation inferer to :mod:`monai_genaug.inferers.baseline`,
per-case writers to :mod:`monai_genaug.handlers.writers`, per-case metrics to :mod:`monai_genaug.metrics.cases`,
the metadata schema to :mod:`monai_genaug.utils.bundle_schema`, the MONAI Label glue to
:mod:`monai_genaug.apps.monailabel`."""

from __future__ import annotations

from . import data, evaluation, inferers, runtime, schema, synthesis, tracking, transforms, weights, writers
from .data import *  # noqa: F401,F403
from .evaluation import *  # noqa: F401,F403
from .inferers import *  # noqa: F401,F403
from .runtime import *  # noqa: F401,F403
from .schema import *  # noqa: F401,F403
from .synthesis import *  # noqa: F401,F403
from .tracking import *  # noqa: F401,F403
from .transforms import *  # noqa: F401,F403
from .weights import *  # noqa: F401,F403
from .writers import *  # noqa: F401,F403

__all__ = list(
    dict.fromkeys(
        name
        for module in (data, evaluation, inferers, runtime, schema, synthesis, tracking, transforms, weights, writers)
        for name in module.__all__
    )
)
