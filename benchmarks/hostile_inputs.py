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
"""Hostile-input sweep: what a new user gets on bad input, through the APIs, the bundles and the command lines.

Every case feeds one hostile input on tiny data and classifies the outcome:

- ``clear_error``: an error whose message (the one below MONAI's config wrappers: what a bundle run prints last) names
  the option or file, i.e. contains the case's expected words;
- ``handled``: the input is accepted and the result checked correct (e.g. a 16-bit PNG read at its bit depth);
- ``silent_wrong``: the run "succeeds" with a wrong result, or accepts what it should refuse;
- ``data_loss``: an earlier result or a user's file was changed;
- ``crash_without_message``: an error whose message does not name the cause.

The goal (issue #21) is no ``silent_wrong``, ``data_loss`` or ``crash_without_message``.

    python benchmarks/hostile_inputs.py                 # all cases (a few minutes on one CPU core)
    python benchmarks/hostile_inputs.py --quick         # API cases only (seconds)
    python benchmarks/hostile_inputs.py --table         # print the Markdown table of the last results

Writes ``benchmarks/results/hostile_inputs.json`` (``--out`` to change); ``python -m monai_genaug.evaluation.report
benchmarks/results`` renders it to ``benchmarks/results/hostile_inputs.md``. Cases owned by other issues (an unwritable
MLflow store, ``--tracking foo``: issue #22) are not in this sweep.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from monai_genaug.evaluation.results import BenchmarkTimer, environment, write_json_atomic

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
PREFIX = "monai_genaug: the bundle run failed:"
OUTCOMES = ("clear_error", "handled", "silent_wrong", "data_loss", "crash_without_message")

__all__ = ["CASES", "Case", "run_cases", "table"]


@dataclass
class Case:
    """One hostile input: ``fn(tmp)`` returns ``(outcome, message)``."""

    name: str
    face: str  # "api", "bundle" (in-process run) or "cli" (a real subprocess)
    item: str  # issue item, e.g. "#21.1", or "seen" for inputs that were already handled
    fn: Callable[[Path], tuple[str, str]]


# ------------------------------------------------------------------ outcome helpers
def _innermost(e: BaseException) -> BaseException:
    """The error a bundle run prints last (the first one below MONAI's config wrappers)."""
    from monai_genaug.bundle_errors import bundle_cause

    return bundle_cause(e)


def _short(text: str, n: int = 300) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= n else text[: n - 3] + "..."


def expect_error(fn: Callable[[], Any], *words: str) -> tuple[str, str]:
    """``clear_error`` when ``fn`` raises and the innermost message holds every word; ``silent_wrong`` when it does
    not raise."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fn()
    except SystemExit as e:  # argparse: the message went to stderr, the caller checks it
        return ("clear_error" if e.code not in (0, None) else "silent_wrong"), f"exit {e.code}"
    except Exception as e:  # noqa: BLE001
        root = _innermost(e)
        msg = f"{type(root).__name__}: {root}"
        return ("clear_error" if all(w in str(root) for w in words) else "crash_without_message"), _short(msg)
    return "silent_wrong", "accepted without an error"


def expect_ok(fn: Callable[[], Any], check: Callable[[Any], bool], what: str = "") -> tuple[str, str]:
    """``handled`` when ``fn`` runs and ``check(result)`` holds."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = fn()
    except Exception as e:  # noqa: BLE001
        root = _innermost(e)
        return "crash_without_message", _short(f"{type(root).__name__}: {root}")
    return ("handled", what) if check(result) else ("silent_wrong", f"wrong result: {what}")


def _bundle_cli(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-m", "monai.bundle", "run", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout, env=env, check=False)


def expect_cli_error(args: list[str], *words: str) -> tuple[str, str]:
    """A real ``python -m monai.bundle run``: ``clear_error`` when it fails and its last line is the project's
    message holding every word."""
    proc = _bundle_cli(*args)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    last = lines[-1] if lines else ""
    if proc.returncode == 0:
        return "silent_wrong", "exit 0"
    ok = last.startswith(PREFIX) and all(w in last for w in words)
    return ("clear_error" if ok else "crash_without_message"), _short(last)


def _bundle_run(bundle: str, config: str | list[str], **overrides: Any) -> None:
    from monai.bundle import run

    root = ROOT / "bundles" / bundle
    files = [config] if isinstance(config, str) else config
    cfg = [str(root / "configs" / f) for f in files]
    run(config_file=cfg if len(cfg) > 1 else cfg[0], bundle_root=str(root), **overrides)


# ------------------------------------------------------------------ tiny inputs
def _png16(path: Path) -> np.ndarray:
    from PIL import Image

    y, x = np.mgrid[0:32, 0:32]
    arr = ((x + 32 * y) * 64).astype(np.uint16)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)
    return arr.astype(np.float64) / 65535.0


def _paired_16bit(tmp: Path, ext: str) -> tuple[dict, np.ndarray]:
    from PIL import Image

    expected = _png16(tmp / "images" / f"a{ext}")
    (tmp / "masks").mkdir(parents=True, exist_ok=True)
    mask = np.zeros((32, 32), np.uint8)
    mask[8:24, 8:24] = 255
    Image.fromarray(mask).save(tmp / "masks" / "a.png")
    return {"image": str(tmp / "images" / f"a{ext}"), "label": str(tmp / "masks" / "a.png")}, expected


def _close_to(expected: np.ndarray) -> Callable[[Any], bool]:
    def check(out: Any) -> bool:
        img = np.asarray(out["image"])
        return bool((img >= 0.999).mean() < 0.02 and all(np.allclose(c, expected, atol=1e-4) for c in img))

    return check


def _gen():
    from monai_genaug.generative.latent_generator import LatentGenerator

    return LatentGenerator.from_preset("tiny", spatial_dims=2, image_channels=3, num_prompts=1).eval()


def _plain_gen():
    from monai_genaug.generative.latent_generator import LatentGenerator

    return LatentGenerator.from_preset("tiny", spatial_dims=2, image_channels=3).eval()


def _ttga(**kw):
    from monai_genaug.methods.ttga import TTGAAugmenter

    return TTGAAugmenter(_gen(), prompt=0, num_views=2, **kw)


def _endo(tmp: Path, num: int = 6) -> Path:
    from monai_genaug.data.phantoms import write_phantom_dataset

    return write_phantom_dataset("endoscopy", tmp / "endo", num, spatial_size=(16, 16))


def _user_folder(tmp: Path) -> tuple[Path, list[str]]:
    user = tmp / "user"
    for rel in ("images/patient1.png", "masks/patient1.png"):
        (user / rel).parent.mkdir(parents=True, exist_ok=True)
        (user / rel).write_bytes(b"user data")
    return user, sorted(p.relative_to(user).as_posix() for p in user.rglob("*"))


def _unchanged_after(fn: Callable[[], Any], folder: Path, before: list[str], *words: str) -> tuple[str, str]:
    outcome, msg = expect_error(fn, *words)
    if sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*")) != before:
        return "data_loss", "the folder changed: " + msg
    return outcome, msg


# ------------------------------------------------------------------ cases
def _api_cases() -> list[Case]:
    from monai.data import MetaTensor

    from monai_genaug.data.bundle import bundle_datalist, bundle_transforms, check_layout
    from monai_genaug.transforms.validation import ValidateImaged
    from monai_genaug.data.folders import write_datalist
    from monai_genaug.data.phantoms import main as phantoms_main
    from monai_genaug.data.phantoms import write_phantom_dataset
    from monai_genaug.methods.gms import gms_transforms
    from monai_genaug.handlers.resume import ResumableCheckpointHandler
    from monai_genaug.generative.guidance import ClassifierFreeGuidance, ClassifierGuidance, MultiConditionGuidance
    from monai_genaug.generative.sampler import DiffusionSampler
    from monai_genaug.methods.histodiffusion import HistoDiffusion
    from monai_genaug.utils.checkpoint import load_checkpoint
    from monai_genaug.utils.labels import class_indices
    from monai_genaug.utils.outputs import check_output_dir

    nan, inf = math.nan, math.inf

    class _Clf(torch.nn.Module):
        num_classes = 2

        def forward(self, x, t):
            return x.flatten(1)[:, :2]

    def sixteen(ext, pipeline):
        def fn(tmp):
            item, expected = _paired_16bit(tmp, ext)
            return expect_ok(lambda: pipeline()(item), _close_to(expected), f"16-bit {ext} scaled by 65535")

        return fn

    def ttga_cap(tmp):
        def check(t):
            views = t(torch.rand(3, 16, 16, generator=torch.Generator().manual_seed(0)))
            return t.min_iterations == t.max_iterations == 2 and bool(torch.isfinite(views).all())

        return expect_ok(lambda: _ttga(min_iterations=100, max_iterations=2, inversion_stride=100), check,
                         "min_iterations lowered to max_iterations=2, finite views")

    def datalist_to_folder(tmp):
        (tmp / "dl").mkdir()
        return expect_error(lambda: write_datalist({"training": [{"image": str(tmp)}]}, tmp / "dl"),
                            f"'{tmp / 'dl'}' is an existing folder", "datalist.json")

    def phantom_api_user(tmp):
        user, before = _user_folder(tmp)
        return _unchanged_after(lambda: write_phantom_dataset("endoscopy", user, 2, spatial_size=(16, 16),
                                                              overwrite=True), user, before, "did not write")

    def phantom_cli_user(tmp):
        user, before = _user_folder(tmp)
        return _unchanged_after(lambda: phantoms_main(["--kind", "endoscopy", "--out", str(user), "--num", "2",
                                                       "--overwrite"]), user, before)

    def pickled_weights(tmp):
        torch.save({"fn": Case}, tmp / "evil.pt")
        return expect_error(lambda: load_checkpoint(tmp / "evil.pt"), "evil.pt", "weights-only")

    def stale_tmp(tmp):
        stale = tmp / ".checkpoint_last.pt.abc.tmp"
        stale.write_bytes(b"x" * 1024)
        net = torch.nn.Linear(2, 1)
        handler = ResumableCheckpointHandler(tmp, {"net": net})

        class _State:
            epoch_length, max_epochs = 1, 1

        class _Engine:
            state = _State()

        return expect_ok(lambda: handler.start(_Engine()), lambda _: not stale.exists(), "stale temporary removed")

    def image(arr, name="x.png"):
        return MetaTensor(torch.as_tensor(arr), meta={"filename_or_obj": name})

    return [
        Case("16bit_png_ttga_pipeline", "api", "#21.1", sixteen(".png", lambda: bundle_transforms(2, (32, 32)))),
        Case("16bit_tiff_ttga_pipeline", "api", "#21.1", sixteen(".tif", lambda: bundle_transforms(2, (32, 32)))),
        Case("16bit_png_gms_pipeline", "api", "#21.1",
             sixteen(".png", lambda: gms_transforms(2, (32, 32), num_classes=1, image_channels=3))),
        Case("16bit_tiff_gms_pipeline", "api", "#21.1",
             sixteen(".tif", lambda: gms_transforms(2, (32, 32), num_classes=1, image_channels=3))),
        Case("nan_cfg_scale", "api", "#21.3", lambda t: expect_error(lambda: ClassifierFreeGuidance(nan), "scale")),
        Case("inf_classifier_scale", "api", "#21.3",
             lambda t: expect_error(lambda: ClassifierGuidance(_Clf(), 0, scale=inf), "scale")),
        Case("nan_multi_condition_weight", "api", "#21.3",
             lambda t: expect_error(lambda: MultiConditionGuidance([{}, {}], [1.0, nan]), "weights[1]")),
        Case("inf_sampler_eta", "api", "#21.3", lambda t: expect_error(lambda: DiffusionSampler(2, eta=inf), "eta")),
        Case("nan_ttga_guidance_scale", "api", "#21.3",
             lambda t: expect_error(lambda: _ttga(guidance_scale=nan), "guidance_scale")),
        Case("nan_ttga_lambda_i", "api", "#21.3",
             lambda t: expect_error(lambda: _ttga(lambda_i=torch.tensor([1.0, nan])), "lambda_i")),
        Case("inf_ttga_lr", "api", "#21.3", lambda t: expect_error(lambda: _ttga(lr=inf), "lr")),
        Case("ttga_max_below_min_iterations", "api", "#21.11", ttga_cap),
        Case("max_items_zero", "api", "#21.4",
             lambda t: expect_error(lambda: bundle_datalist(_endo(t), "training", max_items=0), "max_items=0")),
        Case("max_items_negative", "api", "#21.4",
             lambda t: expect_error(lambda: bundle_datalist(_endo(t), "training", max_items=-2), "max_items", "-2")),
        Case("phantoms_overwrite_user_folder_api", "api", "#21.5", phantom_api_user),
        Case("phantoms_overwrite_user_folder_cli", "api", "#21.5", phantom_cli_user),
        Case("spatial_size_not_divisible_2d", "api", "#21.6",
             lambda t: expect_error(lambda: bundle_transforms(2, (97, 101), spatial_multiple=8), "spatial_size",
                                    "multiple", "[96, 104]")),
        Case("class_name_instead_of_index", "api", "#21.9",
             lambda t: expect_ok(lambda: class_indices("['TUM']", ["ADI", "TUM"]), lambda r: r == [1], "['TUM'] -> 1")),
        Case("unknown_class_name", "api", "#21.9",
             lambda t: expect_error(lambda: HistoDiffusion(_plain_gen(), class_names=["ADI", "TUM"]).synthesize(
                 1, (16, 16), classes=["NOPE"], guidance_scale=0.0, num_inference_steps=1), "'NOPE'", "'ADI'")),
        Case("output_dir_is_a_file", "api", "#21.10",
             lambda t: ((t / "f").write_text("x"), expect_error(lambda: check_output_dir(t / "f"), "output_dir",
                                                                  "existing file"))[1]),
        Case("write_datalist_to_a_folder", "api", "#21.10", datalist_to_folder),
        Case("stale_checkpoint_temporary", "api", "#21.also", stale_tmp),
        Case("weights_with_pickled_code", "api", "seen", pickled_weights),
        Case("nan_image", "api", "seen", lambda t: expect_error(lambda: ValidateImaged("image", 2).check(
            image(torch.full((3, 8, 8), nan))), "NaN", "x.png")),
        Case("constant_image", "api", "seen", lambda t: expect_error(lambda: ValidateImaged("image", 2).check(
            image(torch.ones(3, 8, 8))), "constant", "x.png")),
        Case("3d_volume_into_2d_bundle", "api", "seen", lambda t: expect_error(lambda: ValidateImaged("image", 2).check(
            image(torch.rand(3, 8, 8, 8))), "3D", "inference_3d.json")),
        Case("missing_dataset_dir", "api", "seen",
             lambda t: expect_error(lambda: check_layout(t / "none", 2), "does not exist")),
        Case("2d_folder_into_3d_bundle", "api", "seen",
             lambda t: expect_error(lambda: check_layout(_endo(t), 3), "2D images/ + masks/")),
    ]


def _bundle_cases() -> list[Case]:
    ttga_tiny = dict(num_views=2, min_iterations=1, max_iterations=2, inversion_stride=100, max_items=1,
                     num_pictures=0)

    def rerun(tmp):
        out = tmp / "gms"
        _bundle_run("gms", "inference.json", output_dir=str(out), max_items=1)
        before = (out / "metrics.csv").read_text()
        outcome, msg = expect_error(lambda: _bundle_run("gms", "inference.json", output_dir=str(out), max_items=1),
                                    "earlier run", "--overwrite true")
        return ("data_loss", msg) if (out / "metrics.csv").read_text() != before else (outcome, msg)

    def rerun_overwrite(tmp):
        out = tmp / "gms"
        _bundle_run("gms", "inference.json", output_dir=str(out), max_items=1)
        (out / "metrics.csv").write_text("old")
        return expect_ok(lambda: _bundle_run("gms", "inference.json", output_dir=str(out), max_items=1,
                                             overwrite="true"),
                         lambda _: (out / "metrics.csv").read_text() != "old", "--overwrite true replaced the results")

    def ttga_16bit(tmp):
        """The same grey phantoms as 8-bit and as 16-bit PNGs (value * 257) give the same TTGA Dice."""
        from PIL import Image

        from monai_genaug.data.phantoms import write_phantom_dataset

        src = write_phantom_dataset("endoscopy", tmp / "src", 3, spatial_size=(64, 64))
        for bits in (8, 16):
            for sub in ("images", "masks"):
                (tmp / f"d{bits}" / sub).mkdir(parents=True)
            for p in sorted((src / "images").glob("*.png")):
                grey = np.asarray(Image.open(p).convert("L"))
                arr = grey if bits == 8 else grey.astype(np.uint16) * 257
                Image.fromarray(arr).save(tmp / f"d{bits}" / "images" / p.name)
                os.link(src / "masks" / p.name, tmp / f"d{bits}" / "masks" / p.name)

        def dice(bits):
            _bundle_run("ttga", "inference.json", dataset_dir=str(tmp / f"d{bits}"), output_dir=str(tmp / f"o{bits}"),
                        split="all", **{**ttga_tiny, "max_items": 2})
            summary = json.loads((tmp / f"o{bits}" / "summary.json").read_text())["summary"]
            return {k: v for k, v in summary.items() if k.startswith(("dice", "hd95", "error"))}

        def same(r):
            return set(r[0]) == set(r[1]) and all(math.isclose(r[0][k], r[1][k], abs_tol=1e-6) for k in r[0])

        return expect_ok(lambda: (dice(8), dice(16)), same, "16-bit PNGs give the 8-bit copy's TTGA Dice, HD95, AUC")

    def monailabel_cap(tmp):
        from monai_genaug.apps.monailabel import BundleSegmentationRunner
        from monai_genaug.data.phantoms import write_phantom_dataset

        folder = write_phantom_dataset("endoscopy", tmp / "endo", 1, spatial_size=(64, 64))
        runner = BundleSegmentationRunner(ROOT / "bundles" / "ttga", overrides={
            "num_views": 2, "max_iterations": 2, "inversion_stride": 100})
        return expect_ok(lambda: runner(folder / "images" / "phantom_0000.png"),
                         lambda r: r["pred"].shape[-2:] == (64, 64), "a request with max_iterations=2 is served")

    return [
        Case("rerun_same_output_dir", "bundle", "#21.2", rerun),
        Case("rerun_with_overwrite_true", "bundle", "#21.2", rerun_overwrite),
        Case("ttga_bundle_on_16bit_pngs", "bundle", "#21.1", ttga_16bit),
        Case("max_items_zero_gms_bundle", "bundle", "#21.4",
             lambda t: expect_error(lambda: _bundle_run("gms", "inference.json", output_dir=str(t / "o"),
                                                        max_items=0), "max_items=0")),
        Case("ttga_bundle_nan_guidance", "bundle", "#21.3",
             lambda t: expect_error(lambda: _bundle_run("ttga", "inference.json", output_dir=str(t / "o"),
                                                        guidance_scale=float("nan"), **ttga_tiny), "guidance_scale")),
        Case("ttga_bundle_spatial_size_97x101", "bundle", "#21.6",
             lambda t: expect_error(lambda: _bundle_run("ttga", "inference.json", output_dir=str(t / "o"),
                                                        spatial_size=[97, 101], **ttga_tiny), "[96, 104]")),
        Case("ttga_bundle_max_iterations_below_min", "bundle", "#21.11",
             lambda t: expect_ok(lambda: _bundle_run("ttga", "inference.json", output_dir=str(t / "o"),
                                                     **{**ttga_tiny, "min_iterations": 20}),
                                 lambda _: (t / "o" / "metrics.csv").is_file(), "min_iterations follows max")),
        Case("monailabel_max_iterations_below_min", "bundle", "#21.11", monailabel_cap),
    ]


def _cli_cases() -> list[Case]:
    return [
        Case("cli_missing_dataset_dir", "cli", "#21.12",
             lambda t: expect_cli_error(["--config_file", "bundles/ttga/configs/inference.json", "--dataset_dir",
                                         str(t / "none")], "dataset_dir", "does not exist")),
        Case("cli_output_dir_is_a_file", "cli", "#21.10",
             lambda t: ((t / "f").write_text("x"),
                        expect_cli_error(["--config_file", "bundles/gms/configs/inference.json", "--output_dir",
                                          str(t / "f")], "existing file"))[1]),
        Case("cli_classes_by_name_unknown", "cli", "#21.9",
             lambda t: expect_cli_error(["--config_file", "bundles/histodiffusion/configs/inference.json",
                                         "--classes", "['NOPE']", "--output_dir", str(t / "o"), "--num_per_class", "1",
                                         "--num_inference_steps", "1"], "unknown class 'NOPE'")),
    ]


CASES: list[Callable[[], list[Case]]] = [_api_cases, _bundle_cases, _cli_cases]


def run_cases(faces: tuple[str, ...] = ("api", "bundle", "cli"), only: list[str] | None = None) -> list[dict]:
    """Run the cases of the given faces (each in a fresh temporary folder) and return one record per case."""
    records = []
    for make in CASES:
        for case in make():
            if case.face not in faces or (only and case.name not in only):
                continue
            start = time.perf_counter()
            with tempfile.TemporaryDirectory(prefix="hostile_") as tmp:
                try:
                    outcome, message = case.fn(Path(tmp))
                except Exception as e:  # noqa: BLE001 - a broken case is reported, never hidden
                    trace = traceback.format_exc(limit=2)
                    outcome, message = "crash_without_message", _short(f"case error: {trace} {e}")
            records.append({"case": case.name, "face": case.face, "item": case.item, "outcome": outcome,
                            "message": message, "seconds": round(time.perf_counter() - start, 2)})
            print(f"{outcome:>22}  {case.face:<6} {case.name}: {message[:120]}", flush=True)
    return records


def table(result: dict) -> str:
    """Markdown of a result JSON (outcome counts, then one row per case): the report generator's renderer."""
    from monai_genaug.evaluation.report import render_hostile_inputs

    return render_hostile_inputs({"hostile_inputs.json": result}).markdown["hostile_inputs.md"]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="API cases only")
    parser.add_argument("--only", nargs="+", default=None, help="case names")
    parser.add_argument("--out", default=str(RESULTS / "hostile_inputs.json"), help="result JSON")
    parser.add_argument("--table", action="store_true", help="print the table of the result JSON and exit")
    args = parser.parse_args(argv)
    out = Path(args.out)
    if args.table:
        result = json.loads(out.read_text())
        print(table(result))
        return result
    torch.set_num_threads(1)
    timer = BenchmarkTimer()
    records = run_cases(("api",) if args.quick else ("api", "bundle", "cli"), args.only)
    counts = Counter(r["outcome"] for r in records)
    result = {
        "command": "python benchmarks/hostile_inputs.py" + (" --quick" if args.quick else ""),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "counts": {k: counts.get(k, 0) for k in OUTCOMES},
        "cases": records,
        "timing": timer.stop(),
        "environment": environment(),
    }
    write_json_atomic(result, out)
    print(table(result))
    return result


if __name__ == "__main__":
    main()
