"""TTGA augmenter: identity optimisation, region masks, reconstruction limit, cache, seeds, 2D/3D, bad input."""

from __future__ import annotations

import copy

import pytest
import torch

from monai_genaug.generative.ddim import alpha_bar, timestep_for_alpha_bar
from monai_genaug.generative.inversion import ddim_jump
from monai_genaug.generative.latent_generator import LatentGenerator, generator_config
from monai_genaug.methods.ttga import TTGAAugmenter, ttga_legacy_scheduler

# few UNet calls per image: 6 inversion steps, <= 10 optimisation iterations, 3 denoising steps
FAST = dict(min_iterations=3, max_iterations=10, inversion_stride=50)


def _perturbed(gen: LatentGenerator, seed: int = 0, scale: float = 0.05, token_scale: float = 30.0) -> LatentGenerator:
    """Fresh MONAI diffusion UNets output zeros: perturb all weights; large prompt tokens make attention peaky."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in gen.parameters():
            p.add_(torch.randn_like(p) * scale)
        if gen.prompt_embedding is not None:
            gen.prompt_embedding.tokens.mul_(token_scale)
            gen.prompt_embedding.null_tokens.mul_(token_scale)
    return gen.eval()


@pytest.fixture(scope="module")
def gen2d():
    return _perturbed(LatentGenerator.from_preset("tiny", spatial_dims=2, image_channels=3, num_prompts=1))


@pytest.fixture(scope="module")
def pixel_gen():
    """Pixel-space diffusion: the identity path reconstructs the input itself, not an autoencoder's guess."""
    gen = LatentGenerator.from_preset("tiny", spatial_dims=2, image_channels=2, latent=False, num_prompts=1)
    return _perturbed(gen)


@pytest.fixture(scope="module")
def image():
    return torch.rand(3, 16, 16, generator=torch.Generator().manual_seed(1))


def _count_unet_calls(gen: LatentGenerator):
    calls = []
    handle = gen.unet.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    return calls, handle


def test_identity_optimisation_lowers_loss_and_respects_iteration_limits(gen2d, image):
    aug = TTGAAugmenter(gen2d, **{**FAST, "max_iterations": 15})
    state = aug.prepare(image)
    assert state.tau == 300 and state.x_tau.shape == (1, 2, 8, 8) and state.z0.shape == (1, 2, 8, 8)
    assert state.identity_context.shape == state.null_context.shape == (1, 4, 16)
    assert len(state.losses) == state.iterations and 3 <= state.iterations <= 15
    assert state.final_loss < 0.9 * state.initial_loss
    assert not torch.allclose(state.identity_context, state.null_context)
    # eps_id is the CFG(identity, prompt; g) estimate used by the optimisation: its jump gives the final loss
    rec = ddim_jump(gen2d, state.x_tau, 300, state.eps_id, 0)
    assert float(((rec - state.z0) ** 2).mean()) == pytest.approx(state.final_loss, rel=1e-4)
    # early stop right after min_iterations when the threshold is trivially met; the cap when it is never met
    assert TTGAAugmenter(gen2d, **{**FAST, "early_stop_loss": 1e9}).prepare(image).iterations == 3
    assert TTGAAugmenter(gen2d, **{**FAST, "early_stop_loss": 0.0}).prepare(image).iterations == 10


