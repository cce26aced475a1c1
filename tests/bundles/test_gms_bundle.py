"""The GMS bundle: metadata and configs, the documented commands on the embedded default (phantoms)."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
BUNDLE = ROOT / "bundles" / "gms"
CONFIGS = BUNDLE / "configs"


def _run(*args: str, timeout: int = 240) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, "-m", "monai.bundle", "run", *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout, check=False
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return proc


def _metrics(folder: Path) -> dict[str, float]:
    text = (folder / "metrics.csv").read_text()
    rows = csv.reader(text.splitlines(), delimiter="\t" if "\t" in text else ",")
    return {row[0]: float(row[1]) for row in rows if row}


def _targets(node, found):
    if isinstance(node, dict):
        if "_target_" in node:
            found.append(node["_target_"])
        for v in node.values():
            _targets(v, found)
    elif isinstance(node, list):
        for v in node:
            _targets(v, found)
    return found


def test_bundle_layout_and_metadata():
    meta = json.loads((CONFIGS / "metadata.json").read_text())
    for key in (
        "version", "monai_version", "pytorch_version", "numpy_version", "required_packages_version", "task",
        "description", "authors", "copyright", "network_data_format",
    ):
        assert key in meta, key
    assert {"inputs", "outputs"} <= set(meta["network_data_format"])
    assert "Apache License" in (BUNDLE / "LICENSE").read_text()
    assert not (BUNDLE / "scripts").exists()
    for name in ("train.json", "train_3d.json", "evaluate.json", "inference.json", "inference_3d.json", "logging.conf"):
        assert (CONFIGS / name).is_file(), name
    for weights in ("model.pt", "model_3d.pt"):
        path = BUNDLE / "models" / weights
        assert path.is_file() and path.stat().st_size < 5 * 2**20, weights
    readme = (BUNDLE / "docs" / "README.md").read_text()
    assert "python -m monai.bundle run --config_file bundles/gms/configs/inference.json" in readme


def test_configs_wire_only_package_and_monai_objects():
    from monai.bundle import ConfigParser

    for name in ("train.json", "evaluate.json", "inference.json", "inference_3d.json"):
        names = ["inference.json", name] if name == "inference_3d.json" else [name]  # 3D: an override of the 2D config
        config = ConfigParser.load_config_files([str(CONFIGS / n) for n in names])
        assert config["bundle_root"]["default"] == "bundles/gms" and config["dataset_dir"] is None
        for target in _targets(config, []):
            assert target.startswith("monai_genaug.") or "." not in target, (name, target)
    parser = ConfigParser()
    parser.read_config([str(CONFIGS / "train.json"), str(CONFIGS / "train_3d.json")])
    assert parser["spatial_dims"] == 3 and parser["train"]["trainer"]["max_epochs"] == "@epochs"
    override = json.loads((CONFIGS / "inference_3d.json").read_text())
    assert len(override) < 20 and "network_def" not in override and override["spatial_dims"] == 3


def test_default_weights_load_and_segment():
    import torch

    from monai_genaug.methods.gms import GMSSegmenter

    seg2 = GMSSegmenter.load(BUNDLE / "models" / "model.pt")
    assert (seg2.spatial_dims, seg2.image_channels, seg2.num_classes) == (2, 3, 1)
    assert seg2(torch.rand(1, 3, 64, 64)).shape == (1, 2, 64, 64)
    seg3 = GMSSegmenter.load(BUNDLE / "models" / "model_3d.pt")
    assert (seg3.spatial_dims, seg3.image_channels, seg3.num_classes) == (3, 2, 3)
    assert float(seg3.scale_factor) != 1.0 and float(seg2.scale_factor) != 1.0  # trained and calibrated


@pytest.mark.slow
def test_inference_2d_on_embedded_default(tmp_path):
    from PIL import Image

    # the held-out test split of the phantoms the shipped weights were trained on (first four cases)
    _run("--config_file", "bundles/gms/configs/inference.json", "--output_dir", str(tmp_path), "--max_items", "4")
    labels = sorted((tmp_path / "labels").rglob("*_seg.png"))
    assert len(labels) == 4
    png = np.asarray(Image.open(labels[0]))
    assert png.shape == (64, 64) and set(np.unique(png).tolist()) <= {0, 255}
    metrics = _metrics(tmp_path)
    assert set(metrics) == {"mean_dice", "mean_iou", "hd95"}
    assert 0.5 < metrics["mean_dice"] <= 1.0  # the shipped weights segment the phantoms
    assert (tmp_path / "mean_dice_raw.csv").is_file() and (tmp_path / "predictions.png").is_file()


@pytest.mark.slow
def test_inference_3d_on_embedded_default(tmp_path):
    import nibabel as nib

    _run("--config_file", "['bundles/gms/configs/inference.json','bundles/gms/configs/inference_3d.json']",
         "--output_dir", str(tmp_path), "--num_phantoms", "5",
         "--max_items", "1")
    (label,) = sorted((tmp_path / "labels").rglob("*.nii.gz"))
    case = label.parent.name  # labels/<case>/Flair_seg.nii.gz
    source = nib.load(str(tmp_path / "phantoms" / "mri_5_32x32x32_s0_k3" / case / "Flair.nii.gz"))
    out = nib.load(str(label))
    assert out.shape == source.shape
    np.testing.assert_allclose(out.affine, source.affine, atol=1e-5)  # written with the input's affine
    assert set(np.unique(np.asarray(out.dataobj)).tolist()) <= {0, 1, 2, 3}
    assert set(_metrics(tmp_path)) == {"mean_dice", "mean_iou", "hd95"}


@pytest.mark.slow
def test_train_then_evaluate_tiny(tmp_path):
    model = tmp_path / "model.pt"
    common = ["--spatial_size", "[16,16]", "--num_phantoms", "12", "--seed", "0"]
    _run("--config_file", "bundles/gms/configs/train.json", "--output_dir", str(tmp_path / "train"),
         "--model_path", str(model), "--preset", "tiny", "--ae_epochs", "4", "--epochs", "1", "--batch_size", "4",
         "--mlflow_tracking", "False", "--tokenizer_images", "all", *common,  # tokenizer: every image, no labels
         "--ae_lr", "0.0", "--ae_patience", "1")  # lr 0: the validation mask Dice never improves after epoch 1
    assert model.is_file() and (tmp_path / "train" / "autoencoder" / "autoencoder.pt").is_file()
    stopped = torch.load(tmp_path / "train" / "autoencoder" / "checkpoint_last.pt", weights_only=False)
    assert stopped["engine"]["epoch"] == 2  # ae_patience 1: stopped one epoch after the best, before the cap of 4
    _run("--config_file", "bundles/gms/configs/evaluate.json", "--output_dir", str(tmp_path / "eval"),
         "--model_path", str(model), *common)
    metrics = _metrics(tmp_path / "eval")
    assert 0.0 <= metrics["mean_dice"] <= 1.0
    assert not (tmp_path / "eval" / "labels").exists()  # evaluation writes metrics, not label maps
