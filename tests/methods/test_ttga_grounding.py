"""TTGA conditioning that localises (issue #16, item 2): a pixel-space generator with a 16-token, 64-wide prompt whose
token 0 is grounded on the lesion masks; on a small generator trained for seconds the attention mask keeps a part of
the image (identity fraction in (0.2, 0.9)) and lambda_i moves it, while the same training without grounding keeps
everything."""

from __future__ import annotations

import pytest
import torch

from monai_genaug.methods.ttga import (
    TTGAAugmenter,
    attention_grounding_loss,
    build_ttga_generator,
    train_grounded_ttga_generator,
    ttga_generator_config,
)

SIZE = 16


def _phantoms(num: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Grey images (1, 16, 16): a striped, noisy background and one bright disk (the lesion, about 23 % of the area)."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(SIZE).float(), torch.arange(SIZE).float(), indexing="ij")
    images, masks = [], []
    for _ in range(num):
        cy, cx = (torch.rand(2, generator=g) * 0.4 + 0.3) * SIZE
        r = (torch.rand(1, generator=g) * 0.1 + 0.22) * SIZE
        m = (((yy - cy) ** 2 + (xx - cx) ** 2) <= r**2).float()
        noise = 0.05 * torch.rand(SIZE, SIZE, generator=g)
        bg = 0.25 + 0.1 * torch.sin(xx / 3 + torch.rand(1, generator=g) * 6) + noise
        images.append((bg * (1 - m) + (0.8 + 0.05 * torch.rand(SIZE, SIZE, generator=g)) * m)[None])
        masks.append(m[None])
    return torch.stack(images), torch.stack(masks)


def _trained(tmp_path, grounding_weight: float):
    images, masks = _phantoms(64, 0)
    loader = [{"image": images[i : i + 16], "label": masks[i : i + 16]} for i in range(0, 64, 16)]
    torch.manual_seed(0)
    gen = build_ttga_generator(ttga_generator_config(image_channels=1, latent=False, prompt_tokens=16,
                                                     cross_attention_dim=64))
    history = train_grounded_ttga_generator(gen, loader, tmp_path, epochs=12, lr=3e-3,
                                            grounding_weight=grounding_weight, resume=False)
    return gen, history


def _fractions(gen, lambdas):
    image = _phantoms(1, 99)[0][0]
    out = []
    for lam in lambdas:
        aug = TTGAAugmenter(gen, num_views=1, tau_alpha_bar=0.74, inversion_stride=50, denoising_stride=100,
                            min_iterations=10, max_iterations=10, mask_scheme="attention", attention_factor="finest",
                            lambda_i=lam, generator_range=(0, 1))
        out.append(float(aug.generate(image).identity_fraction.mean()))
    return out


def test_grounded_lesion_token_localises_the_identity_mask_and_lambda_moves_it(tmp_path):
    gen, history = _trained(tmp_path / "grounded", 3.0)
    assert history["epochs"] == 12 and history["grounding_loss"][-1] < 0.8 * history["grounding_loss"][0]
    assert gen.prompt_embedding.tokens.shape == (1, 16, 64)  # the richer context: 16 tokens of width 64
    fractions = _fractions(gen, [0.25, 4.0])
    assert all(0.2 < f < 0.9 for f in fractions), fractions
    assert fractions[0] > fractions[1] + 0.05, fractions  # a larger identity weight augments more


def test_without_grounding_the_prompt_attends_uniformly_and_the_mask_keeps_everything(tmp_path):
    plain, history = _trained(tmp_path, 0.0)
    assert history["grounding_loss"] == [0.0] * 12
    assert _fractions(plain, [0.25]) == [pytest.approx(1.0)]  # the finding on the shipped generator


def test_grounding_loss_and_training_check_their_inputs(tmp_path):
    maps = [torch.full((2, 16, 4), 0.25, requires_grad=True), torch.full((2, 4, 4), 0.25)]
    mask = torch.zeros(2, 1, 8, 8)
    mask[:, :, :4, :4] = 1
    loss = attention_grounding_loss(maps, mask, token=0)
    loss.backward()
    # only the finest maps (16 queries) are used: the first quarter of the grid is the lesion
    target = torch.nn.functional.adaptive_avg_pool2d(mask, 4).flatten(1)
    expected = torch.nn.functional.binary_cross_entropy(torch.full((2, 16), 0.25), target)
    assert maps[0].grad is not None and float(loss) == pytest.approx(float(expected))
    with pytest.raises(ValueError, match="token 5"):
        attention_grounding_loss(maps, mask, token=5)
    with pytest.raises(ValueError, match="no cross-attention maps"):
        attention_grounding_loss([], mask)
    gen = build_ttga_generator(ttga_generator_config(image_channels=1, latent=False))
    assert gen.autoencoder is None and gen.spatial_divisor == 2
    with pytest.raises(ValueError, match="lesion_token"):
        train_grounded_ttga_generator(gen, [], tmp_path, lesion_token=99)
    with pytest.raises(KeyError, match="'label' mask"):
        train_grounded_ttga_generator(gen, [{"image": torch.rand(2, 1, 16, 16)}], tmp_path, epochs=1)
    with pytest.raises(ValueError, match="mask_tokens"):
        TTGAAugmenter(gen, mask_tokens=[7])
    with pytest.raises(ValueError, match="attention_factor"):
        TTGAAugmenter(gen, attention_factor="middle")
