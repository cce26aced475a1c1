"""GMS (#17): the latent sliding window for volumes larger than the training size, and a Stable Diffusion VAE converted
with ``sd_import`` as the frozen tokenizer, end to end (a tiny random diffusers AutoencoderKL, no download)."""

from __future__ import annotations

import pytest
import torch

from monai_genaug.methods.gms import (
    GMSLoss,
    GMSSegmenter,
    build_gms_segmenter,
    create_gms_autoencoder_trainer,
    create_gms_trainer,
    gms_config,
    gms_datalist,
    load_gms_segmenter,
)


def _seg3d(seed: int = 0) -> GMSSegmenter:
    torch.manual_seed(seed)
    return GMSSegmenter.from_config(gms_config("tiny", 3, 1, 2)).eval()


def test_latent_window_volume_larger_than_training_size():
    seg = _seg3d()
    train = torch.rand(1, 1, 8, 8, 8)  # "training size": latent 4^3 (tiny preset: x2 down-sampling)
    big = torch.rand(1, 1, 16, 12, 8)
    with torch.no_grad():
        whole_small = seg(train)
        whole_big = seg(big)
        seg.set_latent_window(4, overlap=0.5)
        # where both fit (the latent is no larger than the window) the result is the whole-volume one, exactly
        torch.testing.assert_close(seg(train), whole_small, rtol=0, atol=0)
        windowed = seg(big)
        labels = seg.predict_labels(big)
    assert windowed.shape == (1, 3, 16, 12, 8)
    torch.testing.assert_close(windowed.sum(1), torch.ones(1, 16, 12, 8))
    assert labels.shape == (1, 1, 16, 12, 8) and int(labels.max()) <= 2
    # the mapping network really ran window by window: its self-attention sees one window, not the whole latent
    assert not torch.allclose(windowed, whole_big)
    # a window covering the whole latent gives the whole-volume result again
    seg.set_latent_window((8, 6, 4))
    with torch.no_grad():
        torch.testing.assert_close(seg(big), whole_big, rtol=0, atol=0)


def test_latent_window_bad_input_and_loading(tmp_path):
    seg = _seg3d()
    with pytest.raises(ValueError, match="latent_roi_size"):
        seg.set_latent_window((4, 4))
    with pytest.raises(ValueError, match="latent_roi_size"):
        seg.set_latent_window(0)
    with pytest.raises(ValueError, match="latent_overlap"):
        seg.set_latent_window(4, overlap=1.0)
    seg.save(tmp_path / "m.pt")
    loaded = load_gms_segmenter(tmp_path / "m.pt", latent_roi_size=[4, 4, 4])
    assert loaded.latent_roi_size == (4, 4, 4)
    assert load_gms_segmenter(tmp_path / "m.pt").latent_roi_size is None


def test_tokenizer_trained_on_unlabelled_images(tmp_path):
    """use_masks=False: the tokenizer trains on image-only batches (every image available, no labels)."""
    torch.manual_seed(0)
    config = gms_config("tiny", 2, 3, 1)
    seg = GMSSegmenter.from_config(config)
    unlabelled = [{"image": torch.rand(3, 16, 16)} for _ in range(4)]
    labelled = [{"image": torch.rand(3, 16, 16), "label": (torch.rand(1, 16, 16) > 0.5).float()} for _ in range(2)]
    before = [p.detach().clone() for p in seg.autoencoder.parameters()]
    trainer = create_gms_autoencoder_trainer(
        seg.autoencoder, torch.utils.data.DataLoader(unlabelled, batch_size=2), 1, tmp_path, 1, config,
        val_loader=torch.utils.data.DataLoader(labelled, batch_size=2), use_masks=False, grid=True,
    )
    trainer.run()
    assert trainer.handles.model_path.is_file()
    assert 0.0 <= trainer.handles.best_saver.best <= 1.0
    assert any(not torch.equal(a, b) for a, b in zip(before, seg.autoencoder.parameters()))
    # a loader without labels and use_masks=True fails with a message naming the missing key
    with pytest.raises(ValueError, match="'label'"):
        create_gms_autoencoder_trainer(seg.autoencoder, torch.utils.data.DataLoader(unlabelled, batch_size=2), 1,
                                       tmp_path / "b", 1, config, grid=True)


