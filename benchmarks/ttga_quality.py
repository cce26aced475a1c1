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

``--dataset drive`` runs the same four methods on the DRIVE vessel set (items 1 and 6): the official split (the last 4
training images held out for validation), the green channel at ``--fundus_size`` px, random 64 px crops inside the
field of view; the segmenter is the same UNet with one input channel trained in-process
(:func:`~monai_genaug.evaluation.learners.train_learner`), the generator the same pixel-space one grounded on the
vessel masks, and each test image is scored as the mean over ``--test_crops`` fixed crops (intervals over images).
Output ``ttga_quality_drive.json``.

``--gate_study --study DIR:SEED ...`` touches validation images only (``ttga_gate.json``): the reconstruction gate, the
identity-fit loss and the views' diversity against alpha-bar, DDIM inversion stride and the identity-fit iterations /
lr, for trained work dirs (a generator trained on with ``--stop_after generator --gen_epochs N`` from a copy of a
work dir shows whether more training moves the gate), and with ``--cost_probe`` the 64 vs 128 px cost.

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
from monai_genaug.data.fundus import drive_datalist, load_fundus, random_fov_crops  # noqa: E402
from monai_genaug.evaluation.learners import train_learner  # noqa: E402
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


def generator_config(channels: int = 3) -> dict:
    """The pixel-space TTGA generator of this benchmark (cross-attention on the 16 x 16 level of a 64 px image)."""
    return ttga_generator_config(image_channels=channels, preset="tiny", latent=False, unet_channels=[16, 32, 64],
                                 unet_attention_levels=[False, False, True], num_head_channels=16,
                                 unet_norm_num_groups=8, cross_attention_dim=64, prompt_tokens=16)


def split(data: Path, name: str, size: int, max_items: int | None, train: bool = False) -> list[dict]:
    """One split of the bundle's fixed split, loaded at ``size`` px with the label resized too (network grid)."""
    items = bundle_datalist(str(data), split=name, max_items=max_items, bundle="benchmarks/ttga_quality.py")
    transform = bundle_transforms(spatial_size=[size, size], resize_label=True, augment=train,
                                  config_name="benchmarks/ttga_quality.py")
    return CacheDataset(items, transform, cache_rate=1.0, num_workers=0, progress=False)


def train_generator(args: argparse.Namespace, train_set, work: Path, channels: int) -> dict:
    """Stage 2: the grounded pixel-space generator (resumable, at most ``--gen_seconds`` per call)."""
    path = work / "generator.pt"
    loader = DataLoader(train_set, batch_size=16, shuffle=True, num_workers=0,
                        generator=torch.Generator().manual_seed(args.seed))
    torch.manual_seed(args.seed)
    gen = build_ttga_generator(generator_config(channels))
    history = train_grounded_ttga_generator(gen, loader, work / "generator", epochs=args.gen_epochs, lr=2e-3,
                                            grounding_weight=args.grounding_weight, seed=args.seed,
                                            max_seconds=args.gen_seconds)
    save_generator(gen, path, extra={"made_by": "benchmarks/ttga_quality.py", "history": history})
    return history


def drive_sets(args: argparse.Namespace, data: Path) -> dict:
    """DRIVE at ``--fundus_size`` px (green channel, field-of-view normalised): the official 20 training images minus
    the last 4 (validation, as in ``gms_quality.py``) give ``--crops_per_image`` random 64 px crops each for the
    segmenter and the generator (``--seed``); validation and test are fixed random crops (seeds 2 and 3), scored per
    crop and averaged per image, so every interval is over images."""
    train = load_fundus(drive_datalist(data, "train"), args.fundus_size)
    test = load_fundus(drive_datalist(data, "test"), args.fundus_size)
    train, val = train[:-4], train[-4:]
    crops = random_fov_crops(train, args.size, args.crops_per_image, seed=100 + args.seed)
    for c in crops:
        c["label"] = c["label"].float()
    return {"train": crops,
            "validation": random_fov_crops(val, args.size, args.val_crops, seed=2)[: args.val_items],
            "test": random_fov_crops(test if args.test_items is None else test[: args.test_items], args.size,
                                     args.test_crops, seed=3)}


