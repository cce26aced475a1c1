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
"""Sampler overhead: wall time of a full guided sampling run / time of the same number of raw UNet calls.

The sampler's bookkeeping (guidance branches, prediction-type conversion, DDIM transition, callbacks) must cost
little next to the UNet: target ratio <= 1.10 on CPU. Both sides run the same UNet on the same batch (all guidance
branches stacked), in the same process, interleaved, and the medians of several repeats are compared.

    python benchmarks/sampler_overhead.py [--preset small] [--steps 20] [--batch 4] [--repeats 5]

Writes ``benchmarks/results/sampler_overhead.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from monai_genaug.evaluation.results import BenchmarkTimer, environment, write_json_atomic
from monai_genaug.generative.guidance import ClassifierFreeGuidance
from monai_genaug.generative.latent_generator import LatentGenerator
from monai_genaug.generative.sampler import DiffusionSampler

RESULTS = Path(__file__).resolve().parent / "results"


def measure(
    gen: LatentGenerator,
    size: int = 64,
    steps: int = 20,
    batch: int = 4,
    repeats: int = 5,
    guidance_scale: float = 3.0,
) -> dict:
    """Median wall times of a full guided sampling run and of the same raw UNet calls, on the generator's device.

    Args:
        gen: a generator with learned prompts (``num_prompts``), in eval mode, on the device to measure.
        size: image size (latents are ``size`` / the autoencoder factor).
        steps: sampling steps.
        batch: samples per run (the UNet sees ``2 * batch``: both classifier-free guidance branches).
        repeats: timed repeats of each side, interleaved, after one warm-up each.
        guidance_scale: classifier-free guidance scale.
    """
    device = gen.scale_factor.device
    shape = (batch, *gen.latent_shape((size, size)))
    condition = {"prompt": torch.zeros(batch, dtype=torch.long, device=device)}
    guidance = ClassifierFreeGuidance(guidance_scale)
    sampler = DiffusionSampler(num_inference_steps=steps, eta=1.0, progress=False)
    path = sampler.timesteps(gen)

    # the raw side: the same UNet, the same stacked batch (null + conditional branches), the same timesteps
    with torch.no_grad():
        branches = guidance.prepare(gen, condition, batch)
        x_raw = torch.randn(2 * batch, *shape[1:], device=device)
        context = branches["condition"]["context"]

    def raw() -> None:
        with torch.no_grad():
            for t in path[:-1]:
                gen.unet(x_raw, torch.full((x_raw.shape[0],), t, device=device, dtype=torch.long), context=context)

    def full() -> None:
        sampler(gen, shape=shape, condition=condition, guidance=guidance, rng=torch.Generator().manual_seed(0))

    def timed(fn) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    raw(), full()  # warm-up
    raw_times, full_times = [], []
    for _ in range(repeats):
        raw_times.append(timed(raw))
        full_times.append(timed(full))
    return {
        "ratio_full_over_raw": statistics.median(full_times) / statistics.median(raw_times),
        "target": 1.10,
        "full_sampling_s_median": statistics.median(full_times),
        "raw_unet_calls_s_median": statistics.median(raw_times),
        "full_sampling_s": full_times,
        "raw_unet_calls_s": raw_times,
        "config": {
            "image_size": size,
            "latent_shape": list(shape),
            "steps": steps,
            "guidance": f"classifier-free, scale {guidance_scale} (2 branches per UNet call)",
            "eta": 1.0,
        },
    }


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="small")
    parser.add_argument("--size", type=int, default=64, help="image size (latents are size / autoencoder factor)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--guidance-scale", type=float, default=3.0)
    parser.add_argument("--out", default=str(RESULTS / "sampler_overhead.json"))
    args = parser.parse_args(argv)
    timer = BenchmarkTimer()

    torch.manual_seed(0)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    gen = LatentGenerator.from_preset(args.preset, spatial_dims=2, image_channels=3, num_prompts=2).to(device).eval()
    measured = measure(gen, args.size, args.steps, args.batch, args.repeats, args.guidance_scale)
    result = {
        "benchmark": "sampler_overhead",
        **measured,
        "config": {"preset": args.preset, **measured["config"]},
        "device": str(device) if device.type == "cpu" else torch.cuda.get_device_name(0),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "machine": platform.machine(),
    }
    out = Path(args.out)
    write_json_atomic({**result, "timing": timer.stop(), "environment": environment()}, out)
    print(json.dumps({k: result[k] for k in ("ratio_full_over_raw", "full_sampling_s_median", "raw_unet_calls_s_median")}))
    return result


if __name__ == "__main__":
    main()
