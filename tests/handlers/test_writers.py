"""Bundle outputs: per-case metrics, flip TTA, writers (maps, pictures, CSV), weights, offline metadata schema."""

from __future__ import annotations

import csv
import json
import math
from types import SimpleNamespace

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from PIL import Image

from monai_genaug.metrics.cases import case_metrics, flip_tta_probabilities
from monai_genaug.utils.bundle_schema import META_SCHEMA_PATH, verify_bundle_metadata
from monai_genaug.generative.weights import (
    export_network,
    load_generator,
    load_network_weights,
)
from monai_genaug.handlers.writers import (
    CaseMapWriter,
    SegmentationComparisonWriter,
    TTGAPictureSaver,
    colormap,
)
from monai_genaug.utils.checkpoint import CheckpointMismatchError


def _square(size=16, lo=4, hi=10):
    y = torch.zeros(1, size, size)
    y[0, lo:hi, lo:hi] = 1
    return y


def test_case_metrics_values():
    y = _square()
    perfect = case_metrics(y, y, 1, uncertainty=torch.rand(1, 16, 16))
    assert perfect["dice"] == pytest.approx(1.0) and perfect["hd95"] == 0 and math.isnan(perfect["error_auc"])
    shifted = _square(lo=5, hi=11)
    wrong = (shifted != y).float()
    m = case_metrics(shifted, y, 1, uncertainty=wrong + 0.01 * torch.rand(1, 16, 16))
    assert 0 < m["dice"] < 1 and m["hd95"] >= 1 and m["error_auc"] == pytest.approx(1.0)
    assert case_metrics(torch.zeros(1, 8, 8), torch.zeros(1, 8, 8), 1)["dice"] == 1.0
    assert math.isnan(case_metrics(torch.zeros(1, 8, 8), y[:, :8, :8], 1)["hd95"])
    with pytest.raises(ValueError, match="same shape"):
        case_metrics(y, y[:, :8], 1)


def test_flip_tta_inverts_flips():
    torch.manual_seed(0)
    net = torch.nn.Conv2d(3, 2, 1)  # pointwise: flip-equivariant, so every inverted copy equals the plain output
    img = torch.rand(3, 12, 10)
    probs = flip_tta_probabilities(net, img, num_examples=4, seed=1)
    ref = torch.softmax(net(img[None]), 1)[0].detach()
    assert probs.shape == (4, 2, 12, 10) and torch.allclose(probs, ref.expand_as(probs), atol=1e-6)
    torch.manual_seed(1)
    conv = torch.nn.Conv2d(3, 2, 3, padding=1)  # not flip-equivariant: inverted copies differ from each other
    copies = flip_tta_probabilities(conv, img, num_examples=8, seed=0)
    assert (copies - copies[:1]).abs().amax() > 1e-4


def _engine(items, batch=None):
    return SimpleNamespace(state=SimpleNamespace(output=items, batch=batch or [{} for _ in items], metrics={}))


def test_case_map_writer_png_and_nifti(tmp_path):
    prob = torch.stack([1 - _square(), _square()])[:, 0]
    item = {"pred": _square(), "prob": prob, "entropy": torch.rand(1, 16, 16)}
    w = CaseMapWriter(tmp_path / "2d", spatial_dims=2)
    w(_engine([item], [{"id": "c1"}]))
    label = np.array(Image.open(tmp_path / "2d" / "c1_label.png"))
    assert label.shape == (16, 16) and set(np.unique(label)) == {0, 255} and label[5, 5] == 255
    assert np.array(Image.open(tmp_path / "2d" / "c1_prob.png"))[5, 5] == 255
    assert (tmp_path / "2d" / "c1_entropy.png").is_file()
    affine = np.diag([2.0, 3.0, 4.0, 1.0])
    vol = MetaTensor(torch.zeros(1, 6, 6, 6), meta={"affine": torch.as_tensor(affine)})
    vol[0, 2:4, 2:4, 2:4] = 1
    item3 = {"pred": vol, "prob": torch.cat([1 - vol, vol]), "entropy": torch.zeros(1, 6, 6, 6)}
    CaseMapWriter(tmp_path / "3d", spatial_dims=3)(_engine([item3], [{"id": "v"}]))
    img = nib.load(str(tmp_path / "3d" / "v_label.nii.gz"))
    assert np.allclose(img.affine, affine) and img.get_fdata()[3, 3, 3] == 1 and img.get_data_dtype() == np.uint8


