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
"""TTGA speed and memory: batched views vs a per-view, per-branch loop; identity-optimisation speed; 3D peak memory.

Ma et al., "Test-Time Generative Augmentation for Medical Image Segmentation", arXiv:2406.17608. Run from the
repository root (CPU threads follow ``--threads``; on a shared machine 1 thread per process avoids oversubscription)::

    python benchmarks/ttga_speed.py                  # ~5-10 min on CPU; results in benchmarks/results/ttga_speed.json

Measured with the bundle's default 2D generator (``bundles/ttga/models/generator.pt``) and segmenter:

1. **Batched vs loop, per image.** ``TTGAAugmenter.generate`` makes the N views in one batch (one UNet call per
   step for all views and guidance branches, one decode, one segmenter call). The reference below, written only
   here, does the same maths one view and one branch at a time (per-branch UNet calls with batch 1, per-view
   attention masks, identity jumps, decodes and segmenter calls), with the same noise and Bernoulli draws; the
   outputs are asserted equal within tolerance. Reported: generation + segmentation time per image (the shared
   inversion and identity optimisation are timed separately), at the bundle's default size (64 px) and at 128 px.
2. **Identity optimisation**: Adam iterations per second (UNet forward + backward into the embedding).
3. **3D peak memory**: resident-set peak (``ru_maxrss``) of a subprocess running TTGA with the 3D default generator
   on a 96^3 two-channel volume, minus that of the same subprocess stopped before TTGA.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout: use its monai_genaug

import torch
import torch.nn.functional as F
from monai.networks.nets import UNet

from monai_genaug.bundle.weights import load_generator, load_network_weights
from monai_genaug.data.phantoms import make_endoscopy_phantoms
from monai_genaug.evaluation.results import BenchmarkTimer, environment, write_json_atomic
from monai_genaug.generative.ddim import alpha_bar, ddim_transition, to_epsilon_and_x0
from monai_genaug.generative.guidance import MultiConditionGuidance
from monai_genaug.generative.inversion import ddim_jump
from monai_genaug.methods.ttga import TTGAAugmenter, _AttentionRecorder

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / "bundles" / "ttga" / "models"


def loop_generate(aug: TTGAAugmenter, image: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    """The straightforward implementation: one view at a time, one UNet call per guidance branch (batch 1)."""
    gen, tau = aug._view, aug.tau
    state = aug.prepare(image)
    lam = aug._lambda_i(None, n)
    guidance = MultiConditionGuidance.ttga(
        null={"context": state.null_context}, prompt={"context": state.prompt_context},
        identity={"context": state.identity_context}, guidance_scale=aug.guidance_scale, lambda_c=aug.lambda_c,
        lambda_i=lam,
    )
    latent_spatial = tuple(state.x_tau.shape[2:])
    rng = torch.Generator().manual_seed(seed)
    use_flips = aug.mask_scheme in ("bernoulli", "hybrid") and aug.drop_p > 0
    u1, u2 = aug._bernoulli_fields(n, latent_spatial, rng) if use_flips else (None, None)
    path = aug.timesteps()
    alphas = [alpha_bar(gen.scheduler, t) for t in path]
    noises = [torch.randn((n, *state.x_tau.shape[1:]), generator=rng).to(state.x_tau)  # the sampler's draws
              if aug.eta > 0 and a < 1.0 else None for a in alphas[1:]]
    recorder = _AttentionRecorder(gen.unet, aug._query_length(latent_spatial))
    views = []
    with recorder:
        for v in range(n):
            x = state.x_tau.clone()
            for i in range(len(path) - 1):
                t, t_next, a_t, a_next = path[i], path[i + 1], alphas[i], alphas[i + 1]
                eps, maps = 0.0, 0.0
                for cond, w in zip(guidance.conditions, guidance.weights):
                    w_v = float(w[v]) if isinstance(w, torch.Tensor) else float(w)
                    with aug.sampler.autocast(x.device):  # the batched path's precision
                        eps = eps + w_v * gen(x, t, cond).to(x.dtype)
                    layers = recorder.take()
                    nq = min(m.shape[1] for m in layers)
                    att = torch.stack([m for m in layers if m.shape[1] == nq]).mean(0).amax(-1)
                    f = round((x[0, 0].numel() / nq) ** (1 / len(latent_spatial)))
                    att = F.interpolate(att.reshape(1, 1, *[s // f for s in latent_spatial]), size=latent_spatial,
                                        mode="bilinear", align_corners=False)
                    maps = maps + w_v * att
                mask = (maps >= 0).float()
                if use_flips:
                    ident = mask > 0.5
                    mask = ((ident & ~(u1[v : v + 1] < aug.drop_p)) | (~ident & (u2[v : v + 1] < aug.drop_p / 2))).float()
                eps, x0 = to_epsilon_and_x0(eps, x, a_t, "epsilon")
                noise = None if noises[i] is None else noises[i][v : v + 1]
                x_aug = ddim_transition(x0, eps, a_t, a_next, eta=aug.eta, noise=noise)
                x_id = ddim_jump(gen, state.x_tau, tau, state.eps_id, t_next)
                x = mask * x_id + (1.0 - mask) * x_aug
            views.append(aug._from_working(aug.generator.decode(x), state.geometry, image))
    return torch.cat(views)


def _timed(fn, repeats: int) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


@torch.no_grad()
def batched_vs_loop(size: int, n: int, repeats: int, seed: int = 0) -> dict:
    gen = load_generator(MODELS / "generator.pt")
    seg = load_network_weights(UNet(2, 3, 2, (16, 32, 64, 128), (2, 2, 2), num_res_units=1), MODELS / "model.pt")
    image = torch.as_tensor(make_endoscopy_phantoms(1, spatial_size=(size, size), seed=99)[0]["image"])
    aug = TTGAAugmenter(gen, num_views=n, inversion_stride=50, min_iterations=20, max_iterations=20,
                        mask_scheme="hybrid", drop_p=0.5, generator_range=(0.0, 1.0), cache_size=4)
    t0 = time.perf_counter()
    aug.prepare(image)  # inversion + identity optimisation: shared by both implementations (cached)
    prepare_s = time.perf_counter() - t0

    def batched():
        views = aug.generate(image, rng=torch.Generator().manual_seed(seed)).views
        return views, torch.softmax(seg(views), 1)

    def loop():
        views = loop_generate(aug, image, n, seed)
        return views, torch.cat([torch.softmax(seg(v[None]), 1) for v in views])

    t_batched, (v_b, p_b) = _timed(batched, repeats)
    t_loop, (v_l, p_l) = _timed(loop, repeats)
    view_diff = float((v_b - v_l).abs().max())
    prob_diff = float((p_b - p_l).abs().mean())
    assert float((v_b - v_l).abs().mean()) < 1e-3 and prob_diff < 1e-2, (view_diff, prob_diff)
    return {
        "image_size": size, "latent_size": size // gen.autoencoder_factor, "num_views": n,
        "prepare_seconds": round(prepare_s, 3), "identity_iterations": 20,
        "batched_seconds": round(t_batched, 3), "loop_seconds": round(t_loop, 3),
        "speedup_generation": round(t_loop / t_batched, 2),
        "per_image_batched_seconds": round(prepare_s + t_batched, 3),
        "per_image_loop_seconds": round(prepare_s + t_loop, 3),
        "speedup_per_image": round((prepare_s + t_loop) / (prepare_s + t_batched), 2),
        "max_abs_view_difference": view_diff, "mean_abs_probability_difference": prob_diff,
    }


def identity_speed(size: int, iterations: int = 30) -> dict:
    gen = load_generator(MODELS / "generator.pt")
    image = torch.as_tensor(make_endoscopy_phantoms(1, spatial_size=(size, size), seed=5)[0]["image"])
    aug = TTGAAugmenter(gen, inversion_stride=50, min_iterations=iterations, max_iterations=iterations,
                        generator_range=(0.0, 1.0), cache_size=0)
    x, _ = aug._to_working(image)
    with torch.no_grad():
        z0 = gen.encode(x)
        c, null = aug.contexts()
        x_tau = aug.invert(z0, c)
    aug.optimize_identity(x_tau, z0, c, null)  # warm-up
    t0 = time.perf_counter()
    out = aug.optimize_identity(x_tau, z0, c, null)
    dt = time.perf_counter() - t0
    return {"image_size": size, "iterations": out["iterations"], "seconds": round(dt, 3),
            "iterations_per_second": round(out["iterations"] / dt, 2)}


_MEMORY_CHILD = r"""
import resource, sys, json, time, torch
sys.path.insert(0, {root!r})
torch.set_num_threads({threads})
from monai_genaug.bundle.weights import load_generator
from monai_genaug.methods.ttga import TTGAAugmenter
gen = load_generator({path!r})
vol = torch.rand(2, {size}, {size}, {size}, generator=torch.Generator().manual_seed(0))
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t = time.perf_counter()
if {run}:
    aug = TTGAAugmenter(gen, num_views={views}, inversion_stride=100, min_iterations={iters}, max_iterations={iters},
                        mask_scheme="hybrid", drop_p=0.5, generator_range=(0.0, 1.0))
    views = aug(vol)
    assert views.shape == (({views}, 2, {size}, {size}, {size}))
