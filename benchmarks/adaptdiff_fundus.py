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
"""AdaptDiff on retinal vessels, DRIVE (labelled source) -> CHASE_DB1 (unlabelled target): source-only vs AdaptDiff
vs a target-label upper bound, Dice and clDice per child, with the second observer as the human ceiling.

Hu et al., arXiv:2410.04648 (the paper's own setting: vessels across fundus imaging domains). Data:
``../shared/data/drive`` (20 official training images with vessel and field-of-view masks; the 20 official test
images are the source validation set) and ``../shared/data/chase_db1`` (20 eyes of 10 children, another camera).

Protocol (CPU sized, every choice fixed before the run; nothing is tuned on CHASE labels):

- Images: the green channel (highest vessel contrast; the release uses channel 1 too), resized to ``--size``
  (512 px), normalised inside the field of view (1st / 99th percentile -> [0, 1], 0 outside;
  :func:`monai_genaug.data.fundus.load_fundus`). CHASE has no field-of-view files: the bright disk is estimated from
  the red channel. Masks are resized by area and > 0.5, and restricted to the field of view.
- Training crops: ``--crop`` (48 px) windows drawn once, seeded, with their centre region at least half inside the
  field of view (:func:`~monai_genaug.data.fundus.random_fov_crops`): ``--crops_per_image`` per image for the
  segmenters and the diffusion model, ``--synth_masks`` crops of DRIVE training masks (at least 90 % inside the field
  of view) as synthesis conditions. Evaluation: the whole resized image at once (the UNet is fully convolutional; no
  tiling), prediction and reference restricted to the field of view.
- **source-only**: MONAI UNet on DRIVE training crops, Dice + CE, spatial (flips, rotation, scaling) and intensity
  augmentation (gamma, noise, blur; no contrast inversion: both domains are fundus photographs).
- **AdaptDiff** (one generator path, seed ``--seed``): the source segmenter pseudo-labels every CHASE image (no
  label), with the threshold calibrated so that the pseudo-labels cover the DRIVE training labels' vessel fraction
  inside the field of view (:func:`~monai_genaug.transforms.pseudo_label.area_matched_threshold`); a pixel-space SPADE
  diffusion model (T = 300 linear betas, L1 noise loss as in the release) learns CHASE crops given their
  pseudo-labels; DDIM-50 (eta 0) draws one CHASE-style image per DRIVE mask crop; every seed's source segmenter is
  fine-tuned on these synthetic pairs (spatial + the release's intensity augmentation). The generator uses the CHASE
  images of all children without labels (transductive adaptation, the usual unsupervised-adaptation setting).
- **upper bound**: the same UNet trained from scratch on CHASE crops with the first observer's labels, child-grouped
  ``--folds``-fold cross-validation (default 2 folds of 5 children, for the CPU budget; a child's two eyes are in one
  fold), so every child is scored by a model that never saw it (trained on half of the children, the upper bound is
  a conservative one).
- **human ceiling**: the second observer scored against the first (Dice, clDice), per child.

Scores: Dice and clDice (soft-skeleton centreline Dice, :func:`monai_genaug.metrics.cl_dice`) of each eye against
the first observer, averaged over the child's two eyes: one case per child, one row per training seed (the generator
is trained once; the segmenters, fine-tunes and upper bounds once per seed). Diagnostics: the pseudo-label Dice
against the hidden first-observer labels (argmax and calibrated threshold; never used for a choice), the
mask-fidelity check (the upper bound of fold 0 segments the synthetic images; its Dice against the conditioning masks
next to its Dice on real held-out CHASE crops), the source segmenter on DRIVE's official test images.

    python benchmarks/adaptdiff_fundus.py            # writes benchmarks/results/adaptdiff_fundus.json
    python benchmarks/adaptdiff_fundus.py --quick    # a smoke run on a few small images

Resumable: every trained network, the pseudo-labels and the synthetic pairs are kept in ``--work_dir`` (default
``outputs/adaptdiff_fundus_work``) and reused by a rerun with the same settings.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
from monai.losses import DiceCELoss
from monai.transforms import Compose
from monai.utils import set_determinism

from monai_genaug.engines import TrainingOptions
from monai_genaug.data.fundus import chase_datalist, drive_datalist, load_fundus, random_fov_crops
from monai_genaug.engines.segmentation import build_segmenter, create_segmentation_trainer, segmenter_config
from monai_genaug.evaluation import BenchmarkTimer, Oracle, ResultsTable, write_results
from monai_genaug.methods.adaptdiff import (
    AdaptDiff,
    PairedSynthesisResult,
    finetune_augmentation,
    make_loader,
    source_augmentation,
    spatial_augmentation,
)
from monai_genaug.metrics import cl_dice
from monai_genaug.utils.images import save_image_grid
from monai_genaug.utils.paths import shared_data_dir

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def dice_per_image(pred: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """Foreground Dice of binary ``(B, 1, *spatial)`` masks, one per image (1 when both are empty)."""
    p, t = (pred > 0).float(), (truth > 0).float()
    dims = tuple(range(1, p.ndim))
    inter, total = (p * t).sum(dims), p.sum(dims) + t.sum(dims)
    return torch.where(total > 0, 2 * inter / total.clamp_min(1e-8), torch.ones_like(total))


@torch.no_grad()
def segment(network: torch.nn.Module, images: torch.Tensor, fov: torch.Tensor, batch: int = 4) -> torch.Tensor:
    """Label maps (argmax) of whole images, background outside the field of view."""
    network.eval()
    out = [network(images[i : i + batch]).argmax(1, keepdim=True) for i in range(0, images.shape[0], batch)]
    return torch.cat(out) * fov.long()


def child_scores(pred: torch.Tensor, truth: torch.Tensor, groups: list[str], iterations: int) -> dict[str, dict]:
    """``{child: {"dice", "cldice"}}``: each metric per eye, averaged over the child's eyes."""
    d, c = dice_per_image(pred, truth), cl_dice(pred, truth, iterations)
    out: dict[str, dict[str, list]] = {}
    for g, dv, cv in zip(groups, d.tolist(), c.tolist()):
        acc = out.setdefault(g, {"dice": [], "cldice": []})
        acc["dice"].append(dv)
        acc["cldice"].append(cv)
    return {g: {k: float(np.mean(v)) for k, v in acc.items()} for g, acc in out.items()}