def train_drive_segmenter(args: argparse.Namespace, crops: list[dict], path: Path) -> float:
    """Stage 1 on DRIVE: the benchmark's UNet (1 input channel) trained on the training crops (Dice-CE, rot90 / flips,
    ``--seg_iterations`` AdamW steps, batch 16); returns its wall time."""
    t0 = time.time()
    torch.manual_seed(args.seed)
    net = UNet(2, 1, 2, SEGMENTER["channels"], SEGMENTER["strides"], num_res_units=1)
    images = torch.stack([c["image"] for c in crops])
    labels = torch.stack([c["label"] for c in crops]).long()
    train_learner(net, images, labels, "segmentation", iterations=args.seg_iterations, batch_size=16, seed=args.seed)
    torch.save(net.state_dict(), path)
    return time.time() - t0


def items_of(dataset) -> list[tuple[str, str, torch.Tensor, torch.Tensor]]:
    """(case, group, image, label) of every item: a Kvasir image is its own group, a DRIVE crop belongs to its image."""
    out = []
    for i, it in enumerate(dataset):
        image, label = it["image"], it["label"]
        if hasattr(image, "as_tensor"):
            case = Path(str(image.meta.get("filename_or_obj", i))).stem
            out.append((case, case, image.as_tensor(), label.as_tensor()))
        else:
            out.append((it["id"], str(it["group"]), image, label.long()))
    return out


def per_group(results: list[tuple[str, dict]]) -> list[tuple[str, dict]]:
    """Average the per-item results of each group (a DRIVE test image's crops); a metric a crop lacks (no wrong pixel,
    an empty mask) is averaged over the crops that have it."""
    groups: dict[str, list[dict]] = {}
    for g, r in results:
        groups.setdefault(g, []).append(r)
    out = []
    for g, rs in groups.items():
        merged = {}
        for method in rs[0]:
            keys = {k for r in rs for k in r[method]}
            merged[method] = {k: _nanmean([r[method].get(k) for r in rs]) for k in keys}
        out.append((g, merged))
    return out


