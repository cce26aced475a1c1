"""GenerativeTTAInferer: fused probabilities + uncertainty, inner inferers, SupervisedEvaluator with DiceMetric."""

from __future__ import annotations

import math

import pytest
import torch
from monai.data import DataLoader, Dataset, MetaTensor
from monai.engines import SupervisedEvaluator
from monai.handlers import MeanDice
from monai.inferers import SlidingWindowInferer
from monai.networks.nets import UNet
from monai.transforms import AsDiscreted

from monai_genaug.generative.latent_generator import LatentGenerator
from monai_genaug.inferers.generative_tta import (
    CONCAT_UNCERTAINTY,
    GenerativeTTAInferer,
)
from monai_genaug.methods.ttga import TTGAAugmenter

FAST = dict(min_iterations=2, max_iterations=5, inversion_stride=100)


def _augmenter(spatial_dims: int, num_views: int = 3) -> TTGAAugmenter:
    gen = LatentGenerator.from_preset("tiny", spatial_dims=spatial_dims, image_channels=1, num_prompts=1)
    torch.manual_seed(0)
    with torch.no_grad():  # fresh diffusion UNets output zeros
        for p in gen.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return TTGAAugmenter(gen.eval(), num_views=num_views, mask_scheme="hybrid", drop_p=0.5, **FAST)


def _segmenter(spatial_dims: int, out_channels: int = 2) -> torch.nn.Module:
    torch.manual_seed(1)
    return UNet(spatial_dims, 1, out_channels, channels=(4, 8), strides=(2,), num_res_units=0).eval()


@pytest.fixture(scope="module")
def aug2d():
    return _augmenter(2)


