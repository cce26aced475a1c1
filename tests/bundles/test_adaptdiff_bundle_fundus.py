"""The AdaptDiff bundle on two separate real data sets (DRIVE -> CHASE_DB1) through ``--source_dir`` / ``--target_dir``:
source training and pseudo-labels with tiny settings; a child's two eyes stay on one side of the split. Skipped when the
shared data folder is absent."""

from __future__ import annotations

import json

import pytest

from monai_genaug.utils.paths import shared_data_dir

DATA = shared_data_dir()


@pytest.mark.skipif(not (DATA / "drive").is_dir() or not (DATA / "chase_db1").is_dir(), reason="fundus data absent")
def test_source_and_target_dirs_on_drive_and_chase(tmp_path, bundle_tools):
    out = tmp_path / "out"
    common = ["--output_dir", str(out), "--save_dir", str(out / "models"), "--ckpt_dir", str(out / "models"),
              "--source_dir", str(DATA / "drive"), "--target_dir", str(DATA / "chase_db1"),
              "--spatial_size", "[32,32]", "--progress", "false"]
    bundle_tools.run("bundles/adaptdiff/configs/train_source_segmenter.json", *common, "--epochs", "1")
    bundle_tools.run("bundles/adaptdiff/configs/pseudo_label.json", *common)
    assert (out / "models" / "source_segmenter.pt").is_file()
    ids = json.loads((out / "pseudo_labels" / "pairs.json").read_text())["pairs"]
    children = {i[:-1] for i in ids}
    assert len(ids) == 16 and len(children) == 8  # 2 of the 10 children held out for the test split
    assert all(f"{c}L" in ids and f"{c}R" in ids for c in children)  # both eyes of every training child
    assert (out / "data_layout" / "source").resolve() == (DATA / "drive").resolve()
