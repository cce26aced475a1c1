"""TTGA stage 0: generator configs, LoRA adaptation (only adapters and prompt move), half-precision files, training."""

from __future__ import annotations

import pytest
import torch
from monai.data import DataLoader, Dataset

from monai_genaug.generative.latent_generator import LatentGenerator
from monai_genaug.methods.ttga import (
    build_ttga_generator,
    estimate_scale_factor_from_loader,
    prepare_lora_adaptation,
    save_generator,
    train_ttga_generator,
    ttga_generator_config,
)
from monai_genaug.networks.lora import has_lora

TINY = {"autoencoder_channels": [8, 8], "latent_channels": 2, "autoencoder_norm_num_groups": 4,
        "unet_channels": [8, 16], "num_head_channels": 8, "unet_norm_num_groups": 4, "cross_attention_dim": 8}


def _loader(n=4, size=16, prompt=True, label=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    items = []
    for _ in range(n):
        item = {"image": torch.rand(3, size, size, generator=g)}
        if prompt:
            item["prompt"] = 0
        if label:
            item["label"] = torch.zeros(1, size, size)
        items.append(item)
    return DataLoader(Dataset(items), batch_size=2, shuffle=False)


def test_config_overrides_and_checks():
    cfg = ttga_generator_config(2, 3, **TINY)
    assert cfg["autoencoder"]["channels"] == [8, 8] and cfg["unet"]["channels"] == [8, 16]
    assert cfg["unet"]["num_head_channels"] == [0, 8] and cfg["conditioning"]["num_prompts"] == 1
    gen = build_ttga_generator(cfg)
    assert gen.autoencoder_factor == 2 and gen.uses_context and gen.prompt_embedding is not None
    three = ttga_generator_config(3, 2, **TINY)
    assert build_ttga_generator(three).spatial_dims == 3
    with pytest.raises(ValueError, match="num_prompts must be >= 1"):
        ttga_generator_config(num_prompts=0)
    with pytest.raises(ValueError, match="cross-attention on at least one"):
        ttga_generator_config(**{**TINY, "unet_attention_levels": [False, False]})
    with pytest.raises(ValueError, match="config.*or a pretrained"):
        build_ttga_generator()


def test_lora_adaptation_trains_only_adapters_and_prompt(tmp_path):
    torch.manual_seed(0)
    gen = build_ttga_generator(ttga_generator_config(2, 3, **TINY))
    with torch.no_grad():
        for p in gen.unet.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    x = torch.randn(1, 2, 8, 8)
    before = gen(x, 10, {"prompt": torch.tensor([0])}).detach()
    prepare_lora_adaptation(gen, rank=2, seed=0)
    assert has_lora(gen.unet)
    trainable = {n for n, p in gen.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n or n.startswith("prompt_embedding") for n in trainable)
    assert torch.allclose(gen(x, 10, {"prompt": torch.tensor([0])}), before, atol=1e-6)  # B = 0 at start
    base = {n: p.detach().clone() for n, p in gen.named_parameters() if not p.requires_grad}
    out = train_ttga_generator(_loader(), tmp_path, generator=gen, diffusion_epochs=2, diffusion_lr=1e-2, seed=0)
    assert all(torch.equal(p, base[n]) for n, p in out.named_parameters() if n in base)
    assert not torch.allclose(out(x, 10, {"prompt": torch.tensor([0])}), before, atol=1e-6)
    # saved with its adapters (and loadable), or merged into a plain generator; half precision halves the file
    kept = save_generator(out, tmp_path / "kept.pt", dtype="float16")
    merged = save_generator(out, tmp_path / "merged.pt", merge=True)
    assert has_lora(LatentGenerator.load(str(kept)).unet) and not has_lora(LatentGenerator.load(str(merged)).unet)
    ref = out(x, 10, {"prompt": torch.tensor([0])})
    assert torch.allclose(LatentGenerator.load(str(merged))(x, 10, {"prompt": torch.tensor([0])}), ref, atol=1e-4)
    half = LatentGenerator.load(str(kept))
    assert half.scale_factor.dtype == torch.float32 and torch.allclose(half(x, 10, {"prompt": torch.tensor([0])}), ref,
                                                                        atol=5e-2)
    assert kept.stat().st_size < merged.stat().st_size
    with pytest.raises(ValueError, match="floating point"):
        save_generator(out, tmp_path / "bad.pt", dtype="int8")


def test_training_from_scratch_and_batch_checks(tmp_path):
    loader = _loader(n=4, size=16)
    gen = train_ttga_generator(loader, tmp_path, config=ttga_generator_config(2, 3, **TINY), autoencoder_epochs=1,
                               diffusion_epochs=1, seed=0)
    assert (tmp_path / "autoencoder" / "autoencoder_final.pt").is_file()
    assert (tmp_path / "diffusion" / "generator_final.pt").is_file()
    assert float(gen.scale_factor) != 1.0 and not gen.training
    assert estimate_scale_factor_from_loader(gen, loader) == pytest.approx(float(gen.scale_factor))
    with pytest.raises(ValueError, match="'label' key"):
        train_ttga_generator(_loader(label=True), tmp_path / "x", config=ttga_generator_config(2, 3, **TINY))
    with pytest.raises(ValueError, match="no 'prompt' key"):
        train_ttga_generator(_loader(prompt=False), tmp_path / "y", config=ttga_generator_config(2, 3, **TINY))


def test_detail_preserving_augmenter_adds_the_autoencoder_residual():
    from monai_genaug.methods.ttga import TTGAAugmenter
    from monai_genaug.methods.ttga import DetailPreservingTTGAAugmenter

    torch.manual_seed(0)
    gen = build_ttga_generator(ttga_generator_config(2, 3, **TINY)).eval()
    with torch.no_grad():
        for p in gen.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    img = torch.rand(3, 14, 18, generator=torch.Generator().manual_seed(1))
    kw = {"num_views": 2, "min_iterations": 1, "max_iterations": 2, "inversion_stride": 100, "generator_range": (0, 1)}
    plain = TTGAAugmenter(gen, **kw).generate(img, rng=torch.Generator().manual_seed(3)).views
    off = DetailPreservingTTGAAugmenter(gen, detail_weight=0.0, **kw)
    assert torch.equal(off.generate(img, rng=torch.Generator().manual_seed(3)).views, plain)
    aug = DetailPreservingTTGAAugmenter(gen, detail_weight=1.0, **kw)
    residual = aug.autoencoder_residual(img)
    with torch.no_grad():
        recon = gen.decode(gen.encode(torch.nn.functional.pad(img[None], (1, 1, 1, 1), mode="reflect")))
    # padded to 16 x 20, cropped back, clamped to the intensity range
    assert torch.allclose(residual, img - recon[0, :, 1:-1, 1:-1].clamp(0, 1), atol=1e-5)
    out = aug.generate(img, rng=torch.Generator().manual_seed(3))
    assert torch.allclose(out.views, (plain + residual).clamp(0, 1), atol=1e-5)
    assert out.extra["detail_residual_rms"] > 0 and aug.config()["detail_weight"] == 1.0
    with pytest.raises(ValueError, match="detail_weight"):
        DetailPreservingTTGAAugmenter(gen, detail_weight=2.0)
