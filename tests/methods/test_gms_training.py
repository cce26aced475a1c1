"""GMS engines: tokenizer + mapping trainers end to end (validation split, best model, MLflow), data helpers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import DataLoader, Dataset, MetaTensor

from monai_genaug.engines import TrainingOptions
from monai_genaug.methods.gms import (
    create_gms_autoencoder_trainer,
    create_gms_trainer,
    gms_data_dir,
    gms_datalist,
    gms_transforms,
    label_map_saver,
)
from monai_genaug.methods.gms import (
    GMSSegmenter,
    build_gms_segmenter,
    gms_config,
    load_autoencoder,
)


def test_data_helpers_2d(tmp_path):
    folder = gms_data_dir(None, tmp_path, kind="endoscopy", num=10, spatial_size=(24, 20))
    stamp = (tmp_path / folder).stat().st_mtime_ns
    assert gms_data_dir("", tmp_path, kind="endoscopy", num=10, spatial_size=(24, 20)) == folder  # reused
    assert (tmp_path / folder).stat().st_mtime_ns == stamp
    splits = {s: gms_datalist(folder, s, val_fraction=0.2, test_fraction=0.2) for s in ("training", "validation", "test")}
    ids = [{e["id"] for e in v} for v in splits.values()]
    assert sum(map(len, ids)) == 10 and not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2])
    assert len(gms_datalist(folder, "training", max_items=2)) == 2
    item = gms_transforms(2, (16, 16), num_classes=1, image_channels=3)(splits["training"][0])
    assert item["image"].shape == (3, 16, 16) and set(item["label"].unique().tolist()) <= {0.0, 1.0}
    native = gms_transforms(2, (16, 16), resize_label=False)(splits["training"][0])
    assert native["label"].shape == (1, 24, 20)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        gms_data_dir(tmp_path / "nope")
    (tmp_path / folder / "masks" / "phantom_0003.png").unlink()  # an image without its mask
    with pytest.raises(ValueError, match="phantom_0003.png"):
        gms_datalist(folder, "training")
    with pytest.raises(ValueError, match="layout"):
        gms_datalist(folder, layout="flat")
    with pytest.raises(ValueError, match="spatial_size"):
        gms_transforms(2, (16, 16, 16))


def test_data_helpers_3d(tmp_path):
    folder = gms_data_dir(None, tmp_path, kind="mri", num=4, spatial_size=(16, 16, 16), num_classes=2)
    items = gms_datalist(folder, "training", val_fraction=0.25, test_fraction=0.25)
    assert {"flair", "t1c", "label", "case_id"} <= set(items[0])
    multi = gms_transforms(3, (8, 8, 8), num_classes=2, image_channels=2)(items[0])
    assert multi["image"].shape == (2, 8, 8, 8) and set(multi["label"].unique().tolist()) <= {0.0, 1.0, 2.0}
    whole = gms_transforms(3, (8, 8, 8), num_classes=1, image_channels=2)(items[0])
    assert set(whole["label"].unique().tolist()) == {0.0, 1.0}
    with pytest.raises(ValueError, match="one key per channel"):
        gms_transforms(3, (8, 8, 8), image_channels=3)


def test_label_map_saver_keeps_orientation(tmp_path):
    from PIL import Image

    label = torch.zeros(1, 12, 8)
    label[0, :3, :] = 1  # top rows
    meta = {"filename_or_obj": str(tmp_path / "case.png"), "spatial_shape": np.array([12, 8])}
    label_map_saver(tmp_path, spatial_dims=2, num_classes=1)({"pred": MetaTensor(label, meta=meta)})
    png = np.asarray(Image.open(tmp_path / "case_seg.png"))
    assert png.shape == (12, 8)
    assert (png[:3] == 255).all() and (png[3:] == 0).all()


def test_segmentation_grid_enlarges_small_tiles_and_colours_classes(tmp_path):
    from types import SimpleNamespace

    from PIL import Image

    from monai_genaug.methods.gms import SegmentationGridSaver

    label = torch.zeros(1, 16, 16, 16)
    label[0, :4, :, 8] = 2  # class 2 (green) in the top rows of the middle slice
    item = {"image": torch.rand(2, 16, 16, 16), "label": label, "pred_net": torch.zeros(1, 16, 16, 16)}
    saver = SegmentationGridSaver(tmp_path, num_images=1, min_tile_size=64)
    saver.collect(SimpleNamespace(state=SimpleNamespace(batch=[item], output=[{}])))
    png = np.asarray(Image.open(saver.write()))
    tile = png.shape[0] - 4  # one row of tiles, 2 px padding around
    assert tile == 64 and png.shape[1] == 3 * tile + 8
    truth = png[2 : 2 + tile, 4 + tile : 4 + 2 * tile]
    assert (truth[: 4 * 4, :, 1] > 150).all() and (truth[4 * 4 :] == 0).all()
    assert SegmentationGridSaver(tmp_path, min_tile_size=1).min_tile_size == 1

def test_trainers_end_to_end(tmp_path):
    torch.manual_seed(0)
    folder = gms_data_dir(None, tmp_path / "data", kind="grey", num=12, spatial_size=(16, 16))
    xf = gms_transforms(2, (16, 16), num_classes=1, image_channels=1)
    train = Dataset(gms_datalist(folder, "training", val_fraction=0.2, test_fraction=0.2), xf)
    val = Dataset(gms_datalist(folder, "validation", val_fraction=0.2, test_fraction=0.2), xf)
    loader = DataLoader(train, batch_size=4, shuffle=True, generator=torch.Generator().manual_seed(0))
    val_loader = DataLoader(val, batch_size=4)
    cfg = gms_config("tiny", 2, 1, 1)
    seg = GMSSegmenter.from_config(cfg)
    ae_trainer = create_gms_autoencoder_trainer(
        seg.autoencoder, loader, 2, tmp_path / "ae", num_classes=1, config=cfg, val_loader=val_loader
    )
    ae_trainer.run()
    assert ae_trainer.handles.best_saver.best is not None and (tmp_path / "ae" / "autoencoder.pt").is_file()
    assert all(not p.requires_grad for p in seg.autoencoder.parameters())  # frozen again after training
    best_ae, _ = load_autoencoder(tmp_path / "ae" / "autoencoder.pt")
    for a, b in zip(best_ae.state_dict().values(), seg.autoencoder.state_dict().values()):
        torch.testing.assert_close(a, b)  # the best validated weights were loaded back
    assert list((tmp_path / "ae").glob("reconstructions_epoch*.png"))
    reused = build_gms_segmenter(gms_config("tiny", 2, 1, 1), tmp_path / "ae" / "autoencoder.pt")  # skip stage 1
    for a, b in zip(reused.autoencoder.state_dict().values(), seg.autoencoder.state_dict().values()):
        torch.testing.assert_close(a, b)

    ae_before = {k: v.clone() for k, v in seg.autoencoder.state_dict().items()}
    trainer = create_gms_trainer(
        seg, loader, 2, tmp_path / "gms", val_loader=val_loader, warmup_epochs=1,
        options=TrainingOptions(resume=False, tracking=True),
    )
    trainer.run()
    assert float(seg.scale_factor) != 1.0 and trainer.handles.scale_init.value == pytest.approx(float(seg.scale_factor))
    assert trainer.handles.best_saver.best is not None and trainer.handles.model_path.is_file()
    assert (tmp_path / "gms" / "checkpoint_last.pt").is_file() and (tmp_path / "gms" / "mlruns.db").is_file()
    assert trainer.handles.prepare_batch.cache.hits > 0  # un-augmented training data: the 2nd epoch reuses the latents
    for k, v in seg.autoencoder.state_dict().items():
        torch.testing.assert_close(v, ae_before[k])  # the tokenizer stays frozen
    # warm-up then cosine: lr 0 at the first step, back to ~0 at the end
    assert trainer.optimizer.param_groups[0]["lr"] < 2e-3 * 0.2
    loaded = GMSSegmenter.load(trainer.handles.model_path)
    assert loaded(torch.rand(1, 1, 16, 16)).shape == (1, 2, 16, 16)


def test_gms_trainer_on_device(device, tmp_path):
    """The GMS training step on ``device`` (mixed precision on CUDA): loss finite, mapping trained, tokenizer frozen,
    cached latents reused, predictions on the device."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    data = [{"image": torch.rand(1, 16, 16, generator=g), "label": (torch.rand(1, 16, 16, generator=g) > 0.5).float()}
            for _ in range(8)]
    loader = DataLoader(data, batch_size=4, shuffle=False)
    seg = GMSSegmenter.from_config(gms_config("tiny", 2, 1, 1))
    mapping_before = [p.detach().clone() for p in seg.mapping.parameters()]
    ae_before = {k: v.clone() for k, v in seg.autoencoder.state_dict().items()}
    trainer = create_gms_trainer(seg, loader, 2, tmp_path, device=device, warmup_epochs=0,
                                 options=TrainingOptions(amp=device == "cuda", resume=False))
    trainer.run()
    last = trainer.state.output[0] if isinstance(trainer.state.output, list) else trainer.state.output  # decollated
    assert np.isfinite(float(last["loss"]))
    assert next(seg.mapping.parameters()).device.type == device
    assert any(not torch.equal(a.to(b.device), b) for a, b in zip(mapping_before, seg.mapping.parameters()))
    for k, v in seg.autoencoder.state_dict().items():
        torch.testing.assert_close(v.cpu(), ae_before[k])
    assert trainer.handles.prepare_batch.cache.hits > 0
    seg.eval()
    with torch.no_grad():
        probs = seg(torch.rand(2, 1, 16, 16, device=device))
    assert probs.device.type == device and probs.shape == (2, 2, 16, 16)


