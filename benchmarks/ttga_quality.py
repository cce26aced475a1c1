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
"""TTGA quality on Kvasir-SEG under the evaluation protocol: segmenter alone, flip TTA, TTGA, TTGA x flips.

Ma et al., "Test-Time Generative Augmentation for Medical Image Segmentation", arXiv:2406.17608; issue #16, item 6.
Data: the TTGA bundle's fixed, seeded split of the Kvasir-SEG folder (70 % training, 10 % validation, 20 % test, seed
0: 200 test images), every image resized to ``--size`` px; the metrics are computed on that network grid::

    python benchmarks/ttga_quality.py --data_dir ../shared/data/kvasir_seg        # ~40 min of one CPU core

Stages (each skipped when its output exists in ``--work_dir``, so an interrupted run resumes):

1. segmenter: the bundle's ``configs/train_segmenter.json`` on the training split (MONAI UNet, Dice-CE, flips /
   rotations, intensity augmentation);
2. generator (item 1 + item 2): a pixel-space TTGA generator (``ttga_generator_config(latent=False)``: no
   autoencoder, so nothing is lost to one) with a 16-token, 64-wide learned prompt whose token 0 is grounded on the
   polyp masks at the finest cross-attention level (:func:`~monai_genaug.methods.ttga.train_grounded_ttga_generator`),
   trained on the training split for at most ``--gen_seconds`` (resumable; the epochs reached are reported);
3. validation: TTGA's ``tau_alpha_bar`` x ``lambda_i`` grid on ``--val_items`` validation images; the setting with the
   best mean TTGA Dice (ties: error-estimation AUC) is kept. The test split is not touched here;
4. test, once, on every test image: the segmenter alone (its own softmax entropy as the error detector), flip TTA
   (8 random flips, MONAI ``TestTimeAugmentation``), TTGA (N views + the original, attention mask of the grounded
   token at the finest level) and TTGA x flips (every member also segmented flipped along each axis and both).
   Dice, HD95 and the ROC AUC with which the ensemble's normalised entropy finds the wrong pixels; per image also the
   reconstruction gate (the segmenter on ``augmenter.reconstruct(image)``), the identity-fit loss against its early-stop
   threshold, the identity fraction and the views' diversity, so the report shows which link limits TTGA.

Writes ``benchmarks/results/ttga_quality.json`` (envelope, per-image rows); every training seed (``--seed``: the
segmenter and the generator are retrained, the split stays fixed) is one run with its own ``--work_dir`` and
``--out``, merged afterwards (``--merge seed0.json seed1.json ... --out benchmarks/results/ttga_quality.json``) so
that the intervals bootstrap over images and seeds; the report
(``python -m monai_genaug.evaluation.report benchmarks/results``) writes ``ttga_quality.md`` and the bundle doc's
Performance section.
"""

from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout: use its monai_genaug

import torch  # noqa: E402
from monai.data import CacheDataset, DataLoader  # noqa: E402
from monai.networks.nets import UNet  # noqa: E402

from monai_genaug.data.bundle import bundle_datalist, bundle_transforms  # noqa: E402
from monai_genaug.evaluation.results import BenchmarkTimer, merge_results, write_results  # noqa: E402
from monai_genaug.evaluation.statistics import ResultsTable  # noqa: E402
from monai_genaug.generative.latent_generator import LatentGenerator  # noqa: E402
from monai_genaug.generative.weights import load_network_weights  # noqa: E402
from monai_genaug.inferers.generative_tta import GenerativeTTAInferer  # noqa: E402
from monai_genaug.methods.ttga import (  # noqa: E402
    TTGAAugmenter,
    build_ttga_generator,
    save_generator,
    train_grounded_ttga_generator,
    ttga_generator_config,
)
from monai_genaug.metrics.cases import case_metrics, flip_tta_probabilities  # noqa: E402
from monai_genaug.metrics.uncertainty import uncertainty_maps  # noqa: E402
from monai_genaug.metrics.view_diversity import DIVERSITY_KEYS  # noqa: E402
from monai_genaug.utils.checkpoint import load_checkpoint  # noqa: E402
from monai_genaug.utils.paths import shared_data_dir  # noqa: E402

CONFIGS = "bundles/ttga/configs"
SEGMENTER = {"channels": [16, 32, 64, 128], "strides": [2, 2, 2]}  # the bundle's segmenter_channels / _strides
METHODS = ("segmenter", "flip_tta", "ttga", "ttga_x_flips")
FLIPS = [[0], [1], [0, 1]]


