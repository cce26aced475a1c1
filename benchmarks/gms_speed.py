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
"""GMS training and inference speed on CPU, on the evaluation protocol: the original recipe against cheap paths.

* Training: one GMS iteration is prepare-batch (frozen encoder for image and mask, or a cache lookup) + mapping
  network forward/backward + decoding of the supervised heads (with backward through the frozen decoder) + AdamW.
  Variants: ``original`` (the paper's code: re-encode every step, Dice on the three deep-supervision heads, i.e.
  three decodes with gradients), ``cached`` (warm :class:`~monai_genaug.methods.gms.LatentCache`, three decodes),
  ``dice_out`` (re-encode, Dice on the final head only: one decode; the two other heads keep their latent MSE),
  ``fast`` (both: the bundle default) and two MONAI UNet training steps (DiceCE): the benchmark's UNet
  (16-256 channels) and a UNet of GMS's trainable size (8-128). Weights are random (speed does not depend on them).
* Inference: ``segmenter(images)`` (encode + map + decode) vs the UNets, ``no_grad``, eval mode.

The variants run interleaved (each repeat times every variant in turn), so a repeat's ratios share the machine's
load; each row is one repeat. The primary metric is the speed-up over the original recipe within the repeat.
A decoder without gradients for the deep-supervision heads (``torch.no_grad`` / inference mode) removes exactly
their Dice gradient, which is what ``dice_out`` does without computing them at all.

    python benchmarks/gms_speed.py [--size 64] [--batch 8] [--steps 4] [--repeats 5] [--mapping_channels 16]

Writes ``benchmarks/results/gms_speed.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import torch
from monai.losses import DiceCELoss

from monai_genaug.data.phantoms import make_endoscopy_phantoms
from monai_genaug.evaluation.learners import segmentation_learner
from monai_genaug.evaluation.results import BenchmarkTimer, write_results
from monai_genaug.methods.gms import GMSPrepareBatch
from monai_genaug.methods.gms import GMSLoss, GMSSegmenter, LatentCache, gms_config

RESULTS = Path(__file__).resolve().parent / "results"
#: variant -> (latent cache, Dice heads); None = every head
GMS_VARIANTS = {"original": (False, None), "cached": (True, None), "dice_out": (False, ("out",)),
                "fast": (True, ("out",))}
UNETS = {"unet_benchmark": (16, 32, 64, 128, 256), "unet_gms_size": (8, 16, 32, 64, 128)}


def gms_training_step(
    seg: GMSSegmenter,
    batches: Sequence[Mapping[str, torch.Tensor]],
    cache: LatentCache | None,
    dice_levels: Sequence[str] | None,
    autocast_dtype: torch.dtype | None = None,
) -> Callable[[int], None]:
    """One GMS training iteration as a function of the step index (cycling through ``batches``).

    Prepare-batch (frozen encoder or cache lookup, latent noise) + mapping network forward/backward + decoding of the
    supervised heads + AdamW, on the device of ``seg`` and of the batches. A cache is warmed with every batch first
    (the steady state of epochs >= 2 on un-augmented data).

    Args:
        seg: the segmenter (trainable mapping network, frozen autoencoder).
        batches: dicts with ``image`` (B, C, *spatial) and ``label`` (B, 1, *spatial).
        cache: a :class:`LatentCache`, or ``None`` to re-encode images and masks at every step (the original code).
        dice_levels: heads decoded for the Dice loss (``None``: all).
        autocast_dtype: run the forward pass and the loss under autocast with this dtype (``None``: full precision).
    """
    loss_fn = GMSLoss(dice_levels=dice_levels)
    prepare = GMSPrepareBatch(seg, noise_prob=0.5, cache=cache, decode_levels=loss_fn.decode_levels)
    opt = torch.optim.AdamW(seg.trainable_parameters(), lr=1e-4)
    device = seg.scale_factor.device
    if cache is not None:
        for b in batches:
            prepare(b)

    def step(i: int) -> None:
        z, target, a, kw = prepare(batches[i % len(batches)])
        with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            loss = loss_fn(seg(z, *a, **kw), target)
        opt.zero_grad()
        loss.backward()
        opt.step()

    return step


def _timed(rows: Mapping[str, Callable[[int], None]], repeats: int, steps: int) -> dict[str, list[float]]:
    """Seconds per call of every row, ``repeats`` times, the rows interleaved within each repeat."""
    for fn in rows.values():  # warm-up (allocator, first-call overheads)
        fn(0)
    times: dict[str, list[float]] = {k: [] for k in rows}
    for _ in range(repeats):
        for name, fn in rows.items():
            t = time.perf_counter()
            for i in range(steps):
                fn(i)
            times[name].append((time.perf_counter() - t) / steps)
    return times


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--num_batches", type=int, default=4, help="distinct batches cycled through (the cache holds them)")
    p.add_argument("--steps", type=int, default=4, help="training steps per timed repeat")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--preset", default="small")
    p.add_argument("--mapping_channels", type=int, default=16)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--quick", action="store_true", help="smoke run (the report marks it)")
    p.add_argument("--out", default=str(RESULTS / "gms_speed.json"))
    args = p.parse_args(argv)
    timer = BenchmarkTimer()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    samples = make_endoscopy_phantoms(args.batch * args.num_batches, spatial_size=(args.size, args.size), seed=0)
    images = torch.stack([torch.from_numpy(s["image"]) for s in samples])
    labels = torch.stack([torch.from_numpy(s["label"]).float() for s in samples])
    batches = [
        {"image": images[i * args.batch : (i + 1) * args.batch], "label": labels[i * args.batch : (i + 1) * args.batch]}
        for i in range(args.num_batches)
    ]
    seg = GMSSegmenter.from_config(gms_config(args.preset, 2, 3, 1, mapping_channels=args.mapping_channels))
    seg.estimate_scale_factor(images)
    unets = {k: segmentation_learner(2, 3, 1, c) for k, c in UNETS.items()}
    dice_ce = DiceCELoss(to_onehot_y=True, softmax=True, batch=True)

    def unet_step(net: torch.nn.Module) -> Callable[[int], None]:
        opt = torch.optim.AdamW(net.parameters(), lr=1e-4)

        def step(i: int) -> None:
            b = batches[i % len(batches)]
            loss = dice_ce(net(b["image"]), b["label"])
            opt.zero_grad()
            loss.backward()
            opt.step()

        return step

    train_rows = {k: gms_training_step(seg, batches, LatentCache() if c else None, lv) for k, (c, lv) in GMS_VARIANTS.items()}
    train_rows.update({k: unet_step(n) for k, n in unets.items()})
    seg.train()
    for n in unets.values():
        n.train()
    times = _timed(train_rows, args.repeats, args.steps)

    seg.eval()
    for n in unets.values():
        n.eval()
    infer_rows = {"gms": seg, **unets}
    with torch.no_grad():
        itimes = _timed({k: (lambda i, n=n: n(batches[i % len(batches)]["image"])) for k, n in infer_rows.items()},
                        args.repeats, args.num_batches)

    rows = []
    for r in range(args.repeats):
        ref = times["original"][r]
        for name, per_repeat in times.items():
            t = per_repeat[r]
            rows += [{"method": name, "case": f"repeat{r}", "seed": 0, "metric": "speedup_vs_original",
                      "value": ref / t},
                     {"method": name, "case": f"repeat{r}", "seed": 0, "metric": "iterations_per_second", "value": 1 / t},
                     {"method": name, "case": f"repeat{r}", "seed": 0, "metric": "cost_vs_unet_benchmark",
                      "value": t / times["unet_benchmark"][r]},
                     {"method": name, "case": f"repeat{r}", "seed": 0, "metric": "cost_vs_unet_gms_size",
                      "value": t / times["unet_gms_size"][r]}]
    inference = {k: {"images_per_second": args.batch / statistics.median(v)} for k, v in itimes.items()}
    params = {"gms_mapping": sum(p.numel() for p in seg.trainable_parameters()),
              "gms_frozen_autoencoder": sum(p.numel() for p in seg.autoencoder.parameters()),
              **{k: sum(p.numel() for p in n.parameters()) for k, n in unets.items()}}
    extra = {
        "title": "GMS training speed: the original recipe against cheap paths, and against MONAI UNets (CPU)",
        "description": (
            f"{args.size} px, batch {args.batch}, {args.threads} torch thread(s), `{args.preset}` preset, mapping width "
            f"{args.mapping_channels}; each row a repeat of {args.steps} steps, variants interleaved within a repeat. "
            "`original`: re-encode + Dice on three heads; `cached`: warm latent cache; `dice_out`: Dice on the final "
            "head only; `fast`: both (the bundle default). The cache hits every step here (no augmentation): with "
            "colour jitter it hits only un-jittered repeats of an image (see gms_quality.json for the measured rate)."),
        "script": "gms_speed.py",
        "measured": "GMS training iterations per second relative to the original recipe (interleaved repeats)",
        "bundle": "gms",
        "trainable_parameters": params,
        "inference": inference,
        "secondary_metrics": ["iterations_per_second", "cost_vs_unet_benchmark", "cost_vs_unet_gms_size"],
    }
    settings = {k: v for k, v in vars(args).items() if k != "out"}
    path = write_results(args.out, "gms_speed", settings, [0], rows, timer.stop(), primary_metric="speedup_vs_original",
                         extra=extra, quick=args.quick)
    result = {k: statistics.median(v) for k, v in times.items()}
    print(json.dumps({"seconds_per_iteration": result, "inference": inference, "out": str(path)}, indent=1))
    return json.loads(Path(path).read_text())


if __name__ == "__main__":
    main()
