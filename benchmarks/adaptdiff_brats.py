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

Hu et al., arXiv:2410.04648. Two settings, in 2D (default) or 3D (``--spatial_dims 3``) on a CPU budget:

- ``--data brats``: the six BRATS 2013 cases in ``../shared/data/brats2013_deepmedic``. FLAIR is the **labelled
  source**, T1c the **unlabelled target**, whole tumour (labels 1-4; ``--structure tumour_core``: 1, 3, 4) the
  structure. Split by patient (DeepMedic's example split for the test cases): test = pat0001, pat0002 (T1c, labels
  only for scoring). ``--split shared`` (default): source = FLAIR + labels and target = T1c without labels of the
  same four training patients pat0003-pat0006 (the usual unpaired protocol; the source masks the images are drawn
  for are then the hidden labels of the target slices, a mild leak the disjoint split avoids). ``--split disjoint``:
  source = pat0005, pat0006 (FLAIR + labels), target = pat0003, pat0004 (T1c, labels never used except by the upper
  bound); with two patients per role the T1c upper bound does not generalise (see the BRATS results in ``results/``).
  Axial slices with at least ``--min_brain`` (10 %) brain in a square crop around the brain mask (every
  ``--slice_step``-th for training, all for testing), resized to ``--size`` (64 px; area for images, area + 0.5
  threshold for labels). Per-volume normalisation inside the brain mask: the 0.5 / 99.5 percentiles of the brain
  voxels map to [0, 1], the background is 0 (the files' background is the z-score of air, about -3.6). Training sets
  repeat the slices with foreground ``--oversample`` times (source and upper bound: true labels; diffusion:
  pseudo-labels; fine-tune: the synthesis masks). Score: whole-tumour Dice per test patient over all its slices
  (slice-sampled volumetric Dice), mean of patients; ``source_on_source_modality`` is the source segmenter on the
  test patients' FLAIR (a check that the set-up learns at all).
- ``--spatial_dims 3`` (BRATS): whole volumes instead of slices. Each volume is normalised as above, cropped to
  the cube around its brain mask's bounding box (zero-padded where the cube leaves the grid) and resized to
  ``--size``\ :sup:`3` voxels (32: about 6 mm voxels; area for images, area + 0.5 threshold for labels); the same
  patients, stages and networks (3D MONAI UNet segmenter, 3D SPADE diffusion UNet), one synthetic volume per source
  mask. Training sets repeat every volume ``--oversample`` times per epoch (default 8). Score: whole-tumour Dice
  per test volume. Phantoms in 3D: ``--size``\ :sup:`3` two-modality vessel volumes.
- ``--data phantoms``: two-modality vessel phantoms (bright vessels on dark background vs dark, blurred vessels on a
  bright vignetted background), disjoint anatomies for source / target / test. Score: mean Dice over test images.

Methods, same segmenter (MONAI UNet), Dice + CE loss (the Dice over the whole batch, ``--batch_dice``: with
per-image Dice every slice without tumour pulls towards "predict nothing"), schedule and spatial augmentation (flips,
small affine changes) everywhere:
**source-only** (trained on source with :func:`~monai_genaug.methods.adaptdiff.source_augmentation`), **AdaptDiff** (pseudo-labels of the target ->
mask-conditioned SPADE diffusion -> target-style images for the source masks -> fine-tune the source segmenter), and
the **upper bound** (the same segmenter trained on the target training images with their true labels).
The diffusion model samples with its EMA weights.

    python benchmarks/adaptdiff_brats.py --data brats      # writes benchmarks/results/adaptdiff_brats.json
    python benchmarks/adaptdiff_brats.py --data brats --split disjoint --tag disjoint
    python benchmarks/adaptdiff_brats.py --data phantoms   # writes benchmarks/results/adaptdiff_phantoms.json
    python benchmarks/adaptdiff_brats.py --data brats --spatial_dims 3 --seeds 0  # adaptdiff_brats3d.json

Each writes its results envelope (per-case rows over five training seeds); ``python -m
monai_genaug.evaluation.report benchmarks/results`` writes the Markdown. ``--quick`` is a one-minute smoke run.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from monai.losses import DiceCELoss
from monai.transforms import Compose, RandAffined, RandFlipd
from monai.utils import set_determinism

from monai_genaug.engines import TrainingOptions
from monai_genaug.data.phantoms import make_two_modality_phantoms
from monai_genaug.engines.segmentation import (
    build_segmenter,
    create_segmentation_trainer,
    evaluate_segmentation,
    segmenter_config,
)
from monai_genaug.evaluation import BenchmarkTimer, Oracle, ResultsTable, write_results
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


STRUCTURES = {"whole_tumour": (1, 2, 3, 4), "tumour_core": (1, 3, 4)}


#: per-data defaults of the options left unset (BRATS: 64 px slices; the run fits ~20 minutes on a shared 2-core CPU;
#: BRATS 3D: 32^3 volumes, planned for <= 25 minutes of one core with one seed)
DEFAULTS = {
    "brats": {"size": 64, "seg_epochs": 30, "diff_epochs": 25, "ft_epochs": 15, "steps": 25, "gen_channels": [16, 32, 64],
              "batch_size": 16},
    "phantoms": {"size": 32, "seg_epochs": 60, "diff_epochs": 40, "ft_epochs": 20, "steps": 50, "gen_channels": [16, 32],
                 "batch_size": 16},
    "brats3d": {"size": 32, "seg_epochs": 40, "diff_epochs": 25, "ft_epochs": 20, "steps": 25,
                "gen_channels": [16, 32, 64], "batch_size": 4, "oversample": 8},
    "phantoms3d": {"size": 16, "seg_epochs": 20, "diff_epochs": 20, "ft_epochs": 10, "steps": 25,
                   "gen_channels": [16, 32], "batch_size": 4, "oversample": 1},
}


def load_case(
    root: Path, case: str, modality: str, structure: str = "whole_tumour", percentiles: tuple[float, float] = (0.5, 99.5)
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One case's normalised ``modality`` volume, brain mask and binary ``structure`` label (same grid).

    The ``percentiles`` of the brain voxels are mapped to [0, 1] (clipped), everything outside the brain is 0 (the
    files' background is the z-score of air, about -3.6, not 0).
    """
    import nibabel as nib

    folder = root / case
    pattern = {"flair": "Flair*", "t1c": "T1c*"}[modality]
    files = sorted(folder.glob(pattern + ".nii*"))
    if len(files) != 1:
        raise FileNotFoundError(f"expected one {pattern} file in {folder}, found {[f.name for f in files]}.")
    vol = np.asarray(nib.load(str(files[0])).dataobj, dtype=np.float32)
    brain = np.asarray(nib.load(str(folder / "brainmask.nii.gz")).dataobj) > 0.5
    labels = np.rint(np.asarray(nib.load(str(folder / "OTMultiClass.nii.gz")).dataobj))
    label = np.isin(labels, STRUCTURES[structure])
    lo, hi = np.percentile(vol[brain], percentiles)
    vol = (np.clip((vol - lo) / max(hi - lo, 1e-6), 0.0, 1.0) * brain).astype(np.float32)
    return vol, brain, label


def brats_volume(
    root: Path, case: str, modality: str, size: int, structure: str = "whole_tumour",
    percentiles: tuple[float, float] = (0.5, 99.5),
) -> dict:
    """One case as a 3D item ``{"image": (1, size, size, size) in [0, 1], "label": 0/1, "id", "group"}``: the cube
    around the brain mask's bounding box (zero-padded outside the grid), resized (area; labels area + 0.5)."""
    vol, brain, label = load_case(root, case, modality, structure, percentiles)
    idx = np.nonzero(brain)
    lo, hi = np.array([i.min() for i in idx]), np.array([i.max() for i in idx]) + 1
    side = int((hi - lo).max())
    start = (lo + hi) // 2 - side // 2
    cubes = []
    for arr in (vol, label.astype(np.float32)):
        cube = np.zeros((side,) * 3, np.float32)
        src = tuple(slice(max(s, 0), min(s + side, n)) for s, n in zip(start, arr.shape))
        dst = tuple(slice(sl.start - s, sl.stop - s) for sl, s in zip(src, start))
        cube[dst] = arr[src]
        cubes.append(F.interpolate(torch.from_numpy(cube)[None, None], size=(size,) * 3, mode="area")[0])
    return {"image": cubes[0], "label": (cubes[1] > 0.5).long(), "id": case, "group": case}


def brats_slices(
    root: Path,
    case: str,
    modality: str,
    size: int,
    step: int,
    min_brain: float = 0.1,
    structure: str = "whole_tumour",
    percentiles: tuple[float, float] = (0.5, 99.5),
) -> list[dict]:
    """Axial 2D slices of one case: ``{"image": (1, size, size) in [0, 1], "label": 0/1, "id", "group"}``.

    Per-volume normalisation inside the brain mask (:func:`load_case`). Slices are cropped to a square around the brain (bounding box of the brain mask over the volume) and kept when
    the brain covers at least ``min_brain`` of the crop.
    """
    vol, brain, label = load_case(root, case, modality, structure, percentiles)
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


def oversample(items: list[dict], factor: int, key: str = "label") -> list[dict]:
    """The items plus ``factor - 1`` more copies of those whose ``key`` map has foreground (tumour slices)."""
    extra = [it for it in items if bool((torch.as_tensor(it[key]) > 0).any())]
    return list(items) + extra * max(int(factor) - 1, 0)


def brats_sets(args) -> dict[str, list[dict]]:
    root = Path(args.brats_dir) if args.brats_dir else shared_data_dir() / "brats2013_deepmedic"
    if not root.is_dir():
        raise FileNotFoundError(f"BRATS folder {root} not found; pass --brats_dir.")
    split = SPLITS[args.split]

    def load(cases, modality, step):
        if args.spatial_dims == 3:
            return [brats_volume(root, c, modality, args.size, args.structure) for c in cases]
        return [
            s
            for c in cases
            for s in brats_slices(root, c, modality, args.size, step, args.min_brain, args.structure)
        ]

    return {
        "source": load(split["source"], "flair", args.slice_step),
        "target_labelled": load(split["target"], "t1c", args.slice_step),
        # every brain slice of the test patients (step 1): the score is the Dice over each patient's slices
        "test": load(split["test"], "t1c", 1),
        # sanity reference: the test patients' FLAIR (the source modality) scored with the source segmenter
        "test_source_modality": load(split["test"], "flair", 1),
    }


def phantom_sets(args) -> dict[str, list[dict]]:
    n = args.phantoms
    data = make_two_modality_phantoms(n, (args.size,) * args.spatial_dims, seed=args.seed)
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
    """The generator path once (seed ``--seed``): source segmenter, pseudo-labels, diffusion, synthesis; then per
    training seed a source-only segmenter, its AdaptDiff fine-tune on the synthetic pairs and an upper bound, each
    scored per test case (BRATS: per patient, over all its slices; phantoms: per image)."""
    torch.set_num_threads(args.threads)
    timer = BenchmarkTimer()
    t_start = time.time()
    sets = brats_sets(args) if args.data == "brats" else phantom_sets(args)
    source, target_lab, test = sets["source"], sets["target_labelled"], sets["test"]
    target = [{k: v for k, v in it.items() if k != "label"} for it in target_lab]  # unlabelled
    out_dir = Path(args.work_dir or tempfile.mkdtemp(prefix="adaptdiff_bench_"))
    timings: dict[str, float] = {}
    seg_kwargs = {"num_res_units": 1}

    def new_pipeline() -> AdaptDiff:
        return AdaptDiff.from_preset(
            "tiny",
            spatial_dims=args.spatial_dims,
            segmenter_channels=tuple(args.seg_channels),
            segmenter_kwargs=seg_kwargs,
            generator_kwargs={"unet": {"channels": list(args.gen_channels), "norm_num_groups": args.gen_groups,
                                       "spade_intermediate_channels": args.spade_channels}},
        )

    test_loader = make_loader(test, None, 32, shuffle=False)
    over = args.oversample if args.oversample is not None else (2 if args.data == "brats" else 1)

    def seg_loss() -> DiceCELoss:
        # batch=True: one Dice over the batch, so slices without tumour do not each pull towards "predict nothing"
        return DiceCELoss(softmax=True, to_onehot_y=True, batch=args.batch_dice)

    def tick(name: str, t0: float) -> None:
        timings[name] = round(timings.get(name, 0.0) + time.time() - t0, 1)
        print(f"[{time.time() - t_start:7.1f}s] {name} done ({timings[name]} s so far)", flush=True)

    def train_source(ad: AdaptDiff, seed: int) -> None:
        t0 = time.time()
        set_determinism(seed)
        aug = with_spatial(source_augmentation(invert_prob=args.invert_prob), args.size)
        ad.source_trainer(make_loader(oversample(source, over), aug, args.batch_size, seed=seed), args.seg_epochs,
                          out_dir / f"source_{seed}", loss_function=seg_loss(), lr=args.seg_lr, cosine_lr=True,
                          options=TrainingOptions(seed=seed)).run()
        tick("source_segmenters", t0)

    table = ResultsTable()

    def score(name: str, network: torch.nn.Module, seed: int) -> None:
        res = evaluate_segmentation(network, test_loader, group_key="group")
        for case, value in res["group_dice"].items():
            table.add(name, case=case, seed=seed, value=value, metric="dice")

    # (a) source segmenter of the generator path, (b) pseudo-labels scored against the hidden target labels
    ad0 = new_pipeline()
    train_source(ad0, args.seed)
    diagnostics: dict = {}
    if "test_source_modality" in sets:
        source_loader = make_loader(sets["test_source_modality"], None, 32, shuffle=False)
        diagnostics["source-only Dice on the source modality (generator path's segmenter)"] = round(
            evaluate_segmentation(ad0.segmenter, source_loader, group_key="group")["mean_group_dice"], 4)
    t0 = time.time()
    pseudo = ad0.pseudo_label(target, threshold=args.threshold)
    pl = torch.stack([p["label"] for p in pseudo])
    truth = torch.stack([it["label"] for it in target_lab])
    tick("pseudo_labels", t0)
    # (c) mask-conditioned diffusion on target images + pseudo-labels, (d) target-style images for the source masks
    t0 = time.time()
    trainer = ad0.diffusion_trainer(
        ad0.diffusion_loader(oversample(pseudo, over), batch_size=args.batch_size, seed=args.seed), args.diff_epochs,
        out_dir / "diffusion", lr=args.diff_lr, ema_decay=args.ema, ema_warmup_iters=100,
        options=TrainingOptions(seed=args.seed))
    trainer.run()
    tick("diffusion", t0)
    t0 = time.time()
    with trainer.handles.ema.use_ema_weights():  # sample with the EMA weights
        synth = ad0.synthesize(source, num_inference_steps=args.steps, eta=args.eta, batch_size=64, seed=args.seed)
    tick("synthesis", t0)
    save_image_grid(torch.cat([synth.images[:8], synth.labels[:8].float(), torch.stack([it["image"] for it in test[:8]])]),
                    out_dir / "synthetic_grid.png", nrow=8)  # 3D: the middle slice along the last axis
    upper0 = None
    for seed in args.seeds:
        ad = ad0 if seed == args.seed else new_pipeline()
        if ad is not ad0:
            train_source(ad, seed)
        score("source_only", ad.segmenter, seed)
        # (e) fine-tune this seed's source segmenter on the synthetic pairs
        t0 = time.time()
        set_determinism(seed)
        ad.finetune_trainer(make_loader(oversample(synth.items(), over), finetune_augmentation(spatial_dims=args.spatial_dims), args.batch_size,
                                        seed=seed), args.ft_epochs, out_dir / f"finetune_{seed}",
                            loss_function=seg_loss(), lr=args.ft_lr, lr_step_size=args.ft_step,
                            options=TrainingOptions(seed=seed)).run()
        tick("finetunes", t0)
        score("adaptdiff", ad.adapted, seed)
        # upper bound: the same segmenter trained on the target training images with their labels
        t0 = time.time()
        set_determinism(seed)
        upper = build_segmenter(segmenter_config(args.spatial_dims, 1, 1, channels=tuple(args.seg_channels), **seg_kwargs))
        upper_aug = with_spatial(source_augmentation(invert_prob=0.0), args.size)
        create_segmentation_trainer(
            upper, make_loader(oversample(target_lab, over), upper_aug, args.batch_size, seed=seed), args.seg_epochs,
            out_dir / f"upper_{seed}", loss_function=seg_loss(), lr=args.seg_lr, cosine_lr=True,
            options=TrainingOptions(seed=seed)).run()
        tick("upper_bounds", t0)
        score("upper_bound", upper, seed)
        upper0 = upper0 or upper
    # independent oracle: a segmenter trained on the real target labels (never the generator) segments the synthetic
    # images; its Dice against the conditioning masks says whether the masks were drawn
    oracle = Oracle.from_network("segmentation", upper0, 1)
    oracle_table = oracle.table({"synthetic target images vs their conditioning masks": (synth.images, synth.labels)})
    real_t = torch.stack([it["image"] for it in target_lab])
    real_s = torch.stack([it["image"] for it in source])
    contrasts = ((real_s, torch.stack([it["label"] for it in source])), (real_t, truth), (synth.images, synth.labels))
    diagnostics.update({
        "pseudo-label Dice vs hidden target labels": round(dice_of(pl, truth), 4),
        "pseudo-label foreground fraction": round(float((pl > 0).float().mean()), 4),
        "true target foreground fraction": round(float((truth > 0).float().mean()), 4),
        "mask contrast source real / target real / target synthetic": " / ".join(
            f"{contrast(i, m):+.3f}" for i, m in contrasts),
        "images source / target / test / synthetic": f"{len(source)} / {len(target)} / {len(test)} / "
                                                     f"{len(synth.items())}",
        **{f"stage seconds: {k}": v for k, v in timings.items()},
    })
    data_title = ("BRATS 2013 FLAIR -> T1c, " + args.structure.replace("_", " ") + f", {args.split} patients"
                  if args.data == "brats" else "two-modality vessel phantoms")
    if args.spatial_dims == 3:
        data_title += f", 3D {args.size}^3 volumes"
    extra = {
        "title": f"AdaptDiff: {data_title}",
        "description": "Target-modality Dice per test case ("
                       + ("per test volume (BRATS: patient)" if args.spatial_dims == 3 else
                          "BRATS: per patient over all its axial slices; phantoms: per image")
                       + ") of the source-only segmenter, the same segmenter fine-tuned on synthetic "
                       "target-style images drawn for the source masks by a SPADE diffusion model trained on target "
                       "pseudo-labels (AdaptDiff), and an upper bound trained with the target labels. The generator "
                       "path (source segmenter, pseudo-labels, diffusion, synthesis) runs once with the first seed; "
                       "every seed trains its own source-only segmenter, fine-tune and upper bound. Contrast = mean "
                       "intensity inside minus outside the mask.",
        "script": "adaptdiff_brats.py",
        "measured": f"{data_title}: target-modality Dice, source-only / AdaptDiff / upper bound",
        "bundle": "adaptdiff",
        "oracle": {"rows": oracle_table.to_rows(), "test_score": oracle.test_score(
            torch.stack([it["image"] for it in test]), torch.stack([it["label"] for it in test]))},
        "diagnostics": diagnostics,
        "gap": {"baseline": "source_only", "method": "adaptdiff", "ceiling": "upper_bound"},
    }
    settings = {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(args).items() if k != "out"}
    return {"table": table, "extra": extra, "settings": settings, "timing": timer.stop(), "seconds": time.time() - t_start}


def main(argv=None) -> Path:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", choices=("brats", "phantoms"), default="brats")
    p.add_argument("--spatial_dims", type=int, choices=(2, 3), default=2, help="2: slices / 2D phantoms; 3: volumes")
    p.add_argument("--brats_dir", default=None, help="default: <shared data>/brats2013_deepmedic")
    p.add_argument("--split", choices=tuple(SPLITS), default="shared", help="BRATS patient roles (see above)")
    p.add_argument("--tag", default="", help="suffix of the result file name (several runs of one data set)")
    p.add_argument("--size", type=int, default=None, help="slice / phantom size in pixels (default: see DEFAULTS)")
    p.add_argument("--slice_step", type=int, default=2, help="BRATS: every n-th axial slice for training")
    p.add_argument("--min_brain", type=float, default=0.1, help="BRATS: least brain fraction of a kept slice")
    p.add_argument("--structure", choices=tuple(STRUCTURES), default="whole_tumour", help="BRATS: labels segmented")
    p.add_argument(
        "--oversample",
        type=int,
        default=None,
        help="repeat training items with foreground (tumour slices) this many times; default 2 (BRATS), 1 (phantoms), "
        "8 (BRATS 3D: every volume has tumour, so an epoch is 8 passes over the volumes)",
    )
    p.add_argument(
        "--batch_dice",
        type=lambda v: str(v).lower() in ("1", "true", "yes"),
        default=True,
        help="Dice of DiceCELoss over the whole batch (True) or per image (MONAI's default)",
    )
    p.add_argument("--phantoms", type=int, default=100, help="phantoms: number of anatomies (40 / 40 / 20 %%)")
    p.add_argument("--seed", type=int, default=0, help="seed of the generator path (source segmenter, diffusion)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4], help="training seeds of the segmenters")
    p.add_argument("--quick", action="store_true", help="a smoke run on a few small phantoms (about a minute)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest for these tiny nets)")
    p.add_argument("--seg_channels", type=int, nargs="+", default=[16, 32, 64, 128])
    p.add_argument("--seg_epochs", type=int, default=None)
    p.add_argument("--seg_lr", type=float, default=3e-3)
    p.add_argument("--invert_prob", type=float, default=0.5, help="source augmentation: contrast inversion prob.")
    p.add_argument("--batch_size", type=int, default=None)
    p.add_argument("--threshold", type=float, default=0.5, help="pseudo-label threshold")
    p.add_argument("--gen_channels", type=int, nargs="+", default=None)
    p.add_argument("--gen_groups", type=int, default=8)
    p.add_argument("--spade_channels", type=int, default=16)
    p.add_argument("--diff_epochs", type=int, default=None)
    p.add_argument("--diff_lr", type=float, default=2e-3)
    p.add_argument("--ema", type=float, default=0.995)
    p.add_argument("--steps", type=int, default=None, help="sampler steps (300 with --eta 1 = the paper's DDPM)")
    p.add_argument("--eta", type=float, default=1.0)
    p.add_argument("--ft_epochs", type=int, default=None)
    p.add_argument("--ft_lr", type=float, default=1e-3)
    p.add_argument("--ft_step", type=int, default=None, help="fine-tune LR step (epochs); the paper: 3")
    p.add_argument("--work_dir", default=None)
    p.add_argument("--out", default=None, help="default: benchmarks/results/adaptdiff_<data>.json")
    args = p.parse_args(argv)
    if args.quick:
        args.data, args.phantoms, args.size, args.seeds = "phantoms", 10, 16, [0, 1]
        args.seg_epochs, args.diff_epochs, args.ft_epochs, args.steps = 1, 1, 1, 2
    data_key = f"{args.data}{'3d' if args.spatial_dims == 3 else ''}"
    for key, value in DEFAULTS[data_key].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.seed not in args.seeds:
        p.error(f"--seed {args.seed} must be one of --seeds {args.seeds} (its segmenter is reused).")
    res = run(args)
    out = Path(args.out) if args.out else RESULTS / f"adaptdiff_{data_key}{'_' + args.tag if args.tag else ''}.json"
    path = write_results(out, out.stem, res["settings"], args.seeds, res["table"], res["timing"],
                         primary_metric="dice", baseline="source_only", extra=res["extra"], quick=args.quick)
    print(f"wrote {path} in {res['seconds']:.0f} s; python -m monai_genaug.evaluation.report {path.parent} writes the "
          "Markdown")
    return path


if __name__ == "__main__":
    main()
