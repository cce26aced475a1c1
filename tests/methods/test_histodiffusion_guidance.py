"""HistoDiffusion guidance that carries class and filtering on independent features: the guidance's timestep range,
the informative range from accuracy per t, guidance raising an independent oracle's agreement on a trained toy pair
(and the oracle-driven choice of the scale), penultimate-layer features of a classifier trained on the real labels,
the per-class caps relative to the real count."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from monai.data import DataLoader

from monai_genaug.data.folders import load_datalist
from monai_genaug.data.pipelines import classification_2d_transforms
from monai_genaug.data.synthetic import write_synthetic_images
from monai_genaug.engines.classifier import noisy_latent_accuracy
from monai_genaug.evaluation import Oracle
from monai_genaug.generative.guidance import ClassifierGuidance
from monai_genaug.methods.histodiffusion import (
    HistoDiffusion,
    PenultimateFeatures,
    filter_synthetic_datalist,
    informative_max_timestep,
    select_guidance,
    train_real_feature_network,
)

SIZE = (16, 16)


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Every test of this file on one torch thread."""


def _blobs(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One-channel images of a bright blob on the left (class 0) or the right (class 1): trivially separable."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, SIZE[0]), torch.linspace(-1, 1, SIZE[1]), indexing="ij")
    images, labels = [], []
    for i in range(n):
        c = i % 2
        cx = (-0.5 if c == 0 else 0.5) + 0.2 * (float(torch.rand(1, generator=g)) - 0.5)
        cy = 0.6 * (float(torch.rand(1, generator=g)) - 0.5)
        blob = torch.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / 0.1)
        images.append(((0.1 + 0.8 * blob) + 0.03 * torch.randn(*SIZE, generator=g)).clamp(0, 1)[None])
        labels.append(c)
    return torch.stack(images), torch.tensor(labels)


class _Toy(torch.nn.Module):
    """A classifier ``(x_t, t) -> logits`` whose gradient is known: the logit of class 1 is the sum of x."""

    num_classes = 2

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        s = x.flatten(1).sum(1)
        return torch.stack([-s, s], dim=1)


def test_guidance_acts_only_up_to_max_timestep():
    eps, x = torch.zeros(2, 1, 4, 4), torch.randn(2, 1, 4, 4)
    g = ClassifierGuidance(_Toy(), class_labels=1, scale=2.0, max_timestep=300)
    assert g.active(300) and g.active(0) and not g.active(301)
    assert torch.equal(g.correct(eps, x, 500, 0.5, None), eps)  # above the range: unchanged
    inside = g.correct(eps, x, 200, 0.5, None)
    assert float(inside.abs().min()) > 0 and bool((inside < 0).all())  # pushes towards a larger sum (class 1)
    everywhere = ClassifierGuidance(_Toy(), class_labels=1, scale=2.0)
    assert torch.allclose(everywhere.correct(eps, x, 900, 0.5, None), inside)
    with pytest.raises(ValueError, match="max_timestep must be >= 0"):
        ClassifierGuidance(_Toy(), class_labels=1, scale=2.0, max_timestep=-1)


def test_informative_max_timestep():
    acc = {0: 0.95, 250: 0.8, 500: 0.55, 750: 0.7}
    assert informative_max_timestep(acc, chance=0.5, margin=0.1) == 250  # stops at the first uninformative t
    assert informative_max_timestep(acc, chance=0.5, margin=0.0) == 750
    assert informative_max_timestep({0: 0.52, 100: 0.9}, chance=0.5, margin=0.1) is None
    with pytest.raises(ValueError, match="accuracy is empty"):
        informative_max_timestep({}, chance=0.5)


@pytest.fixture(scope="module")
def toy_pair(tmp_path_factory):
    """A tiny latent diffusion model + noisy-latent classifier trained a few hundred steps on the two blob classes
    (untrained autoencoder: the layout survives its latents)."""
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("toy")
    torch.manual_seed(0)
    hd = HistoDiffusion.from_preset("tiny", image_channels=1, num_classes=2, image_size=SIZE, num_train_timesteps=200)
    x, y = _blobs(64, seed=0)
    items = [{"image": i, "label": int(c)} for i, c in zip(x, y)]
    loader = DataLoader(items, batch_size=16, shuffle=True, generator=torch.Generator().manual_seed(0))
    common = {"resume": False, "save_interval": 10_000, "seed": 0}
    hd.diffusion_trainer(loader, 10, out / "ldm", lr=2e-3, epoch_length=20, **common).run()
    hd.classifier_trainer(loader, 10, out / "clf", lr=3e-3, weight_decay=0.0, epoch_length=15, **common).run()
    return hd, x, y


