"""``--dataset_dir`` on real data: the TTGA and GMS inference configs on 2 Kvasir-SEG images and 1 BRATS case (tiny
settings). Outputs must lie on the input's grid (PNG size, NIfTI shape + affine) and the metrics CSV must exist.
Skipped when the shared data folder is absent (fixtures ``kvasir_dir`` / ``brats_dir``)."""

from __future__ import annotations

import csv
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _gms_metrics(folder: Path) -> dict[str, float]:
    rows = csv.reader((folder / "metrics.csv").read_text().splitlines(), delimiter=",")
    return {row[0]: float(row[1]) for row in rows if row}


def _dice(pred: np.ndarray, truth: np.ndarray) -> float:
    pred, truth = pred.astype(bool), truth.astype(bool)
    return 2.0 * float((pred & truth).sum()) / max(float(pred.sum() + truth.sum()), 1.0)


def _assert_nifti_on_input_grid(out: Path, source: Path, values: set[int]) -> None:
    seg, src = nib.load(str(out)), nib.load(str(source))
    assert seg.shape == src.shape
    np.testing.assert_allclose(seg.affine, src.affine, atol=1e-4)
    assert set(np.unique(np.asarray(seg.dataobj)).tolist()) <= values


@pytest.mark.slow
def test_ttga_kvasir_two_images(kvasir_dir, tmp_path, bundle_tools):
    out = tmp_path / "ttga_kvasir"
    bundle_tools.run("bundles/ttga/configs/inference.json", "--dataset_dir", str(kvasir_dir), "--output_dir", str(out),
                     "--max_items", "2", *bundle_tools.ttga_views_cli)
    rows = _rows(out / "metrics.csv")
    assert len(rows) == 2
    for row in rows:
        source = next((kvasir_dir / "images").glob(f"{row['id']}.*"))
        width, height = Image.open(source).size
        label = np.asarray(Image.open(out / f"{row['id']}_label.png"))
        assert label.shape == (height, width) and set(np.unique(label).tolist()) <= {0, 255}
        assert np.asarray(Image.open(out / f"{row['id']}_entropy.png")).shape[:2] == (height, width)
        assert (out / f"{row['id']}_views.png").is_file()
        mask = np.asarray(Image.open(next((kvasir_dir / "masks").glob(f"{row['id']}.*"))).convert("L")) > 127
        assert float(row["dice_ttga"]) == pytest.approx(_dice(label > 0, mask), abs=2e-3)  # same grid, same truth
        assert 0.0 <= float(row["dice_baseline"]) <= 1.0


@pytest.mark.slow
def test_ttga_brats_one_case(brats_dir, tmp_path, bundle_tools):
    out = tmp_path / "ttga_brats"
    bundle_tools.run(["bundles/ttga/configs/inference.json", "bundles/ttga/configs/inference_3d.json"], "--dataset_dir", str(brats_dir), "--output_dir",
                     str(out), "--max_items", "1", *bundle_tools.ttga_views_cli)
    (row,) = _rows(out / "metrics.csv")
    flair = next((brats_dir / row["id"]).glob("Flair*.nii.gz"))
    _assert_nifti_on_input_grid(out / f"{row['id']}_label.nii.gz", flair, {0, 1})
    entropy = nib.load(str(out / f"{row['id']}_entropy.nii.gz"))
    np.testing.assert_allclose(entropy.affine, nib.load(str(flair)).affine, atol=1e-4)
    assert (out / f"{row['id']}_views.png").is_file()
    # the metrics are computed on the file's grid and orientation (BRATS files are LPS, the network sees RAS)
    truth = np.asarray(nib.load(str(next((brats_dir / row["id"]).glob("OTMultiClass*.nii.gz")))).dataobj) > 0
    label = np.asarray(nib.load(str(out / f"{row['id']}_label.nii.gz")).dataobj) > 0
    assert float(row["dice_ttga"]) == pytest.approx(_dice(label, truth), abs=1e-3)
    assert float(row["dice_ttga"]) > 0.5  # the phantom-trained 3D segmenter finds the whole tumour


@pytest.mark.slow
def test_gms_kvasir_two_images(kvasir_dir, tmp_path, bundle_tools):
    bundle_tools.run("bundles/gms/configs/inference.json", "--dataset_dir", str(kvasir_dir), "--output_dir",
                     str(tmp_path), "--max_items", "2")
    labels = sorted((tmp_path / "labels").rglob("*_seg.png"))
    assert len(labels) == 2
    for label in labels:
        source = next((kvasir_dir / "images").glob(label.name.replace("_seg.png", ".*")))
        width, height = Image.open(source).size
        png = np.asarray(Image.open(label))
        assert png.shape == (height, width) and set(np.unique(png).tolist()) <= {0, 255}
    assert set(_gms_metrics(tmp_path)) == {"mean_dice", "mean_iou", "hd95"}
    assert len(_rows(tmp_path / "mean_dice_raw.csv")) == 2 and (tmp_path / "predictions.png").is_file()


def _tiny_gms_3d(path: Path, num_classes: int) -> Path:
    from monai_genaug.methods.gms import GMSSegmenter, gms_config

    torch.manual_seed(0)
    GMSSegmenter.from_config(gms_config("tiny", 3, 2, num_classes)).save(path)
    return path


@pytest.mark.slow
@pytest.mark.parametrize("num_classes", [1, 4], ids=["whole_tumour", "multiclass"])
def test_gms_brats_one_case(brats_dir, tmp_path, bundle_tools, num_classes):
    """Whole tumour (a binary model: labels > 0) and the four BRATS labels (a 4-class model); the untrained tiny
    model only checks the plumbing: label values, grid, affine and per-class metric rows."""
    model = _tiny_gms_3d(tmp_path / "model.pt", num_classes)
    out = tmp_path / "out"
    bundle_tools.run(["bundles/gms/configs/inference.json", "bundles/gms/configs/inference_3d.json"], "--dataset_dir", str(brats_dir), "--output_dir", str(out),
                     "--model_path", str(model), "--spatial_size", "[16,16,16]", "--max_items", "1")
    (label,) = sorted((out / "labels").rglob("*.nii.gz"))
    flair = next((brats_dir / label.parent.name).glob("Flair*.nii.gz"))
    _assert_nifti_on_input_grid(label, flair, set(range(num_classes + 1)))
    (row,) = _rows(out / "mean_dice_raw.csv")
    assert [k for k in row if k.startswith("class")] == [f"class{i}" for i in range(num_classes)]
    # Dice on the file's grid and orientation: the written label map against the label file
    truth = np.asarray(nib.load(str(next(flair.parent.glob("OTMultiClass*.nii.gz")))).dataobj).round()
    pred = np.asarray(nib.load(str(label)).dataobj)
    truth = (truth > 0).astype(int) if num_classes == 1 else truth.astype(int)
    for c in range(1, num_classes + 1):
        if (truth == c).any() and (pred == c).any():
            assert float(row[f"class{c - 1}"]) == pytest.approx(_dice(pred == c, truth == c), abs=1e-3), c
    assert set(_gms_metrics(out)) == {"mean_dice", "mean_iou", "hd95"} and (out / "predictions.png").is_file()
