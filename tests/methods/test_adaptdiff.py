"""AdaptDiff: pseudo-labels, corruption, mask-conditioned synthesis that follows the mask, and a fine-tune that adapts."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.utils import set_determinism
from torch import nn

from monai_genaug.data.phantoms import make_two_modality_phantoms
from monai_genaug.engines.segmentation import build_segmenter, segmenter_config
from monai_genaug.generative.latent_generator import LatentGenerator
from monai_genaug.methods.adaptdiff import (
    AdaptDiff,
    PseudoLabeler,
    RandIntensityInversiond,
    adaptdiff_data_dir,
    adaptdiff_generator_config,
    adaptdiff_split,
    check_modalities,
    finetune_augmentation,
    labels_to_seg,
    load_pair_folder,
    load_pairs,
    make_loader,
    make_pseudo_labels,
    source_augmentation,
    write_pairs,
)

TINY_UNET = {"channels": [8, 16], "norm_num_groups": 4, "spade_intermediate_channels": 8}


class _Threshold(nn.Module):
    """A fake segmenter: foreground logit grows with the intensity (bright structures are foreground)."""

    def __init__(self, sign: float = 1.0, classes: int = 1) -> None:
        super().__init__()
        self.sign, self.classes = sign, classes
        self.w = nn.Parameter(torch.ones(1))

    def forward(self, x):
        z = self.sign * 20 * (x[:, :1] - 0.5)
        fg = [z + 0.1 * k for k in range(self.classes)]
        return torch.cat([torch.zeros_like(z), *fg], dim=1)


def _corr(x: torch.Tensor, m: torch.Tensor) -> float:
    xc, mc = x - x.mean(dim=(1, 2, 3), keepdim=True), m - m.mean(dim=(1, 2, 3), keepdim=True)
    c = (xc * mc).sum((1, 2, 3)) / (xc.pow(2).sum((1, 2, 3)).sqrt() * mc.pow(2).sum((1, 2, 3)).sqrt() + 1e-8)
    return float(c.mean())


def test_schedule_and_config_follow_the_paper():
    cfg = adaptdiff_generator_config("tiny", unet=TINY_UNET)
    gen = LatentGenerator.from_config(cfg)
    betas = gen.scheduler.betas.numpy()
    assert len(betas) == 300 and np.allclose(betas, np.linspace(1e-4, 0.02, 300), atol=1e-7)
    assert gen.is_spade and gen.autoencoder is None and cfg["unet"]["attention_levels"] == [False, False]
    assert cfg["conditioning"]["seg_channels"] == 2
    # SPADE: the prediction changes with the mask (the conditioning reaches the output); MONAI zero-initialises the
    # last convolutions, so give them weights first
    torch.manual_seed(0)
    for p in gen.unet.parameters():
        if p.abs().sum() == 0:
            nn.init.normal_(p, std=0.1)
    x = torch.randn(2, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    m1 = torch.zeros(2, 1, 16, 16, dtype=torch.long)
    m2 = m1.clone()
    m2[:, :, 4:12, 4:12] = 1
    with torch.no_grad():
        a, b = gen(x, 10, {"seg": labels_to_seg(m1, 1)}), gen(x, 10, {"seg": labels_to_seg(m2, 1)})
    assert (a - b).abs().mean() > 1e-4


def test_masks_and_modalities_are_checked():
    seg = labels_to_seg(torch.tensor([[[[0, 1], [2, 0]]]]), 2)
    assert seg.shape == (1, 3, 2, 2) and torch.equal(seg.sum(1), torch.ones(1, 2, 2))
    with pytest.raises(ValueError, match="binary"):
        labels_to_seg(torch.tensor([[[[0, 255]]]]), 1)
    with pytest.raises(ValueError, match="channel"):
        check_modalities(torch.zeros(1, 8, 8), torch.zeros(3, 8, 8))
    with pytest.raises(ValueError, match="2D .* 3D|dimensionality"):
        check_modalities(torch.zeros(1, 8, 8), torch.zeros(1, 8, 8, 8))
    check_modalities(np.zeros((1, 8, 8)), torch.zeros(1, 8, 8))
    seg_net = build_segmenter(segmenter_config(2, 1, 1, channels=(4, 8)))
    gen3 = LatentGenerator.from_config(
        adaptdiff_generator_config("tiny", spatial_dims=2, image_channels=3, unet=TINY_UNET)
    )
    with pytest.raises(ValueError, match="same channels"):
        AdaptDiff(seg_net, gen3)
    gen_k2 = LatentGenerator.from_config(adaptdiff_generator_config("tiny", num_classes=2, unet=TINY_UNET))
    with pytest.raises(ValueError, match="3-channel masks|needs 2"):
        AdaptDiff(None, gen_k2, num_classes=1)


def test_pseudo_labels_threshold_empty_set_and_bad_target():
    images = torch.zeros(3, 1, 8, 8)
    images[:, :, 2:5, 2:5] = 0.9
    images[:, :, 5:7, 5:7] = 0.53  # p(fg) = sigmoid(0.6) ~ 0.65
    labeler = PseudoLabeler(_Threshold(), threshold=0.5)
    lab = labeler(images)
    assert lab.shape == (3, 1, 8, 8) and lab.dtype == torch.long
    assert lab[:, :, 2:5, 2:5].eq(1).all() and lab[:, :, 5:7, 5:7].eq(1).all() and lab.sum() == 3 * 13
    assert PseudoLabeler(_Threshold(), threshold=0.8)(images).sum() == 3 * 9
    # multi-class: foreground where 1 - p(bg) > t, the most probable foreground class
    lab3 = PseudoLabeler(_Threshold(classes=3), num_classes=3)(images)
    assert set(lab3.unique().tolist()) == {0, 3}
    with pytest.raises(ValueError, match="returns 2 channels"):
        PseudoLabeler(_Threshold(), num_classes=2)(images)
    # an empty pseudo-label set is an error
    with pytest.raises(ValueError, match="empty pseudo-label set"):
        make_pseudo_labels(PseudoLabeler(_Threshold(sign=-1.0), threshold=0.99), torch.ones(2, 1, 8, 8))
    with pytest.raises(ValueError, match="min_foreground"):
        make_pseudo_labels(labeler, images, min_foreground=0.9)
    with pytest.raises(ValueError, match="empty"):
        make_pseudo_labels(labeler, [])
    ad = AdaptDiff(build_segmenter(segmenter_config(2, 1, 1, channels=(4, 8))), None)
    with pytest.raises(ValueError, match="same channels"):
        ad.pseudo_label(torch.zeros(2, 3, 8, 8))
    with pytest.raises(ValueError, match="dimensionality"):
        ad.pseudo_label(torch.zeros(2, 1, 8, 8, 8))
    with pytest.raises(ValueError, match="no generator"):
        ad.synthesize(torch.zeros(1, 1, 8, 8, dtype=torch.long))


def test_intensity_augmentations():
    x = {"image": torch.linspace(0, 1, 16).view(1, 4, 4)}
    assert torch.allclose(RandIntensityInversiond("image", prob=1.0)(x)["image"], 1 - x["image"])
    aug = source_augmentation(invert_prob=1.0).set_random_state(0)
    y = aug(dict(x))["image"]
    assert (
        y.min() >= 0
        and y.max() <= 1
        and float(torch.corrcoef(torch.stack([y.flatten(), x["image"].flatten()]))[0, 1]) < 0
    )
    z = finetune_augmentation(spatial=False).set_random_state(0)(dict(x))["image"]
    assert z.shape == (1, 4, 4) and z.min() >= 0 and z.max() <= 1


def _scanner_shift(image: np.ndarray, g: torch.Generator) -> torch.Tensor:
    """A deliberately shifted target "scanner": blurred, low-contrast, noisy, with a random linear bias field."""
    k = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0])
    k = (k[:, None] * k[None]) / 256
    x = torch.from_numpy(image).float()[None]
    x = torch.nn.functional.conv2d(torch.nn.functional.pad(x, (2, 2, 2, 2), mode="replicate"), k[None, None])[0]
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, x.shape[-2]), torch.linspace(-1, 1, x.shape[-1]), indexing="ij")
    a = torch.rand(2, generator=g) - 0.5
    x = (0.3 + 0.25 * x) * (1 + 0.5 * (a[0] * yy + a[1] * xx)) + 0.06 * torch.randn(x.shape, generator=g)
    return x.clamp(0, 1)


@pytest.fixture(scope="module")
def adapted(tmp_path_factory):
    """Source: the phantoms' bright vessels; target: the same kind of anatomy through a shifted scanner."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny networks: one thread is fastest (and restored below)
    set_determinism(0)
    data = make_two_modality_phantoms(72, (32, 32), seed=0)
    g = torch.Generator().manual_seed(0)

    def items(idx, shifted, labelled=True):
        return [
            {
                "image": (
                    _scanner_shift(data[i]["source"], g) if shifted else torch.from_numpy(data[i]["source"]).float()
                ),
                "id": f"p{i:03d}",
                **({"label": torch.from_numpy(data[i]["label"]).long()} if labelled else {}),
            }
            for i in idx
        ]

    source, target, test = items(range(32), False), items(range(32, 64), True, False), items(range(64, 72), True)
    ad = AdaptDiff.from_preset(
        "tiny",
        segmenter_channels=(8, 16, 32),
        segmenter_kwargs={"num_res_units": 1},
        generator_kwargs={"unet": TINY_UNET},
    )
    out = tmp_path_factory.mktemp("adaptdiff")
    ad.source_trainer(make_loader(source, None, 8, seed=0), 25, out / "src", lr=1e-2).run()  # (a)
    pseudo = ad.pseudo_label(target)  # (b)
    ad.diffusion_trainer(
        ad.diffusion_loader(pseudo, batch_size=8), 12, out / "diff", lr=2e-3, ema_decay=None
    ).run()  # (c)
    synth = ad.synthesize(source, num_inference_steps=15, eta=1.0, batch_size=32)  # (d)
    ad.finetune_trainer(  # (e)
        make_loader(synth.items(), finetune_augmentation(), 8, seed=1), 12, out / "ft", lr_step_size=None
    ).run()
    yield {"ad": ad, "synth": synth, "test": test}
    torch.set_num_threads(threads)


