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
"""Ctrl-GenAug on an order-sensitive task: sequence classification where the class is the motion.

Data: :func:`~monai_genaug.data.motion_phantoms.make_motion_phantoms` (expanding vs contracting disk, 8 frames of
16 x 16; class 1 clips are class 0 clips played backwards, so a frame-averaging classifier is at chance), split by
pair into training / validation / test clips.

Learner (the competent one): the protocol's global-pooling CNN with 3D convolutions over (t, h, w)
(:func:`~monai_genaug.methods.ctrl_genaug.temporal_classifier`); the frame-averaging CNN is trained too, real only, to
show the task needs frame order. Generator (:class:`~monai_genaug.methods.ctrl_genaug.CtrlGenAug`): a learned frame
encoder trained on the real training frames gives the image prior; pre-training on frames; the clip stage at the
paper's learning rate (1e-4) with the motion fields concatenated and convolved into the UNet (``insert_unit``), and
model selection / early stopping on the validation clips (class agreement of clips generated from their conditions,
judged by a classifier trained on real training clips - not the oracle - and the temporal-consistency gap to real).
The clip stage's fixed-noise denoising loss on validation clips is recorded before and after, with the motion and with
the motion nulled (does the model use it?). Filter: semantic (group mean and an absolute 0.5 confidence floor) >>
temporal consistency with thresholds from the real training clips' range (learned frame features) >> near-duplicates.
Downstream: the shared protocol (:func:`monai_genaug.evaluation.evaluate_downstream`): real only / real + all / real +
filtered / real + random subset of the filtered count, five seeds, per-clip rows; the label curve of the learner; an
independent oracle (the temporal CNN trained on all real training + validation clips with its own seed).

    nice -n 5 python benchmarks/ctrl_genaug_motion.py                   # ~8 CPU minutes on one thread
    python benchmarks/ctrl_genaug_motion.py --quick --out_dir /tmp/q   # a smoke run

Writes ``benchmarks/results/ctrl_genaug_motion_phantoms.json`` (the report renders it).
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from monai_genaug.data.motion_phantoms import MOTION_CLASS_NAMES, make_motion_phantoms
from monai_genaug.evaluation import (
    BenchmarkTimer,
    Oracle,
    evaluate_downstream,
    evaluate_training_sets,
    label_curve,
    predict,
    write_results,
)
from monai_genaug.filters.temporal import temporal_consistency
from monai_genaug.methods.ctrl_genaug import (
    LEARNED_FRAME_ENCODER,
    CtrlGenAug,
    SequenceGenerator,
    clip_stage_monitor,
    ctrl_genaug_config,
    filter_generated,
    sequence_classifier,
    temporal_classifier,
    train_sequence_classifier,
)
from monai_genaug.networks.motion_encoder import estimate_motion
from monai_genaug.networks.sequence_unet import SEQUENCE_TRAINABLE_MODULES

RESULTS = Path(__file__).resolve().parent / "results"
#: cosine margin by which a generated clip's motion must be closer to its condition than to the reversed motion
STEERING_MARGIN = 0.05
STEM = "ctrl_genaug_motion_phantoms"
SETTINGS = {
    "num_train": 24, "num_val": 16, "num_test": 64, "num_frames": 8, "size": 16, "motion_method": "difference",
    "encoder_steps": 300, "frame_steps": 800, "frame_lr": 1e-3, "clip_steps": 600, "clip_lr": 1e-4,
    "monitor_every": 150, "patience": 2, "monitor_sample_steps": 10, "sample_steps": 20, "guidance_scale": 3.0,
    "num_per_clip": 2, "classifier_steps": 300, "min_confidence": 0.5, "downstream_steps": 300, "oracle_steps": 400,
    "seeds": 5,
}
#: the clip stage also trains the class embedding (frozen in the paper): on this task the class is invisible in single
#: frames, so the frame stage cannot teach the class embedding anything
CLASS_TRAINABLE = {**SETTINGS, "clip_steps": 1200, "monitor_every": 300,
                   "clip_trainable": [*SEQUENCE_TRAINABLE_MODULES, "class_embedding"]}
#: a stronger motion insertion: the motion fields scaled to about unit standard deviation before the motion encoder
#: (frame differences of these clips have a standard deviation of ~0.2; the scale is set from the training clips'
#: motion, not tuned on test clips), and up to 1200 clip-stage steps with the step chosen on the validation clips
MOTION_SCALE = {**SETTINGS, "motion_scale": 5.0, "clip_steps": 1200, "monitor_every": 300}
QUICK = {**SETTINGS, "num_train": 8, "num_val": 4, "num_test": 8, "encoder_steps": 5, "frame_steps": 4,
         "clip_steps": 4, "monitor_every": 2, "monitor_sample_steps": 2, "sample_steps": 2, "classifier_steps": 5,
         "downstream_steps": 5, "oracle_steps": 5, "seeds": 2}


def motion_data(cfg: dict) -> dict:
    """Training / validation / test clips, split by pair (a clip and its time reversal stay together)."""
    n = cfg["num_train"] + cfg["num_val"] + cfg["num_test"]
    items = make_motion_phantoms(n, cfg["num_frames"], (cfg["size"], cfg["size"]), seed=0)
    clips = torch.stack([torch.as_tensor(i["image"]) for i in items]).float()
    labels = torch.tensor([i["label"] for i in items])
    a, b = cfg["num_train"], cfg["num_train"] + cfg["num_val"]
    return {"train": (clips[:a], labels[:a]), "val": (clips[a:b], labels[a:b]), "test": (clips[b:], labels[b:])}


def _mean(v: list[float], first: bool) -> float:
    m = max(len(v) // 10, 1)
    return float(np.mean(v[:m] if first else v[-m:]))


def motion_steering(generated: torch.Tensor, sources: torch.Tensor, method: str) -> dict[str, float]:
    """Cosine of each generated clip's measured motion to its source clip's motion (the condition) and to the motion
    of the source played backwards (the other class's motion): steering shows as own > reversed."""
    m = estimate_motion(generated, method).flatten(1)
    own = estimate_motion(sources, method).flatten(1)
    rev = estimate_motion(sources.flip(2), method).flatten(1)
    return {"own": float(F.cosine_similarity(m, own).mean()), "reversed": float(F.cosine_similarity(m, rev).mean())}


def size_trend_agreement(clips: torch.Tensor, labels: torch.Tensor, threshold: float = 0.5) -> float:
    """Share of clips whose bright area (pixels above ``threshold``) grows over the clip for class 0 (expanding) and
    shrinks for class 1: a model-free check that a clip shows its class's motion."""
    area = (clips[:, 0] > threshold).float().flatten(2).sum(-1)  # (N, F)
    t = torch.arange(area.shape[1], dtype=torch.float32)
    slope = ((area - area.mean(1, keepdim=True)) * (t - t.mean())).sum(1)
    return float(((slope > 0) == (labels == 0)).float().mean())


def run(cfg: dict, out: Path, quick: bool = False, stem: str = STEM) -> Path:
    torch.set_num_threads(1)
    timer = BenchmarkTimer()
    stages: dict[str, float] = {}
    t0 = time.time()

    def stage(name: str) -> None:
        stages[name] = round(time.time() - t0 - sum(stages.values()), 1)
        logging.getLogger(__name__).warning(f"{name}: {stages[name]} s")

    data = motion_data(cfg)
    (xtr, ytr), (xva, yva), (xte, yte) = data["train"], data["val"], data["test"]
    nf, size = cfg["num_frames"], cfg["size"]
    torch.manual_seed(0)
    gen_cfg = ctrl_genaug_config("tiny", 1, nf, 2, frame_encoder=LEARNED_FRAME_ENCODER, motion_injection="concat",
                                 motion_scale=cfg.get("motion_scale", 1.0))
    pipe = CtrlGenAug(SequenceGenerator.from_config(gen_cfg), motion_method=cfg["motion_method"])
    enc_loss = pipe.fit_frame_encoder(xtr, num_steps=cfg["encoder_steps"])
    encoder = pipe.frame_features
    stage("frame_encoder")
    loss_f = pipe.fit(xtr, ytr, stage="frames", num_steps=cfg["frame_steps"], batch_size=16, lr=cfg["frame_lr"])
    stage("frame_stage")
    # the selection classifier of the clip stage and the semantic filter: the temporal CNN on real training clips
    selector = train_sequence_classifier(xtr, ytr, 2, num_steps=cfg["classifier_steps"], seed=50,
                                         network=temporal_classifier(2, xtr.shape[1:]))
    tc_real = {k: temporal_consistency(x, encoder) for k, x in (("train", xtr), ("val", xva), ("test", xte))}
    monitor = clip_stage_monitor(pipe, xva, yva, selector, float(tc_real["train"].mean()), encoder,
                                 num_inference_steps=cfg["monitor_sample_steps"], guidance_scale=cfg["guidance_scale"])
    val_loss = {"before": pipe.denoising_loss(xva, yva), "before_no_motion": pipe.denoising_loss(xva, yva, ("motion",))}
    loss_c = pipe.fit(xtr, ytr, stage="clips", num_steps=cfg["clip_steps"], batch_size=8, lr=cfg["clip_lr"],
                      trainable=cfg.get("clip_trainable", SEQUENCE_TRAINABLE_MODULES), monitor=monitor, monitor_every=cfg["monitor_every"], patience=cfg["patience"])
    val_loss.update(after=pipe.denoising_loss(xva, yva), after_no_motion=pipe.denoising_loss(xva, yva, ("motion",)))
    monitoring = pipe.monitoring
    stage("clip_stage")
    gen = pipe.generate(xtr, ytr, num_per_clip=cfg["num_per_clip"], guidance_scale=cfg["guidance_scale"],
                        num_inference_steps=cfg["sample_steps"])
    glabels = torch.tensor(gen["labels"])
    src_idx = torch.tensor([int(s[4:]) for s in gen["sources"]])
    steering = motion_steering(gen["clips"], xtr[src_idx], cfg["motion_method"])
    stage("generation")
    filt = filter_generated(gen, selector, feature_fn=encoder, min_confidence=cfg["min_confidence"], real_clips=xtr)
    keep = filt["keep"]
    stage("filter")
    seeds = tuple(range(cfg["seeds"]))

    def learner() -> torch.nn.Module:
        return temporal_classifier(2, xtr.shape[1:])

    common = {"learner_fn": learner, "iterations": cfg["downstream_steps"], "seeds": seeds}
    table, counts = evaluate_downstream("classification", (xtr, ytr), (xte, yte), 2, synthetic=(gen["clips"], glabels),
                                        keep=keep, **common)
    stage("downstream")
    n = xtr.shape[0]
    curve = label_curve("classification", (xtr, ytr), (xte, yte), 2, sizes=sorted({max(2, n // 4), n // 2, n}),
                        **common)
    frame_avg, _ = evaluate_training_sets(
        "classification", (xtr, ytr), (xte, yte), 2, {"frame-averaging CNN, real only": None},
        learner_fn=lambda: sequence_classifier(2, xtr.shape[1:]), iterations=cfg["downstream_steps"], seeds=seeds)
    stage("label_curve")
    oracle = Oracle("classification", 2, learner_fn=learner, iterations=cfg["oracle_steps"], seed=100)
    oracle.fit(torch.cat([xtr, xva]), torch.cat([ytr, yva]))
    sets = {"generated (all)": (gen["clips"], glabels), "kept by the filter": (gen["clips"][keep], glabels[keep]),
            "rejected by the filter": (gen["clips"][~keep], glabels[~keep])}
    oracle_table = oracle.table({k: v for k, v in sets.items() if len(v[0])})
    stage("oracle")
    tc_gen = temporal_consistency(gen["clips"], encoder)
    tc_pix = {k: float(temporal_consistency(x).mean()) for k, x in (("real", xtr), ("generated", gen["clips"]))}
    low, high = filt["temporal_thresholds"]
    clip_loss = {"first": _mean(loss_c, True), "last": _mean(loss_c, False)}
    checks = {
        "clip_stage_loss": {
            "train_first_tenth": clip_loss["first"], "train_last_tenth": clip_loss["last"],
            "val_fixed_noise_before": val_loss["before"], "val_fixed_noise_after": val_loss["after"],
            "falls": bool(val_loss["after"] < val_loss["before"]),
        },
        "motion_ablation": {"val_loss_with_motion": val_loss["after"], "val_loss_motion_nulled": val_loss["after_no_motion"],
                            "motion_used": bool(val_loss["after"] < val_loss["after_no_motion"])},
        "size_trend": {"real_train": size_trend_agreement(xtr, ytr),
                       "generated": size_trend_agreement(gen["clips"], glabels),
                       "oracle_class1_share_generated": float(predict(oracle.network, gen["clips"]).argmax(1).float().mean())},
        "motion_steering": {**steering, "margin": STEERING_MARGIN,
                            "steers": bool(steering["own"] - steering["reversed"] > STEERING_MARGIN)},
        "temporal_consistency": {"real_train": float(tc_real["train"].mean()), "real_test": float(tc_real["test"].mean()),
                                 "generated": float(tc_gen.mean()),
                                 "kept": float(tc_gen[keep].mean()) if keep.any() else None,
                                 "real_range": [round(float(tc_real["train"].min()), 2),
                                                round(float(tc_real["train"].max()), 2)],
                                 "filter_thresholds": [None if v is None else round(float(v), 2) for v in (low, high)], "pixels_real": tc_pix["real"],
                                 "pixels_generated": tc_pix["generated"]},
        "early_stopping": monitoring,
        "goals": {"filtered_vs_real_only": ["real+filtered", "real_only"], "consistency_within_points": 2.0,
                  "kept_agreement_at_least": 0.9},
    }
    diagnostics = {
        "clips (frames x size)": f"{nf} x {size} x {size}",
        "training / validation / test clips": f"{n} / {xva.shape[0]} / {xte.shape[0]}",
        "generated / kept clips": f"{int(gen['clips'].shape[0])} / {int(keep.sum())}",
        "frame encoder reconstruction loss first -> last": f"{_mean(enc_loss, True):.4f} -> {_mean(enc_loss, False):.4f}",
        "diffusion loss frames first -> last (training)": f"{_mean(loss_f, True):.3f} -> {_mean(loss_f, False):.3f}",
        "diffusion loss clips first -> last (training)": f"{clip_loss['first']:.4f} -> {clip_loss['last']:.4f}",
        **{f"stage seconds: {k}": v for k, v in stages.items()},
    }
    extra = {
        "title": "Ctrl-GenAug: order-sensitive phantoms (expanding vs contracting disk; class = motion)",
        "description": "Downstream sequence classification under the shared protocol with a temporal learner (3D CNN over "
                       "(t, h, w)); class 1 clips are class 0 clips played backwards, so per-frame appearance carries "
                       "no class information. Temporal consistency = 100 x mean cosine of consecutive frames' learned "
                       "frame-encoder features.",
        "script": "ctrl_genaug_motion.py",
        "measured": "order-sensitive phantoms: temporal-CNN accuracy, real only / + all / + filtered / + random subset "
                    "of the filtered count",
        "bundle": "ctrl_genaug",
        "class_names": list(MOTION_CLASS_NAMES),
        "counts": counts,
        "label_curve": {"metric": "accuracy", "rows": curve.to_rows()},
        "frame_averaging": {"rows": frame_avg.to_rows()},
        "oracle": {"rows": oracle_table.to_rows(), "test_score": oracle.test_score(xte, yte)},
        "checks": checks,
        "diagnostics": diagnostics,
    }
    settings = {**cfg, "budget": "6-10 CPU minutes on one thread per run (a 2-core machine shared by four people; 40 CPU "
                f"minutes for all of this issue's runs in session 5, 60 in session 6): one generator, 16 x 16 clips, tiny preset, {cfg['clip_steps']} "
                "clip-stage steps at most; a pilot at noisier phantoms (noise 0.15) came first"}
    if "clip_trainable" in cfg:
        extra["title"] += "; clip stage also trains the class embedding"
        extra["measured"] = "clip stage also trains the class embedding (not the paper): " + extra["measured"]
    if cfg.get("motion_scale", 1.0) != 1.0:
        extra["title"] += f"; motion fields x {cfg['motion_scale']:g}, up to {cfg['clip_steps']} clip steps"
        extra["measured"] = (f"motion fields x {cfg['motion_scale']:g} into the motion encoder, up to {cfg['clip_steps']} "
                             "clip steps: " + extra["measured"])
    return write_results(out, stem, settings, seeds, table, timer.stop(), primary_metric="accuracy",
                         baseline="real_only", extra=extra, quick=quick)


def main(argv=None) -> Path:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="a smoke run with tiny sizes and step counts")
    p.add_argument("--out_dir", default=str(RESULTS), help=f"folder of {STEM}.json")
    p.add_argument("--variant", choices=["paper", "class_embedding", "motion_scale"], default="paper",
                   help="'paper': the paper's trainable modules in the clip stage; 'class_embedding': also the class "
                        f"embedding, longer (writes {STEM}_class_embedding.json); 'motion_scale': motion fields scaled "
                        f"to ~unit std before the motion encoder, longer (writes {STEM}_motion_scale.json)")
    p.add_argument("--clip_steps", type=int, default=None,
                   help="more clip-stage steps than the variant's (checked every quarter of them on the validation "
                        "clips); the JSON's stem gets '_<N>steps'")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("ignite").setLevel(logging.WARNING)
    cfg = {"paper": SETTINGS, "class_embedding": CLASS_TRAINABLE, "motion_scale": MOTION_SCALE}[args.variant]
    if args.quick:
        cfg = {**QUICK, **{k: cfg[k] for k in ("clip_trainable", "motion_scale") if k in cfg}}
    stem = STEM if args.variant == "paper" else f"{STEM}_{args.variant}"
    if args.clip_steps is not None:
        if args.clip_steps < 4:
            raise SystemExit(f"--clip_steps must be >= 4 (checked every quarter), got {args.clip_steps}.")
        cfg = {**cfg, "clip_steps": args.clip_steps, "monitor_every": args.clip_steps // 4, "patience": 4}
        stem = f"{stem}_{args.clip_steps}steps"
    path = run(cfg, Path(args.out_dir) / f"{stem}.json", quick=args.quick, stem=stem)
    print(f"wrote {path}")
    return path


if __name__ == "__main__":
    main()
