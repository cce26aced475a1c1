"""The one sampler: DDIM / DDPM parity with MONAI, partial denoising, guidance effects, callbacks, clamping."""

from __future__ import annotations

import copy

import pytest
import torch
from monai.networks.schedulers import DDIMScheduler, DDPMScheduler
from torch import nn

from monai_genaug.generative.ddim import timestep_path, to_epsilon_and_x0
from monai_genaug.generative.guidance import (
    ClassifierFreeGuidance,
    ClassifierGuidance,
    MultiConditionGuidance,
    NoGuidance,
)
from monai_genaug.generative.latent_generator import LatentGenerator
from monai_genaug.generative.sampler import DiffusionSampler


def _perturbed(gen: LatentGenerator, seed: int = 0, scale: float = 0.05) -> LatentGenerator:
    """Random nets predict near-zero; perturb the weights so conditions have a visible effect."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in gen.parameters():
            p.add_(torch.randn_like(p) * scale)
    return gen.eval()


@pytest.fixture(scope="module")
def prompt_gen():
    return _perturbed(LatentGenerator.from_preset("tiny", spatial_dims=2, num_prompts=2))


def test_timestep_path():
    assert timestep_path(1000, 4) == [999, 666, 333, 0, -1]
    assert timestep_path(1000, 3, start_timestep=300) == [300, 150, 0, -1]
    assert timestep_path(10, 50) == list(range(9, -1, -1)) + [-1]
    with pytest.raises(ValueError):
        timestep_path(1000, 4, start_timestep=1000)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_ddim_step_matches_monai(prediction_type):
    """One DDIM step of ours equals MONAI's DDIMScheduler.step on the same stride (deterministic and eta=1)."""
    torch.manual_seed(0)
    sched = DDIMScheduler(1000, schedule="scaled_linear_beta", clip_sample=False, prediction_type=prediction_type)
    sched.set_timesteps(10)
    gen = LatentGenerator.from_preset("tiny", spatial_dims=2, latent=False, prediction_type=prediction_type)
    gen.scheduler = sched
    x = torch.randn(2, 1, 8, 8)
    for eta in (0.0, 1.0):
        ours = DiffusionSampler(progress=False, eta=eta)(
            gen, x=x, timesteps=[500, 400], rng=torch.Generator().manual_seed(3)
        )
        with torch.no_grad():
            out = gen(x, 500)
        ref, _ = sched.step(out, 500, x, eta=eta, generator=torch.Generator().manual_seed(3))
        assert torch.allclose(ours, ref, atol=1e-5), eta


def test_ddpm_equals_monai_ddpm_chain():
    """eta=1 over all T steps is DDPM ancestral sampling: same chain as MONAI's DDPMScheduler with the same noise."""
    torch.manual_seed(0)
    gen = _perturbed(LatentGenerator.from_preset("tiny", spatial_dims=2, latent=False, num_train_timesteps=20))
    sched = DDPMScheduler(20, schedule="scaled_linear_beta", beta_start=0.0015, beta_end=0.0195, clip_sample=False)
    x = torch.randn(2, 1, 8, 8)
    ours = DiffusionSampler(num_inference_steps=20, eta=1.0, progress=False)(
        gen, x=x.clone(), rng=torch.Generator().manual_seed(7)
    )
    rng = torch.Generator().manual_seed(7)
    ref = x.clone()
    with torch.no_grad():
        for t in range(19, -1, -1):
            ref, _ = sched.step(gen(ref, t), t, ref, generator=rng)
    assert torch.allclose(ours, ref, atol=1e-4)