def test_synthesis_follows_the_mask(adapted):
    ad, synth, test = adapted["ad"], adapted["synth"], adapted["test"]
    x, m = synth.images, synth.labels.float()
    assert x.shape == (32, 1, 32, 32) and x.min() >= 0 and x.max() <= 1 and synth.seeds == list(range(32))

    def contrast(img, mask):
        return float((img * mask).sum() / mask.sum() - (img * (1 - mask)).sum() / (1 - mask).sum())

    # the target modality's direction and size of contrast: brighter vessels, weaker than the source's
    real = contrast(torch.stack([t["image"] for t in test]), torch.stack([t["label"] for t in test]).float())
    assert contrast(x, m) > 0.05 and real > 0.05
    assert _corr(x, m) > 0.2
    # another mask, same seeds: another image, which follows the new mask
    same = ad.synthesize(synth.labels[:8], num_inference_steps=15, eta=1.0, seed=0)
    swapped = ad.synthesize(synth.labels[:8].flip(0), num_inference_steps=15, eta=1.0, seed=0)
    again = ad.synthesize(synth.labels[:8], num_inference_steps=15, eta=1.0, seed=0)
    assert torch.equal(same.images, again.images)  # seeded
    assert (swapped.images - same.images).abs().mean() > 0.02
    assert _corr(swapped.images, swapped.labels.float()) > 0.2
    # DDIM (deterministic, few steps) and the paper's per-step x_t clamp keep images in range
    ddim = ad.synthesize(synth.labels[:2], num_inference_steps=5, eta=0.0, seed=3)
    assert torch.isfinite(ddim.images).all() and ddim.images.shape == (2, 1, 32, 32)
    with pytest.raises(ValueError, match="binary"):
        ad.synthesize(synth.labels[:1] * 255)


