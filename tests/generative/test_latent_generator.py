"""LatentGenerator: construction from presets, every conditioning, checks, checkpoints."""

from __future__ import annotations

import pytest
import torch

from monai_genaug.generative.latent_generator import (
    LatentGenerator,
    concat_conditions,
    generator_config,
)
from monai_genaug.networks.conditioning import NULL_PROMPT, PromptEmbedding
from monai_genaug.utils.checkpoint import CheckpointMismatchError

CASES = [
    ("prompt-2d", dict(spatial_dims=2, image_channels=3, num_prompts=2)),
    ("class-3d", dict(spatial_dims=3, num_classes=3)),
    ("spade-pixel-2d", dict(spatial_dims=2, seg_channels=2, latent=False)),
    ("concat-class-2d", dict(spatial_dims=2, concat_channels=1, num_classes=2)),
    ("vpred-3d", dict(spatial_dims=3, prediction_type="v_prediction", num_prompts=1)),
]


def _condition(gen: LatentGenerator, kw: dict, z: torch.Tensor) -> dict:
    b = z.shape[0]
    cond = {}
    if kw.get("num_prompts"):
        cond["prompt"] = torch.arange(b) % kw["num_prompts"]
    if kw.get("num_classes"):
        cond["class_labels"] = torch.arange(b) % kw["num_classes"]
    if kw.get("seg_channels"):
        cond["seg"] = torch.rand(b, kw["seg_channels"], *z.shape[2:])
    if kw.get("concat_channels"):
        cond["concat"] = torch.rand(b, kw["concat_channels"], *z.shape[2:])
    return cond


@pytest.mark.parametrize("name,kw", CASES, ids=[c[0] for c in CASES])
def test_shapes_and_condition_effect(name, kw):
    torch.manual_seed(0)
    gen = LatentGenerator.from_preset("tiny", **kw).eval()
    sd = kw["spatial_dims"]
    images = torch.rand(2, gen.image_channels, *(16,) * sd)
    z = gen.encode(images)
    assert z.shape == (2, *gen.latent_shape((16,) * sd))
    assert gen.decode(z).shape == images.shape
    cond = _condition(gen, kw, z)
    out = gen(z, torch.tensor([10, 500]), cond)
    assert out.shape == z.shape and torch.isfinite(out).all()
    # the output depends on the condition: null condition vs given condition differ
    null = gen.null_condition(cond, 2)
    if "context" in null or "class_labels" in null:
        # give the prompt / class embeddings some weight so the test does not depend on init scale
        with torch.no_grad():
            for p in gen.parameters():
                p.add_(torch.randn_like(p) * 0.05)
        assert not torch.allclose(gen(z, 10, cond), gen(z, 10, null), atol=1e-6)


def test_encode_sample_and_scale_factor():
    torch.manual_seed(0)
    gen = LatentGenerator.from_preset("tiny", spatial_dims=2)
    images = torch.rand(4, 1, 16, 16)
    s = gen.estimate_scale_factor(images)
    z = gen.encode(images)
    assert s > 0 and abs(float(z.detach().std()) - 1.0) < 1e-3
    a = gen.encode(images, sample=True, generator=torch.Generator().manual_seed(1))
    b = gen.encode(images, sample=True, generator=torch.Generator().manual_seed(1))
    c = gen.encode(images, sample=True, generator=torch.Generator().manual_seed(2))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.allclose(gen.decode(z), gen.autoencoder.decode(z / s), atol=1e-6)


def test_scale_factor_from_loader_keeps_modes_and_random_stream():
    torch.manual_seed(0)
    gen = LatentGenerator.from_preset("tiny", spatial_dims=2)
    images = torch.rand(6, 1, 16, 16)
    expected = LatentGenerator.from_preset("tiny", spatial_dims=2)
    expected.load_state_dict(gen.state_dict())
    want = expected.eval().estimate_scale_factor(images[:4])
    gen.train()
    gen.autoencoder.eval()  # a frozen autoencoder inside a training generator
    loader = [{"image": images[:2]}, {"image": images[2:4]}, {"image": images[4:]}]
    torch.manual_seed(5)
    got = gen.estimate_scale_factor_from_loader(loader, max_batches=2)
    after = torch.rand(1)
    torch.manual_seed(5)
    assert torch.equal(after, torch.rand(1))  # the caller's random stream did not move
    assert got == pytest.approx(want) and float(gen.scale_factor) == pytest.approx(want)
    assert gen.training and gen.unet.training and not gen.autoencoder.training
    with pytest.raises(ValueError, match="no 'image' key"):
        gen.estimate_scale_factor_from_loader([{"img": images}])
    with pytest.raises(ValueError, match="no batch"):
        gen.estimate_scale_factor_from_loader([])


