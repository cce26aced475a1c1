"""The TTGA bundle's 3D overlay ``train_3d.json`` on the generator and segmenter train configs (tiny settings); the
written weights load through ``configs/inference_3d.json`` and produce views / predictions of the input's shape."""

from __future__ import annotations

import pytest
import torch

GENERATOR_3D = ["--autoencoder_channels", "[4,4]", "--latent_channels", "2", "--autoencoder_norm_num_groups", "2",
                "--unet_channels", "[8,8]", "--num_head_channels", "8", "--unet_norm_num_groups", "4",
                "--cross_attention_dim", "8"]
OVERLAY = "bundles/ttga/configs/train_3d.json"


@pytest.fixture(scope="module")
def common(tmp_path_factory) -> tuple:
    work = tmp_path_factory.mktemp("ttga_train_3d")
    return work, ["--phantom_dir", str(work / "phantoms"), "--num_phantoms", "6", "--spatial_size", "[16,16,16]",
                  "--batch_size", "2", "--val_interval", "1", "--seed", "0"]


@pytest.mark.slow
def test_train_generator_3d(common, bundle_tools):
    work, args = common
    path = work / "generator_3d.pt"
    bundle_tools.run(["bundles/ttga/configs/train_generator.json", OVERLAY], "--output_dir",
                     str(work / "train_generator_3d"), "--generator_path", str(path), *args, *GENERATOR_3D,
                     "--autoencoder_epochs", "1", "--epochs", "1")
    augmenter = bundle_tools.parser("ttga", "inference.json", "inference_3d.json", generator_path=str(path), spatial_size=[16, 16, 16],
                                    **bundle_tools.ttga_views).get_parsed_content("augmenter")
    gen = augmenter.generator
    assert (gen.spatial_dims, gen.image_channels, gen.autoencoder_factor) == (3, 2, 2)
    volume = torch.rand(2, 16, 16, 12, generator=torch.Generator().manual_seed(0))
    views = augmenter(volume)
    assert views.shape == (2, 2, 16, 16, 12) and torch.isfinite(views).all()
    assert (views[0] - views[1]).abs().mean() > 1e-4


@pytest.mark.slow
def test_train_segmenter_3d(common, bundle_tools):
    work, args = common
    model = work / "model_3d.pt"
    bundle_tools.run(["bundles/ttga/configs/train_segmenter.json", OVERLAY], "--output_dir",
                     str(work / "train_segmenter_3d"), "--model_path", str(model), *args, *bundle_tools.ttga_segmenter,
                     "--epochs", "1")
    network = bundle_tools.parser("ttga", "inference.json", "inference_3d.json", model_path=str(model), segmenter_channels=[4, 8],
                                  segmenter_strides=[2]).get_parsed_content("network")
    with torch.no_grad():
        assert network(torch.rand(1, 2, 16, 16, 16)).shape == (1, 2, 16, 16, 16)
    trained = torch.load(model, weights_only=True)
    assert all(torch.equal(v.float(), trained[k].float()) for k, v in network.state_dict().items())
