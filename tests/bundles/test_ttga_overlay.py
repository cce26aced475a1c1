"""TTGA on another MONAI bundle through ``bundles/ttga/configs/overlay.json`` (issue #22): a model-zoo-shaped bundle
written here (its own network_def, preprocessing inverted by ``Invertd``, 2D and 3D) keeps its files untouched, gets
the generative TTA inferer and the uncertainty writers, and its own postprocessing still writes its label maps."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import create_workflow
from PIL import Image

from monai_genaug.bundle.inferers import ProbabilitiesAsLogits
from monai_genaug.inferers import GenerativeTTAInferer

ROOT = Path(__file__).resolve().parents[2]
OVERLAY = ROOT / "bundles" / "ttga" / "configs" / "overlay.json"
# what the shipped TTGA generators take: 3-channel 2D images, 2-channel (FLAIR, T1c) 3D volumes
CASES = {2: dict(channels=3, shape=(40, 36), size=[32, 32]), 3: dict(channels=2, shape=(20, 18, 16), size=[16, 16, 16])}
FAST = {"ttga_num_views": 2, "ttga_min_iterations": 1, "ttga_max_iterations": 2, "ttga_inversion_stride": 100}


def _foreign_bundle(root: Path, dims: int) -> dict[str, Path]:
    """A bundle shaped like the model zoo's segmentation bundles (nothing of monai_genaug in it)."""
    case = CASES[dims]
    (root / "configs").mkdir(parents=True)
    (root / "data").mkdir()
    rng = np.random.default_rng(dims)
    files = []
    for i in range(2):
        path = root / "data" / f"case{i}.nii.gz"  # channels last, as NIfTI files of multi-channel images are stored
        volume = rng.random((*case["shape"], case["channels"])).astype(np.float32)
        nib.save(nib.Nifti1Image(volume, np.diag([2.0, 2.0, 3.0, 1.0])), path)
        files.append({"image": str(path)})
    meta = {
        "version": "0.1.0", "monai_version": "1.5.0", "pytorch_version": "2.6.0", "numpy_version": "2.0.0",
        "task": "segmentation", "description": "a foreign bundle", "authors": "test", "copyright": "test",
        "network_data_format": {
            "inputs": {"image": {"type": "image", "format": "magnitude", "num_channels": case["channels"],
                                 "spatial_shape": ["16*n"] * dims, "dtype": "float32", "value_range": [0, 1]}},
            "outputs": {"pred": {"type": "image", "format": "segmentation", "num_channels": 2,
                                 "spatial_shape": ["16*n"] * dims, "dtype": "float32", "value_range": [0, 1]}}},
    }
    inference = {
        "imports": ["$import glob"],
        "bundle_root": str(root),
        "output_dir": "$@bundle_root + '/eval'",
        "dataset_dir": "$@bundle_root + '/data'",
        "device": "$torch.device('cpu')",
        "datalist": files,
        "network_def": {"_target_": "UNet", "spatial_dims": dims, "in_channels": case["channels"], "out_channels": 2,
                        "channels": [4, 8], "strides": [2], "num_res_units": 0},
        "network": "$@network_def.to(@device)",
        "preprocessing": {"_target_": "Compose", "transforms": [
            {"_target_": "LoadImaged", "keys": "image"},
            {"_target_": "EnsureChannelFirstd", "keys": "image", "channel_dim": -1},
            {"_target_": "ScaleIntensityd", "keys": "image", "minv": 0.0, "maxv": 1.0},
            {"_target_": "Resized", "keys": "image", "spatial_size": case["size"]}]},
        "dataset": {"_target_": "Dataset", "data": "@datalist", "transform": "@preprocessing"},
        "dataloader": {"_target_": "DataLoader", "dataset": "@dataset", "batch_size": 1, "shuffle": False},
        "inferer": {"_target_": "SimpleInferer"},
        "postprocessing": {"_target_": "Compose", "transforms": [
            {"_target_": "Activationsd", "keys": "pred", "softmax": True},
            {"_target_": "Invertd", "keys": "pred", "transform": "@preprocessing", "orig_keys": "image",
             "nearest_interp": False, "to_tensor": True},
            {"_target_": "AsDiscreted", "keys": "pred", "argmax": True},
            {"_target_": "SaveImaged", "keys": "pred", "output_dir": "@output_dir", "output_postfix": "seg",
             "output_ext": ".nii.gz", "separate_folder": False, "resample": False}]},
        "handlers": [{"_target_": "StatsHandler", "iteration_log": False}],
        "evaluator": {"_target_": "SupervisedEvaluator", "device": "@device", "val_data_loader": "@dataloader",
                      "network": "@network", "inferer": "@inferer", "postprocessing": "@postprocessing",
                      "val_handlers": "@handlers"},
        "initialize": ["$monai.utils.set_determinism(seed=0)"],
        "run": ["$@evaluator.run()"],
    }
    paths = {"meta": root / "configs" / "metadata.json", "inference": root / "configs" / "inference.json"}
    paths["meta"].write_text(json.dumps(meta, indent=2))
    paths["inference"].write_text(json.dumps(inference, indent=2))
    return paths


