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
near-duplicates. Downstream: the small frame-CNN sequence classifier with global pooling, same steps for every
variant, several seeds. Writes ``benchmarks/results/ctrl_genaug.json`` and ``.md``.

    nice -n 5 python benchmarks/ctrl_genaug_sequences.py            # phantoms + BRATS when present
    nice -n 5 python benchmarks/ctrl_genaug_sequences.py --data phantoms
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from monai_genaug.filters.temporal import temporal_consistency
from monai_genaug.methods.ctrl_genaug import (
    CtrlGenAug,
    brats_slice_clips,
    evaluate_sequence_augmentation,
    filter_generated,
    prepare_sequence_data,
    train_sequence_classifier,
)
from monai_genaug.utils.paths import shared_data_dir

RESULTS = Path(__file__).resolve().parent / "results"
BRATS_TEST = ("brats_2013_pat0001_1", "brats_2013_pat0002_1")
SETTINGS = {
    "phantoms": {"frame_steps": 1500, "clip_steps": 600, "sample_steps": 20, "num_source": None,
                 "classifier_steps": 600, "downstream_steps": 600, "seeds": 5},
    "brats": {"frame_steps": 800, "clip_steps": 300, "sample_steps": 20, "num_source": 48,
              "classifier_steps": 300, "downstream_steps": 300, "seeds": 3},
}


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


