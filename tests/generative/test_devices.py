"""Devices: CPU always, CUDA when present (skipped otherwise); bf16 autocast and flash attention options."""

from __future__ import annotations

import pytest
import torch

from monai_genaug.generative.guidance import ClassifierFreeGuidance
from monai_genaug.generative.inversion import ddim_invert
from monai_genaug.generative.latent_generator import LatentGenerator
from monai_genaug.generative.sampler import DiffusionSampler

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def _gen(device: str, **kw) -> LatentGenerator:
    torch.manual_seed(0)
    gen = LatentGenerator.from_preset("tiny", spatial_dims=2, num_prompts=2, **kw)
    with torch.no_grad():
        for p in gen.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return gen.to(device).eval()


def test_bf16_autocast_close_to_fp32_on_cpu():
    gen = _gen("cpu")
    kw = dict(shape=(2, 2, 8, 8), condition={"prompt": torch.tensor([0, 1])}, guidance=ClassifierFreeGuidance(2.0))
    full = DiffusionSampler(num_inference_steps=3, progress=False)(gen, rng=torch.Generator().manual_seed(0), **kw)
    half = DiffusionSampler(num_inference_steps=3, progress=False, autocast_dtype=torch.bfloat16)(
        gen, rng=torch.Generator().manual_seed(0), **kw
    )
    assert half.dtype == torch.float32 and torch.isfinite(half).all()
    rel = (half - full).abs().mean() / full.abs().mean()
    assert 0 < rel < 0.1  # bf16 changes the numbers a little, not the result


def test_flash_attention_matches_plain_attention():
    plain = _gen("cpu")
    flash = LatentGenerator.from_preset("tiny", spatial_dims=2, num_prompts=2, use_flash_attention=True)
    flash.load_state_dict(plain.state_dict())
    flash.eval()
    z, cond = torch.randn(2, 2, 8, 8), {"prompt": torch.tensor([0, 1])}
    with torch.no_grad():
        assert torch.allclose(plain(z, 100, cond), flash(z, 100, cond), atol=1e-4)


@requires_cuda
def test_cuda_sampling_inversion_and_training_step():
    gen = _gen("cuda")
    rng = torch.Generator(device="cuda").manual_seed(0)
    cond = {"prompt": torch.tensor([0, 1], device="cuda")}
    z = DiffusionSampler(num_inference_steps=3, eta=1.0, progress=False)(gen, shape=(2, 2, 8, 8), condition=cond, rng=rng)
    assert z.is_cuda and torch.isfinite(z).all()
    x_tau = ddim_invert(gen, z, 200, condition=cond, stride=100)
    assert x_tau.is_cuda
    gen.train()
    opt = torch.optim.Adam(gen.trainable_parameters(), lr=1e-3)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss = (gen(torch.randn(2, 2, 8, 8, device="cuda"), torch.tensor([5, 9], device="cuda"), cond) ** 2).mean()
    loss.backward()
    opt.step()
    assert torch.isfinite(loss)
