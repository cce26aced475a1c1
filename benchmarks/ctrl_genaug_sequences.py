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
"""Ctrl-GenAug benchmark: sequence classification with / without (filtered) synthetic clips, temporal consistency.

Two data sets, each the same protocol:

* phantom sequences (2 classes, disk vs elongated moving object, 8 frames of 16 x 16; a small labelled training set and
  a held-out test set);
* real slice sequences, when the BRATS copy is in the shared data folder (``shared_data_dir()/brats2013_deepmedic``):
  8 axial FLAIR slices 2 mm apart, 32 x 32, normalised within the brain mask, labelled "tumour" when tumour voxels are
  >= 1 % of the clip's brain voxels (:func:`~monai_genaug.methods.ctrl_genaug.brats_slice_clips`); split by patient
  (test: pat0001, pat0002, DeepMedic's test split; train: the other four).

Generator: trained by the package's Ignite trainer in two stages (frames, then clips) on the training clips only;
two synthetic clips per real training clip (conditions of training clips only; BRATS: a seeded subset of them).
Filter: semantic (real-data classifier loss <= group mean) >> temporal consistency (k-means midpoints) >>
near-duplicates. Downstream: the protocol of :mod:`monai_genaug.evaluation` with its frame-wise global-pooling CNN:
real only / real + all generated clips / real + filtered clips / real + a random subset of the filtered count, the
same steps for every variant, five seeds, per-clip rows, bootstrap intervals and paired differences; the learner's
label curve (a quarter, half and all of the real clips); an independent oracle (the same learner trained on all
real clips with its own seed) scoring the class agreement of the generated, kept and rejected clips. Writes
``benchmarks/results/ctrl_genaug_<data>.json`` (then ``python -m monai_genaug.evaluation.report
benchmarks/results`` writes the Markdown).

    nice -n 5 python benchmarks/ctrl_genaug_sequences.py            # phantoms + BRATS when present
    nice -n 5 python benchmarks/ctrl_genaug_sequences.py --data phantoms
    python benchmarks/ctrl_genaug_sequences.py --quick --out_dir /tmp/quick   # a smoke run, about a minute
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from monai_genaug.evaluation import (
    BenchmarkTimer,
    Oracle,
    classification_learner,
    evaluate_downstream,
    label_curve,
    write_results,
)
from monai_genaug.filters.temporal import temporal_consistency
from monai_genaug.methods.ctrl_genaug import (
    CtrlGenAug,
    brats_slice_clips,
    filter_generated,
    prepare_sequence_data,
    train_sequence_classifier,
)
from monai_genaug.utils.paths import shared_data_dir

RESULTS = Path(__file__).resolve().parent / "results"
BRATS_TEST = ("brats_2013_pat0001_1", "brats_2013_pat0002_1")
SETTINGS = {
    "phantoms": {"frame_steps": 1500, "clip_steps": 600, "sample_steps": 20, "num_source": None,
                 "classifier_steps": 600, "downstream_steps": 600, "oracle_steps": 600, "seeds": 5, "num_clips": 64},
    "brats": {"frame_steps": 800, "clip_steps": 300, "sample_steps": 20, "num_source": 48,
              "classifier_steps": 300, "downstream_steps": 300, "oracle_steps": 300, "seeds": 5},
}
QUICK = {"frame_steps": 10, "clip_steps": 5, "sample_steps": 2, "num_source": 8, "classifier_steps": 5,
         "downstream_steps": 5, "oracle_steps": 5, "seeds": 2, "num_clips": 24}
TITLES = {"phantoms": "Ctrl-GenAug: phantom sequences (disk vs elongated moving object)",
          "brats": "Ctrl-GenAug: BRATS 2013 FLAIR slice stacks (tumour vs no tumour), split by patient"}


def phantom_data(num: int = 64) -> dict:
    return prepare_sequence_data(num, 8, (16, 16), 2, test_fraction=0.5, seed=0)


def brats_data(path: Path) -> dict:
    d = brats_slice_clips(path, num_frames=8, slice_step=2, window_step=4, size=32)
    test = torch.tensor([c in BRATS_TEST for c in d["cases"]])
    return {"train": {"clips": d["clips"][~test], "labels": d["labels"][~test]},
            "test": {"clips": d["clips"][test], "labels": d["labels"][test]},
            "num_classes": 2, "class_names": d["class_names"],
            "train_cases": sorted({c for c, t in zip(d["cases"], test.tolist()) if not t}),
            "test_cases": list(BRATS_TEST)}


def run(name: str, data: dict, cfg: dict, out: Path, quick: bool = False) -> Path:
    """Train the generator, generate, filter, run the downstream protocol; write the results envelope to ``out``."""
    torch.set_num_threads(1)
    timer = BenchmarkTimer()
    t0 = time.time()
    stages: dict[str, float] = {}
    train, test = data["train"], data["test"]
    nf, size = int(train["clips"].shape[2]), tuple(int(s) for s in train["clips"].shape[3:])
    torch.manual_seed(0)
    pipe = CtrlGenAug.from_preset("tiny", num_frames=nf, num_classes=2, prior_channels=2)
    loss_f = pipe.fit(train["clips"], train["labels"], stage="frames", num_steps=cfg["frame_steps"], batch_size=16)
    loss_c = pipe.fit(train["clips"], train["labels"], stage="clips", num_steps=cfg["clip_steps"], batch_size=8)
    stages["generator_training"] = time.time() - t0
    src = torch.arange(train["clips"].shape[0])
    if cfg["num_source"] is not None and cfg["num_source"] < len(src):
        src = torch.randperm(len(src), generator=torch.Generator().manual_seed(0))[: cfg["num_source"]].sort().values
    gen = pipe.generate(train["clips"][src], train["labels"][src], num_per_clip=2, guidance_scale=2.0,
                        num_inference_steps=cfg["sample_steps"])
    stages["generation"] = time.time() - t0 - sum(stages.values())
    clf = train_sequence_classifier(train["clips"], train["labels"], 2, num_steps=cfg["classifier_steps"])
    keep = filter_generated(gen, clf)["keep"]
    labels = torch.tensor(gen["labels"])
    stages["filter"] = time.time() - t0 - sum(stages.values())
    seeds = tuple(range(cfg["seeds"]))
    real, tst = (train["clips"].float(), train["labels"].long()), (test["clips"].float(), test["labels"].long())

    def learner() -> torch.nn.Module:
        return classification_learner(2, int(train["clips"].shape[1]), 2, frames=True)

    common = {"learner_fn": learner, "iterations": cfg["downstream_steps"], "seeds": seeds}
    table, counts = evaluate_downstream("classification", real, tst, 2, synthetic=(gen["clips"], labels), keep=keep,
                                        **common)
    stages["downstream"] = time.time() - t0 - sum(stages.values())
    n = real[0].shape[0]
    sizes = sorted({max(2, n // 4), max(3, n // 2), n})
    curve = label_curve("classification", real, tst, 2, sizes=sizes, **common)
    stages["label_curve"] = time.time() - t0 - sum(stages.values())
    oracle = Oracle("classification", 2, learner_fn=learner, iterations=cfg["oracle_steps"], seed=100).fit(*real)
    sets = {"generated (all)": (gen["clips"], labels), "kept by the filter": (gen["clips"][keep], labels[keep]),
            "rejected by the filter": (gen["clips"][~keep], labels[~keep])}
    oracle_table = oracle.table({k: v for k, v in sets.items() if len(v[0])})
    stages["oracle"] = time.time() - t0 - sum(stages.values())
    tc_real, tc_test, tc_gen = (temporal_consistency(c) for c in (train["clips"], test["clips"], gen["clips"]))
    m = max(len(loss_f) // 10, 1)
    diagnostics = {
        "clips (frames x size)": f"{nf} x {size[0]} x {size[1]}",
        "training / test clips": f"{n} / {tst[0].shape[0]}",
        "class-1 fraction training / test": f"{float(train['labels'].float().mean()):.2f} / "
                                            f"{float(test['labels'].float().mean()):.2f}",
        "generated / kept clips": f"{int(gen['clips'].shape[0])} / {int(keep.sum())}",
        "diffusion loss frames first -> last": f"{sum(loss_f[:m]) / m:.3f} -> {sum(loss_f[-m:]) / m:.3f}",
        "diffusion loss clips first -> last": f"{sum(loss_c[:m]) / m:.3f} -> {sum(loss_c[-m:]) / m:.3f}",
        "temporal consistency real training / test": f"{float(tc_real.mean()):.2f} / {float(tc_test.mean()):.2f}",
        "temporal consistency generated / kept": f"{float(tc_gen.mean()):.2f} / "
                                                 + (f"{float(tc_gen[keep].mean()):.2f}" if keep.any() else "n/a"),
        **{f"stage seconds: {k}": round(v, 1) for k, v in stages.items()},
    }
    if "train_cases" in data:
        diagnostics["patients training / test"] = f"{data['train_cases']} / {data['test_cases']}"
    extra = {
        "title": TITLES[name],
        "description": "Downstream sequence classification with the evaluation protocol: the frame-wise "
                       "global-pooling CNN, the same steps for every training set, per-clip scores (1 = right class) "
                       "over the test clips and seeds. Temporal consistency = 100 x mean cosine of consecutive "
                       "frames (pixels).",
        "script": "ctrl_genaug_sequences.py",
        "measured": f"{name}: sequence classification accuracy, real only / + all / + filtered / + random subset of "
                    "the filtered count",
        "bundle": "ctrl_genaug",
        "counts": counts,
        "label_curve": {"metric": "accuracy", "rows": curve.to_rows()},
        "oracle": {"rows": oracle_table.to_rows(), "test_score": oracle.test_score(*tst)},
        "diagnostics": diagnostics,
    }
    return write_results(out, f"ctrl_genaug_{name}", {**cfg, "data": name}, seeds, table, timer.stop(),
                         primary_metric="accuracy", baseline="real_only", extra=extra, quick=quick)


def main(argv=None) -> list[Path]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", choices=["phantoms", "brats", "both"], default="both")
    p.add_argument("--brats_dir", default=None, help="default: shared_data_dir()/brats2013_deepmedic")
    p.add_argument("--quick", action="store_true", help="a smoke run with tiny step counts (phantoms only)")
    p.add_argument("--out_dir", default=str(RESULTS), help="folder of ctrl_genaug_<data>.json")
    args = p.parse_args(argv)
    out_dir = Path(args.out_dir)
    written = []
    if args.quick:
        data = phantom_data(QUICK["num_clips"])
        written.append(run("phantoms", data, QUICK, out_dir / "ctrl_genaug_phantoms.json", quick=True))
        print(f"wrote {written[-1]}")
        return written
    if args.data in ("phantoms", "both"):
        data = phantom_data(SETTINGS["phantoms"]["num_clips"])
        written.append(run("phantoms", data, SETTINGS["phantoms"], out_dir / "ctrl_genaug_phantoms.json"))
    brats = Path(args.brats_dir) if args.brats_dir else shared_data_dir() / "brats2013_deepmedic"
    if args.data in ("brats", "both"):
        if brats.is_dir():
            written.append(run("brats", brats_data(brats), SETTINGS["brats"], out_dir / "ctrl_genaug_brats.json"))
        else:
            print(f"BRATS skipped: {brats} does not exist (set $MONAI_GENAUG_DATA).")
    for path in written:
        print(f"wrote {path}")
    return written


if __name__ == "__main__":
    main()
