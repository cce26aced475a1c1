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
"""GMS vs a MONAI UNet on Kvasir-SEG at CPU scale: Dice, IoU, trainable parameters, and the tokenizer's upper bound.

Huo et al., "Generative Medical Segmentation", arXiv:2403.18198. Protocol (every choice is a CLI option):

* data: Kvasir-SEG (``images/ + masks/``), the fixed seeded split of :func:`monai_genaug.methods.gms.gms_datalist`
  (70 / 10 / 20 %, seed 0); a subset of the training and validation splits (``--train_items``, ``--val_items``) to
  fit a CPU budget, the first ``--test_items`` test images; images and masks resized to ``--size`` px;
* GMS: a MONAI AutoencoderKL trained on the training images *and* masks (``--ae_epochs``), frozen; the mapping
  network (``--mapping_channels``; 32 is the paper's 1.56 M) trained with :func:`create_gms_trainer`;
* UNet: ``monai.networks.nets.UNet`` (5 levels, 2 residual units), DiceCE loss, trained with MONAI's
  ``SupervisedTrainer``;
* equal budget: both segmenters get the same epochs, batch size, augmentation (flips, 90-degree rotations),
  AdamW + warm-up / cosine schedule, and pick their checkpoint on the validation split (never the test split);
* metrics on the test split at the network resolution: MONAI ``DiceMetric`` and ``MeanIoU`` (foreground), and the
  Dice of the autoencoder's own mask reconstructions (encode + decode the true masks), the upper bound of GMS.

    python benchmarks/gms_quality.py [--data_dir /path/to/kvasir_seg] [--size 64] [--epochs 15] ...

Writes ``benchmarks/results/gms_quality.json``.
"""

from __future__ import annotations

import argparse
import json
import operator
import platform
import tempfile
import time
from pathlib import Path

import torch
from ignite.metrics import Average
from monai.data import CacheDataset, DataLoader
from monai.engines import SupervisedTrainer
from monai.handlers import LrScheduleHandler, ValidationHandler
from monai.inferers import SimpleInferer
from monai.losses import DiceCELoss
from monai.metrics import DiceMetric, MeanIoU
from monai.networks.nets import UNet
from monai.networks.utils import one_hot
from monai.optimizers import WarmupCosineSchedule
from monai.utils import set_determinism

from monai_genaug.engines import TrainingOptions
from monai_genaug.engines import BestModelSaver, create_dice_evaluator
from monai_genaug.evaluation.results import BenchmarkTimer, environment, write_json_atomic
from monai_genaug.handlers.tracking import loss_from_output
from monai_genaug.methods.gms import create_gms_autoencoder_trainer, create_gms_trainer, gms_datalist, gms_transforms
from monai_genaug.methods.gms import GMSSegmenter, MaskReconstructor, gms_config
from monai_genaug.utils.paths import shared_data_dir

RESULTS = Path(__file__).resolve().parent / "results"


def _params(module: torch.nn.Module, trainable: bool = True) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable)


@torch.no_grad()
def evaluate(network, loader, labels_as_input: bool = False) -> dict[str, float]:
    """Foreground Dice and IoU of argmax predictions over a loader (binary: classes 0/1)."""
    dice, iou = DiceMetric(include_background=False), MeanIoU(include_background=False)
    network.eval()
    for batch in loader:
        x = batch["label"] if labels_as_input else batch["image"]
        pred = one_hot(network(x).argmax(1, keepdim=True), 2)
        truth = one_hot(batch["label"].long(), 2)
        dice(pred, truth)
        iou(pred, truth)
    return {"dice": float(dice.aggregate().nanmean()), "iou": float(iou.aggregate().nanmean())}