def augmenter(gen, args: argparse.Namespace, tau_alpha_bar: float, lambda_i: float) -> TTGAAugmenter:
    return TTGAAugmenter(gen, prompt=0, num_views=args.views, tau_alpha_bar=tau_alpha_bar, inversion_stride=args.inversion_stride,
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


def gate_study(args: argparse.Namespace, data: Path) -> Path:
    """Item 1 / 2 diagnosis on Kvasir-SEG validation images only: the reconstruction gate against the noise level.

    For every trained ``DIR:SEED`` of ``--study`` (a work dir of this script) and every ``--study_alpha_bars`` value:
    the segmenter's Dice on the image and on ``augmenter.reconstruct(image)`` (the identity path alone), the
    identity-fit loss (first and last iteration) over its early-stop threshold, and, with ``--max_iterations``
    identity iterations, the diversity of 2 views (lambda_i 0.5; first directory only). The first directory runs every
    DDIM inversion stride of ``--study_strides`` (the others the last one) and the identity-fit settings
    ``--study_iterations`` x ``--study_lrs`` at ``--study_tune_alpha_bars`` (last stride). The generators' per-epoch loss
    curves and wall times come along (has training converged?), and ``--cost_probe`` times one generator training
    step and one TTGA image at 64 and 128 px (interleaved), the cost that decides whether 128 px fits the budget.
    """
    timer = BenchmarkTimer()
    val = items_of(split(data, "validation", args.size, args.val_items))
    table, cells, generators = ResultsTable(), [], {}
    for k, spec in enumerate(args.study):
        folder, seed = spec.rsplit(":", 1)
        work, seed = Path(folder), int(seed)
        net = load_network_weights(UNet(2, 3, 2, SEGMENTER["channels"], SEGMENTER["strides"], num_res_units=1),
                                   work / "segmenter.pt").eval()
        gen = LatentGenerator.load(str(work / "generator.pt")).eval()
        history = load_checkpoint(str(work / "generator.pt"))["extra"]["history"]
        label = f"{work.name} ({history['epochs']} epochs)"
        generators[label] = {"seed": seed, "epochs": history["epochs"], "loss": history["loss"],
                             "grounding_loss": history["grounding_loss"], "seconds": history["seconds"]}
        strides = args.study_strides if k == 0 else args.study_strides[-1:]
        settings = [(a, args.max_iterations, 0.1, st) for st in strides for a in args.study_alpha_bars]
        if k == 0:
            settings += [(a, n, lr, args.study_strides[-1]) for a in args.study_tune_alpha_bars
                         for n in args.study_iterations for lr in args.study_lrs
                         if (n, lr) != (args.max_iterations, 0.1) and (n > 1 or lr == args.study_lrs[0])]
        for a, n, lr, stride in settings:
            t0 = time.process_time()
            aug = TTGAAugmenter(gen, prompt=0, num_views=2, tau_alpha_bar=a, inversion_stride=stride,
                                denoising_stride=100, lambda_i=0.5, mask_scheme="attention", attention_factor="finest",
                                lr=lr, min_iterations=n, max_iterations=n, generator_range=(0.0, 1.0),
                                intensity_range=(0.0, 1.0), cache_size=1, seed=seed)
            method = f"{label} | alpha_bar {a} | inversion stride {stride} | {n} iterations, lr {lr}"
            threshold = aug.early_stop_loss + aug.tau * aug.early_stop_tau_factor
            for case, _, image, lab in val:
                with torch.no_grad():
                    state = aug.prepare(image)
                    values = {"dice_image": scores(torch.softmax(net(image[None]), 1), lab)["dice"],
                              "dice_reconstruction": scores(torch.softmax(net(aug.reconstruct(image)), 1),
                                                            lab)["dice"],
                              "identity_initial_over_threshold": state.initial_loss / threshold,
                              "identity_loss_over_threshold": state.final_loss / threshold}
                    if k == 0 and n == args.max_iterations and lr == 0.1:
                        inferer = GenerativeTTAInferer(aug, num_views=2, include_original=True, output="dict", seed=0)
                        inferer(image[None], net)
                        values.update({key: float(inferer.last_output[key][0]) for key in DIVERSITY_KEYS})
                        values["identity_fraction"] = float(aug.last_output.identity_fraction.mean())
                for metric, v in values.items():
                    table.add(method, case=case, value=v, seed=seed, metric=metric)
            cells.append({"method": method, "generator": label, "seed": seed, "alpha_bar": a, "tau": aug.tau,
                          "iterations": n, "lr": lr, "inversion_stride": stride, "cpu_s": time.process_time() - t0})
            print(cells[-1], flush=True)
    extra = {"title": "TTGA's reconstruction gate against the noise level (Kvasir-SEG validation images)",
             "script": "ttga_quality.py --gate_study", "bundle": "ttga", "cells": cells, "generators": generators,
             "reconstruction_gate": 0.98, "view_agreement_needed": 0.98}
    if args.cost_probe:
        extra["cost_probe"] = cost_probe(args, repeats=1 if args.quick else 3)
    settings = {"data": "Kvasir-SEG, bundle split (seed 0), validation images only", "size": args.size,
                "val_items": len(val), "alpha_bars": args.study_alpha_bars, "identity_iterations": args.study_iterations,
                "identity_lrs": args.study_lrs, "inversion_strides": args.study_strides,
                "tune_alpha_bars": args.study_tune_alpha_bars, "views": 2, "lambda_i": 0.5, "budget": args.budget}
    seeds = sorted({c["seed"] for c in cells})
    out = write_results(args.out, "ttga_gate", settings, seeds, table, timer.stop(), primary_metric="dice_reconstruction",
                        extra=extra, quick=args.quick)
    print(f"wrote {out}")
    return out


def cost_probe(args: argparse.Namespace, repeats: int = 3) -> dict:
    """Seconds of one grounded generator training step (batch 16) and of one TTGA image (4 views, 20 identity
    iterations) at 64 and 128 px, for the benchmark's generator (random weights: the cost does not depend on them),
    the sizes interleaved ``repeats`` times so that the machine's load hits both alike."""
    sizes, times = (64, 128), {64: {"train_step": [], "ttga_image": []}, 128: {"train_step": [], "ttga_image": []}}
    torch.manual_seed(0)
    gens = {n: build_ttga_generator(generator_config(3)) for n in sizes}
    for _ in range(repeats):
        for n in sizes:
            batch = [{"image": torch.rand(3, n, n), "label": (torch.rand(1, n, n) > 0.7).float()} for _ in range(16)]
            t0 = time.process_time()
            train_grounded_ttga_generator(gens[n], DataLoader(batch, batch_size=16), Path(args.work_dir) / f"probe{n}",
                                          epochs=1, lr=1e-4, grounding_weight=1.0, resume=False)
            times[n]["train_step"].append(time.process_time() - t0)
            aug = augmenter(gens[n].eval(), args, 0.9, 0.5)
            t0 = time.process_time()
            with torch.no_grad():
                aug(torch.rand(3, n, n))
            times[n]["ttga_image"].append(time.process_time() - t0)
    out = {str(n): {k: sorted(v)[len(v) // 2] for k, v in t.items()} for n, t in times.items()}
    # what one 64 px Kvasir seed used (settings.generator of ttga_quality.json): 18 epochs of 700 images, batch 16
    out["projection"] = {"generator_epochs": 18, "steps_per_epoch": math.ceil(700 / 16), "test_images": 200}
    return out


DATASETS = {"kvasir": "kvasir_seg", "drive": "drive"}


def main(argv=None) -> Path:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", choices=sorted(DATASETS), default="kvasir",
                   help="kvasir: Kvasir-SEG, bundle split, whole images; drive: DRIVE vessels, 64 px crops")
    p.add_argument("--data_dir", default=None, help="the data set folder (default: the shared data folder's)")
    p.add_argument("--work_dir", default=str(ROOT / "outputs" / "benchmarks" / "ttga_protocol"))
    p.add_argument("--out", default=None, help="default: benchmarks/results/ttga_quality[_drive].json")
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--seg_epochs", type=int, default=30, help="Kvasir: segmenter epochs (bundle)")
    p.add_argument("--seg_iterations", type=int, default=600, help="DRIVE: segmenter AdamW steps (batch 16)")
    p.add_argument("--fundus_size", type=int, default=256, help="DRIVE: side the images are resized to before cropping")
    p.add_argument("--crops_per_image", type=int, default=48, help="DRIVE: training crops per training image")
    p.add_argument("--val_crops", type=int, default=4, help="DRIVE: crops per validation image")
    p.add_argument("--test_crops", type=int, default=3, help="DRIVE: crops per test image (averaged per image)")
    p.add_argument("--train_items", type=int, default=None, help="training images (None: the whole split)")
    p.add_argument("--gen_epochs", type=int, default=40)
    p.add_argument("--gen_seconds", type=float, default=660.0,
                   help="wall-clock budget of one call of the generator stage (a rerun without generator.pt resumes)")
    p.add_argument("--grounding_weight", type=float, default=3.0)
    p.add_argument("--val_items", type=int, default=16)
    p.add_argument("--test_items", type=int, default=None, help="test images (None: all)")
    p.add_argument("--views", type=int, default=4)
    p.add_argument("--max_iterations", type=int, default=20)
    p.add_argument("--inversion_stride", type=int, default=10,
                   help="DDIM inversion stride of the evaluated TTGA (10: the bundle's; the gate study chose it on "
                        "validation over 50, which the runs before it used)")
    p.add_argument("--tau_grid", type=float, nargs="+", default=[0.74, 0.9, 0.97])
    p.add_argument("--lambda_grid", type=float, nargs="+", default=[0.5, 1.2])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--budget", default="about 40 min of one CPU core for the whole run (2 cores shared by 3 "
                   "developers): 64 px only, 4 views, 20 identity iterations, the generator's wall-clock budget (see "
                   "generator.seconds)", help="the budget statement written to the settings")
    p.add_argument("--stop_after", choices=["generator"], default=None,
                   help="generator: train (or resume) the segmenter and the generator only, then exit")
    p.add_argument("--gate_study", action="store_true",
                   help="Kvasir validation only: the reconstruction gate against alpha-bar for the --study runs")
    p.add_argument("--study", nargs="+", default=[], metavar="DIR:SEED", help="work dirs (and seeds) of --gate_study")
    p.add_argument("--study_alpha_bars", type=float, nargs="+", default=[0.74, 0.82, 0.9, 0.95, 0.97])
    p.add_argument("--study_strides", type=int, nargs="+", default=[50, 10], help="DDIM inversion strides")
    p.add_argument("--study_tune_alpha_bars", type=float, nargs="+", default=[0.74, 0.9])
    p.add_argument("--study_iterations", type=int, nargs="+", default=[1, 20, 60])
    p.add_argument("--study_lrs", type=float, nargs="+", default=[0.1, 0.03])
    p.add_argument("--cost_probe", action="store_true", help="with --gate_study: time 64 vs 128 px")
    p.add_argument("--quick", action="store_true", help="smoke run: tiny sizes (not a result)")
    p.add_argument("--merge", nargs="+", default=None, metavar="JSON",
                   help="merge the result files of runs with other --seed values into --out, then exit")
    args = p.parse_args(argv)
    drive = args.dataset == "drive"
    if args.out is None:
        name = "ttga_gate" if args.gate_study else f"ttga_quality{'_drive' if drive else ''}"
        args.out = str(ROOT / "benchmarks" / "results" / f"{name}.json")
    if args.merge:
        out = merge_results(args.merge, args.out, per_run_settings=["generator", "segmenter"],
                            per_run_extra=["validation", "stage_seconds"])
        print(f"wrote {out}")
        return out
    if args.quick:
        args.seg_epochs, args.train_items, args.gen_epochs, args.gen_seconds = 1, 16, 1, 30.0
        args.val_items, args.test_items, args.views, args.max_iterations = 2, 3, 2, 3
        args.seg_iterations, args.crops_per_image, args.test_crops, args.fundus_size = 5, 2, 1, 128
        args.tau_grid, args.lambda_grid = args.tau_grid[:1], args.lambda_grid[:1]
    torch.set_num_threads(1)
    timer = BenchmarkTimer()
    data = Path(args.data_dir) if args.data_dir else shared_data_dir() / DATASETS[args.dataset]
    if not (data / "images").is_dir():
        raise FileNotFoundError(f"{args.dataset} not found at '{data}' (images/ + masks/); pass --data_dir.")
    if args.gate_study:
        if args.quick:
            args.study_alpha_bars, args.study_iterations, args.study_lrs = args.study_alpha_bars[:2], [1, 3], [0.1]
            args.study_tune_alpha_bars, args.val_items = args.study_tune_alpha_bars[:1], 2
        return gate_study(args, data)
    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    stage_s: dict[str, float] = {}
    seg = work / "segmenter.pt"
    sets = drive_sets(args, data) if drive else None
    channels = 1 if drive else 3
    if not seg.is_file():
        if drive:
            stage_s["segmenter"] = train_drive_segmenter(args, sets["train"], seg)
        else:
            stage_s["segmenter"] = run_bundle(
                "train_segmenter.json", work / "segmenter.log", 1, dataset_dir=data, model_path=seg,
                output_dir=work / "segmenter", spatial_size=f"[{args.size},{args.size}]", epochs=args.seg_epochs,
                val_interval=max(1, args.seg_epochs // 3), seed=args.seed, split_seed=0,
                max_items="null" if args.train_items is None else args.train_items)
    net = load_network_weights(UNet(2, channels, 2, SEGMENTER["channels"], SEGMENTER["strides"], num_res_units=1),
                               seg).eval()
    t0 = time.time()
    history = None
    if not (work / "generator.pt").is_file():
        train_set = sets["train"] if drive else split(data, "training", args.size, args.train_items, train=True)
        history = train_generator(args, train_set, work, channels)
        stage_s["generator"] = time.time() - t0
    gen = LatentGenerator.load(str(work / "generator.pt")).eval()
    if history is None:
        history = load_checkpoint(str(work / "generator.pt"))["extra"]["history"]
    if args.stop_after == "generator":
        print(f"generator: {history['epochs']} epochs, losses {history['loss']}")
        return work / "generator.pt"

    # validation: the grid, the test split untouched
    t0 = time.time()
    val = items_of(sets["validation"] if drive else split(data, "validation", args.size, args.val_items))
    grid = []
    for tau in args.tau_grid:
        for lam in args.lambda_grid:
            aug = augmenter(gen, args, tau, lam)
            rows = [evaluate_image(net, aug, image, label, full=False) for _, _, image, label in val]
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
    test = items_of(sets["test"] if drive else split(data, "test", args.size, args.test_items))
    aug = augmenter(gen, args, best["tau_alpha_bar"], best["lambda_i"])
    results = []
    for i, (case, group, image, label) in enumerate(test):
        res = evaluate_image(net, aug, image, label, full=True)
        results.append((group, {**res, "ttga_diagnostics": res.pop("diagnostics")}))
        if i % 20 == 0:
            print(f"test {i + 1}/{len(test)}: {results[-1][1]['ttga_diagnostics']}", flush=True)
    table = ResultsTable()
    for case, res in per_group(results):
        for method in (*METHODS, "reconstruction"):
            for metric in ("dice", "hd95", "error_auc"):
                v = res[method].get(metric)
                if v is not None and math.isfinite(v):
                    table.add(method, case=case, value=v, seed=args.seed, metric=metric)
        for metric, v in res["ttga_diagnostics"].items():
            table.add("ttga_diagnostics", case=case, value=v, seed=args.seed, metric=metric)
    stage_s["test"] = time.time() - t0
    settings = {
        "data": (f"DRIVE, official split (20 training images: the last 4 held out for validation; 20 test images), "
                 f"green channel resized to {args.fundus_size} px, random {args.size} px crops inside the field of view"
                 if drive else "Kvasir-SEG, bundle split (70/10/20 %, seed 0)"),
        "dataset": args.dataset, "size": args.size, "train_items": args.train_items, "val_items": len(val),
        "test_items": len({g for g, _ in results}), "views": args.views,
        "max_identity_iterations": args.max_iterations, "inversion_stride": args.inversion_stride, "tau_grid": args.tau_grid, "lambda_grid": args.lambda_grid,
        "segmenter": ({"recipe": "UNet [16, 32, 64, 128] (1 residual unit), Dice-CE, rot90 / flips, AdamW 3e-3 cosine",
                       "iterations": args.seg_iterations, "crops": len(sets["train"])} if drive else
                      {"recipe": "bundle train_segmenter.json", "epochs": args.seg_epochs}),
        "generator": {"config": "pixel space (latent=False), UNet [16, 32, 64], cross-attention on the last level, "
                                f"16 prompt tokens of width 64, token 0 grounded on the {'vessel' if drive else 'polyp'}"
                                " masks",
                      "grounding_weight": args.grounding_weight, "epochs_done": history["epochs"],
                      "epochs_asked": args.gen_epochs, "budget_s": args.gen_seconds,
                      "seconds": sum(history["seconds"]), "final_loss": history["loss"][-1],
                      "final_grounding_loss": history["grounding_loss"][-1], "loss_curve": history["loss"]},
        "budget": args.budget,
        "metrics_grid": f"{args.size} x {args.size} network grid (labels resized nearest)" + (
            f"; per test image the mean over its {args.test_crops} crops (seed 3)" if drive else ""),
    }
    name = "DRIVE test (20 images, 64 px crops)" if drive else "Kvasir-SEG test (all test images of the bundle split)"
    extra = {
        "title": f"TTGA on {name}: segmenter alone, flip TTA, TTGA, TTGA x flips",
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