def test_seeded_reproducible_and_partial_start(prompt_gen, device):
    gen = copy.deepcopy(prompt_gen).to(device)
    sampler = DiffusionSampler(num_inference_steps=4, eta=1.0, progress=False)
    cond = {"prompt": torch.tensor([0, 1], device=device)}

    def run(seed: int, rng_device: str = device) -> torch.Tensor:
        return sampler(gen, shape=(2, 2, 8, 8), condition=cond, rng=torch.Generator(device=rng_device).manual_seed(seed))

    a, b, c = run(1), run(1), run(2)
    assert a.device.type == device and torch.equal(a, b) and not torch.allclose(a, c)
    # a CPU generator drives a run on any device: the same draws as on the CPU, so (nearly) the same sample
    on_cpu = sampler(prompt_gen, shape=(2, 2, 8, 8), condition={"prompt": torch.tensor([0, 1])},
                     rng=torch.Generator().manual_seed(1))
    assert torch.allclose(run(1, "cpu").cpu(), on_cpu, atol=2e-2)  # TF32 convolutions on CUDA: not bit-equal
    # partial denoising from a low noise level stays close to its start; from a high level it does not
    x0 = torch.randn(2, 2, 8, 8, device=device)
    calls = []
    low = sampler(gen, x=x0, start_timestep=20, eta=0.0, callback=lambda s: calls.append(s.timestep))
    assert calls == timestep_path(1000, 4, start_timestep=20)[:-1]
    high = sampler(gen, x=x0, start_timestep=900, eta=0.0)
    assert (low - x0).abs().mean() < (high - x0).abs().mean()


def test_samples_change_with_condition_and_guidance_scale(prompt_gen):
    sampler = DiffusionSampler(num_inference_steps=5, progress=False)
    kw = dict(shape=(2, 2, 8, 8), rng=None)

    def run(prompt, guidance):
        return sampler(
            prompt_gen,
            condition={"prompt": torch.tensor([prompt] * 2)},
            guidance=guidance,
            **{**kw, "rng": torch.Generator().manual_seed(0)},
        )

    p0, p1 = run(0, NoGuidance()), run(1, NoGuidance())
    assert (p0 - p1).abs().mean() > 1e-3
    g1, g3, g6 = (run(0, ClassifierFreeGuidance(s)) for s in (1.0, 3.0, 6.0))
    assert torch.allclose(g1, p0, atol=1e-6)  # scale 1 is the plain conditional prediction
    d3, d6 = (g3 - g1).abs().mean(), (g6 - g1).abs().mean()
    assert d3 > 1e-4 and d6 > d3  # stronger guidance moves further


def test_guidance_branches_are_one_batched_call(prompt_gen):
    calls = []
    handle = prompt_gen.unet.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    try:
        DiffusionSampler(num_inference_steps=3, progress=False)(
            prompt_gen, shape=(4, 2, 8, 8), condition={"prompt": torch.zeros(4, dtype=torch.long)},
            guidance=ClassifierFreeGuidance(2.0),
        )
    finally:
        handle.remove()
    assert calls == [8, 8, 8]  # 3 steps, each one UNet call over 2 branches x 4 samples


def test_multi_condition_ttga_weights(prompt_gen):
    null, prompt = {"prompt": torch.tensor([-1])}, {"prompt": torch.tensor([0])}
    identity = {"context": torch.randn(1, 4, 16)}
    guidance = MultiConditionGuidance.ttga(null, prompt, identity, guidance_scale=2.0, lambda_c=1.0, lambda_i=1.2)
    assert len(guidance.conditions) == 2  # s_u = 1 - lambda_c = 0: the null branch is skipped
    assert guidance.weights == pytest.approx([2.2, -1.2])
    full = MultiConditionGuidance.ttga(null, prompt, identity, guidance_scale=2.0, lambda_c=0.7, lambda_i=0.5)
    assert sum(full.weights) == pytest.approx(1.0)
    # lambda_i = lambda_c = 1 with g = 2 is plain CFG with the identity embedding as the null branch
    x = torch.randn(3, 2, 8, 8)
    plain = MultiConditionGuidance.ttga(null, prompt, identity, 2.0, 1.0, 1.0)
    cfg = ClassifierFreeGuidance(2.0, null_condition={"context": identity["context"].expand(3, -1, -1)})
    with torch.no_grad():
        a, _ = plain.predict(prompt_gen, x, 50, plain.prepare(prompt_gen, None, 3))
        cond3 = {"prompt": torch.zeros(3, dtype=torch.long)}
        b, _ = cfg.predict(prompt_gen, x, 50, cfg.prepare(prompt_gen, cond3, 3))
    assert torch.allclose(a, b, atol=1e-5)
    # per-view weights (TTGA demo sweeps lambda_i over the views)
    sweep = MultiConditionGuidance.ttga(null, prompt, identity, 2.0, 1.0, torch.tensor([0.5, 1.0, 1.5]))
    with torch.no_grad():
        out, branches = sweep.predict(prompt_gen, x, 50, sweep.prepare(prompt_gen, None, 3))
    expected = (1 + torch.tensor([0.5, 1.0, 1.5])).view(3, 1, 1, 1) * branches[0] - torch.tensor(
        [0.5, 1.0, 1.5]
    ).view(3, 1, 1, 1) * branches[1]
    assert torch.allclose(out, expected, atol=1e-5)


