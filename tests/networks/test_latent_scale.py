"""The one latent scale-factor estimate: streamed = concatenated, sample std, clear errors, both users agree."""

from __future__ import annotations

import pytest
import torch

from monai_genaug.generative.latent_generator import LatentGenerator
from monai_genaug.networks.gms import GMSSegmenter
from monai_genaug.networks.latent_scale import latent_scale_factor


def test_streamed_estimate_equals_the_concatenated_sample_std():
    g = torch.Generator().manual_seed(0)
    images = 3.0 + 2.5 * torch.randn(7, 2, 4, 4, generator=g)
    double = lambda x: 2.0 * x  # noqa: E731  (a stand-in encoder)
    want = 1.0 / float((2.0 * images).double().std())  # torch's default: N - 1
    assert latent_scale_factor(double, images) == pytest.approx(want, rel=1e-12)
    batches = [{"image": images[:3]}, {"image": images[3:4]}, {"image": images[4:]}]
    assert latent_scale_factor(double, batches) == pytest.approx(want, rel=1e-12)
    assert latent_scale_factor(double, batches, max_batches=1) == pytest.approx(
        1.0 / float((2.0 * images[:3]).double().std()), rel=1e-12
    )
    population = 1.0 / float((2.0 * images).double().std(unbiased=False))  # what GMS used before
    n = images.numel()
    assert want / population == pytest.approx(((n - 1) / n) ** 0.5, rel=1e-12)  # the documented difference


def test_errors_name_the_problem():
    with pytest.raises(ValueError, match="no batch of images"):
        latent_scale_factor(lambda x: x, [])
    with pytest.raises(ValueError, match="no 'image' key"):
        latent_scale_factor(lambda x: x, [{"img": torch.ones(1, 1, 2, 2)}])
    with pytest.raises(ValueError, match="zero variance"):
        latent_scale_factor(lambda x: x, torch.ones(2, 1, 4, 4))
    with pytest.raises(ValueError, match="max_batches must be >= 1"):
        latent_scale_factor(lambda x: x, torch.ones(2, 1, 4, 4), max_batches=0)


def test_generator_and_gms_use_the_same_estimate():
    torch.manual_seed(0)
    gen = LatentGenerator.from_preset("tiny", spatial_dims=2)
    images = torch.rand(6, 1, 16, 16)
    z = gen.autoencoder.encode(images)[0]
    value = gen.estimate_scale_factor(images)
    assert value == pytest.approx(1.0 / float(z.double().std()), rel=1e-6) and float(gen.scale_factor) == pytest.approx(value)
    seg = GMSSegmenter(gen.autoencoder, torch.nn.Identity())  # the same autoencoder
    assert seg.estimate_scale_factor([images[:4], images[4:]]) == pytest.approx(value, rel=1e-6)
    assert float(seg.mask_scale_factor) == pytest.approx(value, rel=1e-6)  # shared autoencoder: shared factor
    loader = [{"image": images[:2]}, {"image": images[2:]}]
    assert gen.estimate_scale_factor_from_loader(loader) == pytest.approx(value, rel=1e-6)
