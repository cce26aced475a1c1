"""The DRIVE -> CHASE_DB1 AdaptDiff benchmark: its helpers, and its quick mode end to end on the real data (skipped
when the shared data folder is absent)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from monai_genaug.evaluation import is_complete, read_results
from monai_genaug.utils.paths import shared_data_dir

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

import adaptdiff_fundus  # noqa: E402

DATA = shared_data_dir()


def test_contrast_of_dark_vessels_is_negative():
    images = torch.full((1, 1, 4, 4), 0.8)
    masks = torch.zeros(1, 1, 4, 4, dtype=torch.long)
    masks[..., 1, :] = 1
    images[masks.bool()] = 0.2
    region = torch.ones_like(masks, dtype=torch.bool)
    assert adaptdiff_fundus.contrast(images, masks, region) == pytest.approx(-0.6)


def test_child_folds_and_scores():
    folds = adaptdiff_fundus.child_folds([f"c{i}" for i in range(10)], 3, seed=0)
    assert sorted(c for f in folds for c in f) == sorted(f"c{i}" for i in range(10)) and [len(f) for f in folds] == [4, 3, 3]
    truth = torch.zeros(4, 1, 8, 8, dtype=torch.long)
    truth[:, :, 3:5, 1:7] = 1
    pred = truth.clone()
    pred[2:] = 0  # the second child's eyes are missed entirely
    scores = adaptdiff_fundus.child_scores(pred, truth, ["a", "a", "b", "b"], iterations=3)
    assert scores["a"] == {"dice": 1.0, "cldice": 1.0} and scores["b"] == {"dice": 0.0, "cldice": 0.0}


@pytest.mark.skipif(not (DATA / "chase_db1").is_dir() or not (DATA / "drive").is_dir(), reason="fundus data absent")
@pytest.mark.timeout(600)
def test_quick_run_writes_the_envelope_and_resumes(tmp_path):
    args = ["--quick", "--work_dir", str(tmp_path / "work"), "--out", str(tmp_path / "adaptdiff_fundus.json")]
    path = adaptdiff_fundus.main(args)
    assert is_complete(path, quick=True)
    obj = read_results(path)
    rows = obj["rows"]
    assert {r["method"] for r in rows} == {"source_only", "adaptdiff", "upper_bound"}
    assert {r["metric"] for r in rows} == {"dice", "cldice"}
    assert {r["case"] for r in rows} == {"Image_01", "Image_02", "Image_03", "Image_04"}  # one case per child
    assert {r["seed"] for r in rows} == {0, 1}
    human = obj["extra"]["human_ceiling"]["rows"]
    assert len(human) == 8 and all(0 < r["value"] <= 1 for r in human)
    diag = obj["extra"]["diagnostics"]
    assert "pseudo-label Dice vs hidden CHASE labels, area-matched" in diag
    assert any(k.startswith("mask fidelity") for k in diag)
    fractions = diag["predicted vessel fraction of the FOV per method (true: first observer)"]
    assert all(name in fractions for name in ("source_only", "adaptdiff", "upper_bound", "true"))
    cached = {p.name for p in (tmp_path / "work").glob("*/*.pt")}
    assert {"generator.pt", "pseudo.pt", "synthetic.pt", "source_0.pt", "adapted_1.pt", "upper_1_1.pt"} <= cached
    again = read_results(adaptdiff_fundus.main(args))  # every stage from the work folder: the same scores
    assert again["rows"] == rows
    stage_seconds = {k: v for k, v in diag.items() if k.startswith("stage seconds") and "loading" not in k}
    assert {k: again["extra"]["diagnostics"][k] for k in stage_seconds} == stage_seconds  # kept from the first run