def test_guidance_raises_oracle_agreement(toy_pair):
    hd, x, y = toy_pair
    # the oracle: trained on the real images as the autoencoder renders them (never the UNet, never the guide)
    with torch.no_grad():
        rendered = hd.generator.decode(hd.generator.encode(x))
    oracle = Oracle("classification", 2, iterations=150, seed=3).fit(rendered, y)
    xt, yt = _blobs(32, seed=5)
    with torch.no_grad():
        assert oracle.test_score(hd.generator.decode(hd.generator.encode(xt)), yt) >= 0.9  # a trustworthy oracle
    agreement = {}
    for scale in (0.0, 30.0):
        res = hd.synthesize(16, SIZE, guidance_scale=scale, num_inference_steps=10, batch_size=16, seed=11)
        agreement[scale] = float(oracle.score(res.images, res.labels).float().mean())
    assert agreement[30.0] >= agreement[0.0] + 0.2 and agreement[30.0] >= 0.8, agreement
    choice = select_guidance(hd, oracle, SIZE, scales=(0.0, 30.0), max_timesteps=(100, None), num_per_class=8,
                             num_inference_steps=10)
    assert choice["scale"] == 30.0 and len(choice["candidates"]) == 3  # scale 0 is tried once
    by = {(c["scale"], c["max_timestep"]): c for c in choice["candidates"]}
    assert by[(30.0, None)]["agreement"] > by[(0.0, None)]["agreement"]
    assert choice["agreement"] == max(c["agreement"] for c in choice["candidates"])
    restricted = hd.synthesize(4, SIZE, guidance_scale=30.0, guidance_max_timestep=100, num_inference_steps=10)
    assert restricted.settings["guidance_max_timestep"] == 100
    with pytest.raises(ValueError, match="guidance_max_timestep must be >= 0"):
        hd.synthesize(2, SIZE, guidance_scale=30.0, guidance_max_timestep=-5)
    with pytest.raises(ValueError, match="scales is empty"):
        select_guidance(hd, oracle, SIZE, scales=())


def test_real_classifier_features_and_caps():
    x, y = _blobs(24, seed=1)
    net = train_real_feature_network(x, y, 2, iterations=60, seed=0)
    feats = PenultimateFeatures(net)
    f = feats(x)
    assert f.shape == (24, net.head.in_features)  # the input of the last layer
    torch.manual_seed(0)
    hd = HistoDiffusion.from_preset("tiny", image_channels=1, num_classes=2, image_size=SIZE, num_train_timesteps=200)
    with pytest.raises(ValueError, match="need the network trained on the labelled real images"):
        hd.feature_extractor("real_classifier")
    assert isinstance(hd.feature_extractor("real_classifier", network=net), PenultimateFeatures)
    with pytest.raises(ValueError, match="has no module 'classifier'"):
        PenultimateFeatures(net, layer="classifier")
    # "synthetic" candidates: correct blobs and blobs labelled with the wrong class; the filter on the real
    # classifier's features drops the mislabelled ones (it does not depend on the generator at all)
    cx, cy = _blobs(16, seed=2)
    labels = torch.cat([cy, 1 - cy])
    result = hd.centroid_filter(feats, ratio_to_real=0.25).fit(x, y)(torch.cat([cx, cx]), labels)
    assert result.keep[16:].sum().item() == 0 and result.keep[:16].sum().item() > 0
    per_class = [int((result.keep & (labels == c)).sum()) for c in (0, 1)]
    assert all(n <= math.ceil(0.25 * 12) for n in per_class), per_class  # 12 real per class -> at most 3 kept


def test_filter_datalist_with_real_classifier_features(tmp_path):
    torch.manual_seed(0)
    hd = HistoDiffusion.from_preset("tiny", image_channels=1, num_classes=2, image_size=SIZE, num_train_timesteps=200)
    x, y = _blobs(12, seed=3)
    reference = write_synthetic_images(x, y.tolist(), range(12), tmp_path / "real", "real")
    sx, sy = _blobs(16, seed=4)
    synthetic = write_synthetic_images(sx, (1 - sy).tolist()[:8] + sy.tolist()[8:], range(16), tmp_path / "syn", "hd")
    summary = filter_synthetic_datalist(
        hd, reference, synthetic, tmp_path / "f", features="real_classifier", ratio_to_real=0.5,
        transform=classification_2d_transforms(spatial_size=None, rgb=False), feature_iterations=60,
    )
    kept = load_datalist(summary["datalist"], "training")
    assert len(kept) == summary["kept"] and summary["total"] == 16
    assert all(n <= 3 for n, _ in summary["per_class"].values())  # ceil(0.5 x 6 real per class)
    scores = json.loads(Path(summary["scores"]).read_text())
    wrong = [s["kept"] for s in scores[:8]]
    assert not any(wrong), scores[:8]  # the mislabelled half is never kept
    meta = json.loads(Path(summary["datalist"]).read_text())
    assert meta["filter"]["features"] == "real_classifier" and meta["filter"]["ratio_to_real"] == 0.5


def test_balanced_noisy_latent_accuracy(toy_pair):
    hd, _, _ = toy_pair
    x, y = _blobs(20, seed=7)
    keep = torch.cat([torch.nonzero(y == 0).reshape(-1), torch.nonzero(y == 1).reshape(-1)[:2]])  # 10 vs 2
    items = [{"image": x[i], "label": int(y[i])} for i in keep.tolist()]
    loader = DataLoader(items, batch_size=8)
    plain = noisy_latent_accuracy(hd.classifier, hd.generator, loader, timesteps=(0, 150), seed=1)
    balanced = noisy_latent_accuracy(hd.classifier, hd.generator, loader, timesteps=(0, 150), seed=1, balanced=True)
    with torch.no_grad():
        pred = hd.classifier(hd.generator.encode(x[keep]), 0).argmax(1)
    labels = y[keep]
    recall = [float((pred[labels == c] == c).float().mean()) for c in (0, 1)]
    assert balanced[0] == pytest.approx(sum(recall) / 2) and plain[0] == pytest.approx(float((pred == labels).float().mean()))
    assert set(balanced) == {0, 150} and all(0.0 <= v <= 1.0 for v in balanced.values())
