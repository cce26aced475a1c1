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
"""MONAI Label app serving the monai_genaug bundles (TTGA: label map + entropy map; GMS; AdaptDiff) offline.

Start (see README.md):
    monailabel start_server --app apps/monailabel_genaug --studies <folder of PNG images> --conf models ttga,gms

Conf keys (``--conf key value``):
    models: comma-separated bundle folder names (default ``ttga,gms``).
    bundles: folder holding the bundles (default ``<repo>/bundles``).
    <model>_overrides: JSON object of top-level bundle ID overrides, e.g. ``'{"num_views": 4}'``.
    uncertainty_dir: where uncertainty maps are written (default ``<app>/outputs/uncertainty``).
    preload: ``true`` loads every bundle at start (default: on the first request).
    device: ``cpu`` / ``cuda`` (default: the bundle config's).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from monailabel.interfaces.app import MONAILabelApp
from monailabel.interfaces.tasks.infer_v2 import InferTask
from monailabel.utils.others.generic import strtobool

from monai_genaug.apps.monailabel import GenAugInferTask

logger = logging.getLogger(__name__)

#: request-tunable IDs per bundle (shown as the model's config in MONAI Label)
OPTIONS = {"ttga": ["num_views", "view_seed", "max_iterations"]}


class GenAugApp(MONAILabelApp):
    """Serves local monai_genaug bundles through :class:`~monai_genaug.apps.monailabel.GenAugInferTask`."""

    def __init__(self, app_dir: str, studies: str, conf: dict[str, str]) -> None:
        repo = Path(app_dir).resolve().parents[1]
        self.bundles_dir = Path(conf.get("bundles", repo / "bundles")).resolve()
        self.models = [m.strip() for m in conf.get("models", "ttga,gms").split(",") if m.strip()]
        self.uncertainty_dir = Path(conf.get("uncertainty_dir", Path(app_dir) / "outputs" / "uncertainty"))
        super().__init__(
            app_dir=app_dir,
            studies=studies,
            conf=conf,
            name="monai_genaug",
            description="Generative-augmentation bundles (TTGA with uncertainty, GMS, AdaptDiff) from local folders",
            version="0.1.0",
        )

    def init_infers(self) -> dict[str, InferTask]:
        infers: dict[str, InferTask] = {}
        for name in self.models:
            bundle = self.bundles_dir / name
            if not (bundle / "configs" / "inference.json").is_file():
                raise FileNotFoundError(
                    f"bundle '{name}' not found: '{bundle}/configs/inference.json' does not exist; pass the bundles "
                    "folder with --conf bundles <dir> and names of its sub-folders with --conf models a,b."
                )
            overrides = json.loads(self.conf.get(f"{name}_overrides", "{}"))
            infers[name] = GenAugInferTask(
                bundle,
                overrides=overrides,
                options=OPTIONS.get(name),
                uncertainty_dir=self.uncertainty_dir,
                device=self.conf.get("device"),
                preload=strtobool(self.conf.get("preload", "false")),
            )
            logger.info(f"+++ serving bundle {name} from {bundle} (overrides {overrides})")
        return infers