def test_finetune_adapts_to_the_target(adapted):
    ad = adapted["ad"]
    scores = ad.evaluate(make_loader(adapted["test"], None, 8, shuffle=False))
    assert scores["adaptdiff"]["mean_dice"] > scores["source_only"]["mean_dice"] + 0.05, scores


def test_3d_and_latent_pipelines_run(tmp_path):
    torch.manual_seed(0)
    ad = AdaptDiff.from_preset(
        "tiny",
        spatial_dims=3,
        segmenter_channels=(4, 8),
        segmenter_kwargs={"num_res_units": 0},
        generator_kwargs={"unet": TINY_UNET},
    )
    data = make_two_modality_phantoms(3, (8, 8, 8), seed=1)
    target = [{"image": torch.from_numpy(d["target"]).float()} for d in data]
    labeler = PseudoLabeler(ad.segmenter, threshold=0.01)
    pseudo = make_pseudo_labels(labeler, target)
    assert pseudo[0]["label"].shape == (1, 8, 8, 8)
    ad.diffusion_trainer(ad.diffusion_loader(pseudo, batch_size=3), 1, tmp_path, ema_decay=None).run()
    masks = torch.from_numpy(np.stack([d["label"] for d in data[:2]])).long()
    out = ad.synthesize(masks, num_inference_steps=2, eta=0.0)
    assert out.images.shape == (2, 1, 8, 8, 8) and torch.isfinite(out.images).all()
    lat = AdaptDiff.from_preset("tiny", latent=True, segmenter_channels=(4, 8), generator_kwargs={"unet": TINY_UNET})
    target2d = [{"image": torch.rand(1, 32, 32), "label": torch.zeros(1, 32, 32, dtype=torch.long)} for _ in range(2)]
    lat.autoencoder_trainer(target2d, 1, tmp_path / "ae", batch_size=2).run()
    assert float(lat.generator.scale_factor) != 1.0  # calibrated on the training latents
    z = lat.synthesize(torch.zeros(1, 1, 16, 16, dtype=torch.long), num_inference_steps=2, eta=0.0)
    assert z.images.shape == (1, 1, 16, 16) and z.images.min() >= 0 and z.images.max() <= 1
    with pytest.raises(ValueError, match="pixel space"):
        ad.autoencoder_trainer(target, 1, tmp_path / "no")


