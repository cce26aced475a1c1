# Copyright (c) monai_genaug contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.
"""Tests for monai_genaug.networks.sd: Stable Diffusion weights (diffusers folders, single files) in MONAI networks.

Tiny random diffusers models (SD1-like: conv projections, 4 heads per level; SD2-like: linear projections, heads per
level, upcast attention, two transformer layers, v-prediction) are saved with ``save_pretrained`` (no download),
converted, and the MONAI networks must reproduce diffusers' VAE posterior mean and sigma, decoder output and UNet
prediction with cross-attention context within 1e-4. Every parameter is perturbed first, so that a swapped or
skipped weight (two GroupNorms initialised alike, a zero-initialised output conv) changes the outputs.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from monai.networks.nets import AutoencoderKL as MonaiAutoencoderKL
from monai.networks.nets import DiffusionModelUNet
from monai.utils import optional_import

diffusers = pytest.importorskip("diffusers")
pytest.importorskip("safetensors")

from safetensors.torch import save_file  # noqa: E402

from monai_genaug.networks.lora import apply_lora  # noqa: E402
from monai_genaug.networks.sd.configs import (  # noqa: E402
    SDImportError,
    UnsupportedModelError,
    autoencoder_config_from_diffusers,
    scheduler_config_from_diffusers,
    unet_config_from_diffusers,
)
from monai_genaug.networks.sd.loading import (  # noqa: E402
    convert_unet,
    convert_vae,
    load_converted_network,
    load_stable_diffusion,
)
from monai_genaug.generative.sd_convert import save_converted  # noqa: E402
from monai_genaug.networks.sd.mapping import (  # noqa: E402
    normalize_legacy_vae_keys,
    unet_state_dict_to_monai,
    vae_state_dict_to_monai,
)
from monai_genaug.networks.sd.networks import (  # noqa: E402
    SDAutoencoderKL,
    SDDiffusionModelUNet,
    build_network,
)
from monai_genaug.networks.sd.text import (  # noqa: E402
    encode_prompts,
    load_prompt_embeddings,
    save_prompt_embeddings,
)

transformers, HAS_TRANSFORMERS = optional_import("transformers")  # only the text tests need it (extra "sd")
needs_transformers = pytest.mark.skipif(not HAS_TRANSFORMERS, reason="transformers (extra 'sd') is not installed")
TOL = 1e-4
TOKENS = 16  # tiny CLIP context length


# ------------------------------------------------------------------------------------------------ tiny models
def _jitter(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Perturb every parameter (norm weights start at 1, biases and output convs at 0)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            scale = float(p.std()) if p.numel() > 1 and float(p.std()) > 0.05 else 0.05
            p.add_(torch.randn(p.shape, generator=g) * scale)
    return model.eval()


def _tiny_clip(folder: Path, width: int) -> None:
    """A CLIP text encoder + tokenizer (tiny vocabulary, 16 tokens) in diffusers' text_encoder/ + tokenizer/ layout."""
    words = ["a", "polyp", "photo", "of", "colon", "the"]
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in sorted(set("".join(words))):
        vocab.setdefault(c, len(vocab))
        vocab.setdefault(c + "</w>", len(vocab))
    for w in words:
        vocab.setdefault(w + "</w>", len(vocab))
    (folder / "tokenizer").mkdir(parents=True)
    (folder / "tokenizer" / "vocab.json").write_text(json.dumps(vocab))
    (folder / "tokenizer" / "merges.txt").write_text("#version: 0.2\n")
    tok = transformers.CLIPTokenizer(
        str(folder / "tokenizer" / "vocab.json"), str(folder / "tokenizer" / "merges.txt"), model_max_length=TOKENS
    )
    tok.save_pretrained(str(folder / "tokenizer"))
    torch.manual_seed(3)
    cfg = transformers.CLIPTextConfig(
        vocab_size=len(vocab),
        hidden_size=width,
        intermediate_size=2 * width,
        num_hidden_layers=1,
        num_attention_heads=4,
        max_position_embeddings=TOKENS,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
    )
    transformers.CLIPTextModel(cfg).save_pretrained(str(folder / "text_encoder"))