def contrast(images: torch.Tensor, masks: torch.Tensor, region: torch.Tensor) -> float:
    """Mean intensity inside minus outside ``masks`` within ``region`` (vessels darker than background: negative)."""
    m, r = masks.bool(), region.bool()
    return float(images[m & r].mean() - images[~m & r].mean())


def child_folds(children: list[str], folds: int, seed: int = 0) -> list[list[str]]:
    """Children split into ``folds`` groups (seeded permutation, near-equal sizes)."""
    perm = [children[i] for i in np.random.default_rng(seed).permutation(len(children))]
    return [perm[f::folds] for f in range(folds)]


def stack(items: list[dict], key: str) -> torch.Tensor:
    return torch.stack([it[key] for it in items])


class Stages:
    """Cached stage outputs in the work folder (keyed by the settings that change them)."""

    def __init__(self, folder: Path, settings: dict) -> None:
        key = hashlib.sha1(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:10]
        self.folder = folder / key
        self.folder.mkdir(parents=True, exist_ok=True)
        (self.folder / "settings.json").write_text(json.dumps(settings, indent=1, sort_keys=True))

    def path(self, name: str) -> Path:
        return self.folder / f"{name}.pt"

    def load(self, name: str):
        p = self.path(name)
        return torch.load(p, weights_only=False) if p.is_file() else None

    def save(self, name: str, obj) -> None:
        tmp = self.path(name).with_suffix(".tmp")
        torch.save(obj, tmp)
        tmp.replace(self.path(name))


