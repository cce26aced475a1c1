"""RandGenerativeTTA(d): one TTGA view per call, meta kept, no-op inverse, reproducible, inside TestTimeAugmentation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor, TestTimeAugmentation
from monai.networks.nets import UNet
from monai.transforms import Compose

from monai_genaug.generative.latent_generator import LatentGenerator
from monai_genaug.methods.ttga import TTGAAugmenter
from monai_genaug.transforms.generative_tta import (
    RandGenerativeTTA,
    RandGenerativeTTAD,
    RandGenerativeTTAd,
    RandGenerativeTTADict,
)

FAST = dict(min_iterations=2, max_iterations=5, inversion_stride=100)


@pytest.fixture(scope="module")
def augmenter():
    gen = LatentGenerator.from_preset("tiny", spatial_dims=2, image_channels=1, num_prompts=1)
    torch.manual_seed(0)
    with torch.no_grad():  # fresh diffusion UNets output zeros
        for p in gen.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return TTGAAugmenter(gen.eval(), num_views=4, mask_scheme="hybrid", drop_p=0.5, **FAST)


@pytest.fixture()
def image():
    affine = torch.diag(torch.tensor([0.5, 0.7, 1.0, 1.0]))
    img = MetaTensor(torch.rand(1, 16, 20, generator=torch.Generator().manual_seed(0)), affine=affine)
    img.meta["filename_or_obj"] = "case_0.nii.gz"
    return img


def test_view_keeps_meta_and_inverse_is_noop(augmenter, image):
    tta = RandGenerativeTTA(augmenter, lambda_i=(0.5, 1.5)).set_random_state(0)
    out = tta(image)
    assert isinstance(out, MetaTensor) and out.shape == image.shape and out.dtype == image.dtype
    assert torch.equal(out.affine, image.affine) and out.meta["filename_or_obj"] == "case_0.nii.gz"
    assert (out.as_tensor() - image.as_tensor()).abs().mean() > 1e-3
    assert len(out.applied_operations) == 1
    info = out.applied_operations[0]["extra_info"]
    assert set(info) >= {"seed", "lambda_i", "tau"} and 0.5 <= info["lambda_i"] <= 1.5
    assert len(image.applied_operations) == 0  # the input is not modified
    inv = tta.inverse(out)
    assert len(inv.applied_operations) == 0 and torch.equal(inv.as_tensor(), out.as_tensor())


def test_reproducible_random_and_cached(augmenter, image):
    a = RandGenerativeTTA(augmenter).set_random_state(3)
    b = RandGenerativeTTA(augmenter).set_random_state(3)
    first, second = a(image), a(image)
    assert torch.equal(first, b(image)) and torch.equal(second, b(image))
    assert not torch.allclose(first, second)  # a new seed every call
    calls = []
    handle = augmenter.generator.unet.register_forward_hook(lambda m, i, o: calls.append(1))
    try:
        a(image)
    finally:
        handle.remove()
    assert len(calls) == 3  # cached inversion + identity: only the 3 denoising steps


def test_prob_zero_numpy_and_errors(augmenter, image):
    skip = RandGenerativeTTA(augmenter, prob=0.0)
    out = skip(image)
    assert torch.equal(out.as_tensor(), image.as_tensor())
    assert skip.inverse(out).applied_operations == []
    arr = RandGenerativeTTA(augmenter).set_random_state(1)(image.numpy())
    assert isinstance(arr, np.ndarray) and arr.shape == (1, 16, 20) and arr.dtype == np.float32
    with pytest.raises(TypeError, match="TTGAAugmenter"):
        RandGenerativeTTA(object())
    with pytest.raises(ValueError, match="lambda_i"):
        RandGenerativeTTA(augmenter, lambda_i=(2.0, 1.0))


def test_dict_version(augmenter, image):
    assert RandGenerativeTTAD is RandGenerativeTTAd and RandGenerativeTTADict is RandGenerativeTTAd
    label = MetaTensor(torch.zeros(1, 16, 20))
    t = RandGenerativeTTAd(keys="image", augmenter=augmenter).set_random_state(0)
    d = t({"image": image, "label": label})
    assert d["image"].shape == image.shape and torch.equal(d["label"], label)
    assert len(d["image"].applied_operations) == 1
    assert d["image"].applied_operations[0]["class"] == "RandGenerativeTTAd"
    again = RandGenerativeTTAd(keys="image", augmenter=augmenter).set_random_state(0)({"image": image})
    assert torch.equal(again["image"], d["image"])
    inv = t.inverse(d)
    assert inv["image"].applied_operations == [] and torch.equal(inv["image"], d["image"])
    with pytest.raises(KeyError):
        t({"label": label})
    assert "image" not in RandGenerativeTTAd("image", augmenter, allow_missing_keys=True)({"label": label})


def test_inside_monai_test_time_augmentation(augmenter, image):
    net = UNet(spatial_dims=2, in_channels=1, out_channels=2, channels=(4, 8), strides=(2,), num_res_units=0).eval()
    transform = Compose([RandGenerativeTTAd(keys="image", augmenter=augmenter)])
    transform.set_random_state(0)
    tta = TestTimeAugmentation(
        transform, batch_size=2, num_workers=0, inferrer_fn=lambda x: torch.softmax(net(x), 1), orig_key="image",
        progress=False,
    )
    with torch.no_grad():
        mode, mean, std, vvc = tta({"image": image}, num_examples=4)
    assert mean.shape == (2, 16, 20) and mode.shape == (2, 16, 20)
    assert float(std.max()) > 0  # the generated views differ
    assert np.isfinite(vvc)
    transform.set_random_state(0)
    with torch.no_grad():
        stacked = TestTimeAugmentation(transform, batch_size=2, inferrer_fn=lambda x: torch.softmax(net(x), 1),
                                       orig_key="image", progress=False, return_full_data=True)({"image": image}, 2)
    assert stacked.shape == (2, 2, 16, 20)