def test_picture_saver_writes_views_and_panel(tmp_path):
    views = torch.rand(1, 3, 3, 16, 16)
    inferer = SimpleNamespace(last_output={"views": views})
    prob = torch.stack([1 - _square(), _square()])[:, 0]
    item = {"image": torch.rand(3, 16, 16), "label": _square(32, 8, 20), "prob_net": prob, "prob_base_net": prob,
            "entropy_net": torch.rand(1, 16, 16)}
    saver = TTGAPictureSaver(tmp_path, inferer=inferer, tile_size=32)
    saver(_engine([item], [{"id": "c"}]))
    panel = Image.open(tmp_path / "c_panel.png")
    assert (tmp_path / "c_views.png").is_file() and panel.size[0] > 4 * 32 and panel.size[1] > 2 * 32
    # 3D: the slice with the most foreground is drawn
    vol_item = {"image": torch.rand(2, 8, 8, 8), "prob_net": torch.rand(2, 8, 8, 8), "entropy_net": torch.rand(1, 8, 8, 8)}
    TTGAPictureSaver(tmp_path / "3d", inferer=SimpleNamespace(last_output={"views": torch.rand(1, 2, 2, 8, 8, 8)}))(
        _engine([vol_item])
    )
    assert (tmp_path / "3d" / "case_0000_panel.png").is_file()
    assert colormap(np.array([[0.0, 1.0]])).shape == (1, 2, 3)


def test_comparison_writer_csv_summary_and_metrics(tmp_path):
    y = _square()
    good = torch.stack([1 - y, y])[:, 0]
    bad = torch.stack([y, 1 - y])[:, 0]
    w = SegmentationComparisonWriter(tmp_path, num_classes=1, settings={"tau": 300})
    engine = _engine([{"pred": y, "pred_base": 1 - y, "prob_base": bad, "label": y, "entropy": torch.rand(1, 16, 16)}],
                     [{"id": "a"}])
    w._start()
    w(engine)
    engine.state.output = [{"pred": y, "pred_base": y, "prob_base": good, "label": y, "entropy": torch.rand(1, 16, 16)}]
    engine.state.batch = [{"id": "b"}]
    w(engine)
    w.write(engine)
    with open(tmp_path / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["id"] for r in rows] == ["a", "b"] and float(rows[0]["dice_ttga"]) == 1.0
    assert float(rows[0]["dice_baseline"]) == 0.0 and float(rows[1]["dice_baseline"]) == 1.0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["summary"]["num_cases"] == 2 and summary["settings"]["tau"] == 300
    assert engine.state.metrics["dice_ttga"] == 1.0 and engine.state.metrics["dice_baseline"] == 0.5
    with pytest.raises(ValueError, match="needs the segmenter"):
        SegmentationComparisonWriter(tmp_path, flip_tta_examples=4)


def test_weights_messages_and_roundtrip(tmp_path):
    from monai.networks.nets import UNet

    net = UNet(2, 3, 2, (4, 8), (2,))
    with pytest.raises(FileNotFoundError, match="written by: python -m monai.bundle run --config_file x.json"):
        load_network_weights(net, tmp_path / "none.pt", made_by="python -m monai.bundle run --config_file x.json")
    with pytest.raises(FileNotFoundError, match="generator file .*does not exist.*configs/train_generator.json"):
        load_generator(tmp_path / "g.pt", made_by="configs/train_generator.json")
    export_network(net, tmp_path / "m.pt")
    other = UNet(2, 3, 2, (4, 8), (2,))
    load_network_weights(other, tmp_path / "m.pt")
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), other.state_dict().values()))
    with pytest.raises(CheckpointMismatchError, match="network_def"):
        load_network_weights(UNet(2, 3, 3, (4, 8), (2,)), tmp_path / "m.pt", made_by="train_segmenter.json")


def test_offline_metadata_schema(tmp_path):
    meta = {
        "version": "0.1.0", "changelog": {"0.1.0": "x"}, "monai_version": "1.6.1", "pytorch_version": "2.13.0",
        "numpy_version": "2.4.6", "required_packages_version": {}, "task": "t", "description": "d", "authors": "a",
        "copyright": "c",
        "network_data_format": {
            "inputs": {"image": {"type": "image", "format": "magnitude", "num_channels": 1, "spatial_shape": ["8*n"],
                                 "dtype": "float32", "value_range": [0, 1]}},
            "outputs": {"pred": {"type": "image", "format": "labels", "num_channels": 2, "spatial_shape": ["8*n"],
                                 "dtype": "float32", "value_range": []}},
        },
    }
    path = tmp_path / "metadata.json"
    path.write_text(json.dumps({"schema": "https://example.invalid/schema.json", **meta}))
    verify_bundle_metadata(path)  # the URL is never fetched: the local schema exists
    for broken in ({k: v for k, v in meta.items() if k != "copyright"},
                   {**meta, "network_data_format": {"inputs": {}, "outputs": {}}},
                   {k: v for k, v in meta.items() if k != "required_packages_version"}):
        path.write_text(json.dumps({"schema": "x", **broken}))
        with pytest.raises(ValueError):
            verify_bundle_metadata(path)
    assert META_SCHEMA_PATH.is_file()


