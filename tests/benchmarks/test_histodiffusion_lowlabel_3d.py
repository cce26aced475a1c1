"""The HistoDiffusion low-label benchmark's 3D mode (``--datasets brats3d``): 3D patches labelled by tumour presence,
patient-grouped folds, and the quick run end to end on BRATS-layout MRI phantoms (no real data needed)."""

from __future__ import annotations

import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from monai_genaug.data.phantoms import write_phantom_dataset
from monai_genaug.evaluation import is_complete, read_results

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

import histodiffusion_lowlabel  # noqa: E402


@pytest.fixture(scope="module")
def phantom_brats(tmp_path_factory) -> Path:
    """Six MRI phantoms (48 x 48 x 32, FLAIR + T1c + label + brain mask) renamed to the BRATS case folders."""
    data = tmp_path_factory.mktemp("data")
    root = write_phantom_dataset("mri", data / "phantoms", 6, seed=3, spatial_size=(48, 48, 32))
    brats = data / "brats2013_deepmedic"
    brats.mkdir()
    for i, case in enumerate(sorted(p for p in root.iterdir() if p.is_dir())):
        case.rename(brats / f"brats_2013_pat{i + 1:04d}_1")
    return data


def test_patches_are_labelled_by_tumour_presence(phantom_brats):
    case_dir = phantom_brats / "brats2013_deepmedic" / "brats_2013_pat0001_1"
    case = {"case_id": case_dir.name, **{k: str(case_dir / f) for k, f in
            {"flair": "Flair.nii.gz", "label": "OTMultiClass.nii.gz", "brain": "brainmask.nii.gz"}.items()}}
    patches = histodiffusion_lowlabel._patches(case, "flair", size=8, factor=2, tumour_min=8, brain_min=0.5)
    assert patches and all(tuple(p["image"].shape) == (1, 8, 8, 8) for p in patches)
    assert all(0.0 <= float(p["image"].min()) and float(p["image"].max()) <= 1.0 for p in patches)
    tumour = np.asarray(nib.load(case["label"]).dataobj) > 0.5
    for p in patches:  # the label is the tumour count of the patch's 1 mm region (ambiguous patches left out)
        x, y, z = (int(p["case"].split(a)[1][:3]) for a in ("_x", "y", "z"))
        count = int(tumour[2 * x: 2 * x + 16, 2 * y: 2 * y + 16, 2 * z: 2 * z + 16].sum())
        assert (p["label"], count >= 8) in {(1, True), (0, False)} and not 0 < count < 8
    assert {p["label"] for p in patches} == {0, 1}


@pytest.mark.timeout(300)
def test_quick_brats3d_run_end_to_end(phantom_brats, tmp_path, monkeypatch):
    monkeypatch.setenv("MONAI_GENAUG_DATA", str(phantom_brats))
    args = ["--datasets", "brats3d", "--quick", "--folds", "1", "--patch-size", "8", "--patch-factor", "2",
            "--patch-tumour-min", "8", "--steps", "3", "--scales", "0", "10", "--work-dir", str(tmp_path / "work"),
            "--out_dir", str(tmp_path / "out")]
    [path] = histodiffusion_lowlabel.main(args)
    assert path.name == "histodiffusion_lowlabel_brats3d.json" and is_complete(path, quick=True)
    obj = read_results(path)
    assert obj["settings"]["data"] == "brats3d" and obj["settings"]["folds"] == 1
    assert "1 of 3 folds" in obj["extra"]["title"]
    assert {r["method"] for r in obj["rows"]} == {"real_only", "real+all", "real+filtered", "real+random",
                                                  "upper_bound"}
    # patient-grouped: fold0 tests patients 1-2 only (the target is 3-4, the pool 5-6)
    assert {r["case"].split("/")[1][:18] for r in obj["rows"]} <= {"brats_2013_pat0001", "brats_2013_pat0002"}
    chain = obj["extra"]["chain"]["fold0"]
    assert "8^3 patches" in chain["data"] and "patients (5, 6)" in chain["pool"]
    n_pool, n_lab, n_val, n_test = chain["pool / labelled / validation / test"]
    assert min(n_pool, n_lab, n_val, n_test) > 0
    assert set(chain["oracle_agreement"]) >= {"guided samples (all)", "kept (real-classifier features)"}
    assert (tmp_path / "work" / "brats3d" / "fold_0" / "samples.png").is_file()
