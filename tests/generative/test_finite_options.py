"""NaN / Inf numeric options are refused at construction by the core (sampler, guidance plug-ins, TTGA augmenter),
each message naming the option (issue #21 item 3); TTGA's min_iterations follows a lower max_iterations (item 11)."""

from __future__ import annotations

import math
import warnings

import pytest
import torch

from monai_genaug.generative.guidance import ClassifierFreeGuidance, ClassifierGuidance, MultiConditionGuidance
from monai_genaug.generative.latent_generator import LatentGenerator
from monai_genaug.generative.sampler import DiffusionSampler
from monai_genaug.methods.ttga import TTGAAugmenter
from monai_genaug.utils.options import check_finite

BAD = [math.nan, math.inf, -math.inf]


@pytest.fixture(scope="module")
def gen2d():
    return LatentGenerator.from_preset("tiny", spatial_dims=2, image_channels=3, num_prompts=1).eval()


class _Classifier(torch.nn.Module):
    num_classes = 2

    def forward(self, x, t):
        return x.flatten(1)[:, :2]


@pytest.mark.parametrize("bad", BAD)
@pytest.mark.parametrize(
    "build, option",
    [
        (lambda v: DiffusionSampler(num_inference_steps=2, eta=v), "eta"),
        (lambda v: DiffusionSampler(num_inference_steps=2, clip_x0=(-1.0, v)), "clip_x0"),
        (lambda v: DiffusionSampler(num_inference_steps=2, clamp=(v, 1.0)), "clamp"),
        (lambda v: ClassifierFreeGuidance(scale=v), "scale"),
        (lambda v: MultiConditionGuidance([{}, {}], [1.0, v]), "weights[1]"),
        (lambda v: MultiConditionGuidance([{}], [torch.tensor([1.0, v])]), "weights[0]"),
        (lambda v: ClassifierGuidance(_Classifier(), class_labels=0, scale=v), "scale"),
    ],
)
def test_core_refuses_non_finite_options(build, option, bad):
    with pytest.raises(ValueError, match=rf"{option.replace('[', '.').replace(']', '.')} must be a finite number"):
        build(bad)


def test_sampler_call_refuses_non_finite_eta(gen2d):
    sampler = DiffusionSampler(num_inference_steps=2, progress=False)
    with pytest.raises(ValueError, match="eta must be a finite number"):
        sampler(gen2d, shape=(1, *gen2d.latent_shape((16, 16))), eta=math.nan)


@pytest.mark.parametrize("bad", BAD)
@pytest.mark.parametrize(
    "option, value",
    [
        ("guidance_scale", None),
        ("lambda_c", None),
        ("lambda_i", None),
        ("lambda_i", "tensor"),
        ("drop_p", None),
        ("eta", None),
        ("lr", None),
        ("early_stop_loss", None),
        ("early_stop_tau_factor", None),
        ("intensity_range", "range"),
        ("generator_range", "range"),
    ],
)
def test_ttga_augmenter_refuses_non_finite_options(gen2d, option, value, bad):
    if value == "tensor":
        v = torch.tensor([1.0, bad])
    elif value == "range":
        v = (0.0, bad)
    else:
        v = bad
    with pytest.raises(ValueError, match=rf"TTGAAugmenter: {option} must be a finite number"):
        TTGAAugmenter(gen2d, prompt=0, num_views=2, **{option: v})


def test_check_finite_accepts_finite_and_ignores_non_numbers():
    check_finite("x", a=1.0, b=(0, 1), c=torch.ones(3), d=None, e="auto", f=[[1.0, 2.0]])
    with pytest.raises(ValueError, match="x: f must be a finite number"):
        check_finite("x", f=[[1.0, math.nan]])


def test_ttga_min_iterations_follows_a_lower_max_iterations(gen2d):
    """A request that lowers max_iterations alone (CLI --max_iterations 5, MONAI Label params) keeps working."""
    with pytest.warns(UserWarning, match="min_iterations=100 is above max_iterations=5; min_iterations is lowered"):
        ttga = TTGAAugmenter(gen2d, prompt=0, num_views=2, min_iterations=100, max_iterations=5)
    assert (ttga.min_iterations, ttga.max_iterations) == (5, 5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ok = TTGAAugmenter(gen2d, prompt=0, num_views=2, min_iterations=3, max_iterations=5)
    assert ok.min_iterations == 3
    with pytest.raises(ValueError, match="min_iterations must be >= 0"):
        TTGAAugmenter(gen2d, prompt=0, num_views=2, min_iterations=-1)