def test_sd_vae_tokenizer_end_to_end(tmp_path):
    """A diffusers VAE -> ``sd_import --components vae`` -> GMS tokenizer (bundle ``pretrained_autoencoder``) -> train."""
    diffusers = pytest.importorskip("diffusers")
    pytest.importorskip("safetensors")
    from monai_genaug.sd_import import main

    torch.manual_seed(0)
    vae = diffusers.AutoencoderKL(
        block_out_channels=(8, 16), layers_per_block=1, latent_channels=4, norm_num_groups=4,
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
    ).eval()
    vae.save_pretrained(str(tmp_path / "vae"))
    out = tmp_path / "converted"
    assert main(["--source", str(tmp_path / "vae"), "--out", str(out), "--components", "vae",
                 "--outputs", "autoencoder"]) == 0
    seg = build_gms_segmenter(gms_config("tiny", 2, 3, 1), autoencoder_path=out / "autoencoder.pt")
    assert seg.factor == 2 and seg.latent_channels == 4
    images = torch.rand(2, 3, 16, 16)
    with torch.no_grad():  # the frozen tokenizer is the diffusers VAE, converted exactly
        torch.testing.assert_close(seg.image_posterior(images)[0], vae.encode(images).latent_dist.mean, atol=1e-4,
                                   rtol=0)
    labels = torch.zeros(2, 1, 16, 16)
    labels[0, :, 3:10, 2:12] = 1
    labels[1, :, 6:15, 5:13] = 1
    # the mapping network trains on the converted tokenizer with the package's trainer (the bundle's stage 2)
    from ignite.engine import Events
    from monai_genaug.engines import TrainingOptions

    loader = torch.utils.data.DataLoader([{"image": i, "label": l} for i, l in zip(images, labels)], batch_size=2)
    trainer = create_gms_trainer(seg, loader, 20, tmp_path / "gms", loss=GMSLoss(dice_levels=("out",)), lr=5e-3,
                                 warmup_epochs=0, noise_prob=0.0, options=TrainingOptions(resume=False))
    losses = []
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: losses.append(e.state.output["loss"].item()))
    trainer.run()
    assert len(losses) == 20 and losses[-1] < 0.8 * losses[0], losses
    assert seg.scale_factor != 1.0  # estimated from the training images on the SD tokenizer
    assert all(p.grad is None for p in seg.autoencoder.parameters())
    seg.save(tmp_path / "gms.pt")
    again = load_gms_segmenter(tmp_path / "gms.pt")
    with torch.no_grad():
        torch.testing.assert_close(again.eval()(images), seg.eval()(images))
    assert again(images).shape == (2, 2, 16, 16)


def test_tokenizer_dataset_all_images_plus_training_masks(tmp_path):
    """Bundle option ``tokenizer_images: "all"``: every image (no label) + the training split's masks, image-only."""
    from monai_genaug.methods.gms import gms_data_dir, gms_tokenizer_dataset, gms_tokenizer_loader, gms_transforms

    root = gms_data_dir(None, tmp_path / "ph", kind="endoscopy", num=10, spatial_size=(16, 16), num_classes=1)
    transform = gms_transforms(2, (16, 16), num_classes=1, image_channels=3)
    ds = gms_tokenizer_dataset(root, transform, num_classes=1, image_channels=3)
    n_train = len(gms_datalist(root, "training"))
    assert len(ds) == 10 + n_train
    first, last = ds[0], ds[len(ds) - 1]
    assert set(first) == {"image"} and first["image"].shape == (3, 16, 16)
    assert last["image"].shape == (3, 16, 16) and set(torch.unique(last["image"]).tolist()) <= {0.0, 1.0}
    train_loader = object()
    assert gms_tokenizer_loader(train_loader, "training", root, transform, 1, 3, 4) is train_loader
    batch = next(iter(gms_tokenizer_loader(train_loader, "all", root, transform, 1, 3, 4)))
    assert batch["image"].shape == (4, 3, 16, 16)
    with pytest.raises(ValueError, match="tokenizer_images"):
        gms_tokenizer_loader(train_loader, "test", root, transform, 1, 3, 4)