def test_views_keep_geometry_dtype_and_range_and_differ(gen2d):
    img = torch.rand(3, 18, 22, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    aug = TTGAAugmenter(gen2d, num_views=3, lambda_i=torch.tensor([0.5, 1.0, 1.5]), mask_scheme="hybrid",
                        drop_p=0.5, **FAST)
    out = aug.generate(img)
    assert out.views.shape == (3, 3, 18, 22) and out.views.dtype == torch.float64
    assert out.views.min() >= 0 and out.views.max() <= 1
    assert out.state.geometry.pad == ((1, 1), (1, 1))  # padded to 20 x 24 (divisor 4)
    assert out.latents.shape == (3, 2, 10, 12) and out.identity_mask.shape == (3, 1, 10, 12)
    assert out.identity_fraction_per_step.shape == (3, 3) and out.timesteps == [300, 200, 100, 0]
    for i in range(3):
        assert (out.views[i] - img).abs().mean() > 1e-3
        for j in range(i):
            assert (out.views[i] - out.views[j]).abs().mean() > 1e-4
    # a batch axis of size one is accepted, working_size resizes there and back
    resized = TTGAAugmenter(gen2d, num_views=2, working_size=16, **FAST)(img[None].float())
    assert resized.shape == (2, 3, 18, 22) and resized.dtype == torch.float32


def test_identity_region_shrinks_with_lambda_i(gen2d, image):
    lam = torch.tensor([0.1, 1.0, 5.0, 100.0])
    out = TTGAAugmenter(gen2d, num_views=4, lambda_i=lam, mask_scheme="attention", **FAST).generate(image)
    first = out.identity_fraction_per_step[0]  # same x_tau for all views: only lambda_i differs
    assert torch.all(first[1:] <= first[:-1] + 1e-6), first
    assert first[0] > first[-1]
    assert float(out.identity_fraction[0]) > float(out.identity_fraction[-1])
    assert torch.equal(out.lambda_i, lam)


def test_augmented_area_grows_with_drop_p(gen2d):
    img = torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(3))
    aug = TTGAAugmenter(gen2d, num_views=4, mask_scheme="bernoulli", **FAST)
    fractions = []
    for p in (0.0, 0.3, 0.8):
        aug.drop_p = p
        out = aug.generate(img, rng=torch.Generator().manual_seed(0))
        fractions.append(float(out.identity_fraction.mean()))
        assert abs(fractions[-1] - (1 - p)) < 0.15, (p, fractions[-1])
        # the Bernoulli fields are drawn once per view: the same mask at every step, in 2x2 latent blocks
        per_step = out.identity_fraction_per_step
        assert torch.allclose(per_step, per_step[:1].expand_as(per_step))
        m = out.identity_mask
        assert torch.equal(m, m[:, :, ::2, ::2].repeat_interleave(2, 2).repeat_interleave(2, 3))
    assert fractions[0] == 1.0 and fractions[0] > fractions[1] > fractions[2]
    # hybrid with p = 0 is the attention scheme
    att = TTGAAugmenter(gen2d, num_views=2, lambda_i=torch.tensor([1.0, 100.0]), **FAST)
    hyb = TTGAAugmenter(gen2d, num_views=2, lambda_i=torch.tensor([1.0, 100.0]), mask_scheme="hybrid", drop_p=0.0,
                        **FAST)
    r = torch.Generator().manual_seed(5)
    assert torch.equal(att.generate(img, rng=r).identity_fraction,
                       hyb.generate(img, rng=torch.Generator().manual_seed(5)).identity_fraction)


def test_unit_weights_eta0_reproduce_identity_reconstruction(pixel_gen):
    img = torch.rand(2, 16, 16, generator=torch.Generator().manual_seed(4))
    kw = dict(num_views=2, lambda_c=1.0, lambda_i=1.0, eta=0.0, drop_p=0.0, **FAST)
    limit = TTGAAugmenter(pixel_gen, mask_scheme="none", **kw)
    rec = limit.reconstruct(img)[0]
    views = limit(img)
    far = TTGAAugmenter(pixel_gen, mask_scheme="none", **{**kw, "lambda_i": 3.0, "eta": 1.0})(img)
    d_limit, d_far = (views - rec).abs().mean(), (far - rec).abs().mean()
    assert d_limit < 0.3 * d_far, (d_limit, d_far)
    assert torch.allclose(views[0], views[1])  # deterministic: both views are the same reconstruction
    # with the attention mask the identity path is merged in at every step: even closer
    masked = TTGAAugmenter(pixel_gen, mask_scheme="attention", **kw)(img)
    assert (masked - rec).abs().mean() <= d_limit + 1e-6


