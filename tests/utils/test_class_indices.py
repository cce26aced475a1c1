"""Class names as well as indices (issue #21 item 9): ``--classes "['name']"`` no longer fails with
"invalid literal for int()"; unknown names and out-of-range indices list the valid classes."""

from __future__ import annotations

import pytest
import torch

from monai_genaug.generative.latent_generator import LatentGenerator
from monai_genaug.methods.histodiffusion import HistoDiffusion
from monai_genaug.utils.labels import class_indices

NAMES = ["ADI", "TUM", "class_2"]


@pytest.mark.parametrize(
    "classes, expected",
    [
        (["TUM"], [1]),
        ("['TUM', 'ADI']", [1, 0]),  # as the bundle command line passes it
        ("[2, 0]", [2, 0]),
        ("TUM", [1]),
        (["ADI", 2], [0, 2]),
        (["1"], [1]),
        (1, [1]),
    ],
)
def test_class_indices_accepts_names_and_indices(classes, expected):
    assert class_indices(classes, NAMES) == expected


@pytest.mark.parametrize(
    "classes, match",
    [(["XYZ"], r"unknown class 'XYZ'; give class names or indices: 0 = 'ADI', 1 = 'TUM'"), ([3], "out of range"),
     ("[TUM", "not a list"), ([1.5], "unknown class 1.5")],
)
def test_class_indices_names_the_valid_classes(classes, match):
    with pytest.raises(ValueError, match=match):
        class_indices(classes, NAMES)


def test_histodiffusion_synthesizes_named_classes():
    gen = LatentGenerator.from_preset("tiny", spatial_dims=2, image_channels=3).eval()
    hd = HistoDiffusion(gen, class_names=NAMES[:2])
    out = hd.synthesize(1, (16, 16), classes="['TUM']", guidance_scale=0.0, num_inference_steps=1)
    assert [int(v) for v in torch.as_tensor(out.labels).flatten()] == [1]
    with pytest.raises(ValueError, match="unknown class 'NOPE'"):
        hd.synthesize(1, (16, 16), classes=["NOPE"], guidance_scale=0.0, num_inference_steps=1)
    counts = hd.synthesize({"ADI": 1}, (16, 16), guidance_scale=0.0, num_inference_steps=1)
    assert [int(v) for v in torch.as_tensor(counts.labels).flatten()] == [0]
