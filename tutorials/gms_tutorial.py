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
"""GMS from Python: segmentation in the latent space of a frozen autoencoder (2D binary, then 3D multi-class).

Huo et al., "Generative Medical Segmentation", arXiv:2403.18198. Run from the repository root::

    python tutorials/gms_tutorial.py --quick          # < 2 minutes on CPU (tiny nets, 32 px, few epochs)
    python tutorials/gms_tutorial.py                  # CPU demo sizes (64 px, "small" preset), ~15-30 minutes

Steps:
  1. phantom data (or your own images/ + masks/ folder with --dataset_dir) and a seeded train / validation / test split;
  2. the tokenizer: a MONAI AutoencoderKL trained on images AND masks, and the mask reconstruction Dice it reaches
     (the upper bound of GMS);
  3. the GMS mapping network trained with MONAI's SupervisedTrainer (latent MSE + Dice with deep supervision,
     posterior-noise augmentation, cached latents, AdamW + warm-up/cosine, best model chosen on the validation split);
  4. test-split metrics with MONAI's DiceMetric through an ordinary MONAI inferer;
  5. multi-class GMS in 3D: one latent per class, decoded to one label per voxel.

Outputs (``--output_dir``, default ``tutorials/outputs/gms``): the trained files, a grid PNG and ``summary.json``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from monai.data import DataLoader, Dataset
from monai.inferers import SimpleInferer, SlidingWindowInferer
from monai.metrics import DiceMetric
from monai.networks.utils import one_hot
from monai.utils import set_determinism

from monai_genaug.engines import TrainingOptions
from monai_genaug.methods.gms import (
    create_gms_autoencoder_trainer,
    create_gms_trainer,
    gms_data_dir,
    gms_datalist,
    gms_transforms,
)
from monai_genaug.methods.gms import (
    GMSLoss,
    GMSSegmenter,
    MaskReconstructor,
    gms_config,
)
from monai_genaug.utils.images import save_image_grid
from monai_genaug.utils.options import add_runtime_arguments, apply_runtime_arguments


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="tiny settings, < 2 minutes on CPU")
    p.add_argument("--output_dir", default="tutorials/outputs/gms", help="where files are written")
    p.add_argument("--dataset_dir", default=None, help="an images/ + masks/ folder (e.g. Kvasir-SEG); default phantoms")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--seed", type=int, default=0)
    return add_runtime_arguments(p).parse_args(argv)


def dice_on(loader, network, num_classes: int, inferer, device) -> float:
    """Mean foreground Dice of ``argmax(network(image))`` against the labels of ``loader``."""
    metric = DiceMetric(include_background=False)
    network.eval()
    with torch.no_grad():
        for batch in loader:
            probs = inferer(batch["image"].to(device), network)
            pred = one_hot(probs.argmax(1, keepdim=True), num_classes + 1)
            metric(pred, one_hot(batch["label"].to(device).long(), num_classes + 1))
    return float(metric.aggregate().nanmean())


def main(argv=None) -> dict:
    args = parse_args(argv)
    apply_runtime_arguments(args)
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    set_determinism(seed=args.seed)
    t0 = time.time()
    quick = args.quick
    size = (32, 32) if quick else (64, 64)
    preset = "tiny" if quick else "small"
    summary: dict = {"quick": quick, "spatial_size": list(size), "preset": preset}

    # 1. data --------------------------------------------------------------------------------------------------
    # Without --dataset_dir, RGB endoscopy phantoms (one polyp each) are written once as images/ + masks/ PNGs,
    # exactly the Kvasir-SEG layout; the split is seeded and never changes (checkpoints are chosen on validation).
    num = 40 if quick else 160
    data = gms_data_dir(args.dataset_dir, out / "phantoms", kind="endoscopy", num=num, spatial_size=size, seed=args.seed)
    lists = {s: gms_datalist(data, s, seed=args.seed, max_items=48 if quick else None) for s in ("training", "validation", "test")}
    print({k: len(v) for k, v in lists.items()}, "images in", data)
    train_xf = gms_transforms(2, size, num_classes=1, image_channels=3, augment=not quick)
    eval_xf = gms_transforms(2, size, num_classes=1, image_channels=3)
    g = torch.Generator().manual_seed(args.seed)
    train_loader = DataLoader(Dataset(lists["training"], train_xf), batch_size=8, shuffle=True, generator=g)
    val_loader = DataLoader(Dataset(lists["validation"], eval_xf), batch_size=8)
    test_loader = DataLoader(Dataset(lists["test"], eval_xf), batch_size=8)

    # 2. the frozen tokenizer ----------------------------------------------------------------------------------------
    # One MONAI AutoencoderKL must reconstruct images *and* masks (a mask is encoded as an image: 0 outside, 1
    # inside, repeated over the RGB channels). The GMS trainer wraps the package's autoencoder trainer.
    config = gms_config(preset, spatial_dims=2, image_channels=3, num_classes=1)
    segmenter = GMSSegmenter.from_config(config)
    ae_trainer = create_gms_autoencoder_trainer(
        segmenter.autoencoder, train_loader, max_epochs=4 if quick else 40, output_dir=out / "autoencoder",
        num_classes=1, config=config, val_loader=val_loader, lr=2e-3 if quick else 1e-3, device=args.device,
        options=TrainingOptions(seed=args.seed, resume=False),
    )
    ae_trainer.run()
    upper = dice_on(test_loader_labels(lists["test"], eval_xf), MaskReconstructor(segmenter.autoencoder, 1), 1,
                    SimpleInferer(), args.device)
    summary["mask_reconstruction_dice_test"] = upper
    best_ae = ae_trainer.handles.best_saver.best
    print(f"tokenizer: best validation mask-reconstruction Dice {best_ae:.3f}, test {upper:.3f}")

    # 3. the mapping network -----------------------------------------------------------------------------------------
    # Only the mapping network is trained (autoencoder frozen). GMSPrepareBatch encodes image and mask once per
    # distinct input (content-addressed cache) and adds posterior noise to half of the batches.
    trainable = sum(p.numel() for p in segmenter.trainable_parameters())
    trainer = create_gms_trainer(
        segmenter, train_loader, max_epochs=6 if quick else 60, output_dir=out / "gms", val_loader=val_loader,
        loss=GMSLoss(w_rec=1.0, w_dice=1.0), lr=2e-3, warmup_epochs=1 if quick else 5, device=args.device,
        options=TrainingOptions(seed=args.seed, resume=False),
    )
    trainer.run()
    best_saver = trainer.handles.best_saver
    print(f"mapping network: {trainable} trainable parameters, best validation Dice {best_saver.best:.3f} "
          f"(epoch {best_saver.best_epoch}), latent cache {trainer.handles.prepare_batch.cache}")
    summary.update(trainable_parameters=trainable, best_val_dice=best_saver.best)

    # 4. test metrics through any MONAI inferer ----------------------------------------------------------------------
    # The saved model is a plain network: images in, class probabilities (B, K + 1, H, W) out.
    best = GMSSegmenter.load(trainer.handles.model_path).to(args.device)
    test_dice = dice_on(test_loader, best, 1, SimpleInferer(), args.device)
    window = SlidingWindowInferer(roi_size=size, sw_batch_size=4, overlap=0.25)
    test_dice_sw = dice_on(test_loader, best, 1, window, args.device)
    summary.update(test_dice=test_dice, test_dice_sliding_window=test_dice_sw)
    print(f"test Dice {test_dice:.3f} (sliding window {test_dice_sw:.3f}); upper bound {upper:.3f}")
    batch = next(iter(test_loader))
    with torch.no_grad():
        pred = best.predict_labels(batch["image"][:4].to(args.device)).cpu().float()
    grid = torch.cat([batch["image"][:4], batch["label"][:4].expand(-1, 3, -1, -1), pred.expand(-1, 3, -1, -1)])
    save_image_grid(grid, out / "gms_test_grid.png", nrow=4)

    # 5. multi-class 3D: one latent per class ------------------------------------------------------------------------
    # MRI phantoms with three nested tumour classes. The mapping network outputs 3 x latent channels; each class
    # latent is decoded on its own and the per-class soft masks become probabilities with one label per voxel.
    vol = (16, 16, 16) if quick else (32, 32, 32)
    mri = gms_data_dir(None, out / "phantoms", kind="mri", num=8 if quick else 30, spatial_size=vol, num_classes=3)
    xf3 = gms_transforms(3, vol, num_classes=3, image_channels=2)
    l3 = {s: gms_datalist(mri, s, seed=args.seed) for s in ("training", "validation")}
    tl3 = DataLoader(Dataset(l3["training"], xf3), batch_size=2, shuffle=True, generator=torch.Generator().manual_seed(1))
    vl3 = DataLoader(Dataset(l3["validation"], xf3), batch_size=2)
    cfg3 = gms_config(preset, spatial_dims=3, image_channels=2, num_classes=3, use_flash_attention=True)
    seg3 = GMSSegmenter.from_config(cfg3)
    create_gms_autoencoder_trainer(seg3.autoencoder, tl3, 3 if quick else 30, out / "autoencoder_3d", 3, cfg3,
                                   val_loader=vl3, lr=2e-3, device=args.device, grid=False,
                                   options=TrainingOptions(resume=False)).run()
    tr3 = create_gms_trainer(seg3, tl3, 3 if quick else 40, out / "gms_3d", val_loader=vl3, warmup_epochs=1,
                             loss=GMSLoss(dice_levels=("out",)), device=args.device,
                             options=TrainingOptions(resume=False))
    tr3.run()
    case = next(iter(vl3))
    with torch.no_grad():
        probs = seg3(case["image"].to(args.device))
    labels = probs.argmax(1)
    assert probs.shape[1] == 4 and torch.allclose(probs.sum(1), torch.ones_like(probs[:, 0]), atol=1e-4)
    summary.update(multiclass_probabilities_shape=list(probs.shape), multiclass_val_dice=tr3.handles.best_saver.best,
                   labels_present=sorted(labels.unique().tolist()))
    print(f"3D multi-class: probabilities {tuple(probs.shape)}, validation Dice {tr3.handles.best_saver.best:.3f}")

    summary["seconds"] = round(time.time() - t0, 1)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))
    return summary


def test_loader_labels(items, transform) -> DataLoader:
    """A loader whose "image" is the label map: feeds MaskReconstructor (labels in, reconstructed probabilities out)."""

    class _LabelAsImage(Dataset):
        def __getitem__(self, index):
            item = super().__getitem__(index)
            return {"image": item["label"], "label": item["label"]}

    return DataLoader(_LabelAsImage(items, transform), batch_size=8)


if __name__ == "__main__":
    main()
