"""HistoDiffusion pipeline: noisy-latent classifier beats chance, classifier guidance raises the target class's
probability, guided synthesis writes a reproducible labelled set, centroid filtering, downstream comparison, data
preparation, pre-training through the engines, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from monai.data import DataLoader

from monai_genaug.engines import TrainingOptions
from monai_genaug.data.folders import load_datalist
from monai_genaug.data.pipelines import classification_2d_transforms
from monai_genaug.data.synthetic import write_synthetic_images
from monai_genaug.engines.classifier import noisy_latent_accuracy
from monai_genaug.generative.latent_generator import LatentGenerator
from monai_genaug.methods.histodiffusion import (
    HistoDiffusion,
    LatentFeatures,
    evaluate_synthetic_augmentation,
    filter_synthetic_datalist,
    histodiffusion_generator_config,
    load_autoencoder_weights,
    prepare_histodiffusion_data,
)
from monai_genaug.networks.noisy_classifier import NoisyLatentClassifier

SIZE = (16, 16)


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Every test of this file on one torch thread."""


def _items(n: int, seed: int) -> list[dict]:
    """RGB images of a bright blob on the left (class 0) or the right (class 1), jittered, with noise.

    The class is a spatial layout, which even an untrained (random) autoencoder keeps in its latents.
    """
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, SIZE[0]), torch.linspace(-1, 1, SIZE[1]), indexing="ij")
    items = []
    for i in range(n):
        c = i % 2
        cx = (-0.5 if c == 0 else 0.5) + 0.2 * (float(torch.rand(1, generator=g)) - 0.5)
        cy = 0.6 * (float(torch.rand(1, generator=g)) - 0.5)
        blob = torch.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / 0.1)
        img = (0.2 + 0.7 * blob)[None].repeat(3, 1, 1) + 0.05 * torch.randn(3, *SIZE, generator=g)
        items.append({"image": img.clamp(0, 1), "label": c})
    return items


