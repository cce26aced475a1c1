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
"""HistoDiffusion low-label benchmark: does real + filtered synthetic data beat real data alone at 5 % labels, and
where does the chain (noisy classifier -> guidance -> filter -> learner) break when it does not.

Per fold, the paper's premise is exercised: an autoencoder and an unconditional latent diffusion model are
pre-trained on an **unlabelled pool disjoint from the labelled target** (BRATS: every brain slice of both MRI
sequences of other patients; phantoms: a separately drawn phantom pool); a noisy-latent classifier is trained on the
5 % labelled target images, on noisy latents up to ``--clf-max-timestep``; its balanced accuracy per timestep on the
validation images sets the guidance's timestep range (:func:`informative_max_timestep`); the guidance scale (and
whether to restrict the range) is chosen by the class agreement of an independent oracle on the validation split
(:func:`select_guidance`); ``--generate`` samples per class are synthesised; the centroid filter runs on the
penultimate features of a classifier trained on the labelled real images (independent of the generator and of the
guide), capped at ``--ratio-to-real`` x the real count per class. Downstream comparison: the evaluation protocol
(:mod:`monai_genaug.evaluation`: GlobalPoolCNN, same iterations for every variant, ``--seeds`` seeds, per-case rows,
bootstrap intervals, paired differences), the nested label curve at 5 / 10 / 25 / 100 % of the labelled target
(5 %: the ``real_only`` runs, 100 %: ``upper_bound``), and a
reporting oracle (another seed than the selection oracle) scoring the synthetic set (all / kept / dropped).

Data sets:

- ``brats``: BRATS 2013 (DeepMedic copy, 6 patients) axial slices inside the brain, 32 x 32, labelled by tumour
  presence (tumour area >= ``--tumour-min`` pixels: 1, none: 0, in between: left out). Patient-grouped 3-fold
  cross-validation over the patient pairs (1, 2), (3, 4), (5, 6): per fold one pair is the test set, the next the
  labelled target (FLAIR; 5 % of its slices labelled, the rest the validation split of the selections and the
  100 % point), the third the pre-training pool (FLAIR and T1c slices, no labels). Every patient is tested once.
  Needs ``$MONAI_GENAUG_DATA/brats2013_deepmedic`` (default ``../shared/data``); skipped when absent.
- ``brats3d``: the same protocol on 3D patches (the generator, guide, filter network and learner in 3D): each volume
  area-downsampled by ``--patch-factor`` (mm per voxel), cut into ``--patch-size``^3 patches at half-patch stride,
  patches with >= 50 % brain kept, labelled by tumour presence (>= ``--patch-tumour-min`` tumour voxels at 1 mm: 1,
  none: 0, in between: left out). Meant to be run once at a CPU budget (``--folds 1 --seeds 3`` and fewer
  generator iterations; the title and settings say so).
- ``phantoms``: histology-like class phantoms (4 classes, 32 x 32 RGB): a target set of ``--num-phantoms`` split
  70 / 10 / 20 % (5 % of the training split labelled, the rest validation) and a disjoint pool of
  ``--pool-phantoms`` phantoms drawn with another seed (no labels). One fold.

    python benchmarks/histodiffusion_lowlabel.py [--datasets phantoms brats brats3d] [--quick] [--work-dir DIR]

Resumable: with ``--work-dir`` every finished fold is kept as ``<work>/<data set>/fold_<k>/fold.json`` and not rerun.
Writes ``benchmarks/results/histodiffusion_lowlabel_<data set>.json`` (``python -m monai_genaug.evaluation.report
benchmarks/results`` writes the Markdown). Runs on one CPU thread by default (``--threads``).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from monai.data import DataLoader, Dataset

from monai_genaug.engines import TrainingOptions
from monai_genaug.data.folders import class_folder_datalist, nifti_case_datalist
from monai_genaug.data.phantoms import write_phantom_dataset
from monai_genaug.data.pipelines import classification_2d_transforms
from monai_genaug.engines.classifier import noisy_latent_accuracy
from monai_genaug.evaluation import (
    BenchmarkTimer,
    Oracle,
    ResultsTable,
    evaluate_downstream,
    evaluate_training_sets,
    write_json_atomic,
    write_results,
)
from monai_genaug.methods.histodiffusion import (
    HistoDiffusion,
    PenultimateFeatures,
    informative_max_timestep,
    materialize,
    prepare_histodiffusion_data,
    select_guidance,
    train_real_feature_network,
)
from monai_genaug.utils.images import save_image_grid
from monai_genaug.utils.paths import shared_data_dir

RESULTS = Path(__file__).resolve().parent / "results"

#: the generator used for both data sets (the bundle's default architecture)
GENERATOR_OVERRIDES = {
    "autoencoder": {"channels": [16, 32], "num_res_blocks": [1, 1], "latent_channels": 3, "norm_num_groups": 8},
    "unet": {
        "channels": [32, 48, 64],
        "attention_levels": [False, True, True],
        "num_head_channels": [0, 16, 32],
        "norm_num_groups": 16,
    },
}
#: BRATS patient pairs; fold k tests pair k, labels 5 % of pair k + 1 and pre-trains on pair k + 2
BRATS_PAIRS = [(1, 2), (3, 4), (5, 6)]
#: timesteps at which the noisy classifier's accuracy is measured
ACCURACY_TIMESTEPS = (0, 100, 200, 300, 400, 500, 600, 700, 800, 900)
#: label-curve points (% of the labelled target's images)
CURVE_PERCENT = (5, 10, 25, 100)


# ----------------------------------------------------------------------------------------------------- data
def _labelled_split(items: list[dict], fraction: float, seed: int, min_per_class: int = 2) -> tuple[list, list]:
    """A stratified ``fraction`` of ``items`` (at least ``min_per_class`` per class) and the rest."""
    rng = np.random.default_rng(seed)
    chosen: set[int] = set()
    for c in sorted({int(s["label"]) for s in items}):
        idx = [i for i, s in enumerate(items) if int(s["label"]) == c]
        n = min(len(idx), max(min_per_class, round(fraction * len(idx))))
        chosen.update(int(i) for i in rng.permutation(idx)[:n])
    return [s for i, s in enumerate(items) if i in chosen], [s for i, s in enumerate(items) if i not in chosen]


def _strip(items: list[dict], label: bool = True) -> list[dict]:
    return [{"image": s["image"], **({"label": int(s["label"])} if label else {})} for s in items]


def phantom_folds(args: argparse.Namespace, work: Path) -> list[dict[str, Any]]:
    """One fold: a phantom target set (labelled 5 % / validation / test) and a disjoint phantom pool."""
    d = prepare_histodiffusion_data(
        None, work / "phantoms", labelled_fraction=1.0, num_phantoms=args.num_phantoms, phantom_classes=4,
        phantom_size=(32, 32), seed=args.seed,
    )
    tf = classification_2d_transforms(spatial_size=(32, 32))
    target = materialize(d["unlabelled"], tf)
    labelled, validation = _labelled_split(target, args.labelled_fraction, args.seed)
    pool_root = write_phantom_dataset(
        "classes", work / "phantom_pool", args.pool_phantoms, seed=args.seed + 1000, overwrite=True,
        spatial_size=(32, 32), num_classes=4,
    )
    pool = materialize(class_folder_datalist(pool_root), tf)
    test = materialize(d["test"], tf)
    return [{
        "name": "phantoms",
        "pool": _strip(pool, label=False), "labelled": _strip(labelled), "validation": _strip(validation),
        "test": _strip(test), "test_ids": [f"phantom_test_{i:03d}" for i in range(len(test))],
        "class_names": d["class_names"], "channels": 3, "image_size": (32, 32),
        "pool_description": f"{len(pool)} phantoms drawn with seed {args.seed + 1000} (disjoint from the target set)",
        "description": f"{args.num_phantoms} target phantoms (4 classes, 32x32 RGB), 70/10/20 split",
    }]


def _normalised_volume(case: dict, modality: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One sequence intensity-clipped to [0, 1] inside the brain (0.5 / 99.5 percentiles), the tumour mask and the
    brain mask, all ``(240, 240, 155)``."""
    import nibabel as nib

    vol = np.asarray(nib.load(case[modality]).dataobj, dtype=np.float32)
    label = np.asarray(nib.load(case["label"]).dataobj) > 0.5
    brain = np.asarray(nib.load(case["brain"]).dataobj) > 0.5
    lo, hi = np.percentile(vol[brain], (0.5, 99.5))
    return np.clip((vol - lo) / (hi - lo), 0.0, 1.0) * brain, label, brain


