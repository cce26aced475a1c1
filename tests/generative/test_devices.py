"""Devices: every test taking ``device`` runs on the CPU and, marked ``gpu``, on CUDA when present (see
tests/conftest.py); bf16 autocast, flash attention, generators living on another device than the tensors."""

from __future__ import annotations

import pytest
import torch

from monai_genaug.generative.guidance import ClassifierFreeGuidance
from monai_genaug.generative.inversion import ddim_invert, predict_epsilon
from monai_genaug.generative.latent_generator import LatentGenerator
from monai_genaug.generative.sampler import DiffusionSampler


def _gen(device: str, **kw) -> LatentGenerator:
    torch.manual_seed(0)
    gen = LatentGenerator.from_preset("tiny", spatial_dims=2, num_prompts=2, **kw)
    with torch.no_grad():
        for p in gen.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return gen.to(device).eval()


def test_bf16_autocast_close_to_fp32(device):
    gen = _gen(device)
    kw = dict(shape=(2, 2, 8, 8), condition={"prompt": torch.tensor([0, 1], device=device)},
              guidance=ClassifierFreeGuidance(2.0))
    full = DiffusionSampler(num_inference_steps=3, progress=False)(gen, rng=torch.Generator().manual_seed(0), **kw)
    half = DiffusionSampler(num_inference_steps=3, progress=False, autocast_dtype=torch.bfloat16)(
        gen, rng=torch.Generator().manual_seed(0), **kw
    )
    assert half.dtype == torch.float32 and half.device.type == device and torch.isfinite(half).all()
    rel = (half - full).abs().mean() / full.abs().mean()
    assert 0 < rel < 0.1  # bf16 changes the numbers a little, not the result


def test_autocast_noise_estimates_keep_the_latent_dtype(device):
    """Inversion steps under autocast: the UNet answers in bf16, the DDIM arithmetic stays float32."""
    gen = _gen(device)
    x = torch.randn(1, 2, 8, 8, device=device)
    cond = {"prompt": torch.tensor([1], device=device)}
    sampler = DiffusionSampler(progress=False, autocast_dtype=torch.bfloat16)
    with torch.no_grad(), sampler.autocast(x.device):
        eps, x0 = predict_epsilon(gen, x, 300, cond)
        inverted = ddim_invert(gen, x, 200, condition=cond, stride=100)
    assert eps.dtype == x0.dtype == inverted.dtype == torch.float32
    with torch.no_grad():
        reference = ddim_invert(gen, x, 200, condition=cond, stride=100)
    assert 0 < (inverted - reference).abs().mean() < 0.05 * reference.abs().mean()


def test_flash_attention_matches_plain_attention():
    plain = _gen("cpu")
    flash = LatentGenerator.from_preset("tiny", spatial_dims=2, num_prompts=2, use_flash_attention=True)
    flash.load_state_dict(plain.state_dict())
    flash.eval()
    z, cond = torch.randn(2, 2, 8, 8), {"prompt": torch.tensor([0, 1])}
    with torch.no_grad():
        assert torch.allclose(plain(z, 100, cond), flash(z, 100, cond), atol=1e-4)


def test_sampling_inversion_and_training_step(device):
    gen = _gen(device)
    rng = torch.Generator(device=device).manual_seed(0)
    cond = {"prompt": torch.tensor([0, 1], device=device)}
    sampler = DiffusionSampler(num_inference_steps=3, eta=1.0, progress=False)
    z = sampler(gen, shape=(2, 2, 8, 8), condition=cond, rng=rng)
    assert z.device.type == device and torch.isfinite(z).all()
    x_tau = ddim_invert(gen, z, 200, condition=cond, stride=100)
    assert x_tau.device.type == device
    gen.train()
    before = [p.detach().clone() for p in gen.trainable_parameters()]
    opt = torch.optim.Adam(gen.trainable_parameters(), lr=1e-3)
    with torch.autocast(device, dtype=torch.bfloat16):
        out = gen(torch.randn(2, 2, 8, 8, device=device), torch.tensor([5, 9], device=device), cond)
        loss = (out.float() ** 2).mean()
    loss.backward()
    opt.step()
    assert torch.isfinite(loss)
    assert any(not torch.equal(b, p) for b, p in zip(before, gen.trainable_parameters()))


@pytest.mark.parametrize("rng_device", ["cpu", "same"])
def test_posterior_sample_draws_from_a_generator_on_any_device(device, rng_device):
    """``encode(sample=True)`` takes a CPU generator for latents on CUDA (and a CUDA one): drawn, then moved."""
    gen = _gen(device)
    images = torch.rand(2, 1, 16, 16, device=device)
    rng_device = device if rng_device == "same" else rng_device
    a = gen.encode(images, sample=True, generator=torch.Generator(device=rng_device).manual_seed(3))
    b = gen.encode(images, sample=True, generator=torch.Generator(device=rng_device).manual_seed(3))
    mean = gen.encode(images)
    assert a.device.type == device and torch.equal(a, b) and not torch.allclose(a, mean)
    with torch.no_grad():
        mu, sigma = gen.autoencoder.encode(images)
    eps = torch.randn(mu.shape, generator=torch.Generator(device=rng_device).manual_seed(3), device=rng_device)
    assert torch.allclose(a, (mu + sigma * eps.to(mu.device)) * gen.scale_factor, atol=1e-5)


@pytest.mark.parametrize("rng_device", ["cpu", "same"])
def test_condition_dropout_with_a_generator_on_any_device(device, rng_device):
    gen = _gen(device)
    rng_device = device if rng_device == "same" else rng_device
    cond = {"prompt": torch.zeros(400, dtype=torch.long, device=device)}
    out = gen.drop_condition(cond, 0.25, generator=torch.Generator(device=rng_device).manual_seed(0))
    null = gen.null_condition(cond, 1)["context"][0]
    dropped = (out["context"] == null).flatten(1).all(1)
    assert out["context"].device.type == device and 0.15 < dropped.float().mean() < 0.35
