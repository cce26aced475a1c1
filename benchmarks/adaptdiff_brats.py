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
"""AdaptDiff cross-modality adaptation benchmark: source-only vs AdaptDiff-fine-tuned vs a target-label upper bound.

Hu et al., arXiv:2410.04648. Two settings, both in 2D on a CPU budget:

- ``--data brats``: the six BRATS 2013 cases in ``../shared/data/brats2013_deepmedic``. FLAIR is the **labelled
  source**, T1c the **unlabelled target**, whole tumour (labels 1-4) the structure. Split by patient (DeepMedic's
  example split for the test cases): test = pat0001, pat0002 (T1c, labels only for scoring). ``--split disjoint``
  (default): source = pat0005, pat0006 (FLAIR + labels), target = pat0003, pat0004 (T1c, labels never used except by
  the upper bound). ``--split shared``: source = FLAIR + labels and target = T1c without labels of the same four
  training patients (the usual unpaired protocol; the source masks the images are drawn for are then the hidden
  labels of the target slices, a mild leak the disjoint split avoids). Axial
  slices with at least 20 % brain in a square crop around the brain mask (every ``--slice_step``-th for training,
  all for testing); the volumes are z-scored inside the brain, mapped with one fixed map z in [-2.5, 2.5] -> [0, 1]
  (zero outside the brain) and resized to ``--size`` (area for images, area + 0.5 threshold for labels).
  Score: whole-tumour Dice per test patient over all its slices (slice-sampled volumetric Dice), mean of patients.
- ``--data phantoms``: two-modality vessel phantoms (bright vessels on dark background vs dark, blurred vessels on a
  bright vignetted background), disjoint anatomies for source / target / test. Score: mean Dice over test images.

Methods, same segmenter (MONAI UNet), schedule and spatial augmentation (flips, small affine changes) everywhere:
**source-only** (trained on source with :func:`~monai_genaug.methods.adaptdiff.source_augmentation`), **AdaptDiff** (pseudo-labels of the target ->
mask-conditioned SPADE diffusion -> target-style images for the source masks -> fine-tune the source segmenter), and
the **upper bound** (the same segmenter trained on the target training images with their true labels).

    python benchmarks/adaptdiff_brats.py --data brats      # writes benchmarks/results/adaptdiff_brats.json
    python benchmarks/adaptdiff_brats.py --data phantoms   # writes benchmarks/results/adaptdiff_phantoms.json

Both update the table ``benchmarks/results/adaptdiff.md``.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from monai.transforms import Compose, RandAffined, RandFlipd
from monai.utils import set_determinism

from monai_genaug.data.phantoms import make_two_modality_phantoms
from monai_genaug.engines.segmentation import (
    build_segmenter,
    create_segmentation_trainer,
    segmenter_config,
)
from monai_genaug.methods.adaptdiff import (
    AdaptDiff,
    finetune_augmentation,
    make_loader,
    source_augmentation,
)
from monai_genaug.utils.images import save_image_grid
from monai_genaug.utils.paths import shared_data_dir

RESULTS = Path(__file__).resolve().parent / "results"
SPLITS = {
    # strict: every patient has one role (no anatomy is both labelled source and unlabelled target)
    "disjoint": {
        "test": ["brats_2013_pat0001_1", "brats_2013_pat0002_1"],
        "source": ["brats_2013_pat0005_1", "brats_2013_pat0006_1"],
        "target": ["brats_2013_pat0003_1", "brats_2013_pat0004_1"],
    },
    # the common unpaired protocol: FLAIR (with labels) and T1c (without) of the same four training patients; the
    # synthesis masks are then the hidden target labels of the same slices (a mild leak, see the docstring)
    "shared": {
        "test": ["brats_2013_pat0001_1", "brats_2013_pat0002_1"],
        "source": ["brats_2013_pat0003_1", "brats_2013_pat0004_1", "brats_2013_pat0005_1", "brats_2013_pat0006_1"],
        "target": ["brats_2013_pat0003_1", "brats_2013_pat0004_1", "brats_2013_pat0005_1", "brats_2013_pat0006_1"],
    },
}


def brats_slices(root: Path, case: str, modality: str, size: int, step: int, min_brain: float = 0.2) -> list[dict]:
    """Axial 2D slices of one case: ``{"image": (1, size, size) in [0, 1], "label": whole tumour, "id", "group"}``."""
    import nibabel as nib

    folder = root / case
    pattern = {"flair": "Flair*", "t1c": "T1c*"}[modality]
    files = sorted(folder.glob(pattern + ".nii*"))
    if len(files) != 1:
        raise FileNotFoundError(f"expected one {pattern} file in {folder}, found {[f.name for f in files]}.")
    vol = np.asarray(nib.load(str(files[0])).dataobj, dtype=np.float32)
    brain = np.asarray(nib.load(str(folder / "brainmask.nii.gz")).dataobj) > 0.5
    label = np.asarray(nib.load(str(folder / "OTMultiClass.nii.gz")).dataobj) > 0.5
    # the volumes are z-scored inside the brain (DeepMedic's copy): one fixed map of z in [-2.5, 2.5] to [0, 1]
    vol = (np.clip((vol + 2.5) / 5.0, 0.0, 1.0) * brain).astype(np.float32)
    # square crop around the brain (its bounding box over all slices, from the brain mask only)
    rows, cols = np.where(brain.any(axis=2))
    centre = ((rows.min() + rows.max()) // 2, (cols.min() + cols.max()) // 2)
    half = (max(rows.max() - rows.min(), cols.max() - cols.min()) + 1) // 2 + 2
    r0, c0 = max(centre[0] - half, 0), max(centre[1] - half, 0)
    crop = (slice(r0, min(r0 + 2 * half, vol.shape[0])), slice(c0, min(c0 + 2 * half, vol.shape[1])))
    brain_fraction = brain[crop].mean(axis=(0, 1))
    out = []
    for z in range(0, vol.shape[2], step):
        if brain_fraction[z] < min_brain:
            continue
        img = torch.from_numpy(np.ascontiguousarray(vol[crop][:, :, z]))[None, None]
        lab = torch.from_numpy(np.ascontiguousarray(label[crop][:, :, z])).float()[None, None]
        img = F.interpolate(img, size=(size, size), mode="area")[0]
        lab = (F.interpolate(lab, size=(size, size), mode="area")[0] > 0.5).long()
        out.append({"image": img, "label": lab, "id": f"{case}__z{z:03d}", "group": case})
    return out


def brats_sets(args) -> dict[str, list[dict]]:
    root = Path(args.brats_dir) if args.brats_dir else shared_data_dir() / "brats2013_deepmedic"
    if not root.is_dir():
        raise FileNotFoundError(f"BRATS folder {root} not found; pass --brats_dir.")
    split = SPLITS[args.split]
    sets = {
        "source": [s for c in split["source"] for s in brats_slices(root, c, "flair", args.size, args.slice_step)],
        "target_labelled": [
            s for c in split["target"] for s in brats_slices(root, c, "t1c", args.size, args.slice_step)
        ],
        # every brain slice of the test patients (step 1): the score is the Dice over each patient's slices
        "test": [s for c in split["test"] for s in brats_slices(root, c, "t1c", args.size, 1)],
    }
    return sets


def phantom_sets(args) -> dict[str, list[dict]]:
    n = args.phantoms
    data = make_two_modality_phantoms(n, (args.size, args.size), seed=args.seed)
    k_src, k_tgt = int(0.4 * n), int(0.8 * n)

    def items(idx, modality):
        return [
            {
                "image": torch.from_numpy(data[i][modality]).float(),
                "label": torch.from_numpy(data[i]["label"]).long(),
                "id": f"p{i:04d}",
                "group": f"p{i:04d}",
            }
            for i in idx
        ]

    return {
        "source": items(range(k_src), "source"),
        "target_labelled": items(range(k_src, k_tgt), "target"),
        "test": items(range(k_tgt, n), "target"),
    }


def spatial_augmentation(size: int) -> list:
    """Left-right flips and small affine changes of image and label (every segmenter of the benchmark gets them)."""
    return [
        RandFlipd(["image", "label"], prob=0.5, spatial_axis=1),
        RandAffined(
            ["image", "label"],
            prob=0.8,
            rotate_range=0.3,
            scale_range=0.15,
            translate_range=0.05 * size,
            mode=("bilinear", "nearest"),
            padding_mode="zeros",
        ),
    ]


def with_spatial(intensity: Compose, size: int) -> Compose:
    return Compose(spatial_augmentation(size) + list(intensity.transforms))


def dice_of(pred: torch.Tensor, truth: torch.Tensor) -> float:
    inter = ((pred > 0) & (truth > 0)).sum().item()
    total = (pred > 0).sum().item() + (truth > 0).sum().item()
    return 2 * inter / total if total else 1.0


def contrast(images: torch.Tensor, masks: torch.Tensor) -> float:
    m = masks.float()
    if m.sum() == 0 or (1 - m).sum() == 0:
        return float("nan")
    return float((images * m).sum() / m.sum() - (images * (1 - m)).sum() / (1 - m).sum())


def run(args) -> dict:
    set_determinism(args.seed)
    torch.set_num_threads(args.threads)
    t_start = time.time()
    sets = brats_sets(args) if args.data == "brats" else phantom_sets(args)
    source, target_lab, test = sets["source"], sets["target_labelled"], sets["test"]
    target = [{k: v for k, v in it.items() if k != "label"} for it in target_lab]  # unlabelled
    score_key = "mean_group_dice" if args.data == "brats" else "mean_dice"
    out_dir = Path(args.work_dir or tempfile.mkdtemp(prefix="adaptdiff_bench_"))
    timings: dict[str, float] = {}
    seg_kwargs = {"num_res_units": 1}
    ad = AdaptDiff.from_preset(
        "tiny",
        segmenter_channels=tuple(args.seg_channels),
        segmenter_kwargs=seg_kwargs,
        generator_kwargs={
            "unet": {
                "channels": list(args.gen_channels),
                "norm_num_groups": args.gen_groups,
                "spade_intermediate_channels": args.spade_channels,
            }
        },
    )
    test_loader = make_loader(test, None, 32, shuffle=False)

    def tick(name: str, t0: float) -> None:
        timings[name] = round(time.time() - t0, 1)
        print(f"[{time.time() - t_start:7.1f}s] {name} done in {timings[name]} s", flush=True)

    # (a) source segmenter
    t0 = time.time()
    aug = with_spatial(source_augmentation(invert_prob=args.invert_prob), args.size)
    ad.source_trainer(
        make_loader(source, aug, args.batch_size, seed=args.seed),
        args.seg_epochs,
        out_dir / "source",
        lr=args.seg_lr,
        cosine_lr=True,
        seed=args.seed,
    ).run()
    tick("source_segmenter", t0)
    scores = ad.evaluate(test_loader, group_key="group")
    # (b) pseudo-labels, scored against the hidden target labels (diagnostic only)
    t0 = time.time()
    pseudo = ad.pseudo_label(target, threshold=args.threshold)
    pl = torch.stack([p["label"] for p in pseudo])
    truth = torch.stack([it["label"] for it in target_lab])
    pseudo_dice = dice_of(pl, truth)
    tick("pseudo_labels", t0)
    # (c) mask-conditioned diffusion on target images + pseudo-labels
    t0 = time.time()
    ad.diffusion_trainer(
        ad.diffusion_loader(pseudo, batch_size=args.batch_size, seed=args.seed),
        args.diff_epochs,
        out_dir / "diffusion",
        lr=args.diff_lr,
        ema_decay=args.ema,
        ema_warmup_iters=100,
        seed=args.seed,
    ).run()
    tick("diffusion", t0)
    # (d) target-style images for the real source masks
    t0 = time.time()
    synth = ad.synthesize(source, num_inference_steps=args.steps, eta=args.eta, batch_size=64, seed=args.seed)
    tick("synthesis", t0)
    save_image_grid(
        torch.cat([synth.images[:8], synth.labels[:8].float(), torch.stack([it["image"] for it in test[:8]])]),
        out_dir / "synthetic_grid.png",
        nrow=8,
    )
    # (e) fine-tune on the synthetic pairs
    t0 = time.time()
    ad.finetune_trainer(
        make_loader(synth.items(), finetune_augmentation(), args.batch_size, seed=args.seed),
        args.ft_epochs,
        out_dir / "finetune",
        lr=args.ft_lr,
        lr_step_size=args.ft_step,
        seed=args.seed,
    ).run()
    tick("finetune", t0)
    scores.update(ad.evaluate(test_loader, group_key="group"))
    # upper bound: the same segmenter trained on the target training images with their labels
    t0 = time.time()
    set_determinism(args.seed)
    upper = build_segmenter(segmenter_config(2, 1, 1, channels=tuple(args.seg_channels), **seg_kwargs))
    create_segmentation_trainer(
        upper,
        make_loader(target_lab, source_augmentation(invert_prob=0.0), args.batch_size, seed=args.seed),
        args.seg_epochs,
        out_dir / "upper",
        lr=args.seg_lr,
        cosine_lr=True,
        seed=args.seed,
    ).run()
    from monai_genaug.engines.segmentation import evaluate_segmentation

    scores["upper_bound"] = evaluate_segmentation(upper, test_loader, group_key="group")
    tick("upper_bound", t0)
    real_t = torch.stack([it["image"] for it in target_lab])
    real_s = torch.stack([it["image"] for it in source])
    result = {
        "data": args.data,
        "score": score_key,
        "dice": {k: round(v[score_key], 4) for k, v in scores.items()},
        "per_case_dice": {k: v.get("group_dice") for k, v in scores.items()} if args.data == "brats" else None,
        "global_dice": {k: round(v["global_dice"], 4) for k, v in scores.items()},
        "pseudo_label_dice_vs_hidden_truth": round(pseudo_dice, 4),
        "pseudo_label_foreground": round(float((pl > 0).float().mean()), 4),
        "true_target_foreground": round(float((truth > 0).float().mean()), 4),
        "mask_contrast": {
            "source_real": round(contrast(real_s, torch.stack([it["label"] for it in source])), 4),
            "target_real": round(contrast(real_t, truth), 4),
            "target_synthetic": round(contrast(synth.images, synth.labels), 4),
        },
        "num_images": {
            "source": len(source),
            "target": len(target),
            "test": len(test),
            "synthetic": len(synth.items()),
        },
        "settings": {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(args).items()},
        "timings_s": timings,
        "total_s": round(time.time() - t_start, 1),
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, "
        f"torch {torch.__version__}, CPU only",
        "work_dir": str(out_dir),
    }
    return result


def write_table(results_dir: Path) -> Path:
    rows = []
    for path in sorted(results_dir.glob("adaptdiff_*.json")):
        r = json.loads(path.read_text())
        if "dice" not in r or "settings" not in r:
            continue
        d, s = r["dice"], r["settings"]
        if r["data"] == "brats":
            title = f"BRATS 2013 FLAIR -> T1c, whole tumour, {s.get('split', 'disjoint')} patients"
        else:
            title = "two-modality vessel phantoms"
        title += f", source inversion p={s['invert_prob']}"
        rows.append(
            f"| {title} | {s['size']} px | {d['source_only']:.3f} | {d['adaptdiff']:.3f} | {d['upper_bound']:.3f} | "
            f"{r['pseudo_label_dice_vs_hidden_truth']:.3f} | {r['mask_contrast']['target_real']:+.3f} / "
            f"{r['mask_contrast']['target_synthetic']:+.3f} | {r['total_s'] / 60:.1f} min | `{path.name}` |"
        )
    text = (
        "# AdaptDiff benchmark (CPU)\n\n"
        "Written by `benchmarks/adaptdiff_brats.py` (see its docstring for data, split and settings; the JSON files "
        "next to this table hold every number and setting). Dice of the target-modality test set: **source-only** "
        "segmenter, **AdaptDiff** (the same segmenter fine-tuned on synthetic target-style images drawn for the "
        "source masks by a SPADE diffusion model trained on target pseudo-labels), and the **upper bound** trained "
        "with the target labels. BRATS: mean over the two test patients of the Dice over all their axial slices. "
        "Pseudo-label Dice is measured against the hidden target labels (diagnostic only). Contrast = mean "
        "intensity inside minus outside the mask (real target / synthetic target).\n\n"
        "| setting | size | source-only | AdaptDiff | upper bound | pseudo-label Dice | contrast real / synthetic "
        "| run time | file |\n|---|---|---|---|---|---|---|---|---|\n" + "\n".join(rows) + "\n"
    )
    path = results_dir / "adaptdiff.md"
    path.write_text(text)
    return path


def main() -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", choices=("brats", "phantoms"), default="brats")
    p.add_argument("--brats_dir", default=None, help="default: <shared data>/brats2013_deepmedic")
    p.add_argument("--split", choices=tuple(SPLITS), default="disjoint", help="BRATS patient roles (see above)")
    p.add_argument("--tag", default="", help="suffix of the result file name (several runs of one data set)")
    p.add_argument("--size", type=int, default=32, help="slice / phantom size in pixels")
    p.add_argument("--slice_step", type=int, default=1, help="BRATS: every n-th axial slice for training")
    p.add_argument("--phantoms", type=int, default=100, help="phantoms: number of anatomies (40 / 40 / 20 %%)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest for these tiny nets)")
    p.add_argument("--seg_channels", type=int, nargs="+", default=[16, 32, 64, 128])
    p.add_argument("--seg_epochs", type=int, default=60)
    p.add_argument("--seg_lr", type=float, default=3e-3)
    p.add_argument("--invert_prob", type=float, default=0.5, help="source augmentation: contrast inversion prob.")
    p.add_argument("--batch_size", type=int, default=16)
    p.add_argument("--threshold", type=float, default=0.5, help="pseudo-label threshold")
    p.add_argument("--gen_channels", type=int, nargs="+", default=[16, 32])
    p.add_argument("--gen_groups", type=int, default=8)
    p.add_argument("--spade_channels", type=int, default=16)
    p.add_argument("--diff_epochs", type=int, default=40)
    p.add_argument("--diff_lr", type=float, default=2e-3)
    p.add_argument("--ema", type=float, default=0.995)
    p.add_argument("--steps", type=int, default=50, help="sampler steps (300 with --eta 1 = the paper's DDPM)")
    p.add_argument("--eta", type=float, default=1.0)
    p.add_argument("--ft_epochs", type=int, default=20)
    p.add_argument("--ft_lr", type=float, default=1e-3)
    p.add_argument("--ft_step", type=int, default=None, help="fine-tune LR step (epochs); the paper: 3")
    p.add_argument("--work_dir", default=None)
    p.add_argument("--out", default=None, help="default: benchmarks/results/adaptdiff_<data>.json")
    args = p.parse_args()
    result = run(args)
    out = Path(args.out) if args.out else RESULTS / f"adaptdiff_{args.data}{'_' + args.tag if args.tag else ''}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(json.dumps({k: result[k] for k in ("dice", "pseudo_label_dice_vs_hidden_truth", "mask_contrast", "total_s")}))
    print("table:", write_table(out.parent))
    return result


if __name__ == "__main__":
    main()