class _MeanClassifier(nn.Module):
    """Toy noisy-input classifier: class 0 likes a high mean, class 1 a low one."""

    def forward(self, x, t):
        m = x.flatten(1).mean(1, keepdim=True) * 4.0
        return torch.cat([m, -m], dim=1)


def test_classifier_guidance_raises_guided_class_probability():
    gen = _perturbed(LatentGenerator.from_preset("tiny", spatial_dims=2, latent=False, num_train_timesteps=100))
    clf = _MeanClassifier()
    sampler = DiffusionSampler(num_inference_steps=10, eta=1.0, progress=False)

    def p_class(label, scale):
        x = sampler(
            gen, shape=(16, 1, 8, 8), guidance=ClassifierGuidance(clf, label, scale=scale),
            rng=torch.Generator().manual_seed(0),
        )
        return torch.softmax(clf(x, None), dim=1)[:, label].mean()

    for label in (0, 1):
        assert p_class(label, 20.0) > p_class(label, 0.0) + 0.05


def test_classifier_guidance_rejects_negative_scale():
    with pytest.raises(ValueError, match="scale must be >= 0"):
        ClassifierGuidance(_MeanClassifier(), 0, scale=-1.0)


def test_callback_replaces_sample_and_clamp(prompt_gen):
    sampler = DiffusionSampler(num_inference_steps=3, clamp=(-0.5, 0.5), progress=False)
    seen = []

    def merge(step):
        seen.append((step.index, step.x_next.abs().max().item()))
        return torch.zeros_like(step.x_next) if step.index == 2 else None

    out = sampler(prompt_gen, shape=(1, 2, 8, 8), callback=merge, rng=torch.Generator().manual_seed(0))
    assert [s[0] for s in seen] == [0, 1, 2] and all(m <= 0.5 + 1e-6 for _, m in seen)
    assert torch.equal(out, torch.zeros(1, 2, 8, 8))


def test_3d_sampling_and_bad_arguments():
    gen = LatentGenerator.from_preset("tiny", spatial_dims=3, num_classes=2).eval()
    sampler = DiffusionSampler(num_inference_steps=2, progress=False)
    out = sampler(gen, shape=(2, 2, 8, 8, 8), condition={"class_labels": torch.tensor([0, 1])})
    assert out.shape == (2, 2, 8, 8, 8) and torch.isfinite(out).all()
    with pytest.raises(ValueError, match="starting sample x or the shape"):
        sampler(gen)
    with pytest.raises(ValueError, match="descending"):
        sampler(gen, shape=(1, 2, 8, 8, 8), timesteps=[10, 20])
    with pytest.raises(ValueError, match="3D generator"):
        sampler(gen, shape=(1, 2, 8, 8))
    with pytest.raises(ValueError, match="num_inference_steps"):
        DiffusionSampler(num_inference_steps=0)


def test_prediction_type_conversion_roundtrip():
    x0, eps = torch.randn(2, 3), torch.randn(2, 3)
    a = 0.6
    x_t = a**0.5 * x0 + (1 - a) ** 0.5 * eps
    v = a**0.5 * eps - (1 - a) ** 0.5 * x0
    for kind, out in (("epsilon", eps), ("v_prediction", v), ("sample", x0)):
        e, x = to_epsilon_and_x0(out, x_t, a, kind)
        assert torch.allclose(e, eps, atol=1e-5) and torch.allclose(x, x0, atol=1e-5)
