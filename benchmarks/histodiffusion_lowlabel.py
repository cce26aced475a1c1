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
"""HistoDiffusion low-label benchmark: downstream accuracy with real data only vs real + synthetic vs real +
centroid-filtered synthetic, plus guided vs unguided sampling time per sample.

Per data set: an autoencoder and an unconditional latent diffusion model are trained on the whole (unlabelled)
training split; a noisy-latent classifier on a small labelled fraction of it; ``--generate`` samples per class are
synthesised with classifier guidance; the centroid filter (autoencoder-latent features, centroids of the labelled
images) keeps the ``--keep`` closest per class whose nearest centroid is their class. The downstream comparison is the protocol of :mod:`monai_genaug.evaluation`: its
global-pooling CNN, the same iterations for every variant (real only / + all generated / + centroid-filtered /
+ a random subset of the filtered count / + filtered on the guidance classifier's features / upper bound = every
training image with its label), five seeds, per-image rows, bootstrap intervals and paired differences; the
learner's label curve on the training pool; an independent oracle (the same learner trained on all training labels,
never the guidance classifier) scoring the class agreement of the guided samples.

Data sets:

- ``phantoms``: histology-like class phantoms (4 classes, 32 x 32 RGB), 70 / 10 / 20 % split, labelled fraction
  ``--labelled-fraction`` of the training split.
- ``brats``: BRATS 2013 (DeepMedic copy, 6 patients) axial FLAIR slices inside the brain, labelled by tumour
  presence (tumour area >= ``--tumour-min`` pixels: 1, no tumour pixel: 0, in between: left out), resized to 32 x 32;
  split by patient (train: pat0003-0006, test: pat0001-0002); labelled fraction of the training slices.
  Needs ``$MONAI_GENAUG_DATA/brats2013_deepmedic`` (default ``../shared/data``); skipped when absent.

    python benchmarks/histodiffusion_lowlabel.py [--datasets phantoms brats] [--quick]

Writes ``benchmarks/results/histodiffusion_lowlabel_<data set>.json`` (``python -m monai_genaug.evaluation.report
benchmarks/results`` writes the Markdown). Runs on one CPU thread by default (``--threads``): on a shared, busy 2-core
machine more threads slow PyTorch down.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from monai.data import DataLoader, Dataset

from monai_genaug.data.folders import nifti_case_datalist
from monai_genaug.data.pipelines import classification_2d_transforms
from monai_genaug.engines.classifier import noisy_latent_accuracy
from monai_genaug.evaluation import BenchmarkTimer, Oracle, evaluate_downstream, label_curve, write_results
from monai_genaug.methods.histodiffusion import HistoDiffusion, materialize, prepare_histodiffusion_data
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


# ----------------------------------------------------------------------------------------------------- data
def phantom_data(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    d = prepare_histodiffusion_data(
        None,
        work / "phantoms",
        labelled_fraction=args.labelled_fraction,
        num_phantoms=args.num_phantoms,
        phantom_classes=4,
        phantom_size=(32, 32),
        seed=args.seed,
    )
    tf = classification_2d_transforms(spatial_size=(32, 32))
    return {
        "unlabelled": materialize(d["unlabelled"], tf),
        "labelled": materialize(d["labelled"], tf),
        "test": materialize(d["test"], tf),
        "class_names": d["class_names"],
        "channels": 3,
        "description": f"{args.num_phantoms} class phantoms (4 classes, 32x32 RGB), 70/10/20 split",
    }


def _slices(case: dict, size: int, tumour_min: int, brain_min: float) -> list[dict]:
    import nibabel as nib

    flair = np.asarray(nib.load(case["flair"]).dataobj, dtype=np.float32)
    label = np.asarray(nib.load(case["label"]).dataobj) > 0.5
    brain = np.asarray(nib.load(case["brain"]).dataobj) > 0.5
    lo, hi = np.percentile(flair[brain], (0.5, 99.5))
    flair = np.clip((flair - lo) / (hi - lo), 0.0, 1.0) * brain
    area = brain.sum(axis=(0, 1))
    out = []
    for z in range(flair.shape[2]):
        if area[z] < brain_min * area.max():
            continue
        tumour = int(label[:, :, z].sum())
        if 0 < tumour < tumour_min:
            continue  # ambiguous slice: a few tumour pixels
        img = torch.from_numpy(np.ascontiguousarray(flair[:, :, z].T, dtype=np.float32))[None, None]  # rows: A-P
        img = F.interpolate(img, size=(size, size), mode="area")[0]
        out.append({"image": img, "label": int(tumour > 0), "case": case["case_id"]})
    return out


def brats_data(args: argparse.Namespace, work: Path) -> dict[str, Any] | None:
    root = shared_data_dir() / "brats2013_deepmedic"
    if not root.is_dir():
        print(f"BRATS data not found under {root}; skipping the brats benchmark.")
        return None
    cases = nifti_case_datalist(
        root, patterns={"flair": "Flair*", "label": "OTMultiClass*", "brain": "brainmask*"}, check_shapes=False
    )
    test_ids = {"brats_2013_pat0001_1", "brats_2013_pat0002_1"}
    train, test = [], []
    for case in cases:
        (test if case["case_id"] in test_ids else train).extend(_slices(case, 32, args.tumour_min, 0.1))
    rng = np.random.default_rng(args.seed)
    labelled = []
    for c in (0, 1):
        idx = [i for i, s in enumerate(train) if s["label"] == c]
        n = max(2, round(args.labelled_fraction * len(idx)))
        labelled += [train[i] for i in sorted(rng.permutation(idx)[:n].tolist())]

    def strip(items: list[dict]) -> list[dict]:
        return [{"image": s["image"], "label": s["label"], "synthetic": 0} for s in items]

    return {
        "unlabelled": strip(train),
        "labelled": strip(labelled),
        "test": strip(test),
        "class_names": ["no_tumour", "tumour"],
        "channels": 1,
        "description": (
            f"BRATS 2013 axial FLAIR slices (32x32), tumour presence (>= {args.tumour_min} px), train patients "
            f"3-6 ({len(train)} slices), test patients 1-2 ({len(test)} slices)"
        ),
    }


# ------------------------------------------------------------------------------------------------ pipeline
def _loader(items: list[dict], batch_size: int, seed: int, keys: tuple[str, ...] = ("image",)) -> DataLoader:
    data = [{k: item[k] for k in keys} for item in items]
    return DataLoader(
        Dataset(data), batch_size=batch_size, shuffle=True, generator=torch.Generator().manual_seed(seed)
    )


def run_dataset(name: str, data: dict[str, Any], args: argparse.Namespace, work: Path) -> dict[str, Any]:
    timings: dict[str, float] = {}
    num_classes = len(data["class_names"])
    torch.manual_seed(args.seed)
    hd = HistoDiffusion.from_preset(
        "tiny",
        image_channels=data["channels"],
        class_names=data["class_names"],
        image_size=(32, 32),
        classifier_preset="tiny",
        generator_overrides=GENERATOR_OVERRIDES,
    )
    common = {"resume": False, "save_interval": 10_000, "seed": args.seed}
    unl = _loader(data["unlabelled"], 16, args.seed)

    t = time.perf_counter()
    ae_epochs = max(1, args.ae_iterations // len(unl))
    hd.autoencoder_trainer(unl, ae_epochs, work / name / "ae", lr=2e-3, adv_weight=0.0, **common).run()
    timings["autoencoder_s"] = time.perf_counter() - t

    t = time.perf_counter()
    epochs = 10
    trainer = hd.diffusion_trainer(
        unl, epochs, work / name / "ldm", lr=1e-3, ema_decay=0.995, epoch_length=args.ldm_iterations // epochs, **common
    )
    trainer.run()
    timings["diffusion_s"] = time.perf_counter() - t
    with trainer.ema.use_ema_weights():  # sample with the EMA weights, as the paper
        ema_state = {k: v.clone() for k, v in hd.generator.unet.state_dict().items()}
    hd.generator.unet.load_state_dict(ema_state)

    t = time.perf_counter()
    lab = _loader(data["labelled"], 16, args.seed, keys=("image", "label"))
    hd.classifier_trainer(
        lab, 10, work / name / "clf", lr=2e-3, weight_decay=0.05, epoch_length=args.clf_iterations // 10, **common
    ).run()
    timings["classifier_s"] = time.perf_counter() - t
    test_loader = DataLoader(Dataset([{"image": s["image"], "label": s["label"]} for s in data["test"]]), batch_size=64)
    clf_acc = noisy_latent_accuracy(hd.classifier, hd.generator, test_loader, timesteps=(0, 250, 500, 750))

    # guided vs unguided sampling time per sample (same batch, same steps)
    spatial = (32, 32)
    t = time.perf_counter()
    hd.synthesize(
        args.batch, spatial, classes=[0], guidance_scale=0.0, num_inference_steps=args.steps, batch_size=args.batch
    )
    unguided = (time.perf_counter() - t) / args.batch
    t = time.perf_counter()
    synth = hd.synthesize(
        args.generate,
        spatial,
        guidance_scale=args.scale,
        eta=1.0,
        num_inference_steps=args.steps,
        batch_size=args.batch,
        seed=args.seed,
    )
    guided = (time.perf_counter() - t) / len(synth.labels)
    timings["synthesis_s"] = synth.seconds
    save_image_grid(
        torch.cat([synth.images[synth.labels == c][:8] for c in range(num_classes)]),
        work / name / "samples.png",
        nrow=8,
        normalise=False,
    )
    probs = hd.class_probabilities(synth.images)
    guided_target = float(probs[torch.arange(len(synth.labels)), synth.labels].mean())
    synthetic = [
        {"image": img, "label": int(y), "synthetic": 1} for img, y in zip(synth.images, synth.labels.tolist())
    ]

    t = time.perf_counter()
    flt = hd.centroid_filter("latent", max_per_class=args.keep).fit(data["labelled"])
    result = flt(synthetic)
    timings["filter_s"] = time.perf_counter() - t
    kept = {data["class_names"][c]: int((result.keep & (synth.labels == c)).sum()) for c in range(num_classes)}
    nearest_ok = float((result.details["nearest"] == synth.labels).float().mean())
    # the same filter on the guidance classifier's pooled features (t = 0) instead of the autoencoder latents
    result_clf = hd.centroid_filter("classifier", max_per_class=args.keep).fit(data["labelled"])(synthetic)
    filtered_clf = result_clf.select(synthetic)
    kept_clf = {data["class_names"][c]: int((result_clf.keep & (synth.labels == c)).sum()) for c in range(num_classes)}

    def stack(items: list[dict]) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.stack([torch.as_tensor(i["image"]) for i in items]).float(), torch.tensor(
            [int(i["label"]) for i in items])

    t = time.perf_counter()
    real, test, pool = stack(data["labelled"]), stack(data["test"]), stack(data["unlabelled"])
    labelled_ids = {id(i) for i in data["labelled"]}
    rest = [i for i in data["unlabelled"] if id(i) not in labelled_ids and "label" in i]
    common = {"iterations": args.downstream_iterations, "batch_size": 16, "lr": 2e-3, "seeds": tuple(range(args.seeds))}
    table, counts = evaluate_downstream(
        "classification", real, test, num_classes, synthetic=(synth.images, synth.labels), keep=result.keep,
        extra={"real+filtered_clf": stack(filtered_clf) if filtered_clf else None},
        upper_bound=stack(rest) if rest else None, **common,
    )
    timings["downstream_s"] = time.perf_counter() - t
    t = time.perf_counter()
    n = real[0].shape[0]
    sizes = sorted({n, min(4 * n, pool[0].shape[0]), pool[0].shape[0]})
    curve = label_curve("classification", pool, test, num_classes, sizes=sizes, **common) if len(sizes) > 1 else None
    timings["label_curve_s"] = time.perf_counter() - t
    t = time.perf_counter()
    oracle = Oracle("classification", num_classes, iterations=2 * args.downstream_iterations, seed=100).fit(*pool)
    oracle_table = oracle.table({
        "guided samples (all)": (synth.images, synth.labels),
        "kept by the centroid filter": (synth.images[result.keep], synth.labels[result.keep]),
    })
    timings["oracle_s"] = time.perf_counter() - t
    s_acc = " / ".join(f"{v:.2f}" for v in clf_acc.values())
    diagnostics = {
        "data": data["description"],
        "training pool / labelled / test": f"{pool[0].shape[0]} / {n} / {test[0].shape[0]}",
        "guided / unguided s per sample (ratio)": f"{guided:.3f} / {unguided:.3f} ({guided / unguided:.2f})",
        "noisy classifier test accuracy at t = " + " / ".join(map(str, clf_acc)): s_acc,
        "p(target) of guided samples by the guiding classifier (circular)": round(guided_target, 3),
        "nearest centroid = target": round(nearest_ok, 3),
        "kept per class (latent / classifier features)": f"{list(kept.values())} / {list(kept_clf.values())}",
        **{f"stage seconds: {k}": round(v, 1) for k, v in timings.items()},
    }
    return {
        "table": table,
        "extra": {
            "title": f"HistoDiffusion low-label benchmark: {name}",
            "description": "Downstream classification with the evaluation protocol: the global-pooling CNN, the "
                           "same iterations for every training set, per-image scores (1 = right class) over the test "
                           "images and seeds. real+all: every guided sample; real+filtered: the centroid filter on "
                           "autoencoder latents; real+random: a random subset of the filtered count; "
                           "real+filtered_clf: the centroid filter on the guidance classifier's features; "
                           "upper_bound: every training image with its true label.",
            "script": "histodiffusion_lowlabel.py",
            "measured": f"{name}: accuracy with {100 * args.labelled_fraction:.0f} % labels",
            "bundle": "histodiffusion",
            "counts": counts,
            **({"label_curve": {"metric": "accuracy", "rows": curve.to_rows()}} if curve is not None else {}),
            "oracle": {"rows": oracle_table.to_rows(), "test_score": oracle.test_score(*test)},
            "diagnostics": diagnostics,
        },
    }


def main(argv=None) -> list[Path]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=["phantoms", "brats"], choices=["phantoms", "brats"])
    parser.add_argument("--quick", action="store_true", help="a smoke run (few iterations), ~1 minute per data set")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--seeds", type=int, default=5, help="downstream training seeds per variant (>= 5)")
    parser.add_argument("--labelled-fraction", type=float, default=0.05)
    parser.add_argument("--num-phantoms", type=int, default=400)
    parser.add_argument("--tumour-min", type=int, default=200, help="tumour pixels (at 240x240) for a tumour slice")
    parser.add_argument("--ae-iterations", type=int, default=300)
    parser.add_argument("--ldm-iterations", type=int, default=1200)
    parser.add_argument("--clf-iterations", type=int, default=500)
    parser.add_argument("--generate", type=int, default=48, help="synthetic samples per class")
    parser.add_argument("--keep", type=int, default=24, help="filtered samples kept per class")
    parser.add_argument("--scale", type=float, default=10.0, help="classifier guidance scale")
    parser.add_argument("--steps", type=int, default=25, help="DDIM steps")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--downstream-iterations", type=int, default=250)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--work-dir", default=None, help="keep intermediate files (samples.png) here")
    parser.add_argument("--out_dir", default=str(RESULTS), help="folder of histodiffusion_lowlabel_<data set>.json")
    args = parser.parse_args(argv)
    if args.quick:
        args.ae_iterations, args.ldm_iterations, args.clf_iterations = 20, 40, 40
        args.generate, args.keep, args.steps, args.downstream_iterations, args.seeds = 8, 4, 5, 10, 2
        args.num_phantoms = min(args.num_phantoms, 80)
    torch.set_num_threads(args.threads)
    tmp = tempfile.TemporaryDirectory() if args.work_dir is None else None
    work = Path(args.work_dir or tmp.name)
    settings = {k: v for k, v in vars(args).items() if k not in ("out_dir", "work_dir", "datasets")}
    loaders = {"phantoms": phantom_data, "brats": brats_data}
    written = []
    for name in args.datasets:
        timer = BenchmarkTimer()
        data = loaders[name](args, work)
        if data is None:
            continue
        res = run_dataset(name, data, args, work)
        path = write_results(
            Path(args.out_dir) / f"histodiffusion_lowlabel_{name}.json", f"histodiffusion_lowlabel_{name}",
            {**settings, "data": name}, range(args.seeds), res["table"], timer.stop(), primary_metric="accuracy",
            baseline="real_only", extra=res["extra"], quick=args.quick,
        )
        print(f"wrote {path}")
        written.append(path)
    if tmp is not None:
        tmp.cleanup()
    return written


if __name__ == "__main__":
    main()