def test_mean_probability_uncertainty_and_views(aug2d):
    net = _segmenter(2)
    sizes = []
    handle = net.register_forward_hook(lambda m, i, o: sizes.append(i[0].shape[0]))
    x = torch.rand(2, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    inferer = GenerativeTTAInferer(aug2d, activation="softmax")
    with torch.no_grad():
        mean = inferer(x, net)
    handle.remove()
    assert sizes == [4, 4]  # original + 3 views, one inner call per image
    assert mean.shape == (2, 2, 16, 16)
    assert torch.allclose(mean.sum(1), torch.ones(2, 16, 16), atol=1e-5)
    last = inferer.last_output
    assert last["entropy"].shape == (2, 1, 16, 16) and last["variance"].shape == (2, 2, 16, 16)
    assert last["views"].shape == (2, 3, 1, 16, 16)
    assert float(last["entropy"].max()) <= math.log(2) + 1e-5
    assert float(last["mutual_information"].min()) >= 0 and float(last["mutual_information"].max()) > 0
    assert torch.all(last["mutual_information"] <= last["entropy"] + 1e-6)
    # the fused probability is the mean of the member probabilities
    with torch.no_grad():
        stack = torch.cat([x[:1], last["views"][0]])
        ref = torch.softmax(net(stack), 1).mean(0)
    assert torch.allclose(mean[0], ref, atol=1e-5)


def test_output_modes_sigmoid_and_seed(aug2d):
    net = _segmenter(2, out_channels=1)
    x = MetaTensor(torch.rand(1, 1, 16, 16), affine=torch.diag(torch.tensor([2.0, 2.0, 1.0, 1.0])))
    with torch.no_grad():
        concat = GenerativeTTAInferer(aug2d, activation="sigmoid", output="concat", seed=0)(x, net)
        again = GenerativeTTAInferer(aug2d, activation="sigmoid", output="concat", seed=0)(x, net)
        out = GenerativeTTAInferer(aug2d, activation="sigmoid", output="dict", include_original=False,
                                   num_views=2)(x, net)
    assert isinstance(concat, MetaTensor) and torch.equal(concat.affine, x.affine)
    assert concat.shape == (1, 1 + len(CONCAT_UNCERTAINTY), 16, 16)
    assert torch.equal(concat, again)  # seeded views
    assert set(out) >= {"pred", "entropy", "mutual_information", "variance", "views"}
    assert out["views"].shape == (1, 2, 1, 16, 16)
    assert float(out["entropy"].max()) <= math.log(2) + 1e-5  # binary entropy
    with pytest.raises(ValueError, match="sigmoid"):
        GenerativeTTAInferer(aug2d, activation="softmax")(x, net)
    with pytest.raises(ValueError, match="output"):
        GenerativeTTAInferer(aug2d, output="mode")
    with pytest.raises(TypeError, match="TTGAAugmenter"):
        GenerativeTTAInferer(net)


def test_sliding_window_inner_inferer_3d():
    aug = _augmenter(3, num_views=2)
    net = _segmenter(3)
    inner = SlidingWindowInferer(roi_size=(8, 8, 8), sw_batch_size=4, overlap=0.25)
    x = torch.rand(1, 1, 16, 16, 12, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        mean = GenerativeTTAInferer(aug, inferer=inner, view_batch_size=2)(x, net)
    assert mean.shape == (1, 2, 16, 16, 12)
    assert torch.allclose(mean.sum(1), torch.ones(1, 16, 16, 12), atol=1e-5)


def test_in_supervised_evaluator_with_dice(aug2d):
    gen = torch.Generator().manual_seed(0)
    data = []
    for i in range(2):
        label = torch.zeros(1, 16, 16)
        label[:, 4 + i : 12, 5:11] = 1
        image = (0.3 * label + 0.5 * torch.rand(1, 16, 16, generator=gen)).clamp(0, 1)
        data.append({"image": image, "label": label})
    loader = DataLoader(Dataset(data), batch_size=2, num_workers=0)
    evaluator = SupervisedEvaluator(
        device=torch.device("cpu"),
        val_data_loader=loader,
        network=_segmenter(2),
        inferer=GenerativeTTAInferer(aug2d),
        postprocessing=AsDiscreted(keys=("pred", "label"), argmax=(True, False), to_onehot=2),
        key_val_metric={"val_mean_dice": MeanDice(include_background=False, output_transform=lambda o: (
            [x["pred"] for x in o], [x["label"] for x in o]))},
    )
    evaluator.run()
    dice = evaluator.state.metrics["val_mean_dice"]
    assert 0.0 <= dice <= 1.0
    assert evaluator.state.output[0]["pred"].shape == (2, 16, 16)


def test_views_times_flips_fuses_every_flipped_member_and_counts_calls(aug2d):
    """flip_axes: each ensemble member is also segmented flipped and flipped back; the fused probability is the mean
    over (N + 1) x (1 + flips) members, and the cost shows in segmenter_calls."""
    net = _segmenter(2)
    x = torch.rand(1, 1, 16, 16, generator=torch.Generator().manual_seed(3))
    flips = [[0], [1], [0, 1]]
    inferer = GenerativeTTAInferer(aug2d, activation="softmax", seed=5, flip_axes=flips)
    with torch.no_grad():
        mean = inferer(x, net)
        stack = torch.cat([x, inferer.last_output["views"][0]])
        members = [torch.softmax(net(stack), 1)]
        for axes in flips:
            dims = [a + 2 for a in axes]
            members.append(torch.softmax(net(stack.flip(dims)), 1).flip(dims))
        ref = torch.cat(members).mean(0)
    assert torch.allclose(mean[0], ref, atol=1e-5)
    assert int(inferer.last_output["segmenter_calls"][0]) == 4 * 4
    plain = GenerativeTTAInferer(aug2d, activation="softmax", seed=5)
    with torch.no_grad():
        assert not torch.allclose(plain(x, net), mean, atol=1e-4)  # the flips change the ensemble
    assert int(plain.last_output["segmenter_calls"][0]) == 4
    for bad in ([[2]], [[]], [[0, 0]], [[-1]]):
        with pytest.raises(ValueError, match="flip_axes"):
            GenerativeTTAInferer(aug2d, flip_axes=bad)


def test_view_diversity_is_reported_per_image(aug2d):
    """The views' MAE / SSIM to the input and the predictions' agreement are in last_output, per image."""
    net = _segmenter(2)
    x = torch.rand(2, 1, 16, 16, generator=torch.Generator().manual_seed(4))
    inferer = GenerativeTTAInferer(aug2d, activation="softmax", seed=1)
    with torch.no_grad():
        inferer(x, net)
    last = inferer.last_output
    for key in ("view_mae", "view_ssim", "view_agreement", "view_pairwise_agreement"):
        assert last[key].shape == (2,)
    views = last["views"]
    assert torch.allclose(last["view_mae"][1], (views[1] - x[1]).abs().mean(), atol=1e-5)
    assert float(last["view_mae"].min()) > 0 and float(last["view_ssim"].max()) < 1.0
    assert 0.0 <= float(last["view_agreement"].min()) <= float(last["view_agreement"].max()) <= 1.0


def test_identity_region_from_the_segmenter_sets_the_kept_area(aug2d):
    """identity_dilation: the segmenter's dilated foreground becomes the views' identity region; a larger dilation
    keeps more of the image, and the views equal the identity reconstruction where the region covers everything."""
    net = _segmenter(2)
    x = torch.rand(1, 1, 16, 16, generator=torch.Generator().manual_seed(6))
    fractions = []
    for r in (0, 2):
        inferer = GenerativeTTAInferer(aug2d, activation="softmax", seed=2, identity_dilation=r)
        with torch.no_grad():
            inferer(x, net)
            region = inferer._identity_region(x[0], net)
        out = aug2d.last_output
        assert region.shape == (1, 16, 16) and set(region.unique().tolist()) <= {0.0, 1.0}
        fractions.append(float(out.identity_fraction.mean()))
        assert int(inferer.last_output["segmenter_calls"][0]) == 4 + 1
    assert fractions[1] >= fractions[0]
    half = torch.zeros(16, 16)
    half[:, :8] = 1
    with torch.no_grad():
        out = aug2d.generate(x[0], num_views=2, identity_region=half)
    assert 0.0 < float(out.identity_fraction.mean()) < 1.0
    with pytest.raises(ValueError, match="identity_region must have"):
        aug2d.generate(x[0], num_views=1, identity_region=torch.ones(8, 8))
    with pytest.raises(ValueError, match="identity_dilation"):
        GenerativeTTAInferer(aug2d, identity_dilation=-1)
    with pytest.raises(ValueError, match="only acts with identity_dilation"):
        GenerativeTTAInferer(aug2d, identity_uncertainty=0.5)