def test_pairs_files_and_split_roles(tmp_path):
    root = adaptdiff_data_dir(None, tmp_path / "ph", num=12, spatial_size=(16, 16))
    roles = {
        r: adaptdiff_split(root, r, test_fraction=0.25)
        for r in ("source_train", "source_val", "target_train", "target_test")
    }
    groups = {r: {it["group"] for it in v} for r, v in roles.items()}
    for a, ga in groups.items():
        for b, gb in groups.items():
            assert a == b or not (ga & gb), (a, b)  # one anatomy, one role
    assert all("label" not in it for it in roles["target_train"])
    items = load_pairs(roles["source_train"])
    assert items[0]["image"].shape == (1, 16, 16) and 0 <= items[0]["image"].min() and items[0]["image"].max() <= 1
    imgs, labs = torch.stack([i["image"] for i in items]), torch.stack([i["label"] for i in items])
    write_pairs(imgs, labs, [i["id"] for i in items], tmp_path / "pairs")
    back = load_pair_folder(tmp_path / "pairs")
    assert torch.equal(torch.stack([b["label"] for b in back]), labs)
    assert (torch.stack([b["image"] for b in back]) - imgs).abs().max() < 1 / 255 + 1e-6
    with pytest.raises(ValueError, match="2-class masks|holds 1-class"):
        load_pair_folder(tmp_path / "pairs", num_classes=2)
    with pytest.raises(FileNotFoundError, match="synthesize.json"):
        load_pair_folder(tmp_path / "nothing")
    with pytest.raises(FileNotFoundError, match="source/images"):
        adaptdiff_data_dir(tmp_path, None)