def test_tokenizer_trains_until_its_validation_mask_dice_stops_improving(tmp_path):
    """``patience``: the tokenizer stage stops once its validation mask Dice has not improved for that many
    validations (lr 0: it never improves after the first), max_epochs being the cap; bad values are refused."""
    torch.manual_seed(0)
    folder = gms_data_dir(None, tmp_path / "data", kind="grey", num=10, spatial_size=(16, 16))
    xf = gms_transforms(2, (16, 16), num_classes=1, image_channels=1)
    train = Dataset(gms_datalist(folder, "training", val_fraction=0.2, test_fraction=0.2), xf)
    val_loader = DataLoader(Dataset(gms_datalist(folder, "validation", val_fraction=0.2, test_fraction=0.2), xf),
                            batch_size=4)
    cfg = gms_config("tiny", 2, 1, 1)
    seg = GMSSegmenter.from_config(cfg)
    trainer = create_gms_autoencoder_trainer(
        seg.autoencoder, DataLoader(train, batch_size=4), 10, tmp_path / "ae", num_classes=1, config=cfg,
        val_loader=val_loader, lr=0.0, grid=False, patience=2, options=TrainingOptions(resume=False),
    )
    trainer.run()
    assert trainer.state.epoch == 3 and trainer.handles.best_saver.best_epoch == 1  # 1 + patience validations
    assert all(not p.requires_grad for p in seg.autoencoder.parameters())
    for bad, loader in ((0, val_loader), (2, None)):
        with pytest.raises(ValueError, match="ae_patience"):
            create_gms_autoencoder_trainer(seg.autoencoder, DataLoader(train, batch_size=4), 2, tmp_path / "x",
                                           num_classes=1, config=cfg, val_loader=loader, patience=bad)
