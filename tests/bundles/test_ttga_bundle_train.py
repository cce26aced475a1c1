"""The TTGA bundle's 2D train configs run (tiny settings) and write weights that the inference config loads and uses.

``train_generator.json`` (autoencoder + latent diffusion from scratch), ``train_lora.json`` (LoRA adaptation of that
generator) and ``train_segmenter.json`` run through ``python -m monai.bundle run`` with 1 epoch on 16 x 16 phantoms;
their outputs are then read back through ``configs/inference.json`` (``generator``, ``augmenter``, ``network``).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

# tiny networks: autoencoder factor 4 (3 levels), 2-level diffusion UNet
GENERATOR_2D = ["--autoencoder_channels", "[8,8,8]", "--latent_channels", "4", "--autoencoder_norm_num_groups", "4",
                "--unet_channels", "[8,8]", "--num_head_channels", "8", "--unet_norm_num_groups", "4",
                "--cross_attention_dim", "8"]


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("ttga_train_2d")


@pytest.fixture(scope="module")
def common(work) -> list[str]:
    return ["--phantom_dir", str(work / "phantoms"), "--num_phantoms", "10", "--spatial_size", "[16,16]",
            "--batch_size", "4", "--val_interval", "1", "--seed", "0"]


@pytest.fixture(scope="module")
def generator_2d(work, common, bundle_tools) -> Path:
    path = work / "generator.pt"
    bundle_tools.run("bundles/ttga/configs/train_generator.json", "--output_dir", str(work / "train_generator"),
                     "--generator_path", str(path), *common, *GENERATOR_2D, "--autoencoder_epochs", "1", "--epochs",
                     "1", "--sample_grids", "False")
    return path


def _views_through_inference_config(tools, generator_path: Path):
    parser = tools.parser("ttga", "inference.json", generator_path=str(generator_path), spatial_size=[16, 16],
                          **tools.ttga_views)
    augmenter = parser.get_parsed_content("augmenter")
    image = torch.rand(3, 16, 20, generator=torch.Generator().manual_seed(0))
    return augmenter.generator, image, augmenter(image)


@pytest.mark.slow
def test_train_generator_writes_a_generator_the_inference_config_uses(generator_2d, work, bundle_tools):
    assert generator_2d.is_file() and (work / "train_generator" / "diffusion" / "checkpoint_last.pt").is_file()
    assert (work / "train_generator" / "autoencoder" / "autoencoder_final.pt").is_file()
    gen, image, views = _views_through_inference_config(bundle_tools, generator_2d)
    assert (gen.spatial_dims, gen.image_channels, gen.autoencoder_factor) == (2, 3, 4)
    assert list(gen.config["autoencoder"]["channels"]) == [8, 8, 8]  # the overrides reached the model
    assert float(gen.scale_factor) != 1.0  # estimated from the training latents
    assert views.shape == (2, 3, 16, 20) and torch.isfinite(views).all()
    assert (views - image).abs().mean() > 1e-3


@pytest.mark.slow
def test_train_lora_adapts_the_trained_generator(generator_2d, work, common, bundle_tools):
    out = work / "train_lora"
    bundle_tools.run("bundles/ttga/configs/train_lora.json", "--output_dir", str(out), "--generator_path",
                     str(generator_2d), *common, "--epochs", "1", "--sample_grids", "False")
    adapted = out / "generator_lora.pt"
    assert adapted.is_file()
    extra = torch.load(adapted, weights_only=True)["extra"]
    assert extra["made_by"] == "configs/train_lora.json" and extra["base_generator"] == str(generator_2d)
    gen, _, views = _views_through_inference_config(bundle_tools, adapted)
    lora_keys = [k for k in gen.state_dict() if "lora_" in k]
    assert lora_keys and all(k.startswith("unet.") for k in lora_keys)  # adapters on the diffusion UNet only
    base = torch.load(generator_2d, weights_only=True)["state_dict"]
    tokens = [k for k in base if k.startswith("prompt_embedding") and k.endswith(".tokens")]
    assert tokens and not torch.equal(gen.state_dict()[tokens[0]].float(), base[tokens[0]].float())  # prompt trained
    assert views.shape == (2, 3, 16, 20) and torch.isfinite(views).all()


@pytest.mark.slow
def test_train_segmenter_writes_weights_the_inference_config_loads(work, common, bundle_tools):
    model = work / "model.pt"
    bundle_tools.run("bundles/ttga/configs/train_segmenter.json", "--output_dir", str(work / "train_segmenter"),
                     "--model_path", str(model), *common, *bundle_tools.ttga_segmenter, "--epochs", "1")
    assert model.is_file()
    parser = bundle_tools.parser("ttga", "inference.json", model_path=str(model), segmenter_channels=[4, 8],
                                 segmenter_strides=[2])
    network = parser.get_parsed_content("network")  # strict state-dict check against network_def
    trained = torch.load(model, weights_only=True)
    assert all(torch.equal(v.float(), trained[k].float()) for k, v in network.state_dict().items())
    with torch.no_grad():
        assert network(torch.rand(1, 3, 16, 16)).shape == (1, 2, 16, 16)
    # the default network_def does not fit these weights: the message names the train config
    default = bundle_tools.parser("ttga", "inference.json", model_path=str(model))
    assert "train_segmenter.json" in bundle_tools.errors(lambda: default.get_parsed_content("network"))


def test_train_generator_pixel_space_grounded_switch(work, common, bundle_tools):
    """``--latent False --grounding_weight w`` trains the benchmark's kind of generator from the bundle: no autoencoder
    (nothing is lost to one), the lesion token grounded on the masks (``train_grounded_ttga_generator``, resumable
    checkpoint with a per-epoch history); the inference config loads it and its identity path reconstructs."""
    path, out = work / "generator_pixel.pt", work / "train_generator_pixel"
    parser = bundle_tools.parser(  # in-process: the same config a `monai.bundle run` reads, without a new interpreter
        "ttga", "train_generator.json", output_dir=str(out), generator_path=str(path),
        phantom_dir=str(work / "phantoms_pixel"), num_phantoms=8, spatial_size=[16, 16], batch_size=4, seed=0,
        latent=False, grounding_weight=1.0, lesion_token=1, prompt_tokens=4, unet_channels=[8, 8],
        unet_attention_levels=[False, True], num_head_channels=8, unet_norm_num_groups=4, cross_attention_dim=8,
        epochs=2, sample_grids=False, progress=False)
    parser.get_parsed_content("run")
    assert not (out / "autoencoder").exists() and not (out / "diffusion").exists()  # neither default trainer ran
    history = torch.load(out / "grounded" / "grounded_checkpoint.pt", weights_only=False)["history"]
    assert history["epochs"] == 2 and len(history["grounding_loss"]) == 2
    assert all(0.0 < g < 5.0 for g in history["grounding_loss"])  # a BCE of attention vs mask was computed
    extra = torch.load(path, weights_only=True)["extra"]
    assert extra["latent"] is False and extra["grounding_weight"] == 1.0 and extra["epochs"] == [0, 2]
    gen, image, views = _views_through_inference_config(bundle_tools, path)
    assert gen.autoencoder is None and gen.autoencoder_factor == 1 and gen.prompt_embedding.num_tokens == 4
    assert list(gen.config["unet"]["attention_levels"]) == [False, True]
    assert views.shape == (2, 3, 16, 20) and torch.isfinite(views).all()