def test_identity_region_stays_closer_to_input(pixel_gen):
    img = torch.rand(2, 16, 16, generator=torch.Generator().manual_seed(5))
    aug = TTGAAugmenter(pixel_gen, num_views=4, lambda_i=1.5, mask_scheme="hybrid", drop_p=0.5,
                        **{**FAST, "max_iterations": 20})
    out = aug.generate(img, rng=torch.Generator().manual_seed(0))
    mask = out.identity_mask > 0.5  # pixel space: latent grid == image grid
    assert 0 < float(mask.float().mean()) < 1
    diff = (out.views - img).abs().mean(1, keepdim=True)
    assert diff[mask].mean() < 0.5 * diff[~mask].mean()


def test_cache_hit_avoids_reinversion(gen2d, image):
    aug = TTGAAugmenter(gen2d, num_views=2, **FAST)
    calls, handle = _count_unet_calls(gen2d)
    try:
        aug(image)
        first = len(calls)
        calls.clear()
        aug(image.clone())  # same values -> same hash
        second = len(calls)
        calls.clear()
        aug(torch.rand(3, 16, 16), image_id="case-0")
        aug(torch.rand(3, 16, 16), image_id="case-0")  # the user-given id is the key
        by_id = len(calls)
        calls.clear()
        TTGAAugmenter(gen2d, num_views=2, cache_size=0, **FAST)(image)
        uncached = len(calls)
    finally:
        handle.remove()
    assert second == 3  # one batched UNet call per denoising step
    assert first > 3 + 6  # inversion + optimisation + eps_id + sampling
    assert by_id == first + 3
    assert uncached == first
    assert aug.cache_info == {"size": 2, "capacity": 8}
    aug.clear_cache()
    assert aug.cache_info["size"] == 0


