"""The AdaptDiff BRATS benchmark in 3D (``--spatial_dims 3``): its quick mode on 3D two-modality phantom volumes runs
every stage end to end and writes an envelope the report renders; the BRATS volume loader (skipped without the
shared data folder)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from monai_genaug.evaluation import read_results
from monai_genaug.evaluation.report import render_results
from monai_genaug.utils.paths import shared_data_dir

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

import adaptdiff_brats  # noqa: E402

BRATS = shared_data_dir() / "brats2013_deepmedic"


def test_quick_3d_run_writes_a_rendered_envelope(tmp_path):
    torch.set_num_threads(1)
    out = tmp_path / "results" / "adaptdiff_brats3d.json"
    path = adaptdiff_brats.main(["--quick", "--spatial_dims", "3", "--out", str(out),
                                 "--work_dir", str(tmp_path / "work")])
    res = read_results(path)
    assert res["settings"]["spatial_dims"] == 3 and res["settings"]["size"] == 16 and res["seeds"] == [0, 1]  # quick: two seeds
    rows = res["rows"]
    assert {r["method"] for r in rows} == {"source_only", "adaptdiff", "upper_bound"}
    assert all(0.0 <= r["value"] <= 1.0 for r in rows)
    diag = res["extra"]["diagnostics"]
    assert 0.0 <= diag["pseudo-label Dice vs hidden target labels"] <= 1.0
    # 10 phantoms: 4 source volumes -> 4 synthetic volumes, 4 target, 2 test
    assert diag["images source / target / test / synthetic"] == "4 / 4 / 2 / 4"
    oracle_rows = res["extra"]["oracle"]["rows"]
    assert oracle_rows and all(0.0 <= r["value"] <= 1.0 for r in oracle_rows)  # mask fidelity of the 3D synthesis
    assert (tmp_path / "work" / "synthetic_grid.png").is_file()
    md = render_results(out.parent).markdown["adaptdiff_brats3d.md"]
    assert "3D 16^3 volumes" in md and "share of the gap closed" in md


def test_bad_spatial_dims_is_refused():
    with pytest.raises(SystemExit):
        adaptdiff_brats.main(["--quick", "--spatial_dims", "4"])


@pytest.mark.skipif(not BRATS.is_dir(), reason="shared BRATS data not present")
def test_brats_volume_is_a_normalised_cube_with_tumour():
    item = adaptdiff_brats.brats_volume(BRATS, "brats_2013_pat0002_1", "t1c", 24)
    assert item["image"].shape == (1, 24, 24, 24) and item["label"].shape == (1, 24, 24, 24)
    assert 0.0 <= float(item["image"].min()) and float(item["image"].max()) <= 1.0
    frac = float(item["label"].float().mean())
    assert 0.002 < frac < 0.2  # the tumour survives the resize and is a minority of the cube
    assert item["group"] == "brats_2013_pat0002_1"