def run(name: str, data: dict, cfg: dict) -> dict:
    torch.set_num_threads(1)
    t0 = time.time()
    train, test = data["train"], data["test"]
    nf, size = int(train["clips"].shape[2]), tuple(int(s) for s in train["clips"].shape[3:])
    torch.manual_seed(0)
    pipe = CtrlGenAug.from_preset("tiny", num_frames=nf, num_classes=2, prior_channels=2)
    loss_f = pipe.fit(train["clips"], train["labels"], stage="frames", num_steps=cfg["frame_steps"], batch_size=16)
    loss_c = pipe.fit(train["clips"], train["labels"], stage="clips", num_steps=cfg["clip_steps"], batch_size=8)
    t_train = time.time() - t0
    src = torch.arange(train["clips"].shape[0])
    if cfg["num_source"] is not None and cfg["num_source"] < len(src):
        src = torch.randperm(len(src), generator=torch.Generator().manual_seed(0))[: cfg["num_source"]].sort().values
    gen = pipe.generate(train["clips"][src], train["labels"][src], num_per_clip=2, guidance_scale=2.0,
                        num_inference_steps=cfg["sample_steps"])
    t_gen = time.time() - t0 - t_train
    clf = train_sequence_classifier(train["clips"], train["labels"], 2, num_steps=cfg["classifier_steps"])
    filt = filter_generated(gen, clf)
    keep = filt["keep"]
    labels = torch.tensor(gen["labels"])
    results = evaluate_sequence_augmentation(
        train["clips"], train["labels"], test["clips"], test["labels"],
        {"real_only": None, "real+synthetic": (gen["clips"], labels), "real+filtered": (gen["clips"][keep], labels[keep])},
        2, num_steps=cfg["downstream_steps"], seeds=tuple(range(cfg["seeds"])),
    )
    tc_real, tc_test, tc_gen = (temporal_consistency(c) for c in (train["clips"], test["clips"], gen["clips"]))
    n = max(len(loss_f) // 10, 1)
    return {
        "data": name,
        "frame_size": list(size),
        "num_frames": nf,
        "num_train": int(train["clips"].shape[0]),
        "num_test": int(test["clips"].shape[0]),
        "train_positive_fraction": float(train["labels"].float().mean()),
        "test_positive_fraction": float(test["labels"].float().mean()),
        **({"train_cases": data["train_cases"], "test_cases": data["test_cases"]} if "train_cases" in data else {}),
        "settings": cfg,
        "diffusion_loss": {"frames_first": sum(loss_f[:n]) / n, "frames_last": sum(loss_f[-n:]) / n,
                           "clips_first": sum(loss_c[:n]) / n, "clips_last": sum(loss_c[-n:]) / n},
        "num_synthetic": int(gen["clips"].shape[0]),
        "num_kept": int(keep.sum()),
        "temporal_consistency": {"real_mean": float(tc_real.mean()), "real_std": float(tc_real.std()),
                                 "real_test_mean": float(tc_test.mean()),
                                 "generated_mean": float(tc_gen.mean()), "generated_std": float(tc_gen.std()),
                                 "kept_mean": float(tc_gen[keep].mean()) if keep.any() else None},
        "downstream": {k: {kk: v[kk] for kk in ("accuracy", "accuracy_std", "balanced_accuracy", "num_train",
                                                "num_synthetic")} for k, v in results.items()},
        "seconds": {"train": t_train, "generate": t_gen, "total": time.time() - t0},
        "device": "CPU, 1 thread (shared machine)",
    }


def _section(r: dict) -> list[str]:
    title = {"phantoms": "Phantom sequences (disk vs elongated moving object)",
             "brats": "BRATS 2013 FLAIR slice stacks (tumour vs no tumour), split by patient"}[r["data"]]
    lines = [
        f"## {title}",
        "",
        f"{r['num_frames']} frames of {r['frame_size'][0]} x {r['frame_size'][1]}; {r['num_train']} training clips "
        f"({r['train_positive_fraction']:.2f} class 1), {r['num_test']} test clips ({r['test_positive_fraction']:.2f} "
        f"class 1); {r['num_synthetic']} generated clips, {r['num_kept']} kept by the three filters. Diffusion loss "
        f"frames {r['diffusion_loss']['frames_first']:.3f} -> {r['diffusion_loss']['frames_last']:.3f}, clips "
        f"{r['diffusion_loss']['clips_first']:.3f} -> {r['diffusion_loss']['clips_last']:.3f}. "
        f"{r['seconds']['total']:.0f} s.",
        "",
        f"| training set | accuracy (mean ± std over {r['settings']['seeds']} seeds) | balanced accuracy | clips |",
        "|---|---|---|---|",
    ]
    for k, v in r["downstream"].items():
        lines.append(f"| {k} | {v['accuracy']:.3f} ± {v['accuracy_std']:.3f} | {v['balanced_accuracy']:.3f} | "
                     f"{v['num_train']} ({v['num_synthetic']} synthetic) |")
    tc = r["temporal_consistency"]
    kept = "n/a" if tc["kept_mean"] is None else f"{tc['kept_mean']:.2f}"
    lines += [
        "",
        "Temporal consistency (100 x mean cosine of consecutive frames, pixels): real training "
        f"{tc['real_mean']:.2f} ± {tc['real_std']:.2f} (test {tc['real_test_mean']:.2f}), generated "
        f"{tc['generated_mean']:.2f} ± {tc['generated_std']:.2f}, kept {kept}.",
        "",
    ]
    return lines


def write_table(results: dict) -> Path:
    lines = [
        "# Ctrl-GenAug benchmark",
        "",
        "Written by `benchmarks/ctrl_genaug_sequences.py` (settings in `ctrl_genaug.json`). CPU, one thread, on a "
        "machine shared with other jobs (times are indicative).",
        "",
    ]
    for r in results.values():
        lines += _section(r)
    if "brats" not in results:
        lines.append("BRATS: not run (data folder absent or `--data phantoms`).")
    path = RESULTS / "ctrl_genaug.md"
    path.write_text("\n".join(lines).rstrip() + "\n")
    return path


def main() -> dict:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--data", choices=["phantoms", "brats", "both"], default="both")
    p.add_argument("--brats_dir", default=None, help="default: shared_data_dir()/brats2013_deepmedic")
    args = p.parse_args()
    out = RESULTS / "ctrl_genaug.json"
    previous = json.loads(out.read_text()) if out.is_file() and args.data != "both" else {}
    results = {k: v for k, v in previous.items() if k in SETTINGS and k != args.data}
    if args.data in ("phantoms", "both"):
        results["phantoms"] = run("phantoms", phantom_data(), SETTINGS["phantoms"])
        print(json.dumps(results["phantoms"]["downstream"], indent=1), flush=True)
    brats = Path(args.brats_dir) if args.brats_dir else shared_data_dir() / "brats2013_deepmedic"
    if args.data in ("brats", "both") and brats.is_dir():
        results["brats"] = run("brats", brats_data(brats), SETTINGS["brats"])
        print(json.dumps(results["brats"]["downstream"], indent=1), flush=True)
    RESULTS.mkdir(exist_ok=True)
    results = {k: results[k] for k in SETTINGS if k in results}
    out.write_text(json.dumps(results, indent=2) + "\n")
    write_table(results)
    return results


if __name__ == "__main__":
    main()