def _slices(case: dict, modality: str, size: int, tumour_min: int, brain_min: float) -> list[dict]:
    """Axial slices of one sequence inside the brain, intensity-clipped to [0, 1], resized to ``size``, labelled by
    tumour presence (slices with 0 < tumour < ``tumour_min`` pixels are left out)."""
    vol, label, brain = _normalised_volume(case, modality)
    area = brain.sum(axis=(0, 1))
    out = []
    for z in range(vol.shape[2]):
        if area[z] < brain_min * area.max():
            continue
        tumour = int(label[:, :, z].sum())
        if 0 < tumour < tumour_min:
            continue  # ambiguous slice: a few tumour pixels
        img = torch.from_numpy(np.ascontiguousarray(vol[:, :, z].T, dtype=np.float32))[None, None]  # rows: A-P
        img = F.interpolate(img, size=(size, size), mode="area")[0]
        out.append({"image": img, "label": int(tumour > 0), "case": f"{case['case_id']}_{modality}_z{z:03d}"})
    return out


def _patches(case: dict, modality: str, size: int, factor: int, tumour_min: int, brain_min: float) -> list[dict]:
    """3D patches of one sequence: the volume area-downsampled by ``factor`` (1 mm -> ``factor`` mm voxels), cut into
    ``size``^3 patches on a grid of stride ``size // 2``; patches with a brain fraction >= ``brain_min`` are kept,
    labelled by tumour presence (tumour voxels >= ``tumour_min`` at 1 mm: 1, none: 0, in between: left out)."""
    vol, label, brain = _normalised_volume(case, modality)

    def pool(a: np.ndarray) -> torch.Tensor:
        return F.avg_pool3d(torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))[None, None], factor)[0, 0]

    v, t, b = pool(vol), pool(label) * factor**3, pool(brain)  # t: tumour voxels at 1 mm per coarse voxel
    stride, out = max(1, size // 2), []
    for x in range(0, v.shape[0] - size + 1, stride):
        for y in range(0, v.shape[1] - size + 1, stride):
            for z in range(0, v.shape[2] - size + 1, stride):
                window = (slice(x, x + size), slice(y, y + size), slice(z, z + size))
                if float(b[window].mean()) < brain_min:
                    continue
                tumour = float(t[window].sum())
                if 0 < tumour < tumour_min:
                    continue  # ambiguous patch: a few tumour voxels
                out.append({"image": v[window][None].clone(), "label": int(tumour > 0),
                            "case": f"{case['case_id']}_{modality}_x{x:03d}y{y:03d}z{z:03d}"})
    return out


def brats_folds(args: argparse.Namespace, work: Path, spatial_dims: int = 2) -> list[dict[str, Any]] | None:
    """Patient-grouped 3-fold cross-validation: test pair / labelled target pair (FLAIR) / pre-training pool pair
    (``--pool-modalities``, unlabelled); the first ``--folds`` folds. Items are 32 x 32 axial slices
    (``spatial_dims=2``) or ``--patch-size``^3 patches of the volumes downsampled by ``--patch-factor``
    (``spatial_dims=3``)."""
    root = shared_data_dir() / "brats2013_deepmedic"
    if not root.is_dir():
        print(f"BRATS data not found under {root}; skipping the brats benchmark.")
        return None
    cases = nifti_case_datalist(
        root, patterns={"flair": "Flair*", "t1c": "T1c*", "label": "OTMultiClass*", "brain": "brainmask*"},
        check_shapes=False,
    )
    by_patient = {int(c["case_id"].split("pat")[1][:4]): c for c in cases}
    if sorted(by_patient) != [1, 2, 3, 4, 5, 6]:
        raise ValueError(f"expected BRATS patients 1-6 under {root}, found {sorted(by_patient)}.")
    if spatial_dims == 2:
        size, unit = (32, 32), "slices"

        def items(p: int, m: str) -> list[dict]:
            return _slices(by_patient[p], m, 32, args.tumour_min, 0.1)
    else:
        size, unit = (args.patch_size,) * 3, f"{args.patch_size}^3 patches ({args.patch_factor} mm voxels)"

        def items(p: int, m: str) -> list[dict]:
            return _patches(by_patient[p], m, args.patch_size, args.patch_factor, args.patch_tumour_min, 0.5)
    cache: dict[tuple[int, str], list[dict]] = {}

    def get(p: int, m: str) -> list[dict]:
        if (p, m) not in cache:
            cache[p, m] = items(p, m)
        return cache[p, m]

    folds = []
    for k, test_pair in enumerate(BRATS_PAIRS[: args.folds]):
        target_pair, pool_pair = BRATS_PAIRS[(k + 1) % 3], BRATS_PAIRS[(k + 2) % 3]
        target = [s for p in target_pair for s in get(p, "flair")]
        test = [s for p in test_pair for s in get(p, "flair")]
        pool = [s for p in pool_pair for m in args.pool_modalities for s in get(p, m)]
        labelled, validation = _labelled_split(target, args.labelled_fraction, args.seed + k)
        folds.append({
            "name": f"fold{k}",
            "pool": _strip(pool, label=False), "labelled": _strip(labelled), "validation": _strip(validation),
            "test": _strip(test), "test_ids": [s["case"] for s in test],
            "class_names": ["no_tumour", "tumour"], "channels": 1, "image_size": size,
            "pool_description": f"patients {pool_pair}: {len(pool)} {unit} of {'+'.join(args.pool_modalities)}",
            "description": f"test patients {test_pair} ({len(test)} FLAIR {unit}), labelled target patients "
                           f"{target_pair} ({len(target)} FLAIR {unit})",
        })
    return folds


# ------------------------------------------------------------------------------------------------ one fold
def _loader(items: list[dict], batch_size: int, seed: int, keys: tuple[str, ...] = ("image",)) -> DataLoader:
    data = [{k: item[k] for k in keys} for item in items]
    return DataLoader(
        Dataset(data), batch_size=batch_size, shuffle=True, generator=torch.Generator().manual_seed(seed)
    )


def _stack(items: list[dict]) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.stack([torch.as_tensor(i["image"]) for i in items]).float(), torch.tensor(
        [int(i["label"]) for i in items])


def _pretrain(hd: HistoDiffusion, fold: dict, args: argparse.Namespace, out: Path, timings: dict) -> None:
    """Autoencoder + unconditional LDM on the fold's pool (kept as ``generator.pt`` in ``out`` and reused)."""
    path = out / "generator.pt"
    if path.is_file():
        hd.generator.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        return
    common = {"resume": False, "save_interval": 10_000, "seed": args.seed}
    unl = _loader(fold["pool"], 16, args.seed)
    t = time.perf_counter()
    hd.autoencoder_trainer(unl, max(1, args.ae_iterations // len(unl)), out / "ae", lr=2e-3, adv_weight=0.0,
                           **common).run()
    timings["autoencoder_s"] = time.perf_counter() - t
    t = time.perf_counter()
    epochs = 10
    trainer = hd.diffusion_trainer(unl, epochs, out / "ldm", lr=1e-3, ema_decay=0.995,
                                   epoch_length=args.ldm_iterations // epochs, **common)
    trainer.run()
    with trainer.handles.ema.use_ema_weights():  # sample with the EMA weights, as the paper
        ema_state = {k: v.clone() for k, v in hd.generator.unet.state_dict().items()}
    hd.generator.unet.load_state_dict(ema_state)
    timings["diffusion_s"] = time.perf_counter() - t
    torch.save(hd.generator.state_dict(), path)


def _accuracy_per_t(hd: HistoDiffusion, items: list[dict], balanced: bool, horizon: int) -> dict[int, float]:
    loader = DataLoader(Dataset(_strip(items)), batch_size=64)
    ts = [t for t in ACCURACY_TIMESTEPS if t < horizon]
    return noisy_latent_accuracy(hd.classifier, hd.generator, loader, timesteps=ts, balanced=balanced)


def run_fold(fold: dict[str, Any], args: argparse.Namespace, out: Path) -> dict[str, Any]:
    """Every stage of one fold; returns the fold's rows, oracle rows and chain diagnostics (JSON-serialisable)."""
    timings: dict[str, float] = {}
    out.mkdir(parents=True, exist_ok=True)
    names = fold["class_names"]
    k = len(names)
    torch.manual_seed(args.seed)
    size = tuple(fold["image_size"])
    hd = HistoDiffusion.from_preset(
        "tiny", spatial_dims=len(size), image_channels=fold["channels"], class_names=names, image_size=size,
        classifier_preset="tiny", generator_overrides=GENERATOR_OVERRIDES,
    )
    _pretrain(hd, fold, args, out, timings)
    horizon = int(hd.generator.scheduler.num_train_timesteps)

    # 1. the noisy classifier on the 5 % labelled images, noisy latents up to --clf-max-timestep
    t = time.perf_counter()
    lab = _loader(fold["labelled"], 16, args.seed, keys=("image", "label"))
    hd.classifier_trainer(
        lab, 10, out / "clf", lr=2e-3, weight_decay=0.05, epoch_length=args.clf_iterations // 10,
        options=TrainingOptions(seed=args.seed, resume=False, save_interval=10_000),
        max_timestep=min(args.clf_max_timestep, horizon - 1),
    ).run()
    timings["classifier_s"] = time.perf_counter() - t
    val_bacc = _accuracy_per_t(hd, fold["validation"], True, horizon)
    test_bacc = _accuracy_per_t(hd, fold["test"], True, horizon)
    t_max = informative_max_timestep(val_bacc, chance=1.0 / k, margin=args.margin)

    # 2. guidance scale and range chosen on the validation split by an independent oracle
    t = time.perf_counter()
    target = _stack(fold["labelled"] + fold["validation"])
    oracle_sel = Oracle("classification", k, iterations=args.oracle_iterations, seed=100).fit(*target)
    oracle_rep = Oracle("classification", k, iterations=args.oracle_iterations, seed=101).fit(*target)
    timings["oracles_s"] = time.perf_counter() - t
    t = time.perf_counter()
    ranges = [None] if t_max is None else [t_max, None]
    choice = select_guidance(hd, oracle_sel, size, scales=args.scales, max_timesteps=ranges,
                             num_per_class=args.select_per_class, num_inference_steps=args.steps,
                             batch_size=args.batch, seed=args.seed + 10_000)
    timings["selection_s"] = time.perf_counter() - t

    # 3. the synthetic set with the chosen guidance
    synth = hd.synthesize(args.generate, size, guidance_scale=choice["scale"],
                          guidance_max_timestep=choice["max_timestep"], eta=1.0, num_inference_steps=args.steps,
                          batch_size=args.batch, seed=args.seed)
    timings["synthesis_s"] = synth.seconds
    save_image_grid(torch.cat([synth.images[synth.labels == c][:8] for c in range(k)]), out / "samples.png",
                    nrow=8, normalise=False)

    # 4. the centroid filter on features independent of the generator and the guide (+ the latent features, compared)
    t = time.perf_counter()
    real = _stack(fold["labelled"])
    feature_net = train_real_feature_network(*real, k, iterations=args.feature_iterations, seed=args.seed)
    result = hd.centroid_filter(PenultimateFeatures(feature_net), ratio_to_real=args.ratio_to_real).fit(*real)(
        synth.images, synth.labels)
    result_latent = hd.centroid_filter("latent", ratio_to_real=args.ratio_to_real).fit(*real)(
        synth.images, synth.labels)
    timings["filter_s"] = time.perf_counter() - t
    keep, keep_latent = result.keep, result_latent.keep
    agree = oracle_rep.score(synth.images, synth.labels).float()

    def prefix(ids: list[str]) -> list[str]:
        return [f"{fold['name']}/{i}" for i in ids]

    sid = [f"{names[int(y)]}_{int(s)}" for y, s in zip(synth.labels, synth.seeds)]
    oracle_sets = {
        "guided samples (all)": torch.ones_like(keep), "kept (real-classifier features)": keep,
        "dropped (real-classifier features)": ~keep, "kept (autoencoder-latent features)": keep_latent,
    }
    oracle_rows = ResultsTable()
    for name, mask in oracle_sets.items():
        for case, v in zip(prefix([i for i, m in zip(sid, mask.tolist()) if m]), agree[mask].tolist()):
            oracle_rows.add(name, case=case, seed=101, value=v, metric="oracle_accuracy")
    for c in choice["candidates"]:
        rng = "all t" if c["max_timestep"] is None else f"t <= {c['max_timestep']}"
        name = f"selection draw: scale {c['scale']:g}, {rng} (selection oracle)"
        for i, v in enumerate(c["scores"]):
            oracle_rows.add(name, case=f"{fold['name']}/sel_{i:03d}", seed=100, value=v, metric="oracle_accuracy")

    # 5. downstream: the protocol on real only / + all / + filtered / + random / upper bound, and the label curve
    t = time.perf_counter()
    test = _stack(fold["test"])
    common = {"iterations": args.downstream_iterations, "batch_size": 16, "lr": 2e-3, "seeds": tuple(range(args.seeds)),
              "case_ids": prefix(fold["test_ids"])}
    table, counts = evaluate_downstream("classification", real, test, k, synthetic=(synth.images, synth.labels),
                                        keep=keep, upper_bound=_stack(fold["validation"]), **common)
    timings["downstream_s"] = time.perf_counter() - t
    t = time.perf_counter()
    curve_rows = _label_curve_rows(fold, table, real, test, k, args, common)
    timings["label_curve_s"] = time.perf_counter() - t

    chain = {
        "pool": fold["pool_description"],
        "data": fold["description"],
        "pool / labelled / validation / test": [len(fold["pool"]), len(fold["labelled"]), len(fold["validation"]),
                                                len(fold["test"])],
        "classifier_balanced_accuracy_validation": {str(t): round(v, 3) for t, v in val_bacc.items()},
        "classifier_balanced_accuracy_test": {str(t): round(v, 3) for t, v in test_bacc.items()},
        "informative_max_timestep": t_max,
        "selection": {**{k2: v for k2, v in choice.items() if k2 != "candidates"},
                      "candidates": [{k2: v for k2, v in c.items() if k2 != "scores"} for c in choice["candidates"]]},
        "oracle_test_score": {"selection": oracle_sel.test_score(*test), "reporting": oracle_rep.test_score(*test)},
        "oracle_agreement": {name: float(agree[m].mean()) if bool(m.any()) else None for name, m in oracle_sets.items()},
        "kept_per_class": [int((keep & (synth.labels == c)).sum()) for c in range(k)],
        "kept_per_class_latent": [int((keep_latent & (synth.labels == c)).sum()) for c in range(k)],
        "real_per_class": [int((real[1] == c).sum()) for c in range(k)],
        "counts": counts,
        "seconds": {k2: round(v, 1) for k2, v in timings.items()},
    }
    return {"rows": table.to_rows(), "curve_rows": curve_rows, "oracle_rows": oracle_rows.to_rows(), "chain": chain}


def _label_curve_rows(fold: dict, table: ResultsTable, real: tuple, test: tuple, k: int, args: argparse.Namespace,
                      common: dict) -> list[dict]:
    """The learner's label curve at 5 / 10 / 25 / 100 % of the labelled target, nested: 5 % is the labelled set
    (the ``real_only`` runs), 10 / 25 % add stratified draws of the validation images, 100 % is ``upper_bound``."""
    rng = np.random.default_rng(args.seed + 7)
    per_class = {c: [i for i, s in enumerate(fold["validation"]) if s["label"] == c] for c in range(k)}
    per_class = {c: [idx[j] for j in rng.permutation(len(idx))] for c, idx in per_class.items()}
    n_real = {c: int((real[1] == c).sum()) for c in range(k)}
    variants = {}
    for p in CURVE_PERCENT[1:-1]:
        chosen = []
        for c, idx in per_class.items():
            total = n_real[c] + len(idx)
            chosen += idx[: max(0, min(len(idx), round(p / 100 * total) - n_real[c]))]
        variants[f"{p} % labels"] = _stack([fold["validation"][i] for i in sorted(chosen)]) if chosen else None
    curve, _ = evaluate_training_sets("classification", real, test, k, variants, **common)
    rows = [{**r, "method": f"{CURVE_PERCENT[0]} % labels"} for r in table.to_rows() if r["method"] == "real_only"]
    rows += curve.to_rows()
    rows += [{**r, "method": f"{CURVE_PERCENT[-1]} % labels"} for r in table.to_rows() if r["method"] == "upper_bound"]
    sizes = {f"{CURVE_PERCENT[0]} % labels": len(fold["labelled"]),
             f"{CURVE_PERCENT[-1]} % labels": len(fold["labelled"]) + len(fold["validation"]),
             **{m: len(fold["labelled"]) + (0 if v is None else int(v[0].shape[0])) for m, v in variants.items()}}
    return [{**r, "num_labels": sizes[r["method"]]} for r in rows]


# ------------------------------------------------------------------------------------------------ the data set
def _fmt_t(d: dict[str, float]) -> str:
    return " / ".join(f"{v:.2f}" for v in d.values())


def run_dataset(name: str, folds: list[dict[str, Any]], args: argparse.Namespace, work: Path) -> dict[str, Any]:
    results = []
    for k, fold in enumerate(folds):
        cache = work / name / f"fold_{k}" / "fold.json"
        if cache.is_file():
            print(f"{name} {fold['name']}: reusing {cache}")
            results.append(json.loads(cache.read_text()))
            continue
        t = time.perf_counter()
        res = run_fold(fold, args, cache.parent)
        write_json_atomic(res, cache)
        print(f"{name} {fold['name']}: done in {time.perf_counter() - t:.0f} s")
        results.append(res)
    rows = [r for res in results for r in res["rows"]]
    chains = {fold["name"]: res["chain"] for fold, res in zip(folds, results)}
    counts: dict[str, dict[str, int]] = {}
    for res in results:  # training items summed over the folds
        for variant, c in res["chain"]["counts"].items():
            acc = counts.setdefault(variant, {"num_train": 0, "num_synthetic": 0})
            acc["num_train"] += c["num_train"]
            acc["num_synthetic"] += c["num_synthetic"]
    oracle_rows = [r for res in results for r in res["oracle_rows"]]
    diagnostics: dict[str, Any] = {}
    for fold_name, ch in chains.items():
        p = f"{fold_name}: " if len(chains) > 1 else ""
        ts = " / ".join(ch["classifier_balanced_accuracy_validation"])
        sel = ch["selection"]
        diagnostics.update({
            f"{p}data": ch["data"],
            f"{p}pre-training pool (no labels, disjoint from the target)": ch["pool"],
            f"{p}pool / labelled / validation / test images": " / ".join(map(str, ch["pool / labelled / validation / test"])),
            f"{p}noisy classifier balanced accuracy, validation, t = {ts}": _fmt_t(ch["classifier_balanced_accuracy_validation"]),
            f"{p}noisy classifier balanced accuracy, test, same t": _fmt_t(ch["classifier_balanced_accuracy_test"]),
            f"{p}informative range (validation accuracy >= chance + {args.margin})":
                "none" if ch["informative_max_timestep"] is None else f"t <= {ch['informative_max_timestep']}",
            f"{p}oracle agreement per candidate (scale, range; selection oracle, validation draw)": "; ".join(
                f"{c['scale']:g}, {'all t' if c['max_timestep'] is None else 't <= %d' % c['max_timestep']}: "
                f"{c['agreement']:.2f}" for c in sel["candidates"]),
            f"{p}chosen guidance": f"scale {sel['scale']:g}, "
                                   f"{'all t' if sel['max_timestep'] is None else 't <= %d' % sel['max_timestep']}",
            f"{p}oracle test accuracy (selection / reporting oracle)":
                f"{ch['oracle_test_score']['selection']:.3f} / {ch['oracle_test_score']['reporting']:.3f}",
            f"{p}reporting-oracle agreement: all / kept / dropped / kept by latent features": " / ".join(
                "n/a" if v is None else f"{v:.3f}" for v in ch["oracle_agreement"].values()),
            f"{p}kept per class (real-classifier / latent features; real per class)":
                f"{ch['kept_per_class']} / {ch['kept_per_class_latent']}; {ch['real_per_class']}",
            f"{p}stage seconds": ", ".join(f"{k2} {v}" for k2, v in ch["seconds"].items()),
        })
    oracle_scores = [ch["oracle_test_score"]["reporting"] for ch in chains.values()]
    n_folds = len(folds)
    return {
        "table": rows,
        "extra": {
            "title": f"HistoDiffusion low-label benchmark: {name}",
            "description": (
                "Downstream classification with the evaluation protocol (GlobalPoolCNN, the same iterations for every "
                "training set, per-image scores 1 = right class over the test images and seeds"
                + (f", {n_folds} patient-grouped folds: every patient tested once" if n_folds > 1 else "")
                + "). The generator is pre-trained on an unlabelled pool disjoint from the labelled target; "
                "real_only: the 5 % labelled target images; real+all: + every guided sample; real+filtered: + the "
                "centroid filter on features of a classifier trained on the labelled real images (cap "
                f"{args.ratio_to_real:g} x the real count per class); real+random: + a random subset of the "
                "filtered count; upper_bound: every labelled-target image with its label. Training items are "
                "summed over the folds. The guidance scale and range were chosen on the validation split by an "
                "independent oracle (Diagnostics)."
            ),
            "script": "histodiffusion_lowlabel.py",
            "measured": f"{name}: accuracy with {100 * args.labelled_fraction:.0f} % labels",
            "bundle": "histodiffusion",
            "counts": counts,
            "label_curve": {"metric": "accuracy", "rows": [r for res in results for r in res["curve_rows"]],
                            "size_label": "% of the labelled target's images"},
            "oracle": {"rows": oracle_rows, "test_score": float(np.mean(oracle_scores))},
            "diagnostics": diagnostics,
            "chain": chains,
        },
    }


def main(argv=None) -> list[Path]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=["phantoms", "brats"],
                        choices=["phantoms", "brats", "brats3d"],
                        help="brats3d: the BRATS protocol on 3D patches (run once, with --folds / --seeds cut)")
    parser.add_argument("--folds", type=int, default=3, choices=[1, 2, 3], help="BRATS: run the first N folds")
    parser.add_argument("--patch-size", type=int, default=16, help="brats3d: patch edge in (downsampled) voxels")
    parser.add_argument("--patch-factor", type=int, default=3, help="brats3d: downsampling factor (mm per voxel)")
    parser.add_argument("--patch-tumour-min", type=int, default=1000,
                        help="brats3d: tumour voxels (at 1 mm) for a tumour patch; fewer (but > 0): left out")
    parser.add_argument("--quick", action="store_true", help="a smoke run (few iterations), ~1 minute per fold")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--seeds", type=int, default=5, help="downstream training seeds per variant (>= 5)")
    parser.add_argument("--labelled-fraction", type=float, default=0.05)
    parser.add_argument("--num-phantoms", type=int, default=400, help="phantom target set")
    parser.add_argument("--pool-phantoms", type=int, default=600, help="phantom pre-training pool (disjoint)")
    parser.add_argument("--pool-modalities", nargs="+", default=["flair", "t1c"], choices=["flair", "t1c"],
                        help="BRATS sequences of the pre-training pool")
    parser.add_argument("--tumour-min", type=int, default=200, help="tumour pixels (at 240x240) for a tumour slice")
    parser.add_argument("--ae-iterations", type=int, default=300)
    parser.add_argument("--ldm-iterations", type=int, default=1200)
    parser.add_argument("--clf-iterations", type=int, default=1500)
    parser.add_argument("--clf-max-timestep", type=int, default=600,
                        help="largest training timestep of the noisy classifier (guidance acts below it)")
    parser.add_argument("--margin", type=float, default=0.1,
                        help="guidance acts where the validation balanced accuracy is >= chance + margin")
    parser.add_argument("--scales", type=float, nargs="+", default=[0.0, 3.0, 10.0, 30.0],
                        help="candidate guidance scales (chosen by oracle agreement on validation)")
    parser.add_argument("--select-per-class", type=int, default=16, help="samples per class and candidate")
    parser.add_argument("--oracle-iterations", type=int, default=500)
    parser.add_argument("--feature-iterations", type=int, default=300, help="filter feature network steps")
    parser.add_argument("--generate", type=int, default=48, help="synthetic samples per class")
    parser.add_argument("--ratio-to-real", type=float, default=2.0, help="filter cap per class x real count")
    parser.add_argument("--steps", type=int, default=25, help="DDIM steps")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--downstream-iterations", type=int, default=250)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--work-dir", default=None, help="keep finished folds (resume) and samples.png here")
    parser.add_argument("--out_dir", default=str(RESULTS), help="folder of histodiffusion_lowlabel_<data set>.json")
    args = parser.parse_args(argv)
    if args.quick:
        args.ae_iterations, args.ldm_iterations, args.clf_iterations = 20, 40, 40
        args.generate, args.steps, args.downstream_iterations, args.seeds = 8, 5, 10, 2
        args.select_per_class, args.oracle_iterations, args.feature_iterations = 4, 20, 20
        args.num_phantoms, args.pool_phantoms = min(args.num_phantoms, 80), min(args.pool_phantoms, 80)
    torch.set_num_threads(args.threads)
    tmp = tempfile.TemporaryDirectory() if args.work_dir is None else None
    work = Path(args.work_dir or tmp.name)
    settings = {k: v for k, v in vars(args).items() if k not in ("out_dir", "work_dir", "datasets")}
    loaders = {"phantoms": phantom_folds, "brats": brats_folds,
               "brats3d": lambda a, w: brats_folds(a, w, spatial_dims=3)}
    written = []
    for name in args.datasets:
        timer = BenchmarkTimer()
        folds = loaders[name](args, work)
        if folds is None:
            continue
        res = run_dataset(name, folds, args, work)
        if name != "phantoms" and (len(folds) < len(BRATS_PAIRS) or args.seeds < 5):
            res["extra"]["title"] += f" ({len(folds)} of {len(BRATS_PAIRS)} folds, {args.seeds} seeds)"
        pools = {f["name"]: f["pool_description"] for f in folds}
        path = write_results(
            Path(args.out_dir) / f"histodiffusion_lowlabel_{name}.json", f"histodiffusion_lowlabel_{name}",
            {**settings, "data": name, "folds": len(folds), "pretraining_pool": pools}, range(args.seeds),
            res["table"], timer.stop(), primary_metric="accuracy", baseline="real_only", extra=res["extra"],
            quick=args.quick,
        )
        print(f"wrote {path}")
        written.append(path)
    if tmp is not None:
        tmp.cleanup()
    return written


if __name__ == "__main__":
    main()
