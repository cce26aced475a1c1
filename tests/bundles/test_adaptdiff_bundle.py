"""The AdaptDiff bundle: layout, metadata, shipped weights, and every stage run with tiny overrides."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
BUNDLE = ROOT / "bundles" / "adaptdiff"
CONFIGS = BUNDLE / "configs"
STAGES = (
    "train_source_segmenter",
    "pseudo_label",
    "train_diffusion",
    "synthesize",
    "finetune",
    "evaluate",
    "inference",
)


def _run(*args: str, timeout: int = 300, ok: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, "-m", "monai.bundle", "run", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if ok:
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


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
        "version",
        "monai_version",
        "pytorch_version",
        "numpy_version",
        "required_packages_version",
        "task",
        "description",
        "authors",
        "copyright",
        "network_data_format",
        "references",
    ):
        assert key in meta, key
    assert {"inputs", "outputs"} <= set(meta["network_data_format"])
    assert "2410.04648" in " ".join(meta["references"])
    assert "Apache License" in (BUNDLE / "LICENSE").read_text()
    assert not (BUNDLE / "scripts").exists()
    for name in (*STAGES, "logging.conf"):
        assert (CONFIGS / (name if name.endswith(".conf") else name + ".json")).is_file(), name
    for weights in ("source_segmenter.pt", "diffusion.pt", "model.pt"):
        path = BUNDLE / "models" / weights
        assert path.is_file() and path.stat().st_size < 5 * 2**20, weights
    readme = (BUNDLE / "docs" / "README.md").read_text()
    for stage in STAGES:
        assert f"python -m monai.bundle run --config_file bundles/adaptdiff/configs/{stage}.json" in readme, stage


def test_configs_wire_only_package_and_monai_objects():
    from monai.bundle import ConfigParser

    for stage in STAGES:
        config = json.loads((CONFIGS / f"{stage}.json").read_text())
        assert config["bundle_root"]["default"] == "bundles/adaptdiff" and config["dataset_dir"] is None, stage
        for target in _targets(config, []):
            assert target.startswith("monai_genaug.") or "." not in target, (stage, target)
        parser = ConfigParser()
        parser.read_config(str(CONFIGS / f"{stage}.json"))
        assert parser["spatial_size"] == [48, 48] and parser["num_classes"] == 1, stage


def test_shipped_weights_synthesize_target_style_images_and_adapt():
    from monai_genaug.data.phantoms import make_two_modality_phantoms
    from monai_genaug.methods.adaptdiff import AdaptDiff, make_loader

    ad = AdaptDiff.load(
        BUNDLE / "models" / "source_segmenter.pt",
        BUNDLE / "models" / "diffusion.pt",
        adapted_path=BUNDLE / "models" / "model.pt",
    )
    assert ad.generator.scheduler.num_train_timesteps == 300 and ad.generator.is_spade
    # fresh anatomies (another seed than the bundle's phantoms), rendered in the target modality
    data = make_two_modality_phantoms(6, (48, 48), seed=123)
    masks = torch.from_numpy(np.stack([d["label"] for d in data])).long()
    synth = ad.synthesize(masks[:4], num_inference_steps=20, eta=0.0, seed=0)
    x, m = synth.images, masks[:4].float()
    # the target modality has dark vessels on a bright background: so do the synthetic images of the masks
    assert (x * m).sum() / m.sum() < (x * (1 - m)).sum() / (1 - m).sum() - 0.05
    other = ad.synthesize(masks[:4].flip(0), num_inference_steps=20, eta=0.0, seed=0)
    assert (other.images - x).abs().mean() > 0.02
    test = [
        {"image": torch.from_numpy(d["target"]).float(), "label": torch.from_numpy(d["label"]).long()} for d in data
    ]
    scores = ad.evaluate(make_loader(test, None, 6, shuffle=False))
    assert scores["adaptdiff"]["mean_dice"] > scores["source_only"]["mean_dice"], scores


@pytest.mark.slow
def test_every_stage_runs_tiny(tmp_path):
    from PIL import Image

    common = [
        "--ckpt_dir",
        str(tmp_path / "models"),
        "--save_dir",
        str(tmp_path / "models"),
        "--output_dir",
        str(tmp_path / "out"),
        "--phantom_dir",
        str(tmp_path / "phantoms"),
        "--spatial_size",
        "[16,16]",
        "--num_phantoms",
        "16",
    ]
    seg = ["--segmenter_channels", "[4,8]", "--segmenter_res_units", "0"]
    train = ["--epochs", "1", "--mlflow_tracking", "False"]
    _run("--config_file", str(CONFIGS / "train_source_segmenter.json"), *common, *seg, *train)
    assert (tmp_path / "models" / "source_segmenter.pt").is_file()
    _run("--config_file", str(CONFIGS / "pseudo_label.json"), *common, "--threshold", "0.01", "--corrupt_dilation", "1")
    pairs = json.loads((tmp_path / "out" / "pseudo_labels" / "pairs.json").read_text())
    assert pairs["kind"] == "pseudo_labels" and pairs["corrupted"] and len(pairs["pairs"]) > 0
    _run(
        "--config_file",
        str(CONFIGS / "train_diffusion.json"),
        *common,
        *train,
        "--sample_every",
        "100",
        "--generator_unet",
        "{'channels': [8, 16], 'norm_num_groups': 4, 'spade_intermediate_channels': 8}",
    )
    assert (tmp_path / "models" / "diffusion.pt").is_file()
    _run("--config_file", str(CONFIGS / "synthesize.json"), *common, "--num_inference_steps", "2")
    synthetic = sorted((tmp_path / "out" / "synthetic" / "images").glob("*.png"))
    assert synthetic and all("_seg_" in p.name for p in synthetic)
    assert (tmp_path / "out" / "synthetic" / "grid.png").is_file()
    _run("--config_file", str(CONFIGS / "finetune.json"), *common, *train)
    assert (tmp_path / "models" / "model.pt").is_file()
    _run("--config_file", str(CONFIGS / "evaluate.json"), *common)
    metrics = json.loads((tmp_path / "out" / "evaluate" / "metrics.json").read_text())
    assert set(metrics) == {"source_only", "adaptdiff"}
    assert all(0.0 <= v["global_dice"] <= 1.0 for v in metrics.values())
    _run("--config_file", str(CONFIGS / "inference.json"), *common, *seg, "--role", "target_test")
    labels = sorted((tmp_path / "out" / "labels").glob("*_seg.png"))
    assert labels and np.asarray(Image.open(labels[0])).shape == (16, 16)
    assert set(np.unique(np.asarray(Image.open(labels[0]))).tolist()) <= {0, 255}


@pytest.mark.slow
def test_missing_stage_output_names_the_command(tmp_path):
    proc = _run(
        "--config_file",
        str(CONFIGS / "pseudo_label.json"),
        "--ckpt_dir",
        str(tmp_path / "none"),
        "--output_dir",
        str(tmp_path / "out"),
        "--phantom_dir",
        str(tmp_path / "ph"),
        "--num_phantoms",
        "8",
        "--spatial_size",
        "[16,16]",
        ok=False,
    )
    assert proc.returncode != 0
    assert "train_source_segmenter.json" in proc.stdout + proc.stderr
