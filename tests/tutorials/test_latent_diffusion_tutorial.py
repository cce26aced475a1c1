"""The core tutorial's quick mode runs end to end and leaves its artefacts."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import mlflow
import pytest
import torch
from PIL import Image

from monai_genaug.generative import LatentGenerator

TUTORIAL = Path(__file__).resolve().parents[2] / "tutorials" / "latent_diffusion_phantoms.py"


def test_quick_mode(tmp_path):
    spec = importlib.util.spec_from_file_location("latent_diffusion_phantoms", TUTORIAL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    summary = module.main(["--quick", "--output_dir", str(tmp_path), "--device", "cpu"])
    with Image.open(summary["sample_grid"]) as grid:
        assert grid.size[0] > grid.size[1] > 0  # 4 rows of 6 samples
    gen = LatentGenerator.load(str(tmp_path / "generator.pt"))
    assert gen.num_classes == 2 and summary["scale_factor"] != 1.0
    assert float(gen.scale_factor) == pytest.approx(summary["scale_factor"], rel=1e-6)
    assert json.loads((tmp_path / "summary.json").read_text())["seconds"] > 0
    # MLflow logged the run into the SQLite store
    client = mlflow.tracking.MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlruns.db'}")
    exp = client.get_experiment_by_name("latent_diffusion_phantoms")
    runs = client.search_runs([exp.experiment_id])
    assert runs and "epoch_loss" in runs[0].data.metrics
    for row in ("class0_g1", "class1_g3"):
        assert torch.isfinite(torch.tensor(summary["mean_intensity_by_row"][row]))