print(json.dumps({{"maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, "before_kb": before,
                  "seconds": time.perf_counter() - t}}))
"""


def memory_3d(size: int = 96, views: int = 4, iterations: int = 3, threads: int = 1) -> dict:
    results = {}
    for run in (False, True):
        code = _MEMORY_CHILD.format(root=str(ROOT), path=str(MODELS / "generator_3d.pt"), size=size, views=views,
                                    iters=iterations, run=run, threads=threads)
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=1800, check=False)
        if proc.returncode != 0:
            raise RuntimeError(proc.stderr[-3000:])
        results[run] = json.loads(proc.stdout.strip().splitlines()[-1])
    peak = results[True]["maxrss_kb"] / 1024
    base = results[False]["maxrss_kb"] / 1024
    return {"volume": [2, size, size, size], "num_views": views, "identity_iterations": iterations,
            "peak_rss_mb": round(peak, 1), "rss_without_ttga_mb": round(base, 1),
            "ttga_peak_increment_mb": round(peak - base, 1), "seconds": round(results[True]["seconds"], 1)}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--views", type=int, default=8)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--sizes", type=int, nargs="+", default=[64, 128])
    p.add_argument("--volume", type=int, default=96)
    p.add_argument("--output", default=str(ROOT / "benchmarks" / "results" / "ttga_speed.json"))
    args = p.parse_args(argv)
    timer = BenchmarkTimer()
    torch.set_num_threads(args.threads)
    result = {"device": "cpu", "threads": args.threads, "torch": torch.__version__, "machine": platform.machine(),
              "batched_vs_loop": [], "identity_optimisation": [], "memory_3d": None}
    for size in args.sizes:
        r = batched_vs_loop(size, args.views, args.repeats)
        print(json.dumps(r), flush=True)
        result["batched_vs_loop"].append(r)
        r = identity_speed(size)
        print(json.dumps(r), flush=True)
        result["identity_optimisation"].append(r)
    result["memory_3d"] = memory_3d(args.volume, threads=args.threads)
    print(json.dumps(result["memory_3d"]), flush=True)
    result["self_maxrss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic({**result, "timing": timer.stop(), "environment": environment()}, out)
    return result


if __name__ == "__main__":
    main()
