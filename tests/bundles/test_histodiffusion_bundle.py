"""The HistoDiffusion bundle: layout and metadata, the documented commands on the embedded default (phantoms and the
shipped weights), and the whole training chain with tiny overrides."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from monai.bundle import run

from monai_genaug.bundle.schema import verify_bundle_metadata
from monai_genaug.data.folders import load_datalist
from monai_genaug.methods.histodiffusion import HistoDiffusion

ROOT = Path(__file__).resolve().parents[2]
BUNDLE = ROOT / "bundles" / "histodiffusion"
CONFIGS = BUNDLE / "configs"
TINY_DATA = {"num_phantoms": 40}  # 4 classes, 32 x 32


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Every test of this file on one torch thread."""


def _run(config: str, output_dir: Path, **overrides) -> None:
    """``python -m monai.bundle run --config_file configs/<config>`` in this process (saves the start-up time)."""
    run(config_file=str(CONFIGS / config), bundle_root=str(BUNDLE), output_dir=str(output_dir), **overrides)


def test_bundle_layout_metadata_and_weights():
    for name in (
        "train_autoencoder.json", "train_diffusion.json", "train_classifier.json", "inference.json", "filter.json",
        "evaluate.json", "metadata.json", "logging.conf",
    ):
        assert (CONFIGS / name).is_file(), name
    assert "Apache License" in (BUNDLE / "LICENSE").read_text()
    assert not (BUNDLE / "scripts").exists()
    assert "python -m monai.bundle run" in (BUNDLE / "docs" / "README.md").read_text()
    verify_bundle_metadata(CONFIGS / "metadata.json")
    for weights in ("model.pt", "classifier.pt"):
        path = BUNDLE / "models" / weights
        assert path.is_file() and path.stat().st_size < 5 * 2**20, weights
    hd = HistoDiffusion.load(BUNDLE / "models" / "model.pt", BUNDLE / "models" / "classifier.pt")
    meta = json.loads((CONFIGS / "metadata.json").read_text())
    assert hd.num_classes == meta["classifier_data_format"]["outputs"]["pred"]["num_channels"]
    assert hd.generator.latent_channels == meta["network_data_format"]["inputs"]["image"]["num_channels"]
    latent = meta["network_data_format"]["inputs"]["image"]
    assert list(hd.generator.latent_shape((32, 32))[1:]) == latent["spatial_shape"]


def test_documented_commands_on_shipped_weights(tmp_path):
    # synthesis, exactly as documented (a subprocess, as a user runs it), with fewer samples and steps
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [
            sys.executable, "-m", "monai.bundle", "run",
            "--config_file", "bundles/histodiffusion/configs/inference.json",
            "--output_dir", str(tmp_path), "--num_per_class", "2", "--num_inference_steps", "4",
        ],
        cwd=ROOT, capture_output=True, text=True, timeout=300, check=False, env=env,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    synthetic = load_datalist(tmp_path / "synthetic" / "synthetic_datalist.json", "training")
    assert len(synthetic) == 8 and sorted({s["label"] for s in synthetic}) == [0, 1, 2, 3]
    assert all(Path(s["image"]).is_file() for s in synthetic)
    assert (tmp_path / "synthetic" / "samples_grid.png").is_file()
    # filter and evaluate on the phantoms written on the fly
    _run("filter.json", tmp_path, max_per_class=1, **TINY_DATA)
    kept = load_datalist(tmp_path / "filtered" / "filtered_datalist.json", "training")
    assert len(kept) <= 4 and all(k["synthetic"] == 1 for k in kept)  # at most 1 per class
    scores = json.loads((tmp_path / "filtered" / "filter_scores.json").read_text())
    assert len(scores) == 8 and sum(s["kept"] for s in scores) == len(kept)
    _run("evaluate.json", tmp_path, num_iterations=2, seeds=[0], **TINY_DATA)
    results = json.loads((tmp_path / "evaluation" / "results.json").read_text())
    assert set(results) == {"real_only", "real+synthetic", "real+filtered"}
    assert results["real+filtered"]["num_synthetic"] == results["real+synthetic"]["num_synthetic"] == len(kept)


def test_training_chain_with_tiny_overrides(tmp_path):
    small = {**TINY_DATA, "batch_size": 8}
    _run("train_autoencoder.json", tmp_path, epochs=1, **small)
    ae = tmp_path / "autoencoder" / "autoencoder_final.pt"
    assert ae.is_file()
    _run("train_diffusion.json", tmp_path, epochs=1, autoencoder_path=str(ae), num_inference_steps=2, **small)
    gen = tmp_path / "diffusion" / "generator_ema.pt"
    assert gen.is_file() and (tmp_path / "diffusion" / "samples_epoch0001.png").is_file()
    _run("train_classifier.json", tmp_path, epochs=1, iterations_per_epoch=2, generator_path=str(gen), **small)
    clf = tmp_path / "classifier" / "classifier_final.pt"
    assert clf.is_file()
    _run(
        "inference.json", tmp_path, generator_path=str(gen), classifier_path=str(clf), num_per_class=1,
        num_inference_steps=2, classes=[0, 3],
    )
    synthetic = load_datalist(tmp_path / "synthetic" / "synthetic_datalist.json", "training")
    assert [s["label"] for s in synthetic] == [0, 3]
    assert [Path(s["image"]).name for s in synthetic] == ["histodiffusion_0_0.png", "histodiffusion_3_0.png"]