def test_bad_inputs_have_clear_errors():
    gen = LatentGenerator.from_preset("tiny", spatial_dims=3, num_classes=2)
    with pytest.raises(ValueError, match="3D generator"):
        gen.encode(torch.rand(1, 1, 16, 16))  # a 2D image into a 3D generator
    with pytest.raises(ValueError, match="channels"):
        gen.encode(torch.rand(1, 3, 16, 16, 16))
    with pytest.raises(ValueError, match="divisible by 4.*DivisiblePad"):
        gen.encode(torch.rand(1, 1, 18, 16, 16))
    with pytest.raises(ValueError, match="class labels must be in"):
        gen(torch.rand(1, 2, 8, 8, 8), 3, {"class_labels": torch.tensor([5])})
    with pytest.raises(ValueError, match="unknown condition keys"):
        gen(torch.rand(1, 2, 8, 8, 8), 3, {"label": torch.tensor([0])})
    with pytest.raises(ValueError, match="no learned prompts"):
        gen(torch.rand(1, 2, 8, 8, 8), 3, {"prompt": torch.tensor([0])})
    spade = LatentGenerator.from_preset("tiny", spatial_dims=2, seg_channels=2)
    with pytest.raises(ValueError, match="SPADE"):
        spade(torch.rand(1, 2, 8, 8), 3)
    with pytest.raises(ValueError, match="unknown preset"):
        generator_config("huge")


def test_drop_condition_fraction_and_null():
    gen = LatentGenerator.from_preset("tiny", spatial_dims=2, num_prompts=3, num_classes=4)
    n = 400
    cond = {"prompt": torch.zeros(n, dtype=torch.long), "class_labels": torch.ones(n, dtype=torch.long)}
    dropped = gen.drop_condition(cond, 0.25, generator=torch.Generator().manual_seed(0))
    is_null_class = dropped["class_labels"] == 4
    assert 0.18 < is_null_class.float().mean() < 0.32
    null_ctx = gen.prompt_embedding.null_context(1)[0]
    ctx_null = (dropped["context"] - null_ctx).abs().flatten(1).sum(1) == 0
    assert torch.equal(ctx_null, is_null_class)  # the same samples lose both conditions
    assert cond["class_labels"].eq(1).all()  # input not modified
    assert torch.equal(gen.drop_condition(cond, 0.0)["class_labels"], cond["class_labels"])
    with pytest.raises(ValueError):
        gen.drop_condition(cond, 1.5)


def test_prompt_embedding_null_and_errors():
    emb = PromptEmbedding(2, 8, num_tokens=3)
    ctx = emb(torch.tensor([0, NULL_PROMPT, 1]))
    assert ctx.shape == (3, 3, 8)
    assert torch.equal(ctx[1], emb.null_tokens[0]) and torch.equal(ctx[0], emb.tokens[0])
    with pytest.raises(ValueError, match="prompt ids"):
        emb(torch.tensor([2]))


def test_concat_conditions():
    a = {"context": torch.zeros(2, 3, 4), "class_labels": torch.zeros(2, dtype=torch.long)}
    b = {"context": torch.ones(2, 3, 4), "class_labels": torch.ones(2, dtype=torch.long)}
    c = concat_conditions([a, b])
    assert c["context"].shape == (4, 3, 4) and c["class_labels"].tolist() == [0, 0, 1, 1]
    with pytest.raises(ValueError, match="different keys"):
        concat_conditions([a, {"context": b["context"]}])


def test_checkpoint_round_trip_and_mismatch(tmp_path):
    torch.manual_seed(0)
    gen = LatentGenerator.from_preset("tiny", spatial_dims=2, num_prompts=2)
    gen.scale_factor.fill_(0.7)
    path = tmp_path / "gen.pt"
    gen.save(str(path))
    assert [p.name for p in tmp_path.iterdir()] == ["gen.pt"]  # no temp file left behind
    loaded = LatentGenerator.load(str(path))
    assert float(loaded.scale_factor) == pytest.approx(0.7)
    z, t = torch.randn(1, 2, 8, 8), torch.tensor([3])
    cond = {"prompt": torch.tensor([1])}
    assert torch.equal(gen.eval()(z, t, cond), loaded.eval()(z, t, cond))
    other = LatentGenerator.from_preset("tiny", spatial_dims=2, num_classes=3)
    with pytest.raises(CheckpointMismatchError, match="missing keys: .*class_embedding"):
        other.load_weights(str(path))
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="junk.pt"):
        LatentGenerator.load(str(tmp_path / "junk.pt"))
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        LatentGenerator.load(str(tmp_path / "missing.pt"))


def test_raw_context_generator():
    """A generator conditioned on raw embeddings (e.g. CLIP) has cross-attention but no learned prompts."""
    gen = LatentGenerator.from_preset("tiny", spatial_dims=2, cross_attention_dim=12)
    assert gen.uses_context and gen.prompt_embedding is None
    z = torch.randn(2, 2, 8, 8)
    assert gen(z, 3, {"context": torch.randn(2, 5, 12)}).shape == z.shape
    with pytest.raises(ValueError, match="needs a cross-attention 'context'"):
        gen(z, 3)


def test_lora_generator_round_trip_and_autoencoder_stays_eval(tmp_path):
    from monai_genaug.networks.lora import apply_lora, has_lora

    torch.manual_seed(0)
    gen = LatentGenerator.from_preset("tiny", spatial_dims=2, num_prompts=1)
    apply_lora(gen.unet, rank=2)
    with torch.no_grad():
        for name, p in gen.unet.named_parameters():
            p.add_(torch.randn_like(p) * 0.05)
    gen.save(str(tmp_path / "lora_gen.pt"))
    loaded = LatentGenerator.load(str(tmp_path / "lora_gen.pt"))
    assert has_lora(loaded.unet)
    z = torch.randn(1, 2, 8, 8)
    assert torch.equal(gen.eval()(z, 5, {"prompt": torch.tensor([0])}), loaded.eval()(z, 5, {"prompt": torch.tensor([0])}))
    loaded.train()
    assert loaded.unet.training and not loaded.autoencoder.training
