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
"""TTGA quality on Kvasir-SEG: segmenter alone vs flip TTA (MONAI ``TestTimeAugmentation``) vs TTGA.

Ma et al., "Test-Time Generative Augmentation for Medical Image Segmentation", arXiv:2406.17608. Everything runs
through the TTGA bundle's own configs (``python -m monai.bundle run``), on the bundle's fixed, seeded split of the
data folder (70 % training, 10 % validation, 20 % test; seed 0) at the bundle's size (64 px by default)::

    python benchmarks/ttga_quality.py --data_dir ../shared/data/kvasir_seg     # ~15-20 min on 2 CPU cores

Stages (each is skipped when its output exists in ``--work_dir``, so a rerun only re-evaluates):

1. segmenter: ``configs/train_segmenter.json`` on the training split (MONAI UNet, Dice-CE, flips / rotations and
   intensity augmentation);
2. generator, the paper's step 1: ``configs/train_lora.json`` starting from the bundle's default generator (trained
   on phantoms): a short fine-tuning of its autoencoder on the training images (the paper's Stable Diffusion VAE needs
   none; the phantom autoencoder does), then LoRA adapters (rank 4) on the UNet's attention and the domain prompt;
3. evaluation: ``configs/inference.json`` + ``configs/evaluate.json`` on the first ``--test_items`` test images:
   per image the segmenter alone, flip TTA (8 random flips through MONAI ``TestTimeAugmentation``, inverted) and
   TTGA (N views + the original), with the bundle's autoencoder detail transfer and (``--plain 1``) once more with
   plain views (``--detail_weight 0``, the paper's views), all scored at the image's native resolution: Dice and
   HD95 of the label map, and the ROC AUC with which each method's predictive entropy finds the wrong pixels
   (error estimation);
4. ``benchmarks/results/ttga_quality.json`` (``python -m monai_genaug.evaluation.report benchmarks/results`` writes
   the table ``benchmarks/results/ttga.md``, with the speed results of ``ttga_speed.py``).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout: use its monai_genaug

import numpy as np

from monai_genaug.evaluation.results import BenchmarkTimer, environment, write_json_atomic
from monai_genaug.utils.paths import shared_data_dir

CONFIGS = "bundles/ttga/configs"
METHODS = {
    "baseline": "segmenter alone",
    "flip": "flip TTA (8 flips)",
    "ttga_plain": "TTGA, plain views (as the paper)",
    "ttga": "TTGA + autoencoder detail transfer (bundle default)",
}


def bundle(args: argparse.Namespace, configs: list[str], log: Path, **overrides) -> float:
    """Run ``python -m monai.bundle run`` with ``overrides``; return its wall time."""
    files = [f"{CONFIGS}/{c}" for c in configs]
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", str(files) if len(files) > 1 else files[0]]
    for k, v in overrides.items():
        cmd += [f"--{k}", str(v)]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    print(" ".join(cmd), flush=True)
    t0 = time.time()
    with open(log, "w") as f:
        proc = subprocess.run(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, env=env, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed; see {log}:\n" + log.read_text()[-3000:])
    return time.time() - t0


def _stats(values: list[float]) -> dict:
    v = np.array([x for x in values if x is not None and not math.isnan(x)], dtype=float)
    if not v.size:
        return {"mean": None, "std": None, "n": 0}
    return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if v.size > 1 else 0.0, "n": int(v.size)}


def summarise(metrics_csv: Path, plain_csv: Path | None = None) -> dict:
    """Mean / std per method and metric, and the paired Dice differences of TTGA, from the evaluation CSV(s)."""
    with open(metrics_csv, newline="") as f:
        rows = list(csv.DictReader(f))
    if plain_csv is not None and plain_csv.is_file():
        with open(plain_csv, newline="") as f:
            plain = {r["id"]: r for r in csv.DictReader(f)}
        for r in rows:
            for m in ("dice", "hd95", "error_auc"):
                r[f"{m}_ttga_plain"] = plain.get(r["id"], {}).get(f"{m}_ttga", "nan")

    def col(name: str) -> list[float]:
        return [float(r[name]) if r.get(name) not in (None, "", "nan") else math.nan for r in rows]

    out: dict = {"num_images": len(rows), "methods": {}}
    for key, label in METHODS.items():
        out["methods"][key] = {"label": label, **{m: _stats(col(f"{m}_{key}")) for m in ("dice", "hd95", "error_auc")}}
    for other in ("baseline", "flip", "ttga_plain"):
        d = np.array(col("dice_ttga")) - np.array(col(f"dice_{other}"))
        d = d[~np.isnan(d)]
        out[f"ttga_minus_{other}_dice"] = {"mean": float(d.mean()) if d.size else None, "wins": int((d > 1e-9).sum()),
                                           "losses": int((d < -1e-9).sum()), "n": int(d.size)}
    out["ttga_identity_iterations"] = _stats(col("iterations"))
    out["ttga_seconds_per_image"] = _stats(col("seconds"))
    return out


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data_dir", default=str(shared_data_dir() / "kvasir_seg"))
    p.add_argument("--work_dir", default=str(ROOT / "outputs" / "benchmarks" / "ttga"))
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--test_items", type=int, default=40)
    p.add_argument("--views", type=int, default=8)
    p.add_argument("--seg_epochs", type=int, default=25)
    p.add_argument("--ae_epochs", type=int, default=4)
    p.add_argument("--lora_epochs", type=int, default=6)
    p.add_argument("--max_iterations", type=int, default=100)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--plain", type=int, default=1, help="also evaluate plain TTGA views (detail_weight 0)")
    p.add_argument("--reuse", type=int, default=0, help="reuse existing evaluation CSVs (only re-summarise)")
    p.add_argument("--results", default=str(ROOT / "benchmarks" / "results"))
    args = p.parse_args(argv)
    timer = BenchmarkTimer()
    data = Path(args.data_dir)
    if not (data / "images").is_dir():
        raise FileNotFoundError(f"Kvasir-SEG not found at '{data}' (images/ + masks/); pass --data_dir.")
    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    size = f"[{args.size},{args.size}]"
    times = {}
    seg = work / "segmenter.pt"
    if not seg.is_file():
        times["segmenter"] = bundle(args, ["train_segmenter.json"], work / "segmenter.log", dataset_dir=data,
                                    model_path=seg, output_dir=work / "segmenter", spatial_size=size,
                                    epochs=args.seg_epochs, val_interval=5)
    gen = work / "generator" / "generator_lora.pt"
    if not gen.is_file():
        times["generator"] = bundle(args, ["train_lora.json"], work / "generator.log", dataset_dir=data,
                                    output_dir=work / "generator", spatial_size=size, autoencoder_epochs=args.ae_epochs,
                                    epochs=args.lora_epochs, val_interval=args.lora_epochs,
                                    sample_every=args.lora_epochs)
    if not (args.reuse and (work / "evaluate" / "metrics.csv").is_file()):
        times["evaluate"] = bundle(args, ["inference.json", "evaluate.json"], work / "evaluate.log", dataset_dir=data,
                                   model_path=seg, generator_path=gen, output_dir=work / "evaluate", spatial_size=size,
                                   max_items=args.test_items, num_views=args.views, max_iterations=args.max_iterations,
                                   overwrite="true")  # a deliberate rerun replaces the earlier evaluation
    if args.plain and not (args.reuse and (work / "evaluate_plain" / "metrics.csv").is_file()):
        times["evaluate_plain"] = bundle(args, ["inference.json", "evaluate.json"], work / "evaluate_plain.log",
                                         dataset_dir=data, model_path=seg, generator_path=gen,
                                         output_dir=work / "evaluate_plain", spatial_size=size,
                                         max_items=args.test_items, num_views=args.views,
                                         max_iterations=args.max_iterations, detail_weight=0.0, flip_tta_examples=0,
                                         overwrite="true")
    results = summarise(work / "evaluate" / "metrics.csv", work / "evaluate_plain" / "metrics.csv" if args.plain else None)
    settings = {"size": args.size, "test_items": args.test_items, "views": args.views, "seg_epochs": args.seg_epochs,
                "ae_epochs": args.ae_epochs, "lora_epochs": args.lora_epochs,
                "max_identity_iterations": args.max_iterations, "threads": args.threads,
                "ttga": json.loads((work / "evaluate" / "summary.json").read_text())["settings"]}
    quality = {"dataset": "Kvasir-SEG", "settings": settings, "results": results, "stage_seconds": times}
    out = Path(args.results)
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic({**quality, "timing": timer.stop(), "environment": environment()}, out / "ttga_quality.json")
    print(json.dumps(results, indent=2))
    return quality


if __name__ == "__main__":
    main()
