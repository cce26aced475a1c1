"""LatentDiffusionPrepareBatch: targets per prediction type, latent encoding, conditions, condition dropout."""

from __future__ import annotations

import pytest
import torch

from monai_genaug.engines.prepare_batch import LatentDiffusionPrepareBatch


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_targets_follow_prediction_type(prediction_type, tiny):
    gen = tiny.make_generator(latent=False, prediction_type=prediction_type)
    images = tiny.make_images(3, 16)
    noisy, target, args, kwargs = LatentDiffusionPrepareBatch(gen, seed=7)({"image": images})
    g = torch.Generator().manual_seed(7)
    noise = torch.randn(images.shape, generator=g)
    t = torch.randint(0, 50, (3,), generator=g)
    assert torch.equal(args[0], t) and kwargs == {}
    assert torch.allclose(noisy, gen.scheduler.add_noise(images, noise, t))
    expected = {"epsilon": noise, "v_prediction": gen.scheduler.get_velocity(images, noise, t), "sample": images}
    assert torch.allclose(target, expected[prediction_type])
    if prediction_type == "v_prediction":
        assert not torch.allclose(target, noise)


def test_latent_encoding_is_frozen_and_deterministic(tiny):
    gen = tiny.make_generator(latent=True, prediction_type="sample")
    gen.train()
    images = tiny.make_images(2, 16)
    pb = LatentDiffusionPrepareBatch(gen, sample_posterior=False, seed=1)
    noisy, target, (t,), _ = pb({"image": images})
    assert noisy.shape == (2, 2, 8, 8) and not target.requires_grad
    assert torch.allclose(target, gen.encode(images))  # the clean latents of the frozen autoencoder
    assert not gen.autoencoder.training
    # posterior samples are drawn from the prepare-batch generator: same seed -> same latents
    a = LatentDiffusionPrepareBatch(gen, sample_posterior=True, seed=3)({"image": images})[1]
    b = LatentDiffusionPrepareBatch(gen, sample_posterior=True, seed=3)({"image": images})[1]
    assert torch.equal(a, b) and not torch.allclose(a, target)


def test_precomputed_latents_and_state_dict(tiny):
    gen = tiny.make_generator(latent=True, prediction_type="sample")
    latents = torch.randn(2, 2, 8, 8)
    pb = LatentDiffusionPrepareBatch(gen, seed=0)
    state = pb.state_dict()
    first = pb({"latent": latents})
    assert torch.equal(first[1], latents)
    pb.load_state_dict(state)
    assert torch.equal(pb({"latent": latents})[0], first[0])  # restored generator -> same draws
    pb.reset()
    assert torch.equal(pb({"latent": latents})[0], first[0])


def test_conditions_are_gathered_and_reach_the_network(tiny):
    gen = tiny.make_generator(latent=False, num_classes=3, concat_channels=1)
    images = tiny.make_images(2, 16)
    batch = {"image": images, "label": torch.tensor([[2], [0]]), "prior": torch.rand(2, 1, 16, 16)}
    pb = LatentDiffusionPrepareBatch(gen, condition_keys={"class_labels": "label", "concat": "prior"})
    noisy, target, args, kwargs = pb(batch)
    cond = kwargs["condition"]
    assert cond["class_labels"].tolist() == [2, 0] and torch.equal(cond["concat"], batch["prior"])
    assert gen(noisy, *args, **kwargs).shape == target.shape


def test_spade_and_prompt_conditions(tiny):
    gen = tiny.make_generator(latent=True, seg_channels=2)
    masks = torch.zeros(2, 2, 16, 16)
    masks[:, 0] = 1
    noisy, target, args, kwargs = LatentDiffusionPrepareBatch(gen, condition_keys={"seg": "mask"})(
        {"image": tiny.make_images(2, 16), "mask": masks}
    )
    assert gen(noisy, *args, **kwargs).shape == target.shape == (2, 2, 8, 8)
    gen = tiny.make_generator(latent=False, num_prompts=2)
    pb = LatentDiffusionPrepareBatch(gen, condition_keys=["prompt"], condition_dropout=0.5)
    noisy, target, args, kwargs = pb({"image": tiny.make_images(4, 16), "prompt": torch.tensor([0, 1, 1, 0])})
    assert kwargs["condition"]["context"].shape == (4, 4, 16)
    assert gen(noisy, *args, **kwargs).shape == target.shape
    # raw cross-attention embeddings (e.g. CLIP / TTGA identity) straight from the batch
    context = torch.randn(4, 3, 16)
    noisy, target, args, kwargs = LatentDiffusionPrepareBatch(gen, condition_keys={"context": "emb"})(
        {"image": tiny.make_images(4, 16), "emb": context}
    )
    assert torch.equal(kwargs["condition"]["context"], context)
    assert gen(noisy, *args, **kwargs).shape == target.shape


def _null_fraction(gen, p, seed, n=2000):
    pb = LatentDiffusionPrepareBatch(gen, condition_keys={"class_labels": "y"}, condition_dropout=p, seed=seed)
    batch = {"image": torch.zeros(n, 1, 8, 8), "y": torch.arange(n) % 3}
    labels = pb(batch)[3]["condition"]["class_labels"]
    kept = labels != 3
    assert torch.equal(labels[kept], batch["y"][kept])  # the others keep their own label
    return labels == 3


def test_condition_dropout_fraction_is_seeded(tiny):
    gen = tiny.make_generator(latent=False, num_classes=3)
    drop = _null_fraction(gen, 0.3, seed=0)
    assert abs(drop.float().mean().item() - 0.3) < 0.04
    assert torch.equal(drop, _null_fraction(gen, 0.3, seed=0))
    assert not torch.equal(drop, _null_fraction(gen, 0.3, seed=1))
    assert not _null_fraction(gen, 0.0, seed=0).any()
    assert _null_fraction(gen, 1.0, seed=0).all()


def test_prompt_dropout_uses_null_tokens(tiny):
    gen = tiny.make_generator(latent=False, num_prompts=2)
    pb = LatentDiffusionPrepareBatch(gen, condition_keys={"prompt": "p"}, condition_dropout=0.25, seed=2)
    n = 800
    context = pb({"image": torch.zeros(n, 1, 8, 8), "p": torch.arange(n) % 2})[3]["condition"]["context"]
    null = gen.prompt_embedding.null_context(1)
    is_null = torch.isclose(context, null.expand_as(context)).flatten(1).all(1)
    assert abs(is_null.float().mean().item() - 0.25) < 0.05


def test_bad_input(tiny):
    gen = tiny.make_generator(latent=False, num_classes=3)
    with pytest.raises(ValueError, match="unknown condition name"):
        LatentDiffusionPrepareBatch(gen, condition_keys={"label": "y"})
    with pytest.raises(ValueError, match="condition_dropout"):
        LatentDiffusionPrepareBatch(gen, condition_dropout=1.5)
    pb = LatentDiffusionPrepareBatch(gen, condition_keys={"class_labels": "y"})
    with pytest.raises(KeyError, match="'y'"):
        pb({"image": tiny.make_images(2, 16)})
    with pytest.raises(KeyError, match="neither 'image' nor 'latent'"):
        pb({"img": tiny.make_images(2, 16), "y": torch.zeros(2)})
    with pytest.raises(TypeError, match="dict batch"):
        pb(tiny.make_images(2, 16))