def train_unet(train_loader, val_loader, args, work: Path) -> tuple[torch.nn.Module, dict]:
    torch.manual_seed(args.seed)
    unet = UNet(2, 3, 2, channels=(16, 32, 64, 128, 256), strides=(2, 2, 2, 2), num_res_units=2)
    optimizer = torch.optim.AdamW(unet.parameters(), lr=args.unet_lr, weight_decay=0.01)
    steps = len(train_loader)
    scheduler = WarmupCosineSchedule(optimizer, warmup_steps=int(args.warmup_epochs * steps), t_total=steps * args.epochs)
    path = work / "unet_best.pt"
    saver = BestModelSaver(lambda p: torch.save(unet.state_dict(), p), path)
    evaluator = create_dice_evaluator(unet, val_loader, 1, val_handlers=[saver])
    trainer = SupervisedTrainer(
        device=torch.device("cpu"),
        max_epochs=args.epochs,
        train_data_loader=train_loader,
        network=unet,
        optimizer=optimizer,
        loss_function=DiceCELoss(to_onehot_y=True, softmax=True),
        inferer=SimpleInferer(),
        key_train_metric={"train_loss": Average(output_transform=loss_from_output)},
        metric_cmp_fn=operator.lt,
        train_handlers=[LrScheduleHandler(scheduler, print_lr=False, epoch_level=False)],
        decollate=False,
    )
    ValidationHandler(interval=1, validator=evaluator, epoch_level=True).attach(trainer)
    saver.trainer = trainer
    t = time.time()
    trainer.run()
    seconds = time.time() - t
    unet.load_state_dict(torch.load(path, weights_only=True))
    return unet, {"train_seconds": round(seconds, 1), "best_val_dice": saver.best, "best_epoch": saver.best_epoch}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data_dir", default=str(shared_data_dir() / "kvasir_seg"))
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--train_items", type=int, default=200)
    p.add_argument("--val_items", type=int, default=50)
    p.add_argument("--test_items", type=int, default=200)
    p.add_argument("--ae_epochs", type=int, default=10)
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--preset", default="small")
    p.add_argument("--mapping_channels", type=int, default=16)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--unet_lr", type=float, default=2e-3)
    p.add_argument("--warmup_epochs", type=float, default=1.0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(RESULTS / "gms_quality.json"))
    args = p.parse_args(argv)
    timer = BenchmarkTimer()
    torch.set_num_threads(args.threads)
    set_determinism(seed=args.seed)
    work = Path(tempfile.mkdtemp(prefix="gms_quality_"))
    size = (args.size, args.size)
    t0 = time.time()

    lists = {
        "training": gms_datalist(args.data_dir, "training", seed=args.seed, max_items=args.train_items),
        "validation": gms_datalist(args.data_dir, "validation", seed=args.seed, max_items=args.val_items),
        "test": gms_datalist(args.data_dir, "test", seed=args.seed, max_items=args.test_items),
    }
    base = gms_transforms(2, size, num_classes=1, image_channels=3)
    augmented = gms_transforms(2, size, num_classes=1, image_channels=3, augment=True)
    train_ds = CacheDataset(lists["training"], augmented, progress=False)
    val_ds = CacheDataset(lists["validation"], base, progress=False)
    test_ds = CacheDataset(lists["test"], base, progress=False)
    load_seconds = time.time() - t0

    def loaders():
        g = torch.Generator().manual_seed(args.seed)
        return (
            DataLoader(train_ds, batch_size=args.batch_size, shuffle=True, generator=g),
            DataLoader(val_ds, batch_size=args.batch_size),
            DataLoader(test_ds, batch_size=args.batch_size),
        )

    # ---- GMS: tokenizer, then mapping network
    train_loader, val_loader, test_loader = loaders()
    config = gms_config(args.preset, 2, 3, 1, mapping_channels=args.mapping_channels)
    torch.manual_seed(args.seed)
    seg = GMSSegmenter.from_config(config)
    t = time.time()
    ae_trainer = create_gms_autoencoder_trainer(
        seg.autoencoder, train_loader, args.ae_epochs, work / "ae", 1, config, val_loader=val_loader, grid=False,
        options=TrainingOptions(seed=args.seed, resume=False),
    )
    ae_trainer.run()
    ae_seconds = time.time() - t
    upper = evaluate(MaskReconstructor(seg.autoencoder, 1), test_loader, labels_as_input=True)
    t = time.time()
    gms_trainer = create_gms_trainer(
        seg, train_loader, args.epochs, work / "gms", val_loader=val_loader, lr=args.lr,
        warmup_epochs=args.warmup_epochs, options=TrainingOptions(seed=args.seed, resume=False),
    )
    gms_trainer.run()
    gms_seconds = time.time() - t
    best = GMSSegmenter.load(gms_trainer.handles.model_path)
    gms_test = evaluate(best, test_loader)

    # ---- UNet, same data, epochs, batch, augmentation, schedule and validation-based selection
    train_loader, val_loader, test_loader = loaders()
    unet, unet_info = train_unet(train_loader, val_loader, args, work)
    unet_test = evaluate(unet, test_loader)

    result = {
        "benchmark": "gms_quality",
        "dataset": "Kvasir-SEG",
        "data_dir": str(args.data_dir),
        "split": {"seed": args.seed, "fractions": [0.7, 0.1, 0.2], **{k: len(v) for k, v in lists.items()}},
        "resolution": list(size),
        "budget": {"epochs": args.epochs, "batch_size": args.batch_size, "augmentation": "flips + rot90",
                   "optimizer": "AdamW + warm-up/cosine", "selection": "best validation Dice"},
        "autoencoder": {
            "config": config["autoencoder"],
            "parameters": _params(seg.autoencoder, trainable=False),
            "epochs": args.ae_epochs,
            "train_seconds": round(ae_seconds, 1),
            "best_val_mask_dice": ae_trainer.handles.best_saver.best,
            "test_mask_reconstruction": upper,
        },
        "gms": {
            "trainable_parameters": _params(seg.mapping),
            "total_parameters": _params(seg, trainable=False),
            "mapping_channels": args.mapping_channels,
            "lr": args.lr,
            "train_seconds": round(gms_seconds, 1),
            "best_val_dice": gms_trainer.handles.best_saver.best,
            "best_epoch": gms_trainer.handles.best_saver.best_epoch,
            "latent_cache": repr(gms_trainer.handles.prepare_batch.cache),
            "test": gms_test,
        },
        "unet": {"trainable_parameters": _params(unet), "lr": args.unet_lr, **unet_info, "test": unet_test},
        "load_seconds": round(load_seconds, 1),
        "total_seconds": round(time.time() - t0, 1),
        "machine": {"device": "cpu", "threads": args.threads, "python": platform.python_version(),
                    "torch": torch.__version__, "processor": platform.processor() or platform.machine()},
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic({**result, "timing": timer.stop(), "environment": environment()}, out)
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
