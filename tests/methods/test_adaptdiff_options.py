"""AdaptDiff options of issue #19: area-matched pseudo-labels, L1 diffusion loss, SPADE width, named samplers, spatial
fine-tune augmentation, and the two-data-set (DRIVE -> CHASE_DB1) folder layout of the bundles."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from monai_genaug.methods.adaptdiff import (
    SAMPLERS,
    AdaptDiff,
    adaptdiff_data_dir,
    adaptdiff_generator_config,
    adaptdiff_split,
    finetune_augmentation,
    make_loader,
)
from monai_genaug.transforms import area_matched_threshold

TINY_UNET = {"channels": [8, 16], "norm_num_groups": 4, "spade_intermediate_channels": 8}


class _Ramp(nn.Module):
    """A fake segmenter whose foreground probability is the image intensity itself."""

    segmenter_config = {"spatial_dims": 2, "in_channels": 1, "num_classes": 1}

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.ones(1))

    def forward(self, x):
        p = x[:, :1].clamp(1e-4, 1 - 1e-4)
        return torch.cat([torch.zeros_like(p), torch.log(p / (1 - p))], dim=1)


def test_area_matched_threshold():
    probs = torch.linspace(0, 1, 1001).view(1, 1, 7, 143)
    t = area_matched_threshold(probs, 0.1)
    assert float((probs > t).float().mean()) == pytest.approx(0.1, abs=2e-3)
    region = torch.zeros_like(probs, dtype=torch.bool)
    region[..., :50] = True  # only the low probabilities count
    t_region = area_matched_threshold(probs, 0.1, region)
    assert t_region < t and float((probs[region] > t_region).float().mean()) == pytest.approx(0.1, abs=1e-2)
    with pytest.raises(ValueError, match="area_fraction"):
        area_matched_threshold(probs, 1.5)
    with pytest.raises(ValueError, match="shape"):
        area_matched_threshold(probs, 0.1, region[..., :10])


def test_pseudo_label_area_matching_inside_a_region():
    with pytest.raises(ValueError, match="segmenter_config"):
        AdaptDiff(nn.Conv2d(1, 2, 1), None)
    ad = AdaptDiff(_Ramp(), None)
    g = torch.Generator().manual_seed(0)
    images = torch.rand(4, 1, 16, 16, generator=g)
    region = torch.zeros(4, 1, 16, 16, dtype=torch.bool)
    region[..., 2:14, 2:14] = True
    items = [{"image": images[i], "fov": region[i], "id": f"t{i}"} for i in range(4)]
    plain = ad.pseudo_label(items, threshold=0.5)
    assert float(torch.stack([p["label"] for p in plain]).float().mean()) == pytest.approx(0.5, abs=0.06)
    pairs = ad.pseudo_label(items, area_fraction=0.1, region_key="fov")
    labels = torch.stack([p["label"] for p in pairs])
    assert ad.pseudo_threshold > 0.8  # calibrated, not the argmax
    assert float(labels[region].float().mean()) == pytest.approx(0.1, abs=0.02)
    assert int(labels[~region].sum()) == 0  # background outside the region


def test_diffusion_loss_spade_width_and_samplers(tmp_path):
    cfg = adaptdiff_generator_config("tiny", unet=TINY_UNET, spade_channels=24)
    assert cfg["unet"]["spade_intermediate_channels"] == 24
    assert adaptdiff_generator_config("tiny", unet=TINY_UNET)["unet"]["spade_intermediate_channels"] == 8
    with pytest.raises(ValueError, match="spade_channels"):
        adaptdiff_generator_config("tiny", spade_channels=0)
    ad = AdaptDiff.from_preset("tiny", segmenter_channels=(4, 8), generator_kwargs={"unet": TINY_UNET})
    seg = torch.zeros(4, 1, 8, 8, dtype=torch.long)
    seg[:, :, 2:6, 3:5] = 1
    items = [{"image": torch.rand(1, 8, 8), "label": seg[i]} for i in range(4)]
    loader = ad.diffusion_loader(items, batch_size=2)
    l1 = ad.diffusion_trainer(loader, 1, tmp_path / "l1", loss="l1", ema_decay=None)
    assert isinstance(l1.loss_function, nn.L1Loss)
    assert isinstance(ad.diffusion_trainer(loader, 1, tmp_path / "mse", ema_decay=None).loss_function, nn.MSELoss)
    with pytest.raises(ValueError, match="loss must be one of"):
        ad.diffusion_trainer(loader, 1, tmp_path / "bad", loss="huber")
    assert SAMPLERS["ddim50"] == {"num_inference_steps": 50, "eta": 0.0}
    named = ad.synthesize(seg[:2], sampler="ddim50", seed=3)
    explicit = ad.synthesize(seg[:2], num_inference_steps=50, eta=0.0, seed=3)
    other = ad.synthesize(seg[:2], num_inference_steps=10, eta=0.0, seed=3)
    assert torch.equal(named.images, explicit.images) and not torch.equal(named.images, other.images)
    with pytest.raises(ValueError, match="sampler must be one of"):
        ad.synthesize(seg[:1], sampler="euler")


def test_finetune_augmentation_moves_image_and_label_together():
    label = torch.zeros(1, 24, 24, dtype=torch.long)
    label[:, 4:10, 3:20] = 1
    item = {"image": label.float() * 0.8 + 0.1, "label": label}
    aug = finetune_augmentation()
    moved = 0
    for seed in range(6):
        out = aug.set_random_state(seed)(dict(item))
        lab = torch.as_tensor(out["label"])
        moved += int(not torch.equal(lab, label))
        inside, outside = out["image"][lab.bool()].mean(), out["image"][~lab.bool()].mean()
        assert inside > outside + 0.3  # the label still marks the bright structure after the spatial change
    assert moved >= 3  # the spatial part does change the geometry
    batch = next(iter(make_loader([item] * 4, finetune_augmentation(), 4, seed=0)))
    assert batch["image"].shape == (4, 1, 24, 24) and batch["label"].shape == (4, 1, 24, 24)


def _write_fundus_sets(root: Path) -> tuple[Path, Path]:
    rng = np.random.default_rng(0)
    src, tgt = root / "drive", root / "chase"
    for folder, ids in ((src, ["21_training", "22_training", "23_training"]),
                        (tgt, [f"Image_{c:02d}{e}" for c in (1, 2, 3, 4, 5) for e in "LR"])):
        for sub in ("images", "masks"):
            (folder / sub).mkdir(parents=True)
        for sid in ids:
            Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(folder / "images" / f"{sid}.png")
            mask = np.zeros((16, 16), np.uint8)
            mask[4:12, 7:9] = 255
            Image.fromarray(mask).save(folder / "masks" / f"{sid}.png")
    (src / "fov").mkdir()  # DRIVE's extra folders are ignored
    return src, tgt


def test_source_and_target_dirs_keep_a_childs_eyes_together(tmp_path):
    src, tgt = _write_fundus_sets(tmp_path)
    root = adaptdiff_data_dir(None, tmp_path / "out" / "phantoms", source_dir=src, target_dir=tgt)
    assert Path(root) == tmp_path / "out" / "data_layout" and (Path(root) / "source").resolve() == src.resolve()
    assert adaptdiff_data_dir(None, tmp_path / "out" / "phantoms", source_dir=src, target_dir=tgt) == root  # reused
    test = adaptdiff_split(root, "target_test", test_fraction=0.4)
    train = adaptdiff_split(root, "target_train", test_fraction=0.4)
    assert len(adaptdiff_split(root, "source_train", val_fraction=0.0)) == 3
    test_children = {it["group"] for it in test}
    assert {it["group"] for it in train}.isdisjoint(test_children)
    assert len(test) == 2 * len(test_children) and all(g.startswith("Image_0") for g in test_children)
    with pytest.raises(ValueError, match="together"):
        adaptdiff_data_dir(None, tmp_path / "ph", source_dir=src)
    with pytest.raises(FileNotFoundError, match="masks"):
        adaptdiff_data_dir(None, tmp_path / "ph", source_dir=tgt / "images", target_dir=tgt)


def test_bundle_accepts_source_and_target_dirs(tmp_path):
    from monai.bundle import ConfigParser

    src, tgt = _write_fundus_sets(tmp_path)
    configs = Path(__file__).resolve().parents[2] / "bundles" / "adaptdiff" / "configs"
    parser = ConfigParser()
    parser.read_config(str(configs / "train_source_segmenter.json"))
    parser.update({"bundle_root": str(tmp_path / "bundle"), "source_dir": str(src), "target_dir": str(tgt),
                   "spatial_size": [16, 16], "val_fraction": 0.34})
    items = parser.get_parsed_content("train#items")
    assert len(items) == 2 and items[0]["image"].shape == (1, 16, 16)
    assert (tmp_path / "bundle" / "outputs" / "data_layout" / "target").is_symlink()
