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
"""The MONAI Label glue (monai_genaug.apps.monailabel) without a server; runs with or without monailabel."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np
import pytest
from monai.transforms import AsDiscreted, Compose, CopyItemsd, LoadImaged, SaveImaged
from PIL import Image

from monai_genaug.apps.monailabel import (
    GenAugInferTask,
    bundle_labels,
    label_optional,
    serving_postprocessing,
)
from monai_genaug.data.phantoms import write_phantom_dataset

REPO = Path(__file__).resolve().parents[2]
TINY_TTGA = {"num_views": 2, "min_iterations": 1, "max_iterations": 2}


@pytest.fixture(scope="module")
def image(tmp_path_factory) -> str:
    root = write_phantom_dataset("endoscopy", tmp_path_factory.mktemp("ph"), num=1, seed=7, spatial_size=(72, 80))
    return str(next((Path(root) / "images").glob("*.png")))


def test_label_optional_and_serving_postprocessing() -> None:
    pre = Compose([LoadImaged(keys="image"), Compose([LoadImaged(keys="label")])])
    assert label_optional(pre) is pre and pre.transforms[1].transforms[0].allow_missing_keys
    assert not pre.transforms[0].allow_missing_keys
    post = Compose([AsDiscreted(keys="pred", argmax=True), SaveImaged(keys="pred"),
                    AsDiscreted(keys=["pred", "label"], to_onehot=2), CopyItemsd(keys="pred", names="x")])
    kept = serving_postprocessing(post).transforms
    assert [type(t).__name__ for t in kept] == ["AsDiscreted", "CopyItemsd"] and kept[0].keys == ("pred",)
    assert serving_postprocessing(None).transforms == ()


def test_bundle_labels() -> None:
    meta = {"network_data_format": {"outputs": {"pred": {"channel_def": {"0": "background", "1": "a", "2": "b"}}}}}
    assert bundle_labels(meta) == {"a": 1, "b": 2} and bundle_labels({}) == {}


def test_gms_task_writes_label_map_on_the_file_grid(image: str, tmp_path: Path) -> None:
    task = GenAugInferTask(REPO / "bundles" / "gms", uncertainty_dir=tmp_path)
    assert task.is_valid() and task.info()["labels"] == {"polyp": 1} and task.dimension == 2
    label_file, params = task({"image": image})
    label = np.asarray(Image.open(label_file))
    assert label.shape == (72, 80) and set(np.unique(label)) <= {0, 1}
    assert params["uncertainty"] == {} and params["shape"] == [72, 80]
    Path(label_file).unlink()


def test_ttga_task_entropy_and_request_options(image: str, tmp_path: Path) -> None:
    task = GenAugInferTask(REPO / "bundles" / "ttga", overrides=TINY_TTGA, options=["num_views"],
                           uncertainty_dir=tmp_path)
    assert task.config() == {"num_views": 2}
    label_file, params = task({"image": image, "model": "ttga"})
    assert np.asarray(Image.open(label_file)).shape == (72, 80)
    ent = params["uncertainty"]["entropy"]
    png = np.asarray(Image.open(io.BytesIO(base64.b64decode(ent["data"]))))
    assert png.shape == (72, 80) and Path(ent["file"]) == tmp_path / f"{Path(image).stem}_ttga_entropy.png"
    assert 0.0 <= ent["mean"] <= ent["max"] <= 1.0
    first = task.runner({})
    assert task.runner({"num_views": 2}) is first  # default value: no re-parse
    other = task.runner({"num_views": 3})
    assert other is not first and other.inferer.num_views == 3 and first.inferer.num_views == 2


def test_bad_input(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="metadata.json"):
        GenAugInferTask(tmp_path)
    task = GenAugInferTask(REPO / "bundles" / "gms")
    with pytest.raises(TypeError, match="image"):
        task({"image": None})
    with pytest.raises(FileNotFoundError, match="not a file"):
        task({"image": str(tmp_path / "missing.png")})