def _pipeline(folder: Path, vae_kw: dict, unet_kw: dict, sched_kw: dict, seed: int, safe: bool, clip: bool):
    torch.manual_seed(seed)
    vae = _jitter(
        diffusers.AutoencoderKL(
            down_block_types=("DownEncoderBlock2D",) * 2,
            up_block_types=("UpDecoderBlock2D",) * 2,
            latent_channels=4,
            norm_num_groups=8,
            **vae_kw,
        ),
        seed,
    )
    unet = _jitter(diffusers.UNet2DConditionModel(sample_size=8, norm_num_groups=8, **unet_kw), seed + 1)
    vae.save_pretrained(str(folder / "vae"), safe_serialization=safe)
    unet.save_pretrained(str(folder / "unet"), safe_serialization=safe)
    diffusers.DDIMScheduler(
        beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, **sched_kw
    ).save_pretrained(str(folder / "scheduler"))
    if clip and HAS_TRANSFORMERS:
        _tiny_clip(folder, unet_kw["cross_attention_dim"])
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    return SimpleNamespace(path=folder, vae=vae, unet=unet, context_dim=unet_kw["cross_attention_dim"])


@pytest.fixture(scope="module")
def sd1(tmp_path_factory):
    """SD1-like: conv proj_in/out, 4 heads at every level, attention at level 0 only, safetensors, a text encoder."""
    unet_kw = dict(
        block_out_channels=(32, 64),
        layers_per_block=1,
        cross_attention_dim=32,
        attention_head_dim=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
    )
    vae_kw = dict(block_out_channels=(16, 32), layers_per_block=1)
    return _pipeline(tmp_path_factory.mktemp("sd1"), vae_kw, unet_kw, {}, seed=0, safe=True, clip=True)


@pytest.fixture(scope="module")
def sd2(tmp_path_factory):
    """SD2-like: linear proj_in/out, heads per level (16-channel heads), upcast attention, 2 transformer layers,
    v-prediction, decoder with 3 residual blocks per level, .bin weights."""
    unet_kw = dict(
        block_out_channels=(32, 64),
        layers_per_block=1,
        cross_attention_dim=24,
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        upcast_attention=True,
        transformer_layers_per_block=2,
        down_block_types=("CrossAttnDownBlock2D",) * 2,
        up_block_types=("CrossAttnUpBlock2D",) * 2,
    )
    vae_kw = dict(block_out_channels=(16, 32), layers_per_block=2)
    sched = {"prediction_type": "v_prediction"}
    return _pipeline(tmp_path_factory.mktemp("sd2"), vae_kw, unet_kw, sched, seed=10, safe=False, clip=False)