def _digest(paths) -> list[str]:
    return [hashlib.sha256(Path(p).read_bytes()).hexdigest() for p in paths]


@pytest.mark.slow
@pytest.mark.parametrize("dims", [2, 3])
def test_overlay_on_a_foreign_bundle(tmp_path, dims, one_thread):
    paths = _foreign_bundle(tmp_path / f"foreign_{dims}d", dims)
    before = _digest(paths.values())
    workflow = create_workflow(config_file=[str(paths["inference"]), str(OVERLAY)], meta_file=str(paths["meta"]),
                               workflow_type="infer", **FAST, ttga_progress=False)
    workflow.initialize()
    workflow.run()
    workflow.finalize()
    assert _digest(paths.values()) == before  # their files are not edited
    inferer = workflow.parser.get_parsed_content("evaluator").inferer
    assert isinstance(inferer, ProbabilitiesAsLogits) and isinstance(inferer.inferer, GenerativeTTAInferer)
    assert type(inferer.inferer.inferer).__name__ == "SimpleInferer"  # their inferer runs inside the TTA inferer
    out = tmp_path / f"foreign_{dims}d" / "eval"
    shape = CASES[dims]["shape"]
    for i in range(2):
        seg = nib.load(out / f"case{i}_seg.nii.gz").get_fdata()
        assert np.squeeze(seg).shape == shape  # their postprocessing (Invertd + SaveImaged) still works
        ext = ".png" if dims == 2 else ".nii.gz"
        for key in ("entropy", "mutual_information", "variance"):
            path = out / "ttga" / f"case{i}_{key}{ext}"
            assert path.is_file(), path
            m = np.asarray(Image.open(path)) / 255.0 if dims == 2 else nib.load(path).get_fdata()
            assert m.shape[:dims] == shape  # the input file's grid
            assert 0.0 <= m.min() and m.max() <= 1.0
        entropy = out / "ttga" / f"case{i}_entropy{ext}"
        assert (np.asarray(Image.open(entropy)) if dims == 2 else nib.load(entropy).get_fdata()).max() > 0


def test_probabilities_as_logits_round_trip():
    p = torch.softmax(torch.randn(2, 3, 4, 4), dim=1)

    class _Fixed:
        def __call__(self, x, net):
            return p

    logits = ProbabilitiesAsLogits(_Fixed(), "softmax")(torch.zeros(1), None)
    assert torch.allclose(torch.softmax(logits, dim=1), p, atol=1e-5)
    q = torch.rand(2, 1, 4, 4).clamp(0.01, 0.99)
    logits = ProbabilitiesAsLogits(lambda x, net: q, "sigmoid")(torch.zeros(1), None)
    assert torch.allclose(torch.sigmoid(logits), q, atol=1e-5)
    with pytest.raises(ValueError, match="activation must be 'softmax' or 'sigmoid'"):
        ProbabilitiesAsLogits(_Fixed(), "relu")
