"""The Ctrl-GenAug bundle: layout and metadata, the documented commands on the shipped weights (phantoms), and the
training chain with tiny overrides."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import traceback
from pathlib import Path

import pytest
import torch
from monai.bundle import run

from monai_genaug.utils.bundle_schema import verify_bundle_metadata
from monai_genaug.methods.ctrl_genaug import SequenceGenerator

ROOT = Path(__file__).resolve().parents[2]
BUNDLE = ROOT / "bundles" / "ctrl_genaug"
CONFIGS = BUNDLE / "configs"
TINY = {"num_phantoms": 8}


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Every test of this file on one torch thread."""


def _run(config: str, output_dir: Path, **overrides) -> None:
    run(config_file=str(CONFIGS / config), bundle_root=str(BUNDLE), output_dir=str(output_dir), **overrides)


def test_layout_metadata_and_weights():
    for name in ("train_frames.json", "train_clips.json", "inference.json", "filter.json", "evaluate.json",
                 "metadata.json", "logging.conf"):
        assert (CONFIGS / name).is_file(), name
    assert "Apache License" in (BUNDLE / "LICENSE").read_text()
    assert "python -m monai.bundle run" in (BUNDLE / "docs" / "README.md").read_text()
    verify_bundle_metadata(CONFIGS / "metadata.json")
    weights = BUNDLE / "models" / "model.pt"
    assert weights.is_file() and weights.stat().st_size < 5 * 2**20
    gen = SequenceGenerator.load(weights)
    meta = json.loads((CONFIGS / "metadata.json").read_text())
    assert [gen.num_frames, 16, 16] == meta["network_data_format"]["inputs"]["image"]["spatial_shape"]


def test_documented_commands_on_shipped_weights(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "monai.bundle", "run", "--config_file", "bundles/ctrl_genaug/configs/inference.json",
         "--output_dir", str(tmp_path), "--num_clips", "4", "--num_inference_steps", "3"],
        cwd=ROOT, capture_output=True, text=True, timeout=300, check=False, env=env,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    synthetic = json.loads((tmp_path / "synthetic" / "synthetic_datalist.json").read_text())["training"]
    assert len(synthetic) == 8 and all(Path(s["image"]).is_file() for s in synthetic)
    assert (tmp_path / "synthetic" / "samples_sheet.png").is_file()
    _run("filter.json", tmp_path, classifier_steps=5)
    scores = json.loads((tmp_path / "filtered" / "filter_scores.json").read_text())
    kept = json.loads((tmp_path / "filtered" / "filtered_datalist.json").read_text())["training"]
    assert len(scores) == 8 and sum(s["kept"] for s in scores) == len(kept) < 8
    _run("evaluate.json", tmp_path, num_steps=2, seeds=[0], **TINY)
    results = json.loads((tmp_path / "evaluation" / "results.json").read_text())
    assert set(results) == {"real_only", "real+synthetic", "real+filtered"}
    assert results["real+synthetic"]["num_synthetic"] == 8 and results["real+filtered"]["num_synthetic"] == len(kept)


def test_training_chain_with_tiny_overrides(tmp_path):
    _run("train_frames.json", tmp_path, num_steps=2, batch_size=4, encoder_steps=3, **TINY)
    assert (tmp_path / "generator_frames.pt").is_file()
    _run("train_clips.json", tmp_path, num_steps=2, batch_size=2, **TINY)
    gen = tmp_path / "generator.pt"
    assert gen.is_file()
    loaded = SequenceGenerator.load(gen)  # the learned frame encoder and the concat motion path travel with it
    assert loaded.frame_encoder is not None and loaded.unet.insert_unit is not None
    _run("inference.json", tmp_path, generator_path=str(gen), num_clips=2, num_per_clip=2, num_inference_steps=2, **TINY)
    synthetic = json.loads((tmp_path / "synthetic" / "synthetic_datalist.json").read_text())["training"]
    assert len(synthetic) == 4 and Path(synthetic[0]["image"]).name == f"clip0000_{synthetic[0]['label']}_66.nii.gz"
    # the filter with a temporal classifier, a confidence floor, thresholds from the real clips, learned features
    _run("filter.json", tmp_path, classifier_steps=2, classifier="temporal", min_confidence=0.5,
         temporal_calibration="reference", generator_path=str(gen), **TINY)
    summary = json.loads((tmp_path / "filtered" / "filter_summary.json").read_text())
    assert summary["total"] == 4 and summary["temporal_thresholds"][0] is not None
    with pytest.raises(Exception) as err:  # no frame-trained generator yet: the error says which config makes it
        _run("train_clips.json", tmp_path / "other", num_steps=1, **TINY)
    assert "train_frames.json" in "".join(traceback.format_exception(err.value))


def test_clip_stage_early_stopping_through_the_bundle(tmp_path):
    _run("train_frames.json", tmp_path, num_steps=2, batch_size=4, encoder_steps=2, **TINY)
    frames = SequenceGenerator.load(tmp_path / "generator_frames.pt").state_dict()
    # a monitor whose score never improves after the start: the run stops after `patience` calls and the saved
    # generator is the untrained start of the clip stage (the frame-stage weights), not the weights of the last step
    _run("train_clips.json", tmp_path, num_steps=8, batch_size=2, monitor_every=1, patience=2,
         monitor="$lambda: {'score': 1.0}", save_execute_config=False, **TINY)
    saved = torch.load(tmp_path / "generator.pt", weights_only=True)
    assert saved["extra"]["monitoring"]["best_step"] == 0 and saved["extra"]["monitoring"]["stopped_at"] == 2
    assert [h["step"] for h in saved["extra"]["monitoring"]["history"]] == [0, 1, 2]
    assert all(torch.equal(saved["state_dict"][k], v) for k, v in frames.items())
    # the documented monitor: clips generated from held-out training clips, judged by a real-data classifier
    out = tmp_path / "monitored"
    (out).mkdir()
    (out / "generator_frames.pt").write_bytes((tmp_path / "generator_frames.pt").read_bytes())
    _run("train_clips.json", out, num_steps=2, batch_size=2, monitor_every=1, monitor_classifier_steps=2,
         monitor_sample_steps=2, validation_fraction=0.5, **TINY)
    history = torch.load(out / "generator.pt", weights_only=True)["extra"]["monitoring"]["history"]
    assert [h["step"] for h in history] == [0, 1, 2]
    assert all(0.0 <= h["agreement"] <= 1.0 and h["score"] <= h["agreement"] for h in history)
    with pytest.raises(Exception) as err:  # a validation split that leaves no clip is named with its fix
        _run("train_clips.json", out, num_steps=1, monitor_every=1, validation_fraction=0.99, **TINY)
    assert "validation_fraction" in "".join(traceback.format_exception(err.value))
