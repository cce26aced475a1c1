"""Generic segmentation engine: UNet checkpoints, label checks, the Dice + CE trainer and the evaluation."""

from __future__ import annotations

import pytest
import torch

from monai_genaug.engines import TrainingOptions
from monai_genaug.engines.segmentation import (
    build_segmenter,
    create_segmentation_trainer,
    evaluate_segmentation,
    load_segmenter,
    save_segmenter,
    segmenter_config,
    segmenter_divisor,
)
from monai_genaug.utils.labels import check_label_map


def _toy_set(n=8, size=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    items = []
    for _ in range(n):
        lab = torch.zeros(1, size, size, dtype=torch.long)
        r, c = torch.randint(2, size - 8, (2,), generator=g).tolist()
        lab[:, r : r + 6, c : c + 6] = 1
        img = 0.2 + 0.6 * lab.float() + 0.05 * torch.randn(1, size, size, generator=g)
        items.append({"image": img, "label": lab, "case": f"c{len(items) % 2}"})
    return items


def test_check_label_map_errors():
    ok = torch.tensor([[[[0, 1], [1, 0]]]])
    assert check_label_map(ok.float(), 1).dtype == torch.long
    with pytest.raises(ValueError, match="binary"):
        check_label_map(ok * 255, 1)
    with pytest.raises(ValueError, match="non-integer"):
        check_label_map(ok.float() * 0.5, 1)
    with pytest.raises(ValueError, match="outside the declared labels 0..2"):
        check_label_map(ok * 3, 2)
    with pytest.raises(ValueError, match=r"\(B, 1"):
        check_label_map(torch.zeros(1, 2, 4, 4), 1)
    with pytest.raises(TypeError):
        check_label_map([[0, 1]], 1)


def test_config_checkpoint_roundtrip(tmp_path):
    with pytest.raises(ValueError, match="strides"):
        segmenter_config(channels=(8, 16), strides=(2, 2))
    net = build_segmenter(segmenter_config(3, 2, 2, channels=(4, 8), num_res_units=0))
    assert segmenter_divisor(net) == 2
    out = net(torch.randn(1, 2, 8, 8, 8))
    assert out.shape == (1, 3, 8, 8, 8)
    path = save_segmenter(net, tmp_path / "seg.pt", extra={"note": "x"})
    back = load_segmenter(path)
    assert back.extra == {"note": "x"} and back.segmenter_config == net.segmenter_config
    for a, b in zip(net.state_dict().values(), back.state_dict().values()):
        assert torch.equal(a, b)
    with pytest.raises(FileNotFoundError, match="written by: make it"):
        load_segmenter(tmp_path / "missing.pt", made_by="make it")


def test_trainer_learns_and_saves(tmp_path):
    torch.manual_seed(0)
    items = _toy_set()
    loader = torch.utils.data.DataLoader(items, batch_size=4, shuffle=True, generator=torch.Generator().manual_seed(0))
    net = build_segmenter(segmenter_config(2, 1, 1, channels=(8, 16), num_res_units=1))
    before = evaluate_segmentation(net, torch.utils.data.DataLoader(items, batch_size=8), group_key="case")
    trainer = create_segmentation_trainer(
        net, loader, 15, tmp_path, lr=1e-2, lr_step_size=10, val_loader=loader,
        options=TrainingOptions(val_interval=100),
    )
    losses = []
    trainer.add_event_handler(
        __import__("ignite").engine.Events.EPOCH_COMPLETED, lambda e: losses.append(e.state.metrics["epoch_loss"])
    )
    trainer.run()
    assert losses[-1] < losses[0]
    assert trainer.handles.model_path.is_file()  # validation never ran (interval > epochs): the final model is written
    after = evaluate_segmentation(
        load_segmenter(trainer.handles.model_path), torch.utils.data.DataLoader(items, batch_size=8), group_key="case"
    )
    assert after["mean_dice"] > max(0.6, before["mean_dice"])
    assert set(after["group_dice"]) == {"c0", "c1"} and 0 <= after["global_dice"] <= 1
    bad = [{"image": it["image"], "label": it["label"] * 255} for it in items]
    trainer2 = create_segmentation_trainer(
        build_segmenter(segmenter_config(2, 1, 1, channels=(8, 16))),
        torch.utils.data.DataLoader(bad, batch_size=4),
        1,
        tmp_path / "bad",
    )
    with pytest.raises(ValueError, match="binary"):
        trainer2.run()