def run_bundle(config: str, log: Path, threads: int, **overrides) -> float:
    """``python -m monai.bundle run`` of one bundle config with ``overrides``; its wall time."""
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", f"{CONFIGS}/{config}"]
    for k, v in overrides.items():
        cmd += [f"--{k}", str(v)]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    print(" ".join(cmd), flush=True)
    t0 = time.time()
    with open(log, "w") as f:
        proc = subprocess.run(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, env=env, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed; see {log}:\n" + log.read_text()[-3000:])
    return time.time() - t0


def generator_config(size: int) -> dict:
    """The pixel-space TTGA generator of this benchmark (cross-attention on the 16 x 16 level of a 64 px image)."""
    return ttga_generator_config(image_channels=3, preset="tiny", latent=False, unet_channels=[16, 32, 64],
                                 unet_attention_levels=[False, False, True], num_head_channels=16,
                                 unet_norm_num_groups=8, cross_attention_dim=64, prompt_tokens=16)


def split(data: Path, name: str, size: int, max_items: int | None, train: bool = False) -> list[dict]:
    """One split of the bundle's fixed split, loaded at ``size`` px with the label resized too (network grid)."""
    items = bundle_datalist(str(data), split=name, max_items=max_items, bundle="benchmarks/ttga_quality.py")
    transform = bundle_transforms(spatial_size=[size, size], resize_label=True, augment=train,
                                  config_name="benchmarks/ttga_quality.py")
    return CacheDataset(items, transform, cache_rate=1.0, num_workers=0, progress=False)


def train_generator(args: argparse.Namespace, data: Path, work: Path) -> dict:
    """Stage 2: the grounded pixel-space generator (resumable, at most ``--gen_seconds`` per call)."""
    path = work / "generator.pt"
    ds = split(data, "training", args.size, args.train_items, train=True)
    loader = DataLoader(ds, batch_size=16, shuffle=True, num_workers=0,
                        generator=torch.Generator().manual_seed(args.seed))
    torch.manual_seed(args.seed)
    gen = build_ttga_generator(generator_config(args.size))
    history = train_grounded_ttga_generator(gen, loader, work / "generator", epochs=args.gen_epochs, lr=2e-3,
                                            grounding_weight=args.grounding_weight, seed=args.seed,
                                            max_seconds=args.gen_seconds)
    save_generator(gen, path, extra={"made_by": "benchmarks/ttga_quality.py", "history": history})
    return history


def augmenter(gen, args: argparse.Namespace, tau_alpha_bar: float, lambda_i: float) -> TTGAAugmenter:
    return TTGAAugmenter(gen, prompt=0, num_views=args.views, tau_alpha_bar=tau_alpha_bar, inversion_stride=50,
                         denoising_stride=100, lambda_i=lambda_i, mask_scheme="attention", attention_factor="finest",
                         min_iterations=min(20, args.max_iterations), max_iterations=args.max_iterations,
                         generator_range=(0.0, 1.0), intensity_range=(0.0, 1.0), cache_size=2, seed=args.seed)


def scores(probs: torch.Tensor, label: torch.Tensor) -> dict[str, float]:
    """Dice / HD95 / error AUC of an ensemble of probabilities (K, C, H, W) against the label (1, H, W)."""
    maps = uncertainty_maps(probs, sample_dim=0, channel_dim=1, normalize=True)
    return case_metrics(maps["mean"].argmax(0)[None], label, 1, maps["entropy"])


def evaluate_image(net, aug: TTGAAugmenter, image: torch.Tensor, label: torch.Tensor, full: bool) -> dict:
    """Every method on one image; ``full`` adds flip TTA, TTGA x flips, the reconstruction and the diagnostics."""
    plain = GenerativeTTAInferer(aug, num_views=aug.num_views, include_original=True, output="dict", seed=0,
                                 normalize_uncertainty=True)
    t0 = time.perf_counter()
    with torch.no_grad():
        out = plain(image[None], net)
    seconds = time.perf_counter() - t0
    ttga_out, diversity = aug.last_output, plain.last_output
    probs_base = out["original"][0][None]
    res = {"segmenter": scores(probs_base, label),
           "ttga": case_metrics(out["pred"][0].argmax(0)[None], label, 1, out["entropy"][0])}
    if not full:
        with torch.no_grad():
            res["reconstruction"] = scores(torch.softmax(net(aug.reconstruct(image)), 1), label)
        return res
    flips = GenerativeTTAInferer(aug, num_views=aug.num_views, include_original=True, output="dict", seed=0,
                                 normalize_uncertainty=True, flip_axes=FLIPS)
    with torch.no_grad():
        outf = flips(image[None], net)  # the identity embedding comes from the augmenter's cache
        res["ttga_x_flips"] = case_metrics(outf["pred"][0].argmax(0)[None], label, 1, outf["entropy"][0])
        res["flip_tta"] = scores(flip_tta_probabilities(net, image, 8, seed=0), label)
        recon = aug.reconstruct(image)
        res["reconstruction"] = scores(torch.softmax(net(recon), 1), label)
    state = ttga_out.state
    threshold = aug.early_stop_loss + aug.tau * aug.early_stop_tau_factor
    res["diagnostics"] = {
        "identity_fraction": float(ttga_out.identity_fraction.mean()),
        "identity_loss": state.final_loss, "identity_initial_loss": state.initial_loss,
        "identity_loss_over_threshold": state.final_loss / threshold, "identity_iterations": state.iterations,
        "reconstruction_mae": float((recon[0] - image).abs().mean()), "seconds": seconds,
        **{k: float(diversity[k][0]) for k in DIVERSITY_KEYS},
    }
    return res


def main(argv=None) -> Path:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data_dir", default=str(shared_data_dir() / "kvasir_seg"))
    p.add_argument("--work_dir", default=str(ROOT / "outputs" / "benchmarks" / "ttga_protocol"))
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "ttga_quality.json"))
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--seg_epochs", type=int, default=30)
    p.add_argument("--train_items", type=int, default=None, help="training images (None: the whole split)")
    p.add_argument("--gen_epochs", type=int, default=40)
    p.add_argument("--gen_seconds", type=float, default=660.0,
                   help="wall-clock budget of one call of the generator stage (a rerun without generator.pt resumes)")
    p.add_argument("--grounding_weight", type=float, default=3.0)
    p.add_argument("--val_items", type=int, default=16)
    p.add_argument("--test_items", type=int, default=None, help="test images (None: all 200)")
    p.add_argument("--views", type=int, default=4)
    p.add_argument("--max_iterations", type=int, default=20)
    p.add_argument("--tau_grid", type=float, nargs="+", default=[0.74, 0.9, 0.97])
    p.add_argument("--lambda_grid", type=float, nargs="+", default=[0.5, 1.2])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="smoke run: tiny sizes (not a result)")
    p.add_argument("--merge", nargs="+", default=None, metavar="JSON",
                   help="merge the result files of runs with other --seed values into --out, then exit")
    args = p.parse_args(argv)
    if args.merge:
        out = merge_results(args.merge, args.out, per_run_settings=["generator"],
                            per_run_extra=["validation", "stage_seconds"])
        print(f"wrote {out}")
        return out
    if args.quick:
        args.seg_epochs, args.train_items, args.gen_epochs, args.gen_seconds = 1, 16, 1, 30.0
        args.val_items, args.test_items, args.views, args.max_iterations = 2, 3, 2, 3
        args.tau_grid, args.lambda_grid = args.tau_grid[:1], args.lambda_grid[:1]
    torch.set_num_threads(1)
    timer = BenchmarkTimer()
    data = Path(args.data_dir)
    if not (data / "images").is_dir():
        raise FileNotFoundError(f"Kvasir-SEG not found at '{data}' (images/ + masks/); pass --data_dir.")
    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    stage_s: dict[str, float] = {}
    seg = work / "segmenter.pt"
    if not seg.is_file():
        stage_s["segmenter"] = run_bundle(
            "train_segmenter.json", work / "segmenter.log", 1, dataset_dir=data, model_path=seg,
            output_dir=work / "segmenter", spatial_size=f"[{args.size},{args.size}]", epochs=args.seg_epochs,
            val_interval=max(1, args.seg_epochs // 3), seed=args.seed, split_seed=0,
            max_items="null" if args.train_items is None else args.train_items)
    net = load_network_weights(UNet(2, 3, 2, SEGMENTER["channels"], SEGMENTER["strides"], num_res_units=1), seg).eval()
    t0 = time.time()
    history = None
    if not (work / "generator.pt").is_file():
        history = train_generator(args, data, work)
        stage_s["generator"] = time.time() - t0
    gen = LatentGenerator.load(str(work / "generator.pt")).eval()
    if history is None:
        history = load_checkpoint(str(work / "generator.pt"))["extra"]["history"]

    # validation: the grid, the test split untouched
    t0 = time.time()
    val = split(data, "validation", args.size, args.val_items)
    grid = []
    for tau in args.tau_grid:
        for lam in args.lambda_grid:
            aug = augmenter(gen, args, tau, lam)
            rows = [evaluate_image(net, aug, it["image"].as_tensor(), it["label"].as_tensor(), full=False)
                    for it in val]
            grid.append({"tau_alpha_bar": tau, "lambda_i": lam, "tau": aug.tau,
                         "dice_ttga": sum(r["ttga"]["dice"] for r in rows) / len(rows),
                         "dice_segmenter": sum(r["segmenter"]["dice"] for r in rows) / len(rows),
                         "error_auc_ttga": _nanmean([r["ttga"].get("error_auc") for r in rows]),
                         "gate_ratio": sum(r["reconstruction"]["dice"] for r in rows) / max(
                             sum(r["segmenter"]["dice"] for r in rows), 1e-8)})
            print(grid[-1], flush=True)
    best = max(grid, key=lambda g: (round(g["dice_ttga"], 4), g["error_auc_ttga"]))
    stage_s["validation"] = time.time() - t0

    # test, once
    t0 = time.time()
    test = split(data, "test", args.size, args.test_items)
    aug = augmenter(gen, args, best["tau_alpha_bar"], best["lambda_i"])
    table = ResultsTable()
    for i, it in enumerate(test):
        case = Path(str(it["image"].meta.get("filename_or_obj", i))).stem
        res = evaluate_image(net, aug, it["image"].as_tensor(), it["label"].as_tensor(), full=True)
        for method in (*METHODS, "reconstruction"):
            for metric in ("dice", "hd95", "error_auc"):
                v = res[method].get(metric)
                if v is not None and math.isfinite(v):
                    table.add(method, case=case, value=v, seed=args.seed, metric=metric)
        for metric, v in res["diagnostics"].items():
            table.add("ttga_diagnostics", case=case, value=v, seed=args.seed, metric=metric)
        if i % 20 == 0:
            print(f"test {i + 1}/{len(test)}: {res['diagnostics']}", flush=True)
    stage_s["test"] = time.time() - t0
    settings = {
        "data": "Kvasir-SEG, bundle split (70/10/20 %, seed 0)", "size": args.size, "seg_epochs": args.seg_epochs,
        "train_items": args.train_items, "val_items": len(val), "test_items": len(test), "views": args.views,
        "max_identity_iterations": args.max_iterations, "tau_grid": args.tau_grid, "lambda_grid": args.lambda_grid,
        "generator": {"config": "pixel space (latent=False), UNet [16, 32, 64], cross-attention on the last level, "
                                "16 prompt tokens of width 64, token 0 grounded on the masks",
                      "grounding_weight": args.grounding_weight, "epochs_done": history["epochs"],
                      "epochs_asked": args.gen_epochs, "budget_s": args.gen_seconds,
                      "seconds": sum(history["seconds"]), "final_loss": history["loss"][-1],
                      "final_grounding_loss": history["grounding_loss"][-1]},
        "budget": "about 40 min of one CPU core for the whole run (2 cores shared by 3 developers): 64 px only, "
                  "4 views, 20 identity iterations, the generator's wall-clock budget (see generator.seconds); "
                  "128 px and DRIVE not run",
        "metrics_grid": f"{args.size} x {args.size} network grid (labels resized nearest)",
    }
    extra = {
        "title": "TTGA on Kvasir-SEG test (all test images of the bundle split): segmenter alone, flip TTA, TTGA, "
                 "TTGA x flips",
        "script": "ttga_quality.py", "bundle": "ttga", "validation": {"grid": grid, "chosen": best},
        "stage_seconds": stage_s, "methods": list(METHODS), "reconstruction_gate": 0.98,
    }
    out = write_results(args.out, "ttga_quality", settings, [args.seed], table, timer.stop(), primary_metric="dice",
                        baseline="segmenter", extra=extra, quick=args.quick)
    print(f"wrote {out}")
    return out


def _nanmean(values) -> float:
    v = [float(x) for x in values if x is not None and math.isfinite(float(x))]
    return sum(v) / len(v) if v else float("nan")


if __name__ == "__main__":
    main()
