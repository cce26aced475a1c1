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
"""The GPU check: CUDA tests, Stable-Diffusion-size TTGA and GMS timings, sampler overhead and 3D, in one command.

A GPU is lent to this project only now and then, for minutes; this script is prepared (and smoke-tested on CPU with
``--quick``) so that one command measures everything and writes one self-describing JSON::

    python benchmarks/device_check.py                        # on the GPU machine, from the repository root
    python benchmarks/device_check.py --quick --output /tmp  # CPU smoke run at tiny sizes (what the test runs)
    python benchmarks/device_check.py --only ttga_sd15 gms_sd2 --set ttga_sd15.max_iterations=200

Parts (``--only`` picks some; each is guarded, so a failure is recorded as its ``error`` and the next part runs):

1. ``gpu_tests``: ``pytest -m gpu`` (the tests marked ``gpu``: sampler, inversion, TTGA views, GMS step, bf16 paths,
   EMA, one-process NCCL DDP, every bundle's ``device`` / ``amp`` options); counts and the failures.
2. ``ttga_sd15``: TTGA (Ma et al., arXiv:2406.17608) with a random-weight generator of the Stable Diffusion 1.5
   architecture (:func:`~monai_genaug.networks.sd.reference_generator_config`, 0.86 B-parameter UNet), a CLIP-sized
   77 x 768 context, one 512 x 512 image, 8 views, the paper's settings (tau 300, inversion stride 10, 100 to 1,000
   identity iterations with early stop, denoising stride 100) under bf16 autocast: seconds per image split into
   encode / inversion / identity optimisation / views / segmentation, peak GPU memory per stage, and batched views vs
   the per-view, per-branch loop of ``ttga_speed.py``. Goal: <= 10 s per image on one H100 (original code: ~2 min).
   Random weights rarely meet the early-stop threshold: the identity iterations are capped so that the stage fits
   ``identity_budget_s`` (the JSON says when, with the per-iteration time to extrapolate).
3. ``gms_sd2``: GMS (Huo et al., arXiv:2403.18198) with a tokenizer of the SD-2 VAE architecture at 224 px: training
   iterations per second of the original recipe (re-encode every step, fp32) vs the project's default path (cached
   latents), also under bf16 autocast; inference images per second; peak memory.
4. ``sampler_overhead``: ``sampler_overhead.py``'s measurement (guided sampling vs raw UNet calls) on the device.
5. ``volumes_3d``: TTGA on a 128^3 volume and GMS 3D at 96^3 (training step and inference): seconds, peak memory.

Sizes and iterations of every part are in :data:`FULL` (:data:`QUICK` for ``--quick``) and can be changed with
``--set part.key=value`` (JSON values). Budget of the full run on one H100, estimated from the sizes (nothing here
has run on a GPU yet, so these are not measurements): ``gpu_tests`` about 3 min (8 tiny bundle runs and 2 NCCL
``torchrun`` starts dominate; hard timeout ``gpu_tests.timeout_s`` = 240 s), ``ttga_sd15`` about 1.5 min (the identity
optimisation is capped by ``identity_budget_s`` = 60 s), ``gms_sd2`` under 1 min, ``sampler_overhead`` under 0.5 min,
``volumes_3d`` about 1 min (identity budget 30 s): under 8 minutes in all, with time to rerun within a 10-minute
command. On the device machine write the JSON where it comes back, e.g. ``--output $OUT``, then copy it to
``benchmarks/results/device_check.json``.

The JSON (``<output>/device_check.json``; ``device_check_quick.json`` with ``--quick``, by default in the temp
directory, never in ``benchmarks/results``) holds the environment (device
name, torch / CUDA / cuDNN / MONAI versions, commit) and, per part, ``status`` (``ok`` / ``error`` / ``skipped``),
``error``, ``wall_s``, ``config``, ``description`` and ``figures``; units are in the key names (:data:`UNITS`). It is
rewritten atomically after every part, so a run cut short keeps the parts it finished. Report tables are generated
from it (never typed by hand); a real run's JSON belongs in ``benchmarks/results/device_check.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))  # run from a checkout: use its monai_genaug
sys.path.insert(0, str(HERE))  # the sibling benchmarks whose measurements are reused

import torch  # noqa: E402
from monai.networks.nets import UNet  # noqa: E402

__all__ = ["PARTS", "FULL", "QUICK", "UNITS", "run_check", "main"]

PARTS = ("gpu_tests", "ttga_sd15", "gms_sd2", "sampler_overhead", "volumes_3d")

#: sizes of the real run (one H100 / H200)
FULL: dict[str, dict[str, Any]] = {
    "gpu_tests": {"paths": ["tests"], "timeout_s": 240},
    "ttga_sd15": {
        "architecture": "sd-1.5", "vae": None, "unet": None, "flash_attention": True, "image_size": 512,
        "context_tokens": 77,
        "num_views": 8, "tau": 300, "inversion_stride": 10, "denoising_stride": 100, "min_iterations": 100,
        "max_iterations": 1000, "identity_budget_s": 60.0, "probe_iterations": 5, "mask_scheme": "hybrid",
        "drop_p": 0.5, "autocast": "bfloat16", "segmenter_channels": [32, 64, 128, 256, 512], "loop": True,
    },
    "gms_sd2": {
        "architecture": "sd-2", "vae": None, "image_size": 224, "batch": 8, "num_batches": 4, "steps": 5,
        "repeats": 2, "mapping_channels": 32, "autocast": "bfloat16",
    },
    "sampler_overhead": {"preset": "base", "size": 256, "steps": 20, "batch": 4, "repeats": 3},
    "volumes_3d": {
        "ttga_preset": "base", "ttga_size": 128, "channels": 1, "ttga_views": 4, "tau": 300, "inversion_stride": 10,
        "denoising_stride": 100, "min_iterations": 100, "max_iterations": 1000, "identity_budget_s": 30.0,
        "probe_iterations": 3, "autocast": "bfloat16", "gms_preset": "base", "gms_size": 96, "gms_batch": 2,
        "gms_steps": 5, "gms_dice_levels": ["out"],
    },
}

#: tiny sizes for the CPU smoke run (same code paths, seconds in all)
QUICK: dict[str, dict[str, Any]] = {
    "gpu_tests": {"paths": ["tests/generative/test_devices.py"], "timeout_s": 240},
    "ttga_sd15": {
        **FULL["ttga_sd15"],
        "vae": {"block_out_channels": [32, 32, 32, 32], "layers_per_block": 1},
        "unet": {"block_out_channels": [32, 32, 64, 64], "layers_per_block": 1},
        "image_size": 64, "num_views": 2, "inversion_stride": 100, "min_iterations": 2, "max_iterations": 3,
        "probe_iterations": 1, "segmenter_channels": [4, 8], "autocast": None,
    },
    "gms_sd2": {
        **FULL["gms_sd2"], "vae": {"block_out_channels": [32, 32, 32, 32], "layers_per_block": 1},
        "image_size": 32, "batch": 2, "num_batches": 2, "steps": 1, "repeats": 1, "mapping_channels": 16,
        "autocast": None,
    },
    "sampler_overhead": {"preset": "tiny", "size": 16, "steps": 2, "batch": 1, "repeats": 1},
    "volumes_3d": {
        **FULL["volumes_3d"], "ttga_preset": "tiny", "ttga_size": 16, "ttga_views": 2, "inversion_stride": 100,
        "min_iterations": 1, "max_iterations": 2, "probe_iterations": 1, "autocast": None, "gms_preset": "tiny",
        "gms_size": 16, "gms_batch": 1, "gms_steps": 1,
    },
}

#: how to read the figures: unit suffixes of the keys, and the goals of the issue
UNITS = {
    "_s": "seconds (wall clock, CUDA synchronised)",
    "_mib": "MiB of GPU memory (torch.cuda.max_memory_allocated; null on CPU)",
    "_per_s": "items per second",
    "ratio": "dimensionless ratio",
}
GOALS = {"ttga_sd15.seconds_per_image": {"max": 10.0, "on": "one H100", "reference": "original code: ~2 min"}}

DESCRIPTIONS = {
    "gpu_tests": "pytest -m gpu: the CUDA tests (counts, failures)",
    "ttga_sd15": "TTGA, SD-1.5 architecture with random weights, 77x768 context, one image, paper settings, autocast",
    "gms_sd2": "GMS with an SD-2-VAE-sized tokenizer: training it/s (original vs default path), inference images/s",
    "sampler_overhead": "guided sampling / the same raw UNet calls (sampler_overhead.py's measurement)",
    "volumes_3d": "TTGA on one volume and GMS 3D (training step, inference): seconds and peak memory",
}


# ---------------------------------------------------------------------------------------------------- measuring
class _Meter:
    """Synchronised wall times and peak GPU memory of named stages on one device."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.figures: dict[str, Any] = {}

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def peak_mib(self) -> float | None:
        if self.device.type != "cuda":
            return None
        return round(torch.cuda.max_memory_allocated(self.device) / 2**20, 1)

    def reset_peak(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Time ``name`` into ``figures[name + "_s"]`` and its peak memory into ``figures[name + "_peak_mib"]``."""
        self.sync()
        self.reset_peak()
        t0 = time.perf_counter()
        yield
        self.sync()
        self.figures[f"{name}_s"] = round(time.perf_counter() - t0, 4)
        self.figures[f"{name}_peak_mib"] = self.peak_mib()

    def timed(self, fn: Callable[[], Any]) -> tuple[float, Any]:
        self.sync()
        t0 = time.perf_counter()
        out = fn()
        self.sync()
        return time.perf_counter() - t0, out


def _dtype(name: str | None) -> torch.dtype | None:
    if name is None:
        return None
    if not isinstance(getattr(torch, name, None), torch.dtype):
        raise ValueError(f"autocast must be a torch dtype name such as 'bfloat16', or null; got {name!r}.")
    return getattr(torch, name)


def _activate_zero_initialised(module: torch.nn.Module, seed: int = 0) -> None:
    """Give random values (std 1 / sqrt(fan-in)) to the all-zero weights of a fresh network: MONAI zero-initialises
    output convolutions, so an untrained UNet predicts exactly 0 and no gradient reaches TTGA's identity embedding."""
    rng = torch.Generator(device="cpu").manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            if p.ndim > 1 and not p.any():
                p.copy_(torch.randn(p.shape, generator=rng, device="cpu") * p[0].numel() ** -0.5)


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# ---------------------------------------------------------------------------------------------------- parts
def part_gpu_tests(cfg: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """``pytest -m gpu`` in a subprocess; the counts of its JUnit report and the failures."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "junit.xml"
        cmd = [sys.executable, "-m", "pytest", "-m", "gpu", *cfg["paths"], "-q", "-p", "no:cacheprovider",
               f"--junitxml={report}"]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
        t0 = time.perf_counter()
        try:
            proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=cfg["timeout_s"],
                                  check=False)
        except subprocess.TimeoutExpired as e:
            raise RuntimeError(f"pytest -m gpu did not finish in {cfg['timeout_s']} s") from e
        seconds = time.perf_counter() - t0
        if not report.is_file():
            raise RuntimeError(
                f"pytest wrote no report (exit {proc.returncode}): {proc.stdout[-2000:]}{proc.stderr[-2000:]}"
            )
        root = ET.parse(report).getroot()
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    counts = {k: sum(int(s.get(k, 0)) for s in suites) for k in ("tests", "failures", "errors", "skipped")}
    failed = []
    for case in root.iter("testcase"):
        bad = case.find("failure") if case.find("failure") is not None else case.find("error")
        if bad is not None:
            failed.append({"test": f"{case.get('classname')}::{case.get('name')}",
                           "message": (bad.get("message") or "")[:500]})
    return {
        "exit_code": proc.returncode, "tests": counts["tests"], "failures": counts["failures"],
        "errors": counts["errors"], "skipped": counts["skipped"],
        "passed": counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"],
        "failed_tests": failed, "pytest_s": round(seconds, 1), "summary": proc.stdout.strip().splitlines()[-1:],
    }


def _ttga_image(channels: int, spatial: Sequence[int], seed: int, device: torch.device) -> torch.Tensor:
    """A random image in [0, 1] on ``device`` (where a bundle's loader puts it: the views come back there)."""
    return torch.rand(channels, *spatial, generator=torch.Generator().manual_seed(seed)).to(device)


def _measure_ttga(
    aug: Any, image: torch.Tensor, segmenter: torch.nn.Module, meter: _Meter, cfg: dict[str, Any], loop: bool
) -> dict[str, Any]:
    """Stage times of one image: encode, inversion, identity optimisation (capped to its budget), views, segmentation.

    A short probe (``probe_iterations`` identity iterations; it also warms the kernels up) gives the time per
    identity iteration; the cap is then ``min(max_iterations, identity_budget_s / that time)`` (never below
    ``min_iterations``).
    """
    from monai_genaug.metrics.uncertainty import uncertainty_maps

    stages: dict[str, float] = {}
    calls = {"inversion": 0, "identity": 0}

    def wrap(name: str, fn: Callable) -> Callable:
        def timed(*args: Any, **kwargs: Any) -> Any:
            dt, out = meter.timed(lambda: fn(*args, **kwargs))
            stages[name] = dt
            calls[name] += 1
            return out

        return timed

    aug.invert = wrap("inversion", aug.invert)
    aug.optimize_identity = wrap("identity", aug.optimize_identity)
    wanted = (aug.min_iterations, aug.max_iterations)
    aug.min_iterations = aug.max_iterations = int(cfg["probe_iterations"])
    aug.prepare(image, image_id="probe")
    per_iteration = stages["identity"] / aug.max_iterations
    cap = min(wanted[1], max(wanted[0], int(float(cfg["identity_budget_s"]) / max(per_iteration, 1e-9))))
    aug.min_iterations, aug.max_iterations = min(wanted[0], cap), cap
    aug.clear_cache()
    stages.clear()
    f = meter.figures
    with meter.stage("prepare"):  # keyed by the image's hash, as the per-view loop finds it in the cache
        state = aug.prepare(image)
    f["inversion_s"] = round(stages["inversion"], 4)
    f["identity_optimisation_s"] = round(stages["identity"], 4)
    f["encode_s"] = round(f["prepare_s"] - stages["inversion"] - stages["identity"], 4)
    f["identity_iterations"] = state.iterations
    f["identity_iterations_cap"] = cap
    f["identity_cap_reduced_by_budget"] = cap < wanted[1]
    f["identity_seconds_per_iteration_s"] = round(stages["identity"] / max(state.iterations, 1), 5)
    f["identity_optimisation_at_max_iterations_estimate_s"] = round(
        f["identity_seconds_per_iteration_s"] * wanted[1], 2)
    f["identity_final_loss"] = state.final_loss
    with meter.stage("views"):
        views = aug.generate(image, rng=torch.Generator().manual_seed(0)).views
    with meter.stage("segmentation"), torch.no_grad():
        probs = torch.softmax(segmenter(views).float(), dim=1)
        maps = uncertainty_maps(probs)
    f["views_finite"] = bool(torch.isfinite(views).all())
    f["uncertainty_finite"] = bool(all(torch.isfinite(m).all() for m in maps.values()))
    f["seconds_per_image"] = round(f["prepare_s"] + f["views_s"] + f["segmentation_s"], 4)
    if loop:
        from ttga_speed import loop_generate

        def per_view() -> torch.Tensor:
            with torch.no_grad():
                v = loop_generate(aug, image, views.shape[0], seed=0)
                return v, torch.cat([torch.softmax(segmenter(x[None]).float(), 1) for x in v])

        with meter.stage("views_loop"):
            looped, _ = per_view()
        f["views_plus_segmentation_loop_s"] = f.pop("views_loop_s")
        f["views_plus_segmentation_loop_peak_mib"] = f.pop("views_loop_peak_mib")
        f["views_plus_segmentation_batched_s"] = round(f["views_s"] + f["segmentation_s"], 4)
        f["batched_speedup_ratio"] = round(
            f["views_plus_segmentation_loop_s"] / f["views_plus_segmentation_batched_s"], 3)
        f["batched_vs_loop_max_abs_view_difference"] = float((looped.float() - views.float()).abs().max())
    f["identity_optimisations_run"] = calls["identity"]  # 2 (probe + image): views and loop reused the cached state
    return f


def part_ttga_sd15(cfg: dict[str, Any], device: torch.device) -> dict[str, Any]:
    from monai_genaug.generative.latent_generator import LatentGenerator
    from monai_genaug.methods.ttga import TTGAAugmenter
    from monai_genaug.networks.sd import reference_generator_config

    meter = _Meter(device)
    config = reference_generator_config(cfg["architecture"], cfg["vae"], cfg["unet"], cfg["flash_attention"])
    torch.manual_seed(0)
    with meter.stage("build"), torch.device(device):
        gen = LatentGenerator.from_config(config)
        _activate_zero_initialised(gen)
        gen.eval()
        segmenter = UNet(2, gen.image_channels, 2, channels=cfg["segmenter_channels"],
                         strides=[2] * (len(cfg["segmenter_channels"]) - 1), num_res_units=2).eval()
    dim = int(config["conditioning"]["cross_attention_dim"])
    prompt = torch.randn(int(cfg["context_tokens"]), dim, generator=torch.Generator().manual_seed(1))
    aug = TTGAAugmenter(
        gen, prompt=prompt, null_context=torch.zeros_like(prompt), num_views=cfg["num_views"], tau=cfg["tau"],
        inversion_stride=cfg["inversion_stride"], denoising_stride=cfg["denoising_stride"],
        min_iterations=cfg["min_iterations"], max_iterations=cfg["max_iterations"], mask_scheme=cfg["mask_scheme"],
        drop_p=cfg["drop_p"], drop_first_token=True, autocast_dtype=_dtype(cfg["autocast"]), cache_size=4,
    )
    image = _ttga_image(gen.image_channels, (cfg["image_size"],) * 2, 2, device)
    figures = _measure_ttga(aug, image, segmenter, meter, cfg, loop=bool(cfg["loop"]))
    figures.update(unet_parameters=_count(gen.unet), autoencoder_parameters=_count(gen.autoencoder),
                   latent_shape=list(gen.latent_shape((cfg["image_size"],) * 2)), context_shape=list(prompt.shape))
    return figures


def _gms_batches(size: Sequence[int], batch: int, num_batches: int, channels: int, device: torch.device) -> list:
    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(num_batches):
        image = torch.rand(batch, channels, *size, generator=g)
        label = (torch.rand(batch, 1, *size, generator=g) > 0.5).float()
        out.append({"image": image.to(device), "label": label.to(device)})
    return out


def _gms_rows(seg: Any, batches: list, rows: dict[str, tuple], steps: int, repeats: int, meter: _Meter) -> dict:
    """Training iterations per second of each row ``name: (cache, dice_levels, autocast dtype)``, interleaved."""
    from gms_speed import gms_training_step

    from monai_genaug.methods.gms import LatentCache

    seg.train()
    runners = {}
    figures: dict[str, Any] = {}
    for name, (cached, dice_levels, dtype) in rows.items():
        meter.reset_peak()
        runners[name] = gms_training_step(seg, batches, LatentCache() if cached else None, dice_levels, dtype)
        runners[name](0)  # warm-up
        meter.sync()
        figures[f"train_{name}_peak_mib"] = meter.peak_mib()
    times: dict[str, list[float]] = {k: [] for k in runners}
    for _ in range(repeats):
        for name, fn in runners.items():
            dt, _ = meter.timed(lambda fn=fn: [fn(i) for i in range(steps)])
            times[name].append(dt / steps)
    for name, v in times.items():
        figures[f"train_{name}_iterations_per_s"] = round(1.0 / statistics.median(v), 3)
    return figures


def _gms_inference(seg: Any, batches: list, repeats: int, meter: _Meter, dtype: torch.dtype | None) -> dict:
    seg.eval()
    n = sum(b["image"].shape[0] for b in batches)
    with torch.no_grad(), torch.autocast(meter.device.type, dtype=dtype, enabled=dtype is not None):
        seg(batches[0]["image"])
        meter.reset_peak()
        times = [meter.timed(lambda: [seg(b["image"]) for b in batches])[0] for _ in range(repeats)]
        peak = meter.peak_mib()
    return {"inference_images_per_s": round(n / statistics.median(times), 3), "inference_peak_mib": peak}


def part_gms_sd2(cfg: dict[str, Any], device: torch.device) -> dict[str, Any]:
    from monai_genaug.methods.gms import GMSSegmenter, gms_config
    from monai_genaug.networks.sd import autoencoder_config_from_diffusers, reference_diffusers_configs

    meter = _Meter(device)
    vae = autoencoder_config_from_diffusers(reference_diffusers_configs(cfg["architecture"], vae=cfg["vae"])["vae"])
    config = gms_config("base", 2, vae["in_channels"], 1, mapping_channels=cfg["mapping_channels"])
    config["autoencoder"] = {k: v for k, v in vae.items() if k not in ("spatial_dims", "in_channels", "out_channels")}
    torch.manual_seed(0)
    with torch.device(device):
        seg = GMSSegmenter.from_config(config)
    size = (cfg["image_size"],) * 2
    batches = _gms_batches(size, cfg["batch"], cfg["num_batches"], seg.image_channels, device)
    seg.estimate_scale_factor(batches[0]["image"])
    dtype = _dtype(cfg["autocast"])
    rows = {"original_recipe": (False, None, None), "default_path": (True, None, None)}
    if dtype is not None:
        rows["default_path_autocast"] = (True, None, dtype)
    figures = _gms_rows(seg, batches, rows, cfg["steps"], cfg["repeats"], meter)
    figures["default_over_original_ratio"] = round(
        figures["train_default_path_iterations_per_s"] / figures["train_original_recipe_iterations_per_s"], 3)
    figures.update(_gms_inference(seg, batches, cfg["repeats"], meter, None))
    if dtype is not None:
        fast = _gms_inference(seg, batches, cfg["repeats"], meter, dtype)
        figures.update({f"{k.replace('inference_', 'inference_autocast_')}": v for k, v in fast.items()})
    figures.update(autoencoder_parameters=_count(seg.autoencoder), mapping_parameters=_count(seg.mapping),
                   latent_shape=[seg.latent_channels, *[s // seg.factor for s in size]])
    return figures


def part_sampler_overhead(cfg: dict[str, Any], device: torch.device) -> dict[str, Any]:
    from sampler_overhead import measure

    from monai_genaug.generative.latent_generator import LatentGenerator

    torch.manual_seed(0)
    with torch.device(device):
        gen = LatentGenerator.from_preset(cfg["preset"], spatial_dims=2, image_channels=3, num_prompts=2).eval()
    out = measure(gen, cfg["size"], cfg["steps"], cfg["batch"], cfg["repeats"])
    return {k: v for k, v in out.items() if k != "config"} | {"latent_shape": out["config"]["latent_shape"]}


def part_volumes_3d(cfg: dict[str, Any], device: torch.device) -> dict[str, Any]:
    from monai_genaug.generative.latent_generator import LatentGenerator
    from monai_genaug.methods.gms import GMSSegmenter, gms_config
    from monai_genaug.methods.ttga import TTGAAugmenter

    figures: dict[str, Any] = {}
    errors: dict[str, str] = {}
    try:  # TTGA on one volume
        meter = _Meter(device)
        torch.manual_seed(0)
        with torch.device(device):
            gen = LatentGenerator.from_preset(cfg["ttga_preset"], spatial_dims=3, image_channels=cfg["channels"],
                                              num_prompts=1)
            _activate_zero_initialised(gen)
            gen.eval()
            segmenter = UNet(3, cfg["channels"], 2, channels=(16, 32, 64), strides=(2, 2), num_res_units=1).eval()
        aug = TTGAAugmenter(
            gen, num_views=cfg["ttga_views"], tau=cfg["tau"], inversion_stride=cfg["inversion_stride"],
            denoising_stride=cfg["denoising_stride"], min_iterations=cfg["min_iterations"],
            max_iterations=cfg["max_iterations"], mask_scheme="hybrid", drop_p=0.5,
            autocast_dtype=_dtype(cfg["autocast"]), cache_size=4,
        )
        vol = _ttga_image(cfg["channels"], (cfg["ttga_size"],) * 3, 3, device)
        ttga = _measure_ttga(aug, vol, segmenter, meter, cfg, loop=False)
        ttga["peak_mib"] = max((v for k, v in ttga.items() if k.endswith("_peak_mib") and v is not None), default=None)
        figures["ttga"] = ttga | {"volume_shape": list(vol.shape)}
        del gen, aug, segmenter
    except Exception as e:  # noqa: BLE001 - recorded, GMS 3D still runs
        errors["ttga"] = f"{type(e).__name__}: {e}"
    _free(device)
    try:  # GMS 3D
        meter = _Meter(device)
        torch.manual_seed(0)
        with torch.device(device):
            seg = GMSSegmenter.from_config(gms_config(cfg["gms_preset"], 3, cfg["channels"], 1))
        size = (cfg["gms_size"],) * 3
        batches = _gms_batches(size, cfg["gms_batch"], 1, seg.image_channels, device)
        seg.estimate_scale_factor(batches[0]["image"])
        rows = {"default_path": (True, cfg["gms_dice_levels"], _dtype(cfg["autocast"]))}
        gms = _gms_rows(seg, batches, rows, cfg["gms_steps"], 1, meter)
        gms.update(_gms_inference(seg, batches, 1, meter, _dtype(cfg["autocast"])))
        gms["train_seconds_per_iteration_s"] = round(1.0 / gms["train_default_path_iterations_per_s"], 4)
        figures["gms"] = gms | {"volume_shape": [seg.image_channels, *size], "batch": cfg["gms_batch"]}
    except Exception as e:  # noqa: BLE001
        errors["gms"] = f"{type(e).__name__}: {e}"
    if errors:
        figures["errors"] = errors
        if len(errors) == 2:
            raise RuntimeError(f"both 3D checks failed: {errors}")
    return figures


PART_FUNCTIONS: dict[str, Callable[[dict[str, Any], torch.device], dict[str, Any]]] = {
    "gpu_tests": part_gpu_tests,
    "ttga_sd15": part_ttga_sd15,
    "gms_sd2": part_gms_sd2,
    "sampler_overhead": part_sampler_overhead,
    "volumes_3d": part_volumes_3d,
}


# ---------------------------------------------------------------------------------------------------- the run
def _free(device: torch.device) -> None:
    import gc

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def environment(device: torch.device) -> dict[str, Any]:
    """Device name, memory and versions of the machine the figures come from."""
    import monai

    status = _git("status", "--porcelain", "--untracked-files=no")
    env: dict[str, Any] = {
        "device_type": device.type,
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "monai": monai.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpu_threads": torch.get_num_threads(),
        "commit": _git("rev-parse", "HEAD"),
        "uncommitted_changes": None if status is None else bool(status),
        "started_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env.update(gpu_memory_mib=round(props.total_memory / 2**20), compute_capability=f"{props.major}.{props.minor}",
                   bf16_supported=torch.cuda.is_bf16_supported(),
                   tf32_matmul=torch.backends.cuda.matmul.allow_tf32, tf32_cudnn=torch.backends.cudnn.allow_tf32)
    return env


def _write_atomic(result: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(result, f, indent=2)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _parse_set(items: Sequence[str], config: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    config = copy.deepcopy(config)
    for item in items:
        key, sep, value = item.partition("=")
        part, dot, name = key.partition(".")
        if not sep or not dot or part not in config or name not in config[part]:
            known = {p: sorted(c) for p, c in config.items()}
            raise ValueError(f"--set {item!r}: expected part.key=value with a known part and key; known: {known}.")
        try:
            config[part][name] = json.loads(value)
        except json.JSONDecodeError:
            config[part][name] = value
    return config


def run_check(
    parts: Sequence[str] = PARTS,
    quick: bool = False,
    output: str | os.PathLike | None = None,
    overrides: Sequence[str] = (),
    device: str | torch.device | None = None,
) -> dict[str, Any]:
    """Run the parts, writing the JSON after each one; returns the result dict.

    Args:
        parts: names from :data:`PARTS`, run in the order given.
        quick: tiny sizes (:data:`QUICK`) for a CPU smoke run; the file is then ``device_check_quick.json``.
        output: folder of the JSON (default ``benchmarks/results``; with ``quick`` a folder in the system's temp
            directory).
        overrides: ``part.key=value`` strings (JSON values) changing the sizes.
        device: default CUDA when present, else CPU.

    Raises:
        ValueError: an unknown part or override.
    """
    unknown = [p for p in parts if p not in PARTS]
    if unknown or not parts:
        raise ValueError(f"unknown parts {unknown}; choose from {list(PARTS)}.")
    config = _parse_set(overrides, QUICK if quick else FULL)
    device = torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))
    if output is None:  # a smoke run stays out of benchmarks/results (the report renders every JSON found there)
        output = Path(tempfile.gettempdir()) / "monai_genaug_device_check" if quick else HERE / "results"
    path = Path(output) / ("device_check_quick.json" if quick else "device_check.json")
    result: dict[str, Any] = {
        "benchmark": "device_check",
        "schema_version": 1,
        "quick": quick,
        "environment": environment(device),
        "units": UNITS,
        "goals": GOALS,
        "parts": {name: {"status": "skipped", "description": DESCRIPTIONS[name], "config": config[name]}
                  for name in PARTS},
    }
    for name in parts:
        entry = result["parts"][name]
        entry["status"] = "running"
        _write_atomic(result, path)
        print(f"[device_check] {name} ...", flush=True)
        t0 = time.perf_counter()
        try:
            entry["figures"] = PART_FUNCTIONS[name](config[name], device)
            entry["status"] = "ok"
        except Exception as e:  # noqa: BLE001 - one failing part must not stop the others
            entry["status"] = "error"
            entry["error"] = f"{type(e).__name__}: {e}"
            entry["traceback"] = traceback.format_exc()[-4000:]
        entry["wall_s"] = round(time.perf_counter() - t0, 2)
        _free(device)
        print(f"[device_check] {name}: {entry['status']} in {entry['wall_s']} s", flush=True)
        _write_atomic(result, path)
    result["total_wall_s"] = round(sum(result["parts"][n].get("wall_s", 0.0) for n in parts), 2)
    result["output"] = str(path)
    _write_atomic(result, path)
    return result


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="tiny sizes: a CPU smoke run of every code path")
    p.add_argument("--only", nargs="+", choices=PARTS, default=list(PARTS), help="parts to run (default: all)")
    p.add_argument("--output", default=None,
                   help="folder of the JSON (default benchmarks/results; --quick: <tmp>/monai_genaug_device_check)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="PART.KEY=VALUE",
                   help="change a size, e.g. --set ttga_sd15.max_iterations=200 (JSON value; repeatable)")
    p.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    args = p.parse_args(argv)
    try:
        result = run_check(args.only, args.quick, args.output, args.overrides, args.device)
    except ValueError as e:
        p.error(str(e))
    status = {n: e["status"] for n, e in result["parts"].items() if n in args.only}
    print(json.dumps({"output": result["output"], "status": status, "total_wall_s": result["total_wall_s"]}))
    return result


if __name__ == "__main__":
    main()
