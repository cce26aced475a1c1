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
"""Ctrl-GenAug benchmark: sequence classification with / without (filtered) synthetic clips on real BRATS slice clips.

Data: real slice sequences of the BRATS copy in the shared data folder (``shared_data_dir()/brats2013_deepmedic``):
8 axial FLAIR slices 2 mm apart, normalised within the brain mask, labelled "tumour" when tumour voxels are >= 1 % of
the clip's brain voxels (:func:`~monai_genaug.methods.ctrl_genaug.brats_slice_clips`). Patient-grouped folds over
all six patients: each fold tests on two patients, selects the clip stage on one validation patient and trains on the
other three, so no fold shares a patient between its training, validation and test clips, and every patient is tested
exactly once (the per-clip rows of the three folds together cover every clip of the six patients).

Generator (the current defaults: motion concatenated through the ``insert_unit``, a learned frame encoder as the image
prior, the clip stage at the paper's lr 1e-4), trained per fold on its training patients only: frame encoder, frame
stage, clip stage with model selection / early stopping on clips generated from validation-patient conditions
(:func:`~monai_genaug.methods.ctrl_genaug.clip_stage_monitor`); two synthetic clips per source clip (a seeded subset
of the training clips). Filter: semantic (real-data classifier loss <= group mean, absolute confidence floor) >>
temporal consistency with thresholds from the real training clips' range (learned frame features) >> near-duplicates.
Downstream: the shared protocol (:func:`monai_genaug.evaluation.evaluate_downstream`) with its frame-wise
global-pooling CNN (the class is the tumour fraction, not the motion): real only / + all / + filtered / + random subset
of the filtered count, the same steps for every variant, five seeds, per-clip rows; an independent oracle per fold (the
same learner, own seed, trained on the fold's training + validation patients). Writes
``benchmarks/results/ctrl_genaug_brats.json`` (then ``python -m monai_genaug.evaluation.report benchmarks/results``
writes the Markdown).

The shape phantoms of the earlier version of this script (``ctrl_genaug_phantoms.json``) are retired: their class is a
shape visible in every frame, so they cannot measure the sequence parts; the order-sensitive phantoms of
``ctrl_genaug_motion.py`` replace them.

    nice -n 5 python benchmarks/ctrl_genaug_sequences.py              # BRATS folds, ~25 CPU minutes on one thread
    python benchmarks/ctrl_genaug_sequences.py --quick --out_dir /tmp/quick   # a smoke run on 3 patients
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import numpy as np
import torch

from monai_genaug.evaluation import (
    BenchmarkTimer,
    Oracle,
    ResultsTable,
    classification_learner,
    evaluate_downstream,
    write_results,
)
from monai_genaug.filters.temporal import temporal_consistency
from monai_genaug.methods.ctrl_genaug import (
    LEARNED_FRAME_ENCODER,
    CtrlGenAug,
    SequenceGenerator,
    brats_slice_clips,
    clip_stage_monitor,
    ctrl_genaug_config,
    filter_generated,
    train_sequence_classifier,
)
from monai_genaug.utils.paths import shared_data_dir

RESULTS = Path(__file__).resolve().parent / "results"
STEM = "ctrl_genaug_brats"
PATIENTS = tuple(f"brats_2013_pat000{i}_1" for i in range(1, 7))
#: (test patients, validation patient) per fold; the other three patients train
FOLDS = ((PATIENTS[0:2], PATIENTS[2]), (PATIENTS[2:4], PATIENTS[4]), (PATIENTS[4:6], PATIENTS[0]))
SETTINGS = {
    "size": 16, "num_frames": 8, "slice_step": 2, "window_step": 4, "motion_method": "flow",
    "encoder_steps": 300, "frame_steps": 800, "frame_lr": 1e-3, "clip_steps": 600, "clip_lr": 1e-4,
    "monitor_every": 150, "patience": 2, "monitor_clips": 16, "monitor_sample_steps": 10, "num_source": 48,
    "num_per_clip": 2, "sample_steps": 20, "guidance_scale": 2.0, "classifier_steps": 300, "min_confidence": 0.5,
    "downstream_steps": 300, "oracle_steps": 300, "seeds": 5,
}
QUICK = {**SETTINGS, "encoder_steps": 5, "frame_steps": 4, "clip_steps": 4, "monitor_every": 2, "monitor_clips": 4,
         "monitor_sample_steps": 2, "num_source": 4, "sample_steps": 2, "classifier_steps": 5, "downstream_steps": 5,
         "oracle_steps": 5, "seeds": 2}
QUICK_FOLDS = ((PATIENTS[0:1], PATIENTS[1]), (PATIENTS[1:2], PATIENTS[2]))
BUDGET = ("<= 60 CPU minutes on one thread for all of this session's Ctrl-GenAug runs on a 2-core machine shared by "
          "four people; one BRATS split at 32 px cost ~1700 CPU s before, so three folds (three generators) at 16 x 16 "
          "frames, ~6 CPU minutes per fold (a pilot fold measured the costs; 32 px would cost ~4x per step); the "
          "frame size was checked on the validation patients (real-only accuracy rises from 16 to 32 px) and kept at "
          "16 px for the budget")


def _mean(v: list[float], first: bool) -> float:
    m = max(len(v) // 10, 1)
    return float(np.mean(v[:m] if first else v[-m:]))


def run_fold(d: dict, test_cases: tuple[str, ...], val_case: str, cfg: dict, fold: int) -> dict:
    """One patient-grouped fold: the generator on the training patients (clip stage selected on the validation
    patient), generation, filter, the downstream protocol on the test patients, the oracle."""
    t0 = time.time()
    cases = np.asarray(d["cases"])
    test_m, val_m = np.isin(cases, test_cases), cases == val_case
    train_m = ~(test_m | val_m)
    (xtr, ytr), (xva, yva), (xte, yte) = ((d["clips"][torch.from_numpy(m)], d["labels"][torch.from_numpy(m)])
                                          for m in (train_m, val_m, test_m))
    torch.manual_seed(0)
    gen_cfg = ctrl_genaug_config("tiny", 1, cfg["num_frames"], 2, frame_encoder=LEARNED_FRAME_ENCODER,
                                 motion_injection="concat")
    pipe = CtrlGenAug(SequenceGenerator.from_config(gen_cfg), motion_method=cfg["motion_method"])
    enc_loss = pipe.fit_frame_encoder(xtr, num_steps=cfg["encoder_steps"])
    encoder = pipe.frame_features
    loss_f = pipe.fit(xtr, ytr, stage="frames", num_steps=cfg["frame_steps"], batch_size=16, lr=cfg["frame_lr"])
    # the selection classifier of the clip stage and the semantic filter: trained on real training clips only
    selector = train_sequence_classifier(xtr, ytr, 2, num_steps=cfg["classifier_steps"], seed=50)
    tc_real = {k: temporal_consistency(x, encoder) for k, x in (("train", xtr), ("val", xva), ("test", xte))}
    mon = torch.randperm(xva.shape[0], generator=torch.Generator().manual_seed(fold))[: cfg["monitor_clips"]]
    monitor = clip_stage_monitor(pipe, xva[mon], yva[mon], selector, float(tc_real["train"].mean()), encoder,
                                 num_inference_steps=cfg["monitor_sample_steps"], guidance_scale=cfg["guidance_scale"])
    val_loss = {"before": pipe.denoising_loss(xva, yva), "before_no_motion": pipe.denoising_loss(xva, yva, ("motion",))}
    t_gen = time.time()
    loss_c = pipe.fit(xtr, ytr, stage="clips", num_steps=cfg["clip_steps"], batch_size=8, lr=cfg["clip_lr"],
                      monitor=monitor, monitor_every=cfg["monitor_every"], patience=cfg["patience"])
    t_clip = time.time() - t_gen
    val_loss.update(after=pipe.denoising_loss(xva, yva), after_no_motion=pipe.denoising_loss(xva, yva, ("motion",)))
    src = torch.randperm(xtr.shape[0], generator=torch.Generator().manual_seed(fold))[: cfg["num_source"]].sort().values
    gen = pipe.generate(xtr[src], ytr[src], num_per_clip=cfg["num_per_clip"], guidance_scale=cfg["guidance_scale"],
                        num_inference_steps=cfg["sample_steps"])
    glabels = torch.tensor(gen["labels"])
    filt = filter_generated(gen, selector, feature_fn=encoder, min_confidence=cfg["min_confidence"], real_clips=xtr)
    keep = filt["keep"]
    t_down = time.time()
    test_ids = [f"{c}/{i:03d}" for i, c in enumerate(cases[test_m])]

    def learner() -> torch.nn.Module:
        return classification_learner(2, 1, 2, frames=True)

    table, counts = evaluate_downstream("classification", (xtr, ytr), (xte, yte), 2, synthetic=(gen["clips"], glabels),
                                        keep=keep, learner_fn=learner, iterations=cfg["downstream_steps"],
                                        seeds=tuple(range(cfg["seeds"])), case_ids=test_ids)
    t_down = time.time() - t_down
    oracle = Oracle("classification", 2, learner_fn=learner, iterations=cfg["oracle_steps"], seed=100)
    oracle.fit(torch.cat([xtr, xva]), torch.cat([ytr, yva]))
    sets = {"generated (all)": (gen["clips"], glabels), "kept by the filter": (gen["clips"][keep], glabels[keep]),
            "rejected by the filter": (gen["clips"][~keep], glabels[~keep])}
    ids = {k: [f"fold{fold}/{k}/{i:03d}" for i in range(v[0].shape[0])] for k, v in sets.items()}
    oracle_table = oracle.table({k: v for k, v in sets.items() if len(v[0])}, case_ids=ids)
    tc_gen = temporal_consistency(gen["clips"], encoder)
    return {
        "table": table, "counts": counts, "oracle_table": oracle_table,
        "oracle_test_score": oracle.test_score(xte, yte),
        "fold": {
            "test_patients": list(test_cases), "validation_patient": val_case,
            "training_patients": sorted(set(cases[train_m].tolist())),
            "clips_train_val_test": [int(xtr.shape[0]), int(xva.shape[0]), int(xte.shape[0])],
            "class1_fraction_train_test": [round(float(ytr.float().mean()), 3), round(float(yte.float().mean()), 3)],
            "generated": int(gen["clips"].shape[0]), "kept": int(keep.sum()),
            "encoder_loss_first_last": [_mean(enc_loss, True), _mean(enc_loss, False)],
            "frame_loss_first_last": [_mean(loss_f, True), _mean(loss_f, False)],
            "clip_loss_first_last": [_mean(loss_c, True), _mean(loss_c, False)],
            "val_loss": val_loss,
            "temporal_consistency": {"real_train": float(tc_real["train"].mean()),
                                     "real_test": float(tc_real["test"].mean()), "generated": float(tc_gen.mean()),
                                     "kept": float(tc_gen[keep].mean()) if keep.any() else None,
                                     "real_range": [float(tc_real["train"].min()), float(tc_real["train"].max())],
                                     "filter_thresholds": [None if v is None else float(v)
                                                           for v in filt["temporal_thresholds"]]},
            "early_stopping": pipe.monitoring,
            "seconds": {"clip_stage": round(t_clip, 1), "downstream": round(t_down, 1),
                        "total": round(time.time() - t0, 1)},
        },
    }


def _fold_mean(folds: list[dict], *keys: str) -> float | None:
    vals = []
    for f in folds:
        v = f
        for k in keys:
            v = v[k]
        if v is not None:
            vals.append(float(v))
    return float(np.mean(vals)) if vals else None


def run(d: dict, cfg: dict, out: Path, folds=FOLDS, quick: bool = False) -> Path:
    """Every fold, then one results envelope whose per-clip rows cover every test patient once."""
    torch.set_num_threads(1)
    timer = BenchmarkTimer()
    table, oracle_table, per_fold, counts, oracle_scores = ResultsTable(), ResultsTable(), [], {}, []
    for k, (test_cases, val_case) in enumerate(folds):
        r = run_fold(d, test_cases, val_case, cfg, k)
        table.extend(r["table"])
        oracle_table.extend(r["oracle_table"])
        per_fold.append(r["fold"])
        oracle_scores.append(r["oracle_test_score"])
        for name, c in r["counts"].items():
            counts.setdefault(name, {"num_train": 0, "num_synthetic": 0})
            for key in c:
                counts[name][key] += c[key]
        logging.getLogger(__name__).warning(f"fold {k}: {r['fold']['seconds']} s, kept {r['fold']['kept']}")
    tc = {key: _fold_mean(per_fold, "temporal_consistency", key) for key in ("real_train", "real_test", "generated", "kept")}
    tc["real_range"] = [[round(v, 2) for v in f["temporal_consistency"]["real_range"]] for f in per_fold]
    tc["filter_thresholds"] = [[None if v is None else round(v, 2) for v in f["temporal_consistency"]["filter_thresholds"]]
                               for f in per_fold]
    vl = {k: _fold_mean(per_fold, "val_loss", k) for k in ("before", "after", "after_no_motion")}
    checks = {
        "clip_stage_loss": {
            "train_first_tenth": _fold_mean([{"v": f["clip_loss_first_last"][0]} for f in per_fold], "v"),
            "train_last_tenth": _fold_mean([{"v": f["clip_loss_first_last"][1]} for f in per_fold], "v"),
            "val_fixed_noise_before": vl["before"], "val_fixed_noise_after": vl["after"],
            "falls": all(f["val_loss"]["after"] < f["val_loss"]["before"] for f in per_fold),
        },
        "motion_ablation": {"val_loss_with_motion": vl["after"], "val_loss_motion_nulled": vl["after_no_motion"],
                            "motion_used": all(f["val_loss"]["after"] < f["val_loss"]["after_no_motion"]
                                               for f in per_fold)},
        "temporal_consistency": tc,
        "goals": {"filtered_vs_real_only": ["real+filtered", "real_only"], "consistency_within_points": 2.0,
                  "kept_agreement_at_least": 0.9},
    }
    diagnostics = {
        "clips (frames x size)": f"{cfg['num_frames']} x {cfg['size']} x {cfg['size']}",
        "values averaged over folds": "clip-stage losses, temporal consistency (each fold its own frame encoder)",
    }
    for k, f in enumerate(per_fold):
        es = f["early_stopping"]
        diagnostics[f"fold {k}: test / validation patients"] = f"{f['test_patients']} / {f['validation_patient']}"
        diagnostics[f"fold {k}: training / validation / test clips"] = " / ".join(map(str, f["clips_train_val_test"]))
        diagnostics[f"fold {k}: class-1 fraction training / test"] = " / ".join(map(str, f["class1_fraction_train_test"]))
        diagnostics[f"fold {k}: generated / kept clips"] = f"{f['generated']} / {f['kept']}"
        diagnostics[f"fold {k}: clip stage validation agreement by step"] = ", ".join(
            f"{h['step']}: {h['agreement']:.3f}" for h in es["history"])
        diagnostics[f"fold {k}: clip stage best step / stopped at"] = f"{es['best_step']} / {es['stopped_at']}"
        diagnostics[f"fold {k}: seconds"] = str(f["seconds"])
    extra = {
        "title": "Ctrl-GenAug: BRATS 2013 FLAIR slice clips (tumour vs no tumour), patient-grouped folds over 6 patients",
        "description": "Downstream sequence classification with the shared protocol (frame-wise global-pooling CNN, the "
                       "same steps for every training set); three patient-grouped folds (2 test patients, 1 validation "
                       "patient, 3 training patients each); the per-clip rows of the folds together cover every clip "
                       "of the six patients once. Temporal consistency = 100 x mean cosine of consecutive frames' "
                       "learned frame-encoder features (each fold's encoder).",
        "script": "ctrl_genaug_sequences.py",
        "measured": "brats, patient-grouped folds: sequence classification accuracy, real only / + all / + filtered / "
                    "+ random subset of the filtered count",
        "bundle": "ctrl_genaug",
        "counts": counts,
        "oracle": {"rows": oracle_table.to_rows(), "test_score": float(np.mean(oracle_scores))},
        "folds": per_fold,
        "checks": checks,
        "diagnostics": diagnostics,
    }
    settings = {**cfg, "data": "brats", "folds": [{"test": list(t), "validation": v} for t, v in folds],
                "budget": BUDGET}
    return write_results(out, STEM, settings, tuple(range(cfg["seeds"])), table, timer.stop(),
                         primary_metric="accuracy", baseline="real_only", extra=extra, quick=quick)


def main(argv=None) -> Path | None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--brats_dir", default=None, help="default: shared_data_dir()/brats2013_deepmedic")
    p.add_argument("--quick", action="store_true", help="a smoke run (tiny step counts, 3 patients, 2 folds)")
    p.add_argument("--out_dir", default=str(RESULTS), help=f"folder of {STEM}.json")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("ignite").setLevel(logging.WARNING)
    brats = Path(args.brats_dir) if args.brats_dir else shared_data_dir() / "brats2013_deepmedic"
    if not brats.is_dir():
        print(f"BRATS skipped: {brats} does not exist (set $MONAI_GENAUG_DATA).")
        return None
    cfg, folds = (QUICK, QUICK_FOLDS) if args.quick else (SETTINGS, FOLDS)
    cases = sorted({c for t, v in folds for c in (*t, v)}) if args.quick else None
    d = brats_slice_clips(brats, num_frames=cfg["num_frames"], slice_step=cfg["slice_step"],
                          window_step=cfg["window_step"], size=cfg["size"], cases=cases)
    path = run(d, cfg, Path(args.out_dir) / f"{STEM}.json", folds=folds, quick=args.quick)
    print(f"wrote {path}")
    return path


if __name__ == "__main__":
    main()