def test_seeded_reproducibility(gen2d, image):
    aug = TTGAAugmenter(gen2d, num_views=2, mask_scheme="hybrid", drop_p=0.5, **FAST)
    a = aug(image, rng=torch.Generator().manual_seed(0))
    b = aug(image, rng=torch.Generator().manual_seed(0))
    c = aug(image, rng=torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and not torch.allclose(a, c)
    # the default generator comes from `seed`
    s1 = TTGAAugmenter(gen2d, num_views=2, seed=7, **FAST)(image)
    s2 = TTGAAugmenter(gen2d, num_views=2, seed=7, **FAST)(image)
    assert torch.equal(s1, s2)


def test_tau_fraction_and_legacy_schedule(gen2d, image):
    assert TTGAAugmenter(gen2d, tau=0.3, **FAST).tau == 300
    assert TTGAAugmenter(gen2d, tau=250, denoising_stride=100, **FAST).timesteps() == [250, 150, 50, 0]
    legacy = ttga_legacy_scheduler(1000)
    assert alpha_bar(legacy, 300) == pytest.approx(0.737, abs=1e-3)  # spec Q1
    old = TTGAAugmenter(gen2d, legacy_schedule=True, num_views=1, **FAST)
    new = TTGAAugmenter(gen2d, num_views=1, **FAST)
    assert alpha_bar(old.scheduler, 300) == pytest.approx(0.737, abs=1e-3)
    assert gen2d.scheduler is not old.scheduler  # the generator itself is untouched
    assert old.prepare(image).x_tau.shape == new.prepare(image).x_tau.shape
    assert not torch.allclose(old.prepare(image).x_tau, new.prepare(image).x_tau)
    with pytest.raises(ValueError, match="legacy_schedule"):
        TTGAAugmenter(gen2d, legacy_schedule=True, scheduler=legacy)


def test_noise_level_by_alpha_bar_means_the_same_on_every_schedule(gen2d):
    """tau_alpha_bar picks the step whose alpha-bar is nearest: 300 on TTGA's own table, another index on the
    generator's schedule, the same noise level on both."""
    legacy = TTGAAugmenter(gen2d, legacy_schedule=True, tau_alpha_bar=0.737, num_views=1, **FAST)
    assert legacy.tau == pytest.approx(300, abs=2)
    own = TTGAAugmenter(gen2d, tau_alpha_bar=0.737, num_views=1, **FAST)
    assert own.tau != legacy.tau
    for aug in (legacy, own):
        bars = aug.scheduler.alphas_cumprod
        assert alpha_bar(aug.scheduler, aug.tau) == pytest.approx(0.737, abs=float(bars[1] - bars[2]) + 5e-3)
        assert aug.config()["tau_alpha_bar"] == 0.737
    assert timestep_for_alpha_bar(own.scheduler, 0.999999) == 1  # nearly clean: the first step
    assert TTGAAugmenter(gen2d, num_views=1, **FAST).tau == 300  # neither given: the paper's index
    with pytest.raises(ValueError, match="not both"):
        TTGAAugmenter(gen2d, tau=300, tau_alpha_bar=0.74, **FAST)
    with pytest.raises(ValueError, match="alpha-bar"):
        TTGAAugmenter(gen2d, tau_alpha_bar=1.5, **FAST)


def test_raw_context_generator_and_flash_attention_maps(image):
    cfg = generator_config("tiny", spatial_dims=2, image_channels=3)
    cfg["conditioning"]["cross_attention_dim"] = 16
    gen = _perturbed(LatentGenerator.from_config(cfg))
    prompt = torch.randn(4, 16, generator=torch.Generator().manual_seed(0)) * 3
    with pytest.raises(ValueError, match="no learned prompts"):
        TTGAAugmenter(gen, prompt=0)
    lam = torch.tensor([0.5, 100.0])
    aug = TTGAAugmenter(gen, prompt=prompt, num_views=2, lambda_i=lam, drop_first_token=True, **FAST)
    out = aug.generate(image, rng=torch.Generator().manual_seed(0))
    assert out.views.shape == (2, 3, 16, 16)
    assert torch.count_nonzero(out.state.null_context) == 0  # raw-context null branch: zeros
    # the same UNet with flash attention: maps are recomputed from to_q / to_k, same masks
    flash_cfg = generator_config("tiny", spatial_dims=2, image_channels=3, use_flash_attention=True)
    flash_cfg["conditioning"]["cross_attention_dim"] = 16
    flash = LatentGenerator.from_config(flash_cfg).eval()
    flash.load_state_dict(gen.state_dict())
    out_flash = TTGAAugmenter(flash, prompt=prompt, num_views=2, lambda_i=lam, drop_first_token=True,
                              **FAST).generate(image, rng=torch.Generator().manual_seed(0))
    assert torch.allclose(out.identity_fraction_per_step, out_flash.identity_fraction_per_step)


def test_views_on_device_with_bf16_autocast(gen2d, image, device):
    """Inversion, identity optimisation and views under bf16 autocast on ``device``; draws from a CPU or device
    generator; the cached state stays float32 and the views close to the full-precision ones."""
    gen = copy.deepcopy(gen2d).to(device)
    kw = dict(num_views=2, mask_scheme="hybrid", drop_p=0.5, **{**FAST, "max_iterations": 6})
    aug = TTGAAugmenter(gen, autocast_dtype=torch.bfloat16, **kw)
    out = aug.generate(image.to(device), rng=torch.Generator(device=device).manual_seed(0))
    assert out.views.shape == (2, 3, 16, 16) and out.views.device.type == device
    assert torch.isfinite(out.views).all() and out.views.min() >= 0 and out.views.max() <= 1
    state = out.state
    assert state.x_tau.device.type == device and state.final_loss < state.initial_loss
    assert state.eps_id.dtype == state.identity_context.dtype == state.x_tau.dtype == torch.float32
    full = TTGAAugmenter(gen, **kw).generate(image.to(device), rng=torch.Generator(device=device).manual_seed(0))
    assert 0 < (out.views - full.views).abs().mean() < 0.05
    cpu_rng = aug.generate(image.to(device), rng=torch.Generator().manual_seed(0))  # a CPU generator works too
    assert cpu_rng.views.device.type == device and torch.isfinite(cpu_rng.views).all()


def test_3d_volume():
    gen = _perturbed(LatentGenerator.from_preset("tiny", spatial_dims=3, image_channels=1, num_prompts=1))
    vol = torch.rand(1, 16, 16, 14, generator=torch.Generator().manual_seed(0))
    aug = TTGAAugmenter(gen, num_views=2, lambda_i=torch.tensor([0.5, 100.0]), mask_scheme="hybrid", drop_p=0.3,
                        **{**FAST, "max_iterations": 4})
    out = aug.generate(vol)
    assert out.views.shape == (2, 1, 16, 16, 14)
    assert out.identity_mask.shape == (2, 1, 8, 8, 8)
    assert out.state.iterations <= 4 and out.state.final_loss <= out.state.initial_loss
    assert (out.views[0] - out.views[1]).abs().mean() > 1e-4


def test_bad_input_raises(gen2d, image):
    aug = TTGAAugmenter(gen2d, **FAST)
    with pytest.raises(ValueError, match="channels"):
        aug(torch.rand(1, 16, 16))
    with pytest.raises(ValueError, match="2D"):
        aug(torch.rand(3, 16, 16, 16))
    with pytest.raises(ValueError, match="NaN"):
        aug(torch.full((3, 16, 16), float("nan")))
    with pytest.raises(ValueError, match="intensity_range"):
        aug(image * 255)
    with pytest.raises(ValueError, match="smaller than the autoencoder factor"):
        aug(torch.rand(3, 1, 16))
    with pytest.raises(TypeError):
        aug(image.numpy())
    with pytest.raises(ValueError, match="lambda_i"):
        aug(image, num_views=3, lambda_i=[1.0, 2.0])
    # out-of-range values are accepted with clip_input; a constant image is a valid image
    assert TTGAAugmenter(gen2d, num_views=1, clip_input=True, **FAST)(image * 2).shape == (1, 3, 16, 16)
    const = TTGAAugmenter(gen2d, num_views=1, **FAST)(torch.full((3, 16, 16), 0.5))
    assert torch.isfinite(const).all()
    # construction errors
    with pytest.raises(ValueError, match="tau"):
        TTGAAugmenter(gen2d, tau=1000)
    with pytest.raises(ValueError, match="fraction"):
        TTGAAugmenter(gen2d, tau=1.5)
    with pytest.raises(ValueError, match="mask_scheme"):
        TTGAAugmenter(gen2d, mask_scheme="random")
    with pytest.raises(ValueError, match="prompt id"):
        TTGAAugmenter(gen2d, prompt=3)
    with pytest.raises(ValueError, match="cross-attention"):
        TTGAAugmenter(LatentGenerator.from_preset("tiny", spatial_dims=2, image_channels=3))
    with pytest.raises(ValueError, match="attention_factor"):
        TTGAAugmenter(gen2d, attention_factor=3, **FAST)(image)
    with pytest.raises(ValueError, match=r"factors \[2\]"):  # the tiny UNet has cross-attention at latent/2 only
        TTGAAugmenter(gen2d, attention_factor=4, **FAST)(image)


def test_works_inside_inference_mode(gen2d, image):
    """Evaluators may run under torch.inference_mode: the identity optimisation re-enables autograd locally."""
    aug = TTGAAugmenter(gen2d, num_views=2, **FAST)
    with torch.inference_mode():
        out = aug.generate(image)
    assert out.views.shape == (2, 3, 16, 16) and out.state.final_loss < out.state.initial_loss
    assert aug(image).shape == (2, 3, 16, 16)  # cached inference tensors are usable outside inference mode


def test_identity_region_replaces_the_attention_mask(gen2d, image):
    """A given identity region is the mask: all-ones keeps the identity path everywhere (views = reconstruction),
    all-zeros nowhere, and lambda_i no longer moves it."""
    aug = TTGAAugmenter(gen2d, num_views=2, mask_scheme="attention", **FAST)
    spatial = image.shape[1:]
    with torch.no_grad():
        kept = aug.generate(image, identity_region=torch.ones(spatial))
        recon = aug.reconstruct(image)
        free = aug.generate(image, identity_region=torch.zeros(spatial), lambda_i=3.0)
    assert float(kept.identity_fraction.min()) == 1.0 and float(free.identity_fraction.max()) == 0.0
    assert torch.allclose(kept.views, recon.expand_as(kept.views), atol=1e-4)
    with pytest.raises(ValueError, match="mask_scheme='none'"):
        TTGAAugmenter(gen2d, num_views=1, mask_scheme="none", **FAST).generate(image, identity_region=torch.ones(spatial))