def test_inferer_with_baseline_appends_the_segmenter_alone():
    from monai_genaug.inferers.baseline import (
        BUNDLE_OUTPUT_NAMES,
        GenerativeTTAWithBaselineInferer,
        bundle_output_sizes,
    )
    from monai_genaug.inferers.generative_tta import GenerativeTTAInferer
    from monai_genaug.methods.ttga import TTGAAugmenter
    from monai_genaug.methods.ttga import (
        build_ttga_generator,
        ttga_generator_config,
    )

    torch.manual_seed(0)
    gen = build_ttga_generator(ttga_generator_config(2, 3, autoencoder_channels=[8, 8], latent_channels=2,
                                                     autoencoder_norm_num_groups=4, unet_channels=[8, 16],
                                                     num_head_channels=8, unet_norm_num_groups=4,
                                                     cross_attention_dim=8)).eval()
    aug = TTGAAugmenter(gen, num_views=2, min_iterations=1, max_iterations=1, inversion_stride=100)
    net = torch.nn.Conv2d(3, 2, 1)
    x = MetaTensor(torch.rand(1, 3, 16, 16), meta={"filename_or_obj": "a.png"})
    with torch.no_grad():
        out = GenerativeTTAWithBaselineInferer(aug, seed=1)(x, net)
        ref = GenerativeTTAInferer(aug, seed=1, output="concat")(x, net)
        alone = torch.softmax(net(x.as_tensor()), 1)
    assert list(BUNDLE_OUTPUT_NAMES) == ["prob", "entropy", "mutual_information", "variance", "prob_base"]
    assert out.shape[1] == sum(bundle_output_sizes(1)) == 7 and isinstance(out, MetaTensor)
    assert torch.allclose(out[:, :5].as_tensor(), ref.as_tensor(), atol=1e-6)
    assert torch.allclose(out[:, 5:].as_tensor(), alone, atol=1e-6)
    calls = []
    net.register_forward_hook(lambda module, args, output: calls.append(args[0].shape[0]))
    with torch.no_grad():  # the segmenter alone is the ensemble's first member: one forward pass, not two
        GenerativeTTAWithBaselineInferer(aug, seed=1)(x, net)
        assert calls == [3]
        calls.clear()
        without = GenerativeTTAWithBaselineInferer(aug, seed=1, include_original=False)(x, net)
        assert calls == [2, 1]
    assert torch.allclose(without[:, 5:].as_tensor(), alone, atol=1e-6)
    with pytest.raises(ValueError, match="concat"):
        GenerativeTTAWithBaselineInferer(aug, output="mean")


def test_tracking_handlers_read_the_loss_of_dict_outputs(tmp_path):
    from monai.handlers import MLFlowHandler, StatsHandler

    from monai_genaug.handlers.tracking import loss_tracking_handlers

    mlflow = MLFlowHandler(tracking_uri=f"sqlite:///{tmp_path}/m.db", output_transform=lambda x: x[0])
    stats = StatsHandler()
    out = loss_tracking_handlers([mlflow, stats])
    assert out == [mlflow, stats] and loss_tracking_handlers(None) == []
    assert mlflow.output_transform({"loss": torch.tensor(0.5)}) == 0.5  # the diffusion trainers' dict output
    assert mlflow.output_transform([{"loss": torch.tensor(0.25)}]) == 0.25  # a decollated list


def test_reconstruction_gate_needs_its_inputs(tmp_path):
    from monai_genaug.handlers.writers import SegmentationComparisonWriter

    with pytest.raises(ValueError, match="reconstruction_gate needs"):
        SegmentationComparisonWriter(tmp_path, reconstruction_gate=0.98)
    with pytest.raises(ValueError, match="Dice ratio"):
        SegmentationComparisonWriter(tmp_path, reconstruction_gate=1.5, network=torch.nn.Identity(),
                                     preprocessing=lambda d: d,
                                     inferer=type("I", (), {"augmenter": type("A", (), {"reconstruct": 1})()})())