def _inputs(context_dim: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return SimpleNamespace(
        image=torch.rand(2, 3, 32, 32, generator=g) * 2 - 1,
        latent=torch.randn(2, 4, 16, 16, generator=g),
        noisy=torch.randn(2, 4, 16, 16, generator=g),
        t=torch.tensor([15, 870]),
        context=torch.randn(2, 7, context_dim, generator=g),
    )


_REFERENCE: dict = {}  # diffusers outputs for the fixed inputs, computed once per reference model


def _reference(ref, x, kind: str) -> tuple[torch.Tensor, ...]:
    key = (id(ref), kind, x.context.shape[-1])
    if key not in _REFERENCE:
        with torch.no_grad():
            if kind == "vae":
                post = ref.encode(x.image).latent_dist
                _REFERENCE[key] = (post.mean, post.std, ref.decode(x.latent).sample)
            else:
                _REFERENCE[key] = (ref(x.noisy, x.t, encoder_hidden_states=x.context).sample,)
    return _REFERENCE[key]


def _assert_vae_matches(ref, autoencoder, x) -> None:
    mean, std, decoded = _reference(ref, x, "vae")
    with torch.no_grad():
        z_mu, z_sigma = autoencoder.encode(x.image)
        torch.testing.assert_close(z_mu, mean, atol=TOL, rtol=0)
        torch.testing.assert_close(z_sigma, std, atol=TOL, rtol=0)
        torch.testing.assert_close(autoencoder.decode(x.latent), decoded, atol=TOL, rtol=0)


def _assert_unet_matches(ref, unet, x) -> None:
    (expected,) = _reference(ref, x, "unet")
    with torch.no_grad():
        got = unet(x.noisy, x.t, context=x.context)
    assert expected.abs().max() > 0.1  # a meaningful comparison
    torch.testing.assert_close(got, expected, atol=TOL, rtol=0)


# ------------------------------------------------------------------------------------------------ diffusers folders
@pytest.mark.parametrize("name", ["sd1", "sd2"])
def test_diffusers_folder_matches_diffusers(name, request):
    ref = request.getfixturevalue(name)
    models = load_stable_diffusion(ref.path)
    assert isinstance(models.autoencoder, MonaiAutoencoderKL) and isinstance(models.autoencoder, SDAutoencoderKL)
    assert isinstance(models.unet, DiffusionModelUNet) and isinstance(models.unet, SDDiffusionModelUNet)
    x = _inputs(ref.context_dim)
    _assert_vae_matches(ref.vae, models.autoencoder, x)
    _assert_unet_matches(ref.unet, models.unet, x)
    assert models.scale_factor == pytest.approx(ref.vae.config.scaling_factor)
    sched = models.scheduler_config
    assert sched["schedule"] == "scaled_linear_beta" and sched["beta_end"] == pytest.approx(0.012)
    assert sched["prediction_type"] == ("v_prediction" if name == "sd2" else "epsilon")
    cfg = models.unet_config
    if name == "sd1":  # diffusers' attention_head_dim is the number of heads: 32 / 4 and 64 / 4 channels per head
        assert cfg["num_head_channels"] == [8, 16] and cfg["attention_levels"] == [True, False]
        assert models.text_encoder_dir == (ref.path / "text_encoder" if HAS_TRANSFORMERS else None)
    else:
        assert cfg["num_head_channels"] == [16, 16] and cfg["upcast_attention"] and cfg["transformer_num_layers"] == 2
        assert models.autoencoder_config["decoder_num_res_blocks"] == [3, 3]


def test_component_folder_converts_only_that_component(sd2):
    models = load_stable_diffusion(sd2.path / "vae")
    assert models.unet is None and models.variant == "VAE only"
    _assert_vae_matches(sd2.vae, models.autoencoder, _inputs(sd2.context_dim))
    only_unet = load_stable_diffusion(sd2.path, components=["unet"])
    assert only_unet.autoencoder is None and only_unet.unet is not None
    with pytest.raises(SDImportError, match=r"holds only the vae \(AutoencoderKL\), but components=\['unet'\]"):
        load_stable_diffusion(sd2.path / "vae", components=["unet"])


def test_legacy_vae_attention_names_and_no_quant_conv(sd1):
    state = sd1.vae.state_dict()
    legacy = {
        re.sub(
            r"to_q\.|to_k\.|to_v\.|to_out\.0\.",
            lambda m: {"to_q.": "query.", "to_k.": "key.", "to_v.": "value.", "to_out.0.": "proj_attn."}[m.group(0)],
            k,
        ): v
        for k, v in state.items()
    }
    assert "encoder.mid_block.attentions.0.query.weight" in legacy
    assert normalize_legacy_vae_keys(legacy).keys() == state.keys()
    ae, _ = convert_vae(legacy, dict(sd1.vae.config))
    _assert_vae_matches(sd1.vae, ae, _inputs(sd1.context_dim))
    # use_quant_conv=False / use_post_quant_conv=False: the identity takes their place
    torch.manual_seed(0)
    plain = _jitter(
        diffusers.AutoencoderKL(
            block_out_channels=(16,),
            layers_per_block=1,
            latent_channels=4,
            norm_num_groups=8,
            use_quant_conv=False,
            use_post_quant_conv=False,
        ),
        5,
    )
    ae, _ = convert_vae(plain.state_dict(), dict(plain.config))
    x = _inputs(8)
    z = torch.randn(2, 4, 32, 32, generator=torch.Generator().manual_seed(1))  # one level: no down-sampling
    with torch.no_grad():
        post = plain.encode(x.image).latent_dist
        torch.testing.assert_close(ae.encode(x.image)[0], post.mean, atol=TOL, rtol=0)
        torch.testing.assert_close(ae.encode(x.image)[1], post.std, atol=TOL, rtol=0)
        torch.testing.assert_close(ae.decode(z), plain.decode(z).sample, atol=TOL, rtol=0)


def test_converted_unet_takes_lora(sd1):
    unet, _ = convert_unet(sd1.unet.state_dict(), dict(sd1.unet.config))
    x = _inputs(sd1.context_dim)
    with torch.no_grad():
        before = unet(x.noisy, x.t, context=x.context)
    apply_lora(unet, rank=2, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(unet(x.noisy, x.t, context=x.context), before)  # B = 0 at initialisation
    assert any(p.requires_grad for p in unet.parameters())


@pytest.mark.parametrize(
    "kw, head_channels",
    [
        ({"cross_attention_dim": 768, "attention_head_dim": 8}, [40, 80, 160, 160]),  # SD 1.5: 8 heads per level
        (  # SD 2.1: heads of 64 channels, linear projections
            {"cross_attention_dim": 1024, "attention_head_dim": (5, 10, 20, 20), "use_linear_projection": True},
            [64, 64, 64, 64],
        ),
    ],
)
def test_full_size_sd_architectures_map_key_for_key(kw, head_channels):
    """The real SD 1.5 / 2.1 UNet and VAE layouts, built on the meta device (no memory, no weights)."""
    with torch.device("meta"):
        ref = diffusers.UNet2DConditionModel(block_out_channels=(320, 640, 1280, 1280), layers_per_block=2, **kw)
        cfg = unet_config_from_diffusers(dict(ref.config))
        net = build_network(cfg)
        vae = diffusers.AutoencoderKL(
            block_out_channels=(128, 256, 512, 512),
            layers_per_block=2,
            latent_channels=4,
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
        )
        vae_cfg = autoencoder_config_from_diffusers(dict(vae.config))
        vae_net = build_network(vae_cfg)
    assert cfg["num_head_channels"] == head_channels
    state = unet_state_dict_to_monai(ref.state_dict(), net)  # raises on any missing, unexpected or mis-shaped key
    assert sum(v.numel() for v in state.values()) == sum(p.numel() for p in ref.parameters())  # 0.86 B
    vae_state = vae_state_dict_to_monai(vae.state_dict(), vae_net, vae_cfg)
    assert sum(v.numel() for v in vae_state.values()) == sum(p.numel() for p in vae.parameters())


# ------------------------------------------------------------------------------------------------ single file (ldm)
def _resnet_to_ldm(rest: str) -> str:
    for a, b in (
        ("norm1.", "in_layers.0."),
        ("conv1.", "in_layers.2."),
        ("time_emb_proj.", "emb_layers.1."),
        ("norm2.", "out_layers.0."),
        ("conv2.", "out_layers.3."),
        ("conv_shortcut.", "skip_connection."),
    ):
        if rest.startswith(a):
            return b + rest[len(a) :]
    raise AssertionError(rest)


def _unet_to_ldm(state: dict, layers: int) -> dict:
    """The ldm (CompVis) names of a diffusers UNet state dict, written from the ldm source layout."""
    per, out = layers + 1, {}
    fixed = {
        "time_embedding.linear_1.": "time_embed.0.",
        "time_embedding.linear_2.": "time_embed.2.",
        "conv_in.": "input_blocks.0.0.",
        "conv_norm_out.": "out.0.",
        "conv_out.": "out.2.",
        "mid_block.attentions.0.": "middle_block.1.",
    }
    for k, v in state.items():
        new = next((b + k[len(a) :] for a, b in fixed.items() if k.startswith(a)), None)
        if new is None and (m := re.match(r"mid_block\.resnets\.(\d)\.(.*)", k)):
            new = f"middle_block.{2 * int(m.group(1))}.{_resnet_to_ldm(m.group(2))}"
        if new is None and (m := re.match(r"down_blocks\.(\d+)\.(resnets|attentions|downsamplers)\.(\d+)\.(.*)", k)):
            b, kind, j, rest = int(m.group(1)), m.group(2), int(m.group(3)), m.group(4)
            if kind == "downsamplers":
                new = f"input_blocks.{1 + b * per + layers}.0.op.{rest[len('conv.'):]}"
            elif kind == "resnets":
                new = f"input_blocks.{1 + b * per + j}.0.{_resnet_to_ldm(rest)}"
            else:
                new = f"input_blocks.{1 + b * per + j}.1.{rest}"
        if new is None and (m := re.match(r"up_blocks\.(\d+)\.(resnets|attentions|upsamplers)\.(\d+)\.(.*)", k)):
            b, kind, j, rest = int(m.group(1)), m.group(2), int(m.group(3)), m.group(4)
            if kind == "upsamplers":
                has_attn = any(s.startswith(f"up_blocks.{b}.attentions.") for s in state)
                new = f"output_blocks.{b * per + layers}.{2 if has_attn else 1}.{rest}"
            elif kind == "resnets":
                new = f"output_blocks.{b * per + j}.0.{_resnet_to_ldm(rest)}"
            else:
                new = f"output_blocks.{b * per + j}.1.{rest}"
        assert new is not None, k
        out[new] = v
    return out


def _vae_to_ldm(state: dict, levels: int) -> dict:
    """The ldm names of a diffusers VAE state dict (attention q/k/v/proj_out as 1x1 convs, as ldm stores them)."""
    out = {}
    attn = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
    for k, v in state.items():
        new = k.replace("conv_shortcut", "nin_shortcut").replace("conv_norm_out", "norm_out")
        new = re.sub(r"encoder\.down_blocks\.(\d+)\.resnets\.", r"encoder.down.\1.block.", new)
        new = re.sub(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.", r"encoder.down.\1.downsample.", new)
        new = re.sub(
            r"decoder\.up_blocks\.(\d+)\.resnets\.", lambda m: f"decoder.up.{levels - 1 - int(m.group(1))}.block.", new
        )
        new = re.sub(
            r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.",
            lambda m: f"decoder.up.{levels - 1 - int(m.group(1))}.upsample.",
            new,
        )
        new = re.sub(r"mid_block\.resnets\.(\d)\.", lambda m: f"mid.block_{int(m.group(1)) + 1}.", new)
        m = re.match(r"(encoder|decoder)\.mid_block\.attentions\.0\.(group_norm|to_q|to_k|to_v|to_out\.0)\.(.*)", new)
        if m:
            new = f"{m.group(1)}.mid.attn_1.{attn[m.group(2)]}.{m.group(3)}"
            if v.ndim == 2:
                v = v[:, :, None, None]
        out[new] = v
    return out


@pytest.fixture(scope="module")
def sd1_single_file(sd1, tmp_path_factory):
    unet_sd = _unet_to_ldm(sd1.unet.state_dict(), layers=1)
    vae_sd = _vae_to_ldm(sd1.vae.state_dict(), levels=2)
    # anchor the test's ldm naming on diffusers' own single-file converters
    from diffusers.loaders.single_file_utils import (
        convert_ldm_unet_checkpoint,
        convert_ldm_vae_checkpoint,
    )

    back = convert_ldm_unet_checkpoint(
        {f"model.diffusion_model.{k}": v for k, v in unet_sd.items()}, dict(sd1.unet.config)
    )
    assert back.keys() == sd1.unet.state_dict().keys()
    assert all(torch.equal(back[k], v) for k, v in sd1.unet.state_dict().items())
    back = convert_ldm_vae_checkpoint({f"first_stage_model.{k}": v for k, v in vae_sd.items()}, dict(sd1.vae.config))
    assert back.keys() == sd1.vae.state_dict().keys()
    state = {f"model.diffusion_model.{k}": v.contiguous() for k, v in unet_sd.items()}
    state.update({f"first_stage_model.{k}": v.contiguous() for k, v in vae_sd.items()})
    state["cond_stage_model.transformer.text_model.final_layer_norm.weight"] = torch.ones(32)
    state["betas"] = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64).pow(2).float()
    path = tmp_path_factory.mktemp("single") / "tiny-sd1.safetensors"
    save_file(state, str(path))
    return path


def test_single_file_checkpoint_matches_diffusers(sd1, sd1_single_file, tmp_path):
    models = load_stable_diffusion(sd1_single_file, attention_heads=4, norm_num_groups=8)
    x = _inputs(sd1.context_dim)
    _assert_vae_matches(sd1.vae, models.autoencoder, x)
    _assert_unet_matches(sd1.unet, models.unet, x)
    assert models.source_format == "single_file"
    assert models.scheduler_config["schedule"] == "scaled_linear_beta"
    assert models.scheduler_config["beta_start"] == pytest.approx(0.00085)
    assert any("cond_stage_model" in n for n in models.notes)  # the text encoder is reported, not dropped silently
    # a .ckpt wrapping the same weights in {"state_dict": ...} with other entries, read with weights_only=True
    from safetensors.torch import load_file

    ckpt = tmp_path / "tiny.ckpt"
    torch.save({"state_dict": load_file(str(sd1_single_file)), "global_step": 7}, ckpt)
    again = load_stable_diffusion(ckpt, attention_heads=4, components=["unet"], norm_num_groups=8)
    _assert_unet_matches(sd1.unet, again.unet, x)
    # ldm EMA copies (model_ema.<name without dots>) are used on request, and reported otherwise
    weights = load_file(str(sd1_single_file))
    ema = {f"model_ema.{k[len('model.'):].replace('.', '')}": v for k, v in weights.items() if k.startswith("model.")}
    zeroed = {k: torch.zeros_like(v) if k.startswith("model.") else v for k, v in weights.items()}
    save_file({**zeroed, **ema}, str(tmp_path / "ema.safetensors"))
    with_ema = load_stable_diffusion(tmp_path / "ema.safetensors", attention_heads=4, norm_num_groups=8, use_ema=True)
    _assert_unet_matches(sd1.unet, with_ema.unet, x)
    without = load_stable_diffusion(
        tmp_path / "ema.safetensors", attention_heads=4, norm_num_groups=8, components=["unet"]
    )
    assert any("model_ema" in n for n in without.notes)
    assert without.unet.conv_in.conv.weight.abs().max() == 0
    # the head layout is not in the weights: a 32-d context is neither SD1 nor SD2, so it must be given
    with pytest.raises(SDImportError, match="attention_heads"):
        load_stable_diffusion(sd1_single_file, components=["unet"], norm_num_groups=8)
    with pytest.raises(SDImportError, match="not divisible"):
        load_stable_diffusion(sd1_single_file, components=["unet"], head_channels=24, norm_num_groups=8)


# ------------------------------------------------------------------------------------------------ bad input
def test_not_a_checkpoint_lists_expected_and_found(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(SDImportError, match=r"expected model_index\.json.*found \['notes\.txt'\]"):
        load_stable_diffusion(tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_stable_diffusion(tmp_path / "missing")
    bogus = tmp_path / "weights.safetensors"
    save_file({"backbone.layer1.weight": torch.zeros(2, 2)}, str(bogus))
    with pytest.raises(SDImportError, match="not a Stable Diffusion checkpoint.*backbone.layer1.weight"):
        load_stable_diffusion(bogus)
    (tmp_path / "garbage.ckpt").write_bytes(b"not a torch file")
    with pytest.raises(SDImportError, match="weights_only"):
        load_stable_diffusion(tmp_path / "garbage.ckpt")


def test_missing_weights_file_is_named(sd1, tmp_path):
    (tmp_path / "vae").mkdir()
    (tmp_path / "vae" / "config.json").write_text((sd1.path / "vae" / "config.json").read_text())
    with pytest.raises(
        FileNotFoundError, match=r"no weights.*diffusion_pytorch_model\.safetensors.*found \['config\.json'\]"
    ):
        load_stable_diffusion(tmp_path)
    with pytest.raises(FileNotFoundError, match="no unet/ folder"):
        load_stable_diffusion(tmp_path, components=["unet"])


def test_missing_and_unexpected_keys_are_listed(sd1):
    state = dict(sd1.unet.state_dict())
    state.pop("down_blocks.0.attentions.0.proj_in.weight")
    state["down_blocks.0.attentions.0.extra.weight"] = torch.zeros(1)
    with pytest.raises(
        SDImportError,
        match=r"missing keys: down_blocks\.0\.attentions\.0\.proj_in\.weight.*"
        r"unexpected keys: down_blocks\.0\.attentions\.0\.extra\.weight",
    ):
        convert_unet(state, dict(sd1.unet.config))
    vae_state = dict(sd1.vae.state_dict())
    vae_state["decoder.conv_out.weight"] = vae_state["decoder.conv_out.weight"][:2]
    with pytest.raises(SDImportError, match=r"shape mismatches: decoder\.conv_out\.weight"):
        convert_vae(vae_state, dict(sd1.vae.config))


def test_unsupported_variants_are_named(sd1, tmp_path):
    cfg = dict(sd1.unet.config)
    with pytest.raises(UnsupportedModelError, match=r"addition_embed_type='text_time'"):
        unet_config_from_diffusers({**cfg, "addition_embed_type": "text_time"})
    with pytest.raises(UnsupportedModelError, match=r"transformer_layers_per_block=\[1, 2\]"):
        unet_config_from_diffusers({**cfg, "transformer_layers_per_block": [1, 2]})
    with pytest.raises(UnsupportedModelError, match="time_cond_proj_dim=256"):
        unet_config_from_diffusers({**cfg, "time_cond_proj_dim": 256})
    with pytest.raises(UnsupportedModelError, match="squaredcos_cap_v2"):
        scheduler_config_from_diffusers({"beta_schedule": "squaredcos_cap_v2"})
    xl = tmp_path / "sdxl"
    (xl / "text_encoder_2").mkdir(parents=True)
    (xl / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionXLPipeline"}))
    with pytest.raises(UnsupportedModelError, match=r"StableDiffusionXLPipeline.*text_encoder_2/"):
        load_stable_diffusion(xl)
    sd3 = tmp_path / "sd3.safetensors"
    save_file({"model.diffusion_model.joint_blocks.0.x.weight": torch.zeros(1)}, str(sd3))
    with pytest.raises(UnsupportedModelError, match="SD3"):
        load_stable_diffusion(sd3)


# ------------------------------------------------------------------------------------------------ text conditioning
@needs_transformers
def test_encode_prompts_and_embedding_files(sd1, tmp_path):
    emb = encode_prompts(["a polyp", "a photo of the colon", ""], sd1.path / "text_encoder")
    assert emb.shape == (3, TOKENS, sd1.context_dim) and emb.dtype == torch.float32
    again = encode_prompts(["a polyp"], sd1.path / "text_encoder")  # the sibling tokenizer/ folder is found
    torch.testing.assert_close(again[0], emb[0])
    assert not torch.allclose(emb[0], emb[2])  # prompt and null differ
    for suffix in (".pt", ".safetensors"):
        path = save_prompt_embeddings(tmp_path / f"emb{suffix}", emb[:2], emb[2], prompts=["a polyp", "colon"])
        data = load_prompt_embeddings(path, cross_attention_dim=sd1.context_dim)
        assert data["prompts"] == ["a polyp", "colon"] and data["null_embeds"].shape == (1, TOKENS, sd1.context_dim)
        torch.testing.assert_close(data["prompt_embeds"], emb[:2])
    with pytest.raises(SDImportError, match="cross_attention_dim is 768"):
        load_prompt_embeddings(tmp_path / "emb.pt", cross_attention_dim=768)
    save_file({"prompt_embeds": emb[:1]}, str(tmp_path / "bad.safetensors"))
    with pytest.raises(SDImportError, match=r"lacks \['null_embeds'\]"):
        load_prompt_embeddings(tmp_path / "bad.safetensors")
    with pytest.raises(FileNotFoundError, match="text encoder folder"):
        encode_prompts("a polyp", tmp_path / "nowhere")


# ------------------------------------------------------------------------------------------------ checkpoints
@needs_transformers
def test_save_converted_writes_loadable_checkpoints(sd1, tmp_path):
    models = load_stable_diffusion(sd1.path)
    written = save_converted(models, tmp_path / "out", prompts=["a polyp"])
    assert set(written) == {"generator", "autoencoder", "unet", "embeddings", "report"}
    report = json.loads(written["report"].read_text())
    assert report["unet"]["type"] == "SDDiffusionModelUNet" and report["files"]["generator"] == "generator.pt"
    x = _inputs(sd1.context_dim)
    ae, cfg = load_converted_network(written["autoencoder"])
    assert cfg["scale_factor"] == pytest.approx(0.18215) and cfg["image_channels"] == 3
    _assert_vae_matches(sd1.vae, ae, x)
    unet, _ = load_converted_network(written["unet"])
    _assert_unet_matches(sd1.unet, unet, x)
    emb = load_prompt_embeddings(written["embeddings"], cross_attention_dim=sd1.context_dim)
    assert emb["prompts"] == ["a polyp"] and emb["prompt_embeds"].shape == (1, TOKENS, sd1.context_dim)


def test_generator_checkpoint_reproduces_diffusers(sd1, tmp_path):
    """generator.pt loads with LatentGenerator.load and reproduces SD's latents, decoding and noise prediction."""
    from monai_genaug.generative.latent_generator import LatentGenerator

    written = save_converted(load_stable_diffusion(sd1.path), tmp_path / "out")
    gen = LatentGenerator.load(str(written["generator"])).eval()
    x = _inputs(sd1.context_dim)
    scale = sd1.vae.config.scaling_factor
    with torch.no_grad():
        torch.testing.assert_close(
            gen.encode(x.image), sd1.vae.encode(x.image).latent_dist.mean * scale, atol=TOL, rtol=0
        )
        torch.testing.assert_close(gen.decode(x.latent * scale), sd1.vae.decode(x.latent).sample, atol=TOL, rtol=0)
        expected = sd1.unet(x.noisy, x.t, encoder_hidden_states=x.context).sample
        torch.testing.assert_close(gen(x.noisy, x.t, {"context": x.context}), expected, atol=TOL, rtol=0)
    assert gen.scheduler.prediction_type == "epsilon"
