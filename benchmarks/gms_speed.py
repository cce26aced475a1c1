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
"""GMS speed on CPU: training iterations/s with cached latents vs re-encoding, inference images/s vs a MONAI UNet.

* Training: one GMS iteration is prepare-batch (frozen encoder for image and mask, or a cache lookup) + mapping
  network forward/backward + decoding of the supervised heads (with backward through the frozen decoder) + AdamW.
  Rows: re-encode every step (``cache=None``), cached latents (:class:`~monai_genaug.methods.gms.LatentCache`, warm),
  and cached latents with image-space Dice on the ``out`` head only (``GMSLoss(dice_levels=("out",))``). A MONAI UNet
  training step (DiceCE) on the same batch is the reference.
* Inference: ``segmenter(images)`` (encode + map + decode) vs ``UNet(images)``, ``no_grad``, eval mode.

Weights are random (speed does not depend on them). Rows run interleaved; medians of ``--repeats`` are reported.

    python benchmarks/gms_speed.py [--size 64] [--batch 8] [--steps 4] [--repeats 3] [--mapping_channels 16]

Writes ``benchmarks/results/gms_speed.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import torch
from monai.losses import DiceCELoss
from monai.networks.nets import UNet

from monai_genaug.data.phantoms import make_endoscopy_phantoms
from monai_genaug.evaluation.results import BenchmarkTimer, environment, write_json_atomic
from monai_genaug.engines.gms import GMSPrepareBatch
from monai_genaug.methods.gms import GMSLoss, GMSSegmenter, LatentCache, gms_config

RESULTS = Path(__file__).resolve().parent / "results"


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


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--num_batches", type=int, default=4, help="distinct batches cycled through (the cache holds them)")
    p.add_argument("--steps", type=int, default=4, help="training steps per timed repeat")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--preset", default="small")
    p.add_argument("--mapping_channels", type=int, default=16)
    p.add_argument("--threads", type=int, default=2)
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
    unet = UNet(2, 3, 2, channels=(16, 32, 64, 128, 256), strides=(2, 2, 2, 2), num_res_units=2)

    def gms_runner(cache: LatentCache | None, dice_levels):
        return gms_training_step(seg, batches, cache, dice_levels)

    unet_opt = torch.optim.AdamW(unet.parameters(), lr=1e-4)
    dice_ce = DiceCELoss(to_onehot_y=True, softmax=True)

    def unet_step(i: int) -> None:
        b = batches[i % len(batches)]
        loss = dice_ce(unet(b["image"]), b["label"])
        unet_opt.zero_grad()
        loss.backward()
        unet_opt.step()

    train_rows = {
        "gms_reencode_every_step": gms_runner(None, None),
        "gms_cached_latents": gms_runner(LatentCache(), None),
        "gms_cached_latents_dice_out_only": gms_runner(LatentCache(), ("out",)),
        "unet": unet_step,
    }
    seg.train()
    unet.train()
    for fn in train_rows.values():  # warm-up (allocator, first-call overheads)
        fn(0)
    times: dict[str, list[float]] = {k: [] for k in train_rows}
    for _ in range(args.repeats):
        for name, fn in train_rows.items():
            t = time.perf_counter()
            for i in range(args.steps):
                fn(i)
            times[name].append((time.perf_counter() - t) / args.steps)
    training = {k: {"seconds_per_iteration": statistics.median(v), "iterations_per_second": 1.0 / statistics.median(v)}
                for k, v in times.items()}
    training["cache_speedup"] = (
        training["gms_cached_latents"]["iterations_per_second"] / training["gms_reencode_every_step"]["iterations_per_second"]
    )

    seg.eval()
    unet.eval()
    infer_rows = {"gms": seg, "unet": unet}
    itimes: dict[str, list[float]] = {k: [] for k in infer_rows}
    with torch.no_grad():
        for net in infer_rows.values():
            net(batches[0]["image"])
        for _ in range(args.repeats):
            for name, net in infer_rows.items():
                t = time.perf_counter()
                for b in batches:
                    net(b["image"])
                itimes[name].append((time.perf_counter() - t) / (len(batches) * args.batch))
    inference = {k: {"images_per_second": 1.0 / statistics.median(v)} for k, v in itimes.items()}

    result = {
        "benchmark": "gms_speed",
        "image_size": [args.size, args.size],
        "batch": args.batch,
        "preset": args.preset,
        "mapping_channels": args.mapping_channels,
        "trainable_parameters": {
            "gms_mapping": sum(p.numel() for p in seg.trainable_parameters()),
            "gms_frozen_autoencoder": sum(p.numel() for p in seg.autoencoder.parameters()),
            "unet": sum(p.numel() for p in unet.parameters()),
        },
        "training": training,
        "inference": inference,
        "repeats": args.repeats,
        "steps_per_repeat": args.steps,
        "machine": {"device": "cpu", "threads": args.threads, "python": platform.python_version(),
                    "torch": torch.__version__, "note": "shared 2-core machine; absolute numbers vary with load"},
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic({**result, "timing": timer.stop(), "environment": environment()}, out)
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
