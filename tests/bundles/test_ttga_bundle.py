"""The TTGA bundle: layout, offline metadata check, network I/O, the documented commands (2D + MLflow, 3D), bad input."""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
BUNDLE = ROOT / "bundles" / "ttga"
CONFIGS = BUNDLE / "configs"
TINY = ["--max_items", "1", "--num_views", "2", "--min_iterations", "1", "--max_iterations", "2",
        "--inversion_stride", "100"]


def _run(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "monai.bundle", "run", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout, env=env, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


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


def _error(fn) -> str:
    """Run ``fn`` and return the messages of the raised exception and its causes (MONAI wraps config errors)."""
    try:
        fn()
    except Exception as e:  # noqa: BLE001
        messages, err = [], e
        while err is not None:
            messages.append(str(err))
            err = err.__cause__ or err.__context__
        return " | ".join(messages)
    raise AssertionError("no exception was raised")


def _merged(name: str) -> dict:
    """The config a documented command runs: ``inference_3d.json`` is an override of ``inference.json``."""
    names = ["inference.json", name] if name == "inference_3d.json" else [name]
    return ConfigParser.load_config_files([str(CONFIGS / n) for n in names])


def _parser(*names: str, **overrides) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config([str(CONFIGS / n) for n in names])
    parser.read_meta(str(CONFIGS / "metadata.json"))
    parser.update(overrides)
    return parser


def test_layout_metadata_and_configs():
    from monai_genaug.utils.bundle_schema import verify_bundle_metadata

    for name in ("metadata.json", "inference.json", "inference_3d.json", "train_generator.json", "train_lora.json",
                 "train_segmenter.json", "train_3d.json", "evaluate.json", "logging.conf"):
        assert (CONFIGS / name).is_file(), name
    assert "Apache License" in (BUNDLE / "LICENSE").read_text() and not (BUNDLE / "scripts").exists()
    for weights in ("model.pt", "generator.pt", "model_3d.pt", "generator_3d.pt"):
        path = BUNDLE / "models" / weights
        assert path.is_file() and path.stat().st_size < 5 * 2**20, weights
    verify_bundle_metadata(CONFIGS / "metadata.json")  # offline, against monai_genaug/utils/meta_schema.json
    readme = (BUNDLE / "docs" / "README.md").read_text()
    for command in ("python -m monai.bundle run --config_file bundles/ttga/configs/inference.json",
                    "train_generator.json", "train_lora.json", "train_segmenter.json", "verify_metadata",
                    "verify_net_in_out", "--tracking mlflow", "--dataset_dir"):
        assert command in readme, command
    for name in ("inference.json", "inference_3d.json", "train_generator.json", "train_lora.json",
                 "train_segmenter.json"):
        config = _merged(name)
        assert config["bundle_root"]["default"] == "bundles/ttga" and config["dataset_dir"] is None, name
        for key in ("output_dir", "device", "amp", "seed"):
            assert key in config, (name, key)
        for target in _targets(config, []):
            assert target.startswith(("monai_genaug.", "torch.")) or "." not in target, (name, target)
    for name in ("inference.json", "inference_3d.json"):  # MONAI Label's BundleInferTask needs these IDs
        config = _merged(name)
        assert {"network_def", "inferer", "preprocessing", "postprocessing", "evaluator", "initialize", "run"} <= set(config)
    # the 3D config is a short override of the 2D one (as train_3d.json): only 3D settings, no copied wiring
    override = json.loads((CONFIGS / "inference_3d.json").read_text())
    assert len(override) < 30 and "network_def" not in override and "evaluator" not in override
    assert _merged("inference_3d.json")["inner_inferer"]["_target_"] == "SlidingWindowInferer"


def test_verify_net_in_out_for_both_segmenters():
    from monai.bundle import verify_net_in_out

    meta = str(CONFIGS / "metadata.json")
    verify_net_in_out("network_def", meta_file=meta, config_file=str(CONFIGS / "inference.json"), device="cpu", n=4)
    verify_net_in_out("network_def", meta_file=meta, device="cpu", n=2,
                      config_file=[str(CONFIGS / "inference.json"), str(CONFIGS / "inference_3d.json")],
                      **{"_meta_#network_data_format#inputs#image#num_channels": 2,
                         "_meta_#network_data_format#inputs#image#spatial_shape": ["16*n", "16*n", "16*n"]})


def test_inference_2d_default_with_mlflow(tmp_path):
    out = tmp_path / "out"
    _run("--config_file", "bundles/ttga/configs/inference.json", "--output_dir", str(out), "--phantom_dir",
         str(tmp_path / "phantoms"), *TINY, "--tracking", "mlflow")
    rows = _rows(out / "metrics.csv")
    assert len(rows) == 1 and {"dice_ttga", "dice_baseline", "hd95_ttga", "error_auc_ttga"} <= set(rows[0])
    cid = rows[0]["id"]
    assert 0.0 <= float(rows[0]["dice_ttga"]) <= 1.0 and int(rows[0]["iterations"]) <= 2
    # the views' diversity sits next to the Dice (a run whose views equal the input would show SSIM 1, agreement 1)
    assert 0.0 < float(rows[0]["view_mae"]) and 0.0 < float(rows[0]["view_ssim"]) < 1.0
    assert 0.0 <= float(rows[0]["view_agreement"]) <= 1.0 and int(rows[0]["segmenter_calls"]) >= 2
    assert 0.0 <= float(rows[0]["identity_fraction"]) <= 1.0
    label = np.array(Image.open(out / f"{cid}_label.png"))
    src = np.array(Image.open(next((tmp_path / "phantoms").glob("*/images")) / f"{cid}.png"))
    assert label.shape == src.shape[:2] and set(np.unique(label)) <= {0, 255}
    for suffix in ("prob", "entropy", "views", "panel"):
        assert (out / f"{cid}_{suffix}.png").is_file(), suffix
    summary = json.loads((out / "summary.json").read_text())
    assert summary["summary"]["num_cases"] == 1 and summary["settings"]["num_views"] == 2
    assert (out / "mlruns.db").is_file()


def test_evaluate_reports_the_reconstruction_gate(tmp_path):
    """evaluate.json segments the generator's identity-path reconstructions and reports the gate (issue #16)."""
    out = tmp_path / "out"
    _run("--config_file", "['bundles/ttga/configs/inference.json','bundles/ttga/configs/evaluate.json']",
         "--output_dir", str(out), "--phantom_dir", str(tmp_path / "phantoms"), *TINY, "--flip_tta_examples", "0")
    rows = _rows(out / "metrics.csv")
    assert len(rows) == 1 and 0.0 <= float(rows[0]["dice_reconstruction"]) <= 1.0
    summary = json.loads((out / "summary.json").read_text())["summary"]
    ratio = summary["reconstruction_gate_ratio"]
    assert ratio == pytest.approx(float(rows[0]["dice_reconstruction"]) / float(rows[0]["dice_baseline"]), rel=1e-4)
    assert summary["reconstruction_gate_passed"] == (ratio >= 0.98)


def test_inference_3d_default_writes_nifti_with_input_affine(tmp_path):
    out = tmp_path / "out3d"
    _run("--config_file", "['bundles/ttga/configs/inference.json','bundles/ttga/configs/inference_3d.json']",
         "--output_dir", str(out), "--phantom_dir",
         str(tmp_path / "phantoms"), *TINY)
    rows = _rows(out / "metrics.csv")
    cid = rows[0]["id"]
    seg = nib.load(str(out / f"{cid}_label.nii.gz"))
    flair = nib.load(str(next((tmp_path / "phantoms").glob(f"*/{cid}/Flair.nii.gz"))))
    assert seg.shape == flair.shape and np.allclose(seg.affine, flair.affine)
    assert nib.load(str(out / f"{cid}_entropy.nii.gz")).get_fdata().max() <= 1.0 + 1e-6
    assert (out / f"{cid}_panel.png").is_file() and (out / f"{cid}_views.png").is_file()


def _expect(pattern: str, fn) -> None:
    message = _error(fn)
    assert re.search(pattern, message), f"{pattern!r} not in {message[-600:]!r}"


def test_bad_inputs_give_clear_errors(tmp_path):
    from monai_genaug.data.phantoms import write_phantom_dataset

    two_d = write_phantom_dataset("endoscopy", tmp_path / "endo", 4, spatial_size=(16, 16))
    three_d = write_phantom_dataset("mri", tmp_path / "mri", 3, spatial_size=(16, 16, 16))
    # a 2D folder into the 3D bundle and the reverse
    _expect("2D images/ \\+ masks/ folder.*configs/inference.json",
            lambda: _parser("inference.json", "inference_3d.json", dataset_dir=str(two_d)).get_parsed_content("datalist"))
    _expect("no images/ folder.*inference_3d.json",
            lambda: _parser("inference.json", dataset_dir=str(three_d)).get_parsed_content("datalist"))
    # missing weights name the train config that makes them
    _expect("does not exist.*train_segmenter.json",
            lambda: _parser("inference.json", model_path=str(tmp_path / "none.pt")).get_parsed_content("network"))
    _expect("does not exist.*train_generator.json",
            lambda: _parser("inference.json", generator_path=str(tmp_path / "no.pt")).get_parsed_content("generator"))
    # wrong channel count / dimensions for the generator
    _expect("3-channel images but the data has 1",
            lambda: _parser("inference.json", image_channels=1).get_parsed_content("generator"))
    gen2d = str(BUNDLE / "models" / "generator.pt")
    _expect("2D but this config is 3D",
            lambda: _parser("inference.json", "inference_3d.json", generator_path=gen2d).get_parsed_content("generator"))
    # multi-class labels for a segmenter with 2 output channels
    multi = _parser("inference.json", "inference_3d.json", dataset_dir=str(three_d), label_mode="multiclass", split="all")
    _expect("output channels \\(classes 0..1\\)", lambda: multi.get_parsed_content("dataset")[0])
    # constant and too small images
    bad = tmp_path / "bad"
    (bad / "images").mkdir(parents=True)
    Image.fromarray(np.full((16, 16, 3), 7, np.uint8)).save(bad / "images" / "flat.png")
    noise = np.random.default_rng(0).integers(0, 255, (2, 2, 3), dtype=np.uint8)
    Image.fromarray(noise).save(bad / "images" / "tiny.png")
    data = _parser("inference.json", dataset_dir=str(bad), split="all").get_parsed_content("dataset")
    _expect("flat.png' is constant", lambda: data[0])
    _expect("tiny.png' has spatial size \\(2, 2\\), smaller than 4", lambda: data[1])
    # NaN values in a volume
    nan_case = tmp_path / "nan" / "case_0"
    nan_case.mkdir(parents=True)
    for name in ("Flair", "T1c"):
        arr = np.random.default_rng(1).random((8, 8, 8)).astype(np.float32)
        arr[0, 0, 0] = np.nan
        nib.save(nib.Nifti1Image(arr, np.eye(4)), str(nan_case / f"{name}.nii.gz"))
    data3 = _parser("inference.json", "inference_3d.json", dataset_dir=str(tmp_path / "nan"), split="all",
                    patterns={"flair": "Flair*", "t1c": "T1c*"}).get_parsed_content("dataset")
    _expect("Flair.nii.gz' contains 2 NaN", lambda: data3[0])


def test_monai_label_style_use_of_the_config_ids(tmp_path):
    """What MONAI Label's BundleInferTask does: network_def + models/model.pt, preprocessing, inferer, postprocessing
    on an image without label."""
    from monai_genaug.data.phantoms import make_endoscopy_phantoms

    img = (make_endoscopy_phantoms(1, spatial_size=(40, 48), seed=3)[0]["image"].transpose(1, 2, 0) * 255).round()
    Image.fromarray(img.astype(np.uint8)).save(tmp_path / "x.png")
    parser = _parser("inference.json", num_views=2, min_iterations=1, max_iterations=2, inversion_stride=100,
                     bundle_root=str(BUNDLE))
    network = parser.get_parsed_content("network_def")
    network.load_state_dict(torch.load(BUNDLE / "models" / "model.pt", weights_only=True))
    data = parser.get_parsed_content("preprocessing")({"image": str(tmp_path / "x.png")})
    with torch.no_grad():
        pred = parser.get_parsed_content("inferer")(data["image"][None], network.eval())
    assert pred.shape == (1, 2 + 3 + 2, 64, 64)
    out = parser.get_parsed_content("postprocessing")({"image": data["image"], "pred": pred[0]})
    assert out["pred"].shape == (1, 40, 48) and set(out["pred"].unique().tolist()) <= {0.0, 1.0}
    assert out["entropy"].shape == (1, 40, 48) and float(out["entropy"].max()) <= 1.0 + 1e-5
