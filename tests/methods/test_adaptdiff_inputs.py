"""AdaptDiff: bad input gives clear errors at every stage, and the 3D pipeline runs every stage (a) to (e)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from monai_genaug.engines import TrainingOptions
from monai_genaug.data.phantoms import make_two_modality_phantoms
from monai_genaug.methods.adaptdiff import AdaptDiff, MaskConditionedInputd, make_loader

TINY_UNET = {"channels": [8, 16], "norm_num_groups": 4, "spade_intermediate_channels": 8}


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Every test of this file on one torch thread."""


def _pipeline(spatial_dims: int = 2, num_classes: int = 1) -> AdaptDiff:
    torch.manual_seed(0)
    return AdaptDiff.from_preset(
        "tiny",
        spatial_dims=spatial_dims,
        num_classes=num_classes,
        segmenter_channels=(4, 8),
        segmenter_kwargs={"num_res_units": 0},
        generator_kwargs={"unet": TINY_UNET},
    )


def _pairs(n: int, shape: tuple[int, ...], channels: int = 1) -> list[dict]:
    g = torch.Generator().manual_seed(0)
    return [
        {"image": torch.rand(channels, *shape, generator=g), "label": (torch.rand(1, *shape, generator=g) > 0.7).long()}
        for _ in range(n)
    ]


def test_trainers_reject_images_of_another_modality_shape(tmp_path):
    ad = _pipeline()
    # source images with 3 channels for a 1-channel pipeline: named, before the network sees them
    loader = make_loader(_pairs(2, (8, 8), channels=3), None, 2)
    trainer = ad.source_trainer(loader, 1, tmp_path / "a", options=TrainingOptions(resume=False))
    with pytest.raises(ValueError, match="source images have 3 channel"):
        trainer.run()
    # 3D synthetic pairs for a 2D pipeline
    loader = make_loader(_pairs(2, (8, 8, 8)), None, 2)
    trainer = ad.finetune_trainer(loader, 1, tmp_path / "b", options=TrainingOptions(resume=False))
    with pytest.raises(ValueError, match="synthetic .*images must be .*2D pipeline"):
        trainer.run()
    # target images with 3 channels for the generator
    loader = ad.diffusion_loader(_pairs(2, (8, 8), channels=3), batch_size=2)
    trainer = ad.diffusion_trainer(loader, 1, tmp_path / "c", ema_decay=None, options=TrainingOptions(resume=False))
    with pytest.raises(ValueError, match="target .*images have 3 channel"):
        trainer.run()


def test_masks_with_unexpected_values_and_malformed_items():
    ad = _pipeline()
    for masks, match in (
        (torch.full((1, 1, 8, 8), 0.5), "non-integer"),
        (-torch.ones(1, 1, 8, 8, dtype=torch.long), r"labels \[-1\] outside the declared labels 0..1"),
        (torch.full((1, 1, 8, 8), float("nan")), "NaN"),
        (torch.zeros(1, 2, 8, 8, dtype=torch.long), "argmax"),  # one-hot masks instead of a label map
        (torch.zeros(1, 1, 8, 8, 8, dtype=torch.long), r"\(B, 1, H, W\)"),  # 3D masks for a 2D generator
    ):
        with pytest.raises(ValueError, match=match):
            ad.synthesize(masks, num_inference_steps=1)
    with pytest.raises(ValueError, match=r"labels \[3\] outside the declared labels 0..2"):
        _pipeline(num_classes=2).synthesize(torch.full((1, 1, 8, 8), 3, dtype=torch.long), num_inference_steps=1)
    with pytest.raises(ValueError, match="mask set is empty"):
        ad.synthesize([], num_inference_steps=1)
    with pytest.raises(ValueError, match="0/255"):
        MaskConditionedInputd()({"image": torch.zeros(1, 4, 4), "label": torch.full((1, 4, 4), 255)})
    with pytest.raises(ValueError, match="diffusion training set is empty"):
        ad.diffusion_loader([])
    with pytest.raises(KeyError, match="target item 0 has no 'image'"):
        ad.pseudo_label([{"img": torch.zeros(1, 8, 8)}])
    with pytest.raises(ValueError, match="differ in shape"):
        ad.pseudo_label([{"image": torch.zeros(1, 8, 8)}, {"image": torch.zeros(1, 16, 16)}])


def test_3d_pipeline_runs_every_stage(tmp_path):
    ad = _pipeline(spatial_dims=3)
    data = make_two_modality_phantoms(4, (8, 8, 8), seed=2)
    source = [{"image": torch.from_numpy(d["source"]).float(), "label": torch.from_numpy(d["label"]).long()} for d in data]
    test = [{"image": torch.from_numpy(d["target"]).float(), "label": torch.from_numpy(d["label"]).long()} for d in data]
    no_resume = TrainingOptions(resume=False)
    ad.source_trainer(make_loader(source, None, 2), 1, tmp_path / "src", options=no_resume).run()  # (a)
    pseudo = ad.pseudo_label([{"image": t["image"]} for t in test], threshold=0.01)  # (b)
    assert all(p["label"].shape == (1, 8, 8, 8) for p in pseudo)
    ad.diffusion_trainer(ad.diffusion_loader(pseudo, batch_size=4), 1, tmp_path / "diff", ema_decay=None).run()  # (c)
    # MONAI zero-initialises the UNet's last convolutions: give them weights, so the mask can reach the output
    for prm in ad.generator.unet.parameters():
        if prm.abs().sum() == 0:
            nn.init.normal_(prm, std=0.1)
    masks = torch.stack([s["label"] for s in source[:2]])
    synth = ad.synthesize(masks, num_inference_steps=3, eta=0.0, seed=0)  # (d)
    other = ad.synthesize(masks.flip(0), num_inference_steps=3, eta=0.0, seed=0)
    assert synth.images.shape == (2, 1, 8, 8, 8) and synth.images.min() >= 0 and synth.images.max() <= 1
    assert torch.equal(synth.labels, masks) and (other.images - synth.images).abs().mean() > 1e-3
    ad.finetune_trainer(make_loader(synth.items(), None, 2), 1, tmp_path / "ft", options=no_resume).run()  # (e)
    scores = ad.evaluate(make_loader(test, None, 4, shuffle=False))
    assert set(scores) == {"source_only", "adaptdiff"}
    assert all(0.0 <= s["global_dice"] <= 1.0 and s["num_items"] == 4 for s in scores.values())
    assert not np.allclose(  # the fine-tune moved the weights
        next(ad.adapted.parameters()).detach().numpy(), next(ad.segmenter.parameters()).detach().numpy()
    )