def run(args) -> dict:
    torch.set_num_threads(args.threads)
    timer = BenchmarkTimer()
    t_start = time.time()
    timings: dict[str, float] = {}

    def tick(name: str, t0: float) -> None:
        timings[name] = round(timings.get(name, 0.0) + time.time() - t0, 1)
        print(f"[{time.time() - t_start:7.1f}s] {name} ({timings[name]} s so far)", flush=True)
        (cache.folder / "timings.json").write_text(json.dumps(timings))  # stage costs survive a resumed run

    data = shared_data_dir(args.data_dir)
    drive_dir, chase_dir = Path(args.drive_dir or data / "drive"), Path(args.chase_dir or data / "chase_db1")
    t0 = time.time()
    drive_train = load_fundus(drive_datalist(drive_dir, "train")[: args.max_images], args.size)
    drive_test = load_fundus(drive_datalist(drive_dir, "test")[: args.max_images], args.size)
    chase_items = chase_datalist(chase_dir)
    if args.max_children:
        keep = sorted({it["group"] for it in chase_items})[: args.max_children]
        chase_items = [it for it in chase_items if it["group"] in keep]
    chase = load_fundus(chase_items, args.size)
    children = sorted({it["group"] for it in chase})
    groups = [it["group"] for it in chase]
    c_img, c_fov, c_lab = stack(chase, "image"), stack(chase, "fov"), stack(chase, "label")
    settings_key = {k: v for k, v in vars(args).items() if k not in ("out", "work_dir", "threads")}
    cache = Stages(Path(args.work_dir), settings_key)
    print(f"work folder {cache.folder}", flush=True)
    if (cache.folder / "timings.json").is_file():  # seconds of the stages an earlier run of these settings trained
        timings.update({k: v for k, v in json.loads((cache.folder / "timings.json").read_text()).items()
                        if k != "loading"})
    tick("loading", t0)
    seg_kwargs = {"num_res_units": 1}
    seg_cfg = segmenter_config(2, 1, 1, channels=tuple(args.seg_channels), **seg_kwargs)
    iters = args.cl_iterations

    def loss() -> DiceCELoss:
        return DiceCELoss(softmax=True, to_onehot_y=True, batch=True)

    def epochs_for(n_items: int, iterations: int, batch: int | None = None) -> int:
        return max(1, math.ceil(iterations / max(1, math.ceil(n_items / (batch or args.batch_size)))))

    def seg_augmentation(intensity: Compose) -> Compose:
        return Compose(spatial_augmentation(("image", "label")) + list(intensity.transforms))

    src_aug = lambda: seg_augmentation(source_augmentation(invert_prob=0.0))  # noqa: E731
    source_crops = random_fov_crops(drive_train, args.crop, args.crops_per_image, seed=args.seed)
    vessel_fraction = float(sum(int(it["label"].sum()) for it in drive_train) /
                            sum(int(it["fov"].sum()) for it in drive_train))
    table = ResultsTable()

    predicted: dict[str, list[float]] = {}  # vessel pixels predicted, and FOV pixels, per method

    def score(name: str, network: torch.nn.Module, seed: int, idx: list[int] | None = None) -> dict[str, dict]:
        idx = list(range(len(chase))) if idx is None else idx
        pred = segment(network, c_img[idx], c_fov[idx])
        acc = predicted.setdefault(name, [0.0, 0.0])
        acc[0] += float(pred.sum())
        acc[1] += float(c_fov[idx].sum())
        res = child_scores(pred, c_lab[idx], [groups[i] for i in idx], iters)
        for child, m in res.items():
            for metric, value in m.items():
                table.add(name, case=child, seed=seed, value=value, metric=metric)
        return res

    def pipeline(seed: int) -> AdaptDiff:
        set_determinism(seed)
        return AdaptDiff.from_preset(
            "tiny",
            segmenter_channels=tuple(args.seg_channels),
            segmenter_kwargs=seg_kwargs,
            generator_kwargs={"unet": {"channels": list(args.gen_channels), "norm_num_groups": 8},
                              "spade_channels": args.spade_channels},
        )

    def train_source(ad: AdaptDiff, seed: int) -> None:
        state = cache.load(f"source_{seed}")
        if state is None:
            t0 = time.time()
            set_determinism(seed)
            ad.source_trainer(make_loader(source_crops, src_aug(), args.batch_size, seed=seed),
                              epochs_for(len(source_crops), args.seg_iters), cache.folder / f"run_source_{seed}",
                              loss_function=loss(), lr=args.seg_lr, cosine_lr=True,
                              options=TrainingOptions(seed=seed, resume=False)).run()
            cache.save(f"source_{seed}", ad.segmenter.state_dict())
            tick("source_segmenters", t0)
        else:
            ad.segmenter.load_state_dict(state)

    # ---------------------------------------------------------------- generator path (once, seed args.seed)
    ad0 = pipeline(args.seed)
    train_source(ad0, args.seed)
    d_test = stack(drive_test, "image"), stack(drive_test, "fov"), stack(drive_test, "label")
    drive_test_dice = float(dice_per_image(segment(ad0.segmenter, d_test[0], d_test[1]), d_test[2]).mean())
    print(f"source segmenter: Dice {drive_test_dice:.4f} on DRIVE's official test images (source validation)", flush=True)
    pseudo = cache.load("pseudo")
    if pseudo is None:
        t0 = time.time()
        target = [{"image": it["image"], "fov": it["fov"], "id": it["id"]} for it in chase]  # no labels
        argmax_labels = torch.stack([p["label"] for p in ad0.pseudo_label(target, threshold=0.5, region_key="fov")])
        pairs = ad0.pseudo_label(target, area_fraction=vessel_fraction, region_key="fov")
        pseudo = {"labels": torch.stack([p["label"] for p in pairs]), "argmax": argmax_labels,
                  "threshold": ad0.pseudo_threshold}
        cache.save("pseudo", pseudo)
        tick("pseudo_labels", t0)
    pl_dice = {
        "argmax (0.5)": float(dice_per_image(pseudo["argmax"], c_lab).mean()),
        "area-matched": float(dice_per_image(pseudo["labels"], c_lab).mean()),
    }
    pl_cldice = float(cl_dice(pseudo["labels"], c_lab, iters).mean())
    fov_px = c_fov.float().sum()
    gen_path = cache.path("generator")
    if gen_path.is_file():
        ad0.generator.load_state_dict(torch.load(gen_path, weights_only=True))
    else:
        t0 = time.time()
        diff_items = [dict(it, label=lab) for it, lab in zip(chase, pseudo["labels"])]
        diff_crops = random_fov_crops(diff_items, args.crop, args.crops_per_image, seed=args.seed + 1)
        diff_crops = [{"image": c["image"], "label": c["label"]} for c in diff_crops]
        set_determinism(args.seed)
        trainer = ad0.diffusion_trainer(
            ad0.diffusion_loader(diff_crops, batch_size=args.diff_batch, seed=args.seed),
            epochs_for(len(diff_crops), args.diff_iters, args.diff_batch), cache.folder / "run_diffusion",
            lr=args.diff_lr, loss=args.diff_loss, ema_decay=args.ema, ema_warmup_iters=100,
            options=TrainingOptions(seed=args.seed, resume=False))
        trainer.run()
        with trainer.handles.ema.use_ema_weights():  # sample with the EMA weights
            state = {k: v.clone() for k, v in ad0.generator.state_dict().items()}
        ad0.generator.load_state_dict(state)
        cache.save("generator", state)
        tick("diffusion", t0)
    synth = cache.load("synthetic")
    if synth is None:
        t0 = time.time()
        masks = random_fov_crops(drive_train, args.crop, max(1, args.synth_masks // len(drive_train)),
                                 seed=args.seed + 2, min_fov=0.9)
        res = ad0.synthesize([{"label": m["label"], "id": m["id"]} for m in masks], sampler=args.sampler,
                             batch_size=32, seed=args.seed)
        synth = {"images": res.images, "labels": res.labels, "seeds": res.seeds, "ids": res.ids}
        cache.save("synthetic", synth)
        tick("synthesis", t0)
    synth = PairedSynthesisResult(**synth)
    work = Path(args.work_dir)
    save_image_grid(torch.cat([synth.images[:8], synth.labels[:8].float()]), work / "synthetic_grid.png", nrow=8)
    # ---------------------------------------------------------------- per seed: source-only, AdaptDiff, upper bound
    folds = child_folds(children, args.folds, seed=0)
    upper_crops = {}
    for f, held in enumerate(folds):
        train = [it for it in chase if it["group"] not in held]
        upper_crops[f] = random_fov_crops(train, args.crop, args.crops_per_image, seed=args.seed + 10 + f)
    oracle_net = None
    for seed in args.seeds:
        ad = ad0 if seed == args.seed else pipeline(seed)
        if ad is not ad0:
            train_source(ad, seed)
        m = score("source_only", ad.segmenter, seed)
        print(f"seed {seed}: source-only CHASE Dice {np.mean([v['dice'] for v in m.values()]):.4f}", flush=True)
        state = cache.load(f"adapted_{seed}")
        ad.adapted = build_segmenter(seg_cfg)
        if state is None:
            t0 = time.time()
            set_determinism(seed)
            ad.finetune_trainer(make_loader(synth.items(), finetune_augmentation(), args.batch_size, seed=seed),
                                epochs_for(len(synth.items()), args.ft_iters), cache.folder / f"run_ft_{seed}",
                                loss_function=loss(), lr=args.ft_lr, lr_step_size=None,
                                options=TrainingOptions(seed=seed, resume=False)).run()
            cache.save(f"adapted_{seed}", ad.adapted.state_dict())
            tick("finetunes", t0)
        else:
            ad.adapted.load_state_dict(state)
        m = score("adaptdiff", ad.adapted, seed)
        print(f"seed {seed}: AdaptDiff CHASE Dice {np.mean([v['dice'] for v in m.values()]):.4f}", flush=True)
        for f, held in enumerate(folds):
            set_determinism(seed)
            upper = build_segmenter(seg_cfg)
            state = cache.load(f"upper_{seed}_{f}")
            if state is None:
                t0 = time.time()
                create_segmentation_trainer(
                    upper, make_loader(upper_crops[f], src_aug(), args.batch_size, seed=seed),
                    epochs_for(len(upper_crops[f]), args.seg_iters), cache.folder / f"run_upper_{seed}_{f}",
                    loss_function=loss(), lr=args.seg_lr, cosine_lr=True,
                    options=TrainingOptions(seed=seed, resume=False)).run()
                cache.save(f"upper_{seed}_{f}", upper.state_dict())
                tick("upper_bounds", t0)
            else:
                upper.load_state_dict(state)
            score("upper_bound", upper, seed, [i for i, g in enumerate(groups) if g in held])
            if oracle_net is None:
                oracle_net = upper
    # ---------------------------------------------------------------- human ceiling and mask fidelity
    human = ResultsTable()
    second = stack(chase, "label_2nd")
    for child, m in child_scores(second, c_lab, groups, iters).items():
        for metric, value in m.items():
            human.add("second_observer", case=child, seed=0, value=value, metric=metric)
    held0 = [it for it in chase if it["group"] in folds[0]]
    real_crops = random_fov_crops(held0, args.crop, max(1, len(synth.items()) // max(1, len(held0))),
                                  seed=args.seed + 3, min_fov=0.9)
    oracle = Oracle.from_network("segmentation", oracle_net, 1)
    oracle_table = oracle.table({
        "synthetic CHASE-style images vs their conditioning DRIVE masks": (synth.images, synth.labels),
        "real CHASE crops of held-out children vs first observer": (stack(real_crops, "image"),
                                                                     stack(real_crops, "label")),
    })
    fid = [r["value"] for r in oracle_table.rows if r["method"].startswith("synthetic")]
    real = [r["value"] for r in oracle_table.rows if r["method"].startswith("real")]
    diagnostics = {
        "source segmenter (generator path) Dice on DRIVE official test images": round(drive_test_dice, 4),
        "DRIVE training vessel fraction inside the field of view (pseudo-label area target)": round(vessel_fraction, 4),
        "calibrated pseudo-label threshold": round(float(pseudo["threshold"]), 4),
        "pseudo-label Dice vs hidden CHASE labels, argmax (0.5)": round(pl_dice["argmax (0.5)"], 4),
        "pseudo-label Dice vs hidden CHASE labels, area-matched": round(pl_dice["area-matched"], 4),
        "pseudo-label clDice vs hidden CHASE labels, area-matched": round(pl_cldice, 4),
        "pseudo-label foreground fraction of the field of view, argmax / area-matched / true": " / ".join(
            f"{float(x.float().sum() / fov_px):.4f}" for x in (pseudo["argmax"], pseudo["labels"], c_lab)),
        "mask fidelity: upper bound (fold 0) Dice on synthetic images vs conditioning masks": round(
            float(np.mean(fid)), 4),
        "mask fidelity reference: the same model on real held-out CHASE crops": round(float(np.mean(real)), 4),
        "mask contrast (mean inside - outside the mask) DRIVE real / CHASE real / synthetic": " / ".join(
            f"{contrast(i, m, f):+.3f}" for i, m, f in (
                (stack(drive_train, "image"), stack(drive_train, "label"), stack(drive_train, "fov")),
                (c_img, c_lab, c_fov), (synth.images, synth.labels, torch.ones_like(synth.labels, dtype=torch.bool)))),
        "predicted vessel fraction of the FOV per method (true: first observer)": ", ".join(
            [f"{k} {v[0] / max(v[1], 1.0):.4f}" for k, v in predicted.items()]
            + [f"true {float(c_lab.sum() / c_fov.sum()):.4f}"]),
        "images DRIVE train / DRIVE test / CHASE (children)": f"{len(drive_train)} / {len(drive_test)} / "
                                                               f"{len(chase)} ({len(children)})",
        "training crops source / synthetic pairs": f"{len(source_crops)} / {len(synth.items())}",
        **{f"stage seconds: {k}": v for k, v in timings.items()},
    }
    extra = {
        "title": "AdaptDiff: DRIVE -> CHASE_DB1 retinal vessels",
        "description": (
            "Vessel Dice per child (mean of the child's two eyes, first observer, inside the field of view) on "
            "CHASE_DB1 of a MONAI UNet trained on DRIVE (source-only), the same segmenter fine-tuned on CHASE-style "
            "images drawn by a SPADE diffusion model trained on CHASE pseudo-labels for DRIVE masks (AdaptDiff), "
            "and the UNet trained on CHASE labels with child-grouped cross-validation (upper bound). The generator "
            "path runs once (seed %d); every seed trains its own source segmenter, fine-tune and upper bounds. "
            "Images: green channel, %d px, crops of %d px for training, whole images for scoring." % (
                args.seed, args.size, args.crop)),
        "script": "adaptdiff_fundus.py",
        "measured": "CHASE_DB1 vessel Dice per child: source-only / AdaptDiff / upper bound",
        "bundle": "adaptdiff",
        "oracle": {"rows": oracle_table.to_rows(), "test_score": round(float(np.mean(real)), 4)},
        "human_ceiling": {"rows": human.to_rows()},
        "secondary_metrics": ["cldice"],
        "gap": {"baseline": "source_only", "method": "adaptdiff", "ceiling": "upper_bound"},
        "diagnostics": diagnostics,
        "budget": "planned for <= 60 min of one CPU core (the per-developer budget of a shared 2-core machine; "
                  "timing.cpu_s is the measured CPU time): the generator is trained once, the segmenters, "
                  "fine-tunes and upper bounds once per seed, with few iterations (settings)",
    }
    settings = {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(args).items() if k != "out"}
    return {"table": table, "extra": extra, "settings": settings, "timing": timer.stop(),
            "seconds": time.time() - t_start}


def main(argv=None) -> Path:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data_dir", default=None, help="shared data folder (default: $MONAI_GENAUG_DATA or ../shared/data)")
    p.add_argument("--drive_dir", default=None)
    p.add_argument("--chase_dir", default=None)
    p.add_argument("--size", type=int, default=512, help="side of the resized fundus images")
    p.add_argument("--crop", type=int, default=48, help="training crop side")
    p.add_argument("--crops_per_image", type=int, default=32)
    p.add_argument("--synth_masks", type=int, default=128, help="DRIVE mask crops to draw CHASE-style images for")
    p.add_argument("--max_images", type=int, default=None, help="first DRIVE images of each split (quick runs)")
    p.add_argument("--max_children", type=int, default=None, help="first CHASE children (quick runs)")
    p.add_argument("--folds", type=int, default=2, help="child-grouped folds of the upper bound")
    p.add_argument("--seed", type=int, default=0, help="seed of the generator path")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seg_channels", type=int, nargs="+", default=[16, 32, 64, 128])
    p.add_argument("--batch_size", type=int, default=16)
    p.add_argument("--seg_iters", type=int, default=400, help="iterations of source segmenters and upper bounds")
    p.add_argument("--seg_lr", type=float, default=3e-3)
    p.add_argument("--ft_iters", type=int, default=200)
    p.add_argument("--ft_lr", type=float, default=1e-3)
    p.add_argument("--gen_channels", type=int, nargs="+", default=[16, 32, 64])
    p.add_argument("--spade_channels", type=int, default=32)
    p.add_argument("--diff_batch", type=int, default=8)
    p.add_argument("--diff_iters", type=int, default=500)
    p.add_argument("--diff_lr", type=float, default=2e-3)
    p.add_argument("--diff_loss", choices=("mse", "l1"), default="l1")
    p.add_argument("--ema", type=float, default=0.995)
    p.add_argument("--sampler", choices=("ddpm", "ddim50"), default="ddim50")
    p.add_argument("--cl_iterations", type=int, default=10, help="soft-skeleton iterations of clDice")
    p.add_argument("--quick", action="store_true", help="smoke run: 128 px, 4 DRIVE images, 4 children, few steps")
    p.add_argument("--work_dir", default=str(ROOT / "outputs" / "adaptdiff_fundus_work"))
    p.add_argument("--out", default=None, help="default: benchmarks/results/adaptdiff_fundus.json")
    args = p.parse_args(argv)
    if args.quick:
        args.size, args.crop, args.crops_per_image, args.synth_masks = 128, 32, 4, 8
        args.max_images, args.max_children, args.folds, args.seeds = 2, 4, 2, [0, 1]
        args.seg_iters, args.ft_iters, args.diff_iters, args.cl_iterations = 2, 2, 2, 3
        args.sampler = "ddim50"
    if args.seed not in args.seeds:
        p.error(f"--seed {args.seed} must be one of --seeds {args.seeds} (its source segmenter is reused).")
    res = run(args)
    out = Path(args.out) if args.out else RESULTS / "adaptdiff_fundus.json"
    path = write_results(out, out.stem, res["settings"], args.seeds, res["table"], res["timing"],
                         primary_metric="dice", baseline="source_only", extra=res["extra"], quick=args.quick)
    print(f"wrote {path} in {res['seconds']:.0f} s; python -m monai_genaug.evaluation.report {path.parent} writes the "
          "Markdown")
    return path


if __name__ == "__main__":
    main()
