"""Reference Stable Diffusion architectures (no weights): configs through the import path, random-weight stand-ins."""

from __future__ import annotations

import pytest
import torch

from monai_genaug.generative.latent_generator import LatentGenerator
from monai_genaug.networks.sd import (
    SD_REFERENCE_CONFIGS,
    SDImportError,
    reference_diffusers_configs,
    reference_generator_config,
)


@pytest.mark.parametrize(
    "name, context, head_channels, unet_millions",
    [("sd-1.5", 768, [40, 80, 160, 160], 859.5), ("sd-2", 1024, [64, 64, 64, 64], 865.9)],
)
def test_full_size_reference_generators_on_the_meta_device(name, context, head_channels, unet_millions):
    config = reference_generator_config(name)
    assert config["conditioning"]["cross_attention_dim"] == context
    assert config["unet"]["num_head_channels"] == head_channels
    with torch.device("meta"):  # 0.95 B parameters, no memory
        gen = LatentGenerator.from_config(config)
    assert gen.uses_context and gen.autoencoder_factor == 8 and gen.latent_shape((512, 512)) == (4, 64, 64)
    assert sum(p.numel() for p in gen.unet.parameters()) / 1e6 == pytest.approx(unet_millions, abs=0.1)
    assert sum(p.numel() for p in gen.autoencoder.parameters()) / 1e6 == pytest.approx(83.65, abs=0.01)


def test_overrides_give_a_small_stand_in_and_leave_the_references_alone():
    before = {k: dict(v["unet"]) for k, v in SD_REFERENCE_CONFIGS.items()}
    small = reference_generator_config("sd-1.5", vae={"block_out_channels": [32, 32, 32, 32], "layers_per_block": 1},
                                       unet={"block_out_channels": [32, 32, 64, 64], "layers_per_block": 1},
                                       use_flash_attention=True)
    gen = LatentGenerator.from_config(small).eval()
    assert small["unet"]["use_flash_attention"] and gen.spatial_divisor == 64
    with torch.no_grad():
        out = gen(torch.randn(1, 4, 8, 8), 10, {"context": torch.randn(1, 77, 768)})
    assert out.shape == (1, 4, 8, 8)
    assert {k: v["unet"] for k, v in SD_REFERENCE_CONFIGS.items()} == before
    assert reference_diffusers_configs("sd-2", unet={"layers_per_block": 1})["unet"]["use_linear_projection"] is True


def test_bad_reference_arguments():
    with pytest.raises(ValueError, match="unknown reference architecture 'sd-3'"):
        reference_generator_config("sd-3")
    with pytest.raises(SDImportError, match="divisible"):
        reference_generator_config("sd-1.5", unet={"block_out_channels": [30, 60, 60, 60]})