def _pipeline(seed: int = 0, **kw) -> HistoDiffusion:
    torch.manual_seed(seed)
    return HistoDiffusion.from_preset(
        "tiny", image_channels=3, num_classes=2, image_size=SIZE, num_train_timesteps=200, **kw
    )


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny pipeline (untrained autoencoder and UNet) whose noisy-latent classifier is trained for 150 iterations."""
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("hd")
    hd = _pipeline()
    train, test = _items(48, seed=0), _items(32, seed=1)
    hd.estimate_scale_factor(DataLoader(train, batch_size=48))
    loader = DataLoader(train, batch_size=16, shuffle=True, generator=torch.Generator().manual_seed(0))
    trainer = hd.classifier_trainer(
        loader, 15, out / "clf", lr=3e-3, weight_decay=0.0, epoch_length=10, options=TrainingOptions(resume=False),
        val_loader=DataLoader(test, batch_size=32),
    )
    trainer.run()
    return {"hd": hd, "train": train, "test": test, "out": out, "trainer": trainer}


def test_noisy_classifier_beats_chance(trained):
    hd = trained["hd"]
    acc = noisy_latent_accuracy(hd.classifier, hd.generator, DataLoader(trained["test"], batch_size=32), (0, 50, 100))
    assert acc[0] >= 0.8 and acc[50] >= 0.7, acc  # 2 balanced classes: chance is 0.5
    assert trained["trainer"].handles.evaluator.state.metrics["val_accuracy"] >= 0.7
    # the final file holds the class names and the training mode
    extra = NoisyLatentClassifier.read_extra(trained["out"] / "clf" / "classifier_final.pt")
    assert extra["class_names"] == ["class_0", "class_1"] and extra["noised"] is True


def test_guidance_raises_target_probability(trained):
    hd = trained["hd"]
    hd.classifier.eval()
    for label in (0, 1):
        probs = {}
        for scale in (0.0, 20.0):
            z = hd.sample_latents(label, 8, SIZE, guidance_scale=scale, eta=1.0, num_inference_steps=5,
                                  rng=torch.Generator().manual_seed(label))
            with torch.no_grad():
                probs[scale] = torch.softmax(hd.classifier(z, 0), dim=1)[:, label].mean().item()
        assert probs[20.0] > probs[0.0] + 0.1, (label, probs)


def test_synthesis_writes_reproducible_labelled_set(trained, tmp_path):
    hd = trained["hd"]
    kw = {"guidance_scale": 5.0, "num_inference_steps": 3, "batch_size": 2, "seed": 7}
    res = hd.synthesize(3, SIZE, output_dir=tmp_path / "a", **kw)
    assert res.images.shape == (6, 3, *SIZE) and res.labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert res.seeds.tolist() == [7, 8, 9, 7, 8, 9]
    assert float(res.images.min()) >= 0.0 and float(res.images.max()) <= 1.0
    names = sorted(p.name for p in (tmp_path / "a").rglob("*.png") if p.parent != tmp_path / "a")
    assert names == [f"histodiffusion_{c}_{s}.png" for c in (0, 1) for s in (7, 8, 9)]
    items = load_datalist(res.datalist_path, "training")
    assert [i["label"] for i in items] == [0, 0, 0, 1, 1, 1] and all(i["synthetic"] == 1 for i in items)
    meta = json.loads(Path(res.datalist_path).read_text())
    assert meta["class_names"] == ["class_0", "class_1"] and meta["synthesis"]["guidance_scale"] == 5.0
    assert (tmp_path / "a" / "samples_grid.png").is_file()
    again = hd.synthesize(3, SIZE, **kw)
    assert torch.equal(res.images, again.images)  # same seed and batch size -> same samples
    only = hd.synthesize({1: 2}, SIZE, **kw)
    assert only.labels.tolist() == [1, 1] and torch.equal(only.images, res.images[3:5])


def test_centroid_filter_on_synthetic_set(trained, tmp_path):
    hd = trained["hd"]
    res = hd.synthesize(4, SIZE, guidance_scale=5.0, num_inference_steps=2, batch_size=4, output_dir=tmp_path / "s")
    flt = hd.centroid_filter("latent", max_per_class=2).fit(trained["train"])
    result = flt(res.images, res.labels)
    assert result.num_kept <= 4 and result.scores.shape == (8,)
    assert isinstance(flt.feature_fn, LatentFeatures)
    real = trained["train"][:10]  # the "real" reference set, as files on disk
    reference = write_synthetic_images(
        torch.stack([r["image"] for r in real]), [r["label"] for r in real], range(10), tmp_path / "real", "real"
    )
    summary = filter_synthetic_datalist(
        hd, reference, res.datalist_path, tmp_path / "f", features="classifier", max_per_class=1,
        transform=classification_2d_transforms(spatial_size=None), reference_class_names=["class_0", "class_1"],
    )
    kept = load_datalist(summary["datalist"], "training")
    assert len(kept) == summary["kept"] <= 2 and summary["total"] == 8
    scores = json.loads(Path(summary["scores"]).read_text())
    assert len(scores) == 8 and sum(s["kept"] for s in scores) == summary["kept"]
    with pytest.raises(ValueError, match="differ from the pipeline"):
        filter_synthetic_datalist(hd, trained["train"], res.datalist, tmp_path / "g", reference_class_names=["x", "y"])


def test_downstream_comparison(trained):
    synth = [{"image": torch.rand(3, *SIZE), "label": i % 2, "synthetic": 1} for i in range(8)]
    res = evaluate_synthetic_augmentation(
        trained["train"][:8], trained["test"][:8], {"real_only": None, "real+synthetic": synth}, 2,
        num_iterations=3, batch_size=4, seeds=(0, 1),
    )
    assert set(res) == {"real_only", "real+synthetic"}
    assert res["real_only"]["num_synthetic"] == 0 and res["real+synthetic"]["num_synthetic"] == 8
    assert res["real+synthetic"]["num_train"] == 16 and len(res["real_only"]["runs"]) == 2
    assert 0.0 <= res["real_only"]["accuracy"] <= 1.0


def test_prepare_data_phantoms(tmp_path):
    d = prepare_histodiffusion_data(None, tmp_path, labelled_fraction=0.1, num_phantoms=40, phantom_classes=4,
                                    phantom_size=SIZE, min_labelled_per_class=2)
    assert d["class_names"] == ["class_0", "class_1", "class_2", "class_3"]
    assert len(d["unlabelled"]) + len(d["validation"]) + len(d["test"]) == 40
    counts = torch.bincount(torch.tensor([i["label"] for i in d["labelled"]]), minlength=4)
    assert counts.min() >= 2 and all(i in d["unlabelled"] for i in d["labelled"])
    again = prepare_histodiffusion_data(None, tmp_path, labelled_fraction=0.1, num_phantoms=40, phantom_classes=4,
                                        phantom_size=SIZE, min_labelled_per_class=2)
    assert [i["image"] for i in again["labelled"]] == [i["image"] for i in d["labelled"]]
    with pytest.raises(ValueError, match="labelled_fraction"):
        prepare_histodiffusion_data(None, tmp_path, labelled_fraction=0.0)


def test_pretraining_through_engines(tmp_path):
    hd = _pipeline()
    images = [{"image": i["image"]} for i in _items(8, seed=2)]
    loader = DataLoader(images, batch_size=4)
    hd.autoencoder_trainer(loader, 1, tmp_path / "ae", adv_weight=0.0, options=TrainingOptions(resume=False)).run()
    fresh = LatentGenerator.from_config(histodiffusion_generator_config("tiny", 2, 3, num_train_timesteps=200))
    load_autoencoder_weights(fresh, tmp_path / "ae" / "autoencoder_final.pt")
    trained_ae = hd.generator.autoencoder.state_dict()
    assert all(torch.equal(v, trained_ae[k]) for k, v in fresh.autoencoder.state_dict().items())
    hd.diffusion_trainer(loader, 1, tmp_path / "ldm", options=TrainingOptions(resume=False), ema_decay=None).run()
    assert float(hd.generator.scale_factor) != 1.0  # estimated from the data before training
    assert (tmp_path / "ldm" / "generator_final.pt").is_file()
    paths = hd.save(tmp_path / "model")
    loaded = HistoDiffusion.load(paths["generator"], paths["classifier"])
    assert loaded.class_names == hd.class_names and loaded.num_classes == 2
    with pytest.raises(ValueError, match="differ from those stored"):
        HistoDiffusion.load(paths["generator"], paths["classifier"], class_names=["x", "y"])


def test_bad_input(trained):
    hd = trained["hd"]
    with pytest.raises(ValueError, match="out of range"):
        hd.synthesize(1, SIZE, classes=[2])
    with pytest.raises(ValueError, match="guidance_scale must be >= 0"):
        hd.synthesize(1, SIZE, guidance_scale=-1.0)
    with pytest.raises(ValueError, match=">= 0"):
        hd.synthesize({0: -1}, SIZE)
    with pytest.raises(ValueError, match="predicts 2 classes but the pipeline has 3"):
        HistoDiffusion(hd.generator, hd.classifier, class_names=["a", "b", "c"])
    wrong_channels = NoisyLatentClassifier.from_preset("tiny", spatial_dims=2, in_channels=5, num_classes=2)
    with pytest.raises(ValueError, match="input channels"):
        hd.set_classifier(wrong_channels)
    conditional = LatentGenerator.from_preset("tiny", spatial_dims=2, image_channels=3, num_classes=2)
    with pytest.raises(ValueError, match="unconditional"):
        HistoDiffusion(conditional, num_classes=2)
    with pytest.raises(ValueError, match="needs a classifier"):
        HistoDiffusion(hd.generator, num_classes=2).synthesize(1, SIZE, guidance_scale=1.0)
    with pytest.raises(ValueError, match="not divisible"):
        hd.synthesize(1, (15, 15), guidance_scale=0.0)
    with pytest.raises(ValueError, match="unconditional"):
        histodiffusion_generator_config("tiny", num_classes=3)


def test_3d_pipeline_synthesis_and_filter(tmp_path):
    torch.manual_seed(0)
    hd = HistoDiffusion.from_preset("tiny", spatial_dims=3, image_channels=1, num_classes=2, image_size=(8, 8, 8))
    assert hd.classifier.spatial_dims == 3 and hd.classifier.pool.grid_shape == (2, 2, 2)
    res = hd.synthesize(1, (8, 8, 8), guidance_scale=1.0, num_inference_steps=2, output_dir=tmp_path)
    assert res.images.shape == (2, 1, 8, 8, 8)
    assert sorted(p.name for p in tmp_path.rglob("*.nii.gz")) == ["histodiffusion_0_0.nii.gz", "histodiffusion_1_0.nii.gz"]
    real = [{"image": torch.rand(1, 8, 8, 8), "label": i % 2} for i in range(4)]
    result = hd.centroid_filter("latent").fit(real)(res.images, res.labels)
    assert result.details["distances"].shape == (2, 2)
