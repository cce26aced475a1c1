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
"""Measure what the bundles' shipped weights do on their embedded phantoms, for the numbers quoted in the docs.

    python benchmarks/shipped_weights.py                     # every job -> benchmarks/results/shipped_weights.json
    python benchmarks/shipped_weights.py --jobs adaptdiff    # one job (seconds)

Each job is the command a user runs on a fresh clone (``python -m monai.bundle run --config_file ...``), run in its own
process with one torch thread into a temporary folder; the JSON keeps, per job, the commands, their wall time, the
1-minute load average before each, and the numbers the bundle wrote (``metrics.csv`` / ``summary.json``,
``metrics.json``, ``filter_summary.json``, ``evaluation/results.json``). The report
(``python -m monai_genaug.evaluation.report benchmarks/results``) writes them into README.md (the main job's wall time)
and into the bundles' docs between ``<!-- shipped-weights:start -->`` and ``<!-- shipped-weights:end -->``: no number
about the shipped weights is typed by hand.

These are demonstrations on phantoms with the shipped (phantom-trained) weights, one run each: they show what a user
sees on a fresh clone, not the methods' merit (that is what the other benchmarks measure, under the evaluation
protocol).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from monai_genaug.evaluation.results import BenchmarkTimer, environment, write_json_atomic  # noqa: E402

#: job name -> list of (bundle, config, extra CLI arguments); the runs of one job share an output folder
JOBS: dict[str, list[tuple[str, str, list[str]]]] = {
    "ttga": [("ttga", "inference", [])],
    "ttga_plain_views": [("ttga", "inference", ["--detail_weight", "0"])],
    "adaptdiff": [("adaptdiff", "evaluate", [])],
    "ctrl_genaug": [("ctrl_genaug", "inference", []), ("ctrl_genaug", "filter", []), ("ctrl_genaug", "evaluate", [])],
}


def _load_average() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:  # pragma: no cover - platforms without getloadavg
        return None


def run_bundle(bundle: str, config: str, extra: list[str], output_dir: Path) -> dict:
    """Run one bundle config on its embedded defaults; raise with the command's tail when it fails."""
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", f"bundles/{bundle}/configs/{config}.json",
           "--output_dir", str(output_dir), "--num_threads", "1", "--progress", "false", *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}
    load = _load_average()
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"`{' '.join(cmd[1:])}` failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return {"command": "python " + " ".join(cmd[1:]).replace(str(output_dir), "<output_dir>"),
            "seconds": round(seconds, 2), "load_average_before": load}


def _read(path: Path) -> dict:
    return json.loads(path.read_text())


def collect(job: str, out: Path) -> dict:
    """The numbers a job's bundle wrote into ``out``."""
    if job in ("ttga", "ttga_plain_views"):
        s = _read(out / "summary.json")
        return {"summary": s["summary"], "detail_weight": s.get("settings", {}).get("detail_weight")}
    if job == "adaptdiff":
        m = _read(out / "evaluate" / "metrics.json")
        return {k: {f: m[k][f] for f in ("mean_dice", "global_dice", "num_items")} for k in ("source_only", "adaptdiff")}
    if job == "ctrl_genaug":
        f = _read(out / "filtered" / "filter_summary.json")
        r = _read(out / "evaluation" / "results.json")
        downstream = {k: {"accuracy": v["accuracy"], "accuracy_low": v.get("accuracy_low"),
                          "accuracy_high": v.get("accuracy_high"), "num_train": v.get("num_train"),
                          "num_synthetic": v.get("num_synthetic"), "seeds": [x["seed"] for x in v.get("runs", [])]}
                      for k, v in r.items() if isinstance(v, dict) and "accuracy" in v}
        num_test = len({row["case"] for v in r.values() if isinstance(v, dict) for row in v.get("rows", [])})
        return {"kept": f["kept"], "total": f["total"], "temporal_consistency_real": f["temporal_consistency_real"],
                "temporal_consistency_synthetic": f["temporal_consistency_synthetic"], "downstream": downstream,
                "num_test_clips": num_test}
    raise KeyError(job)


def main(argv=None) -> Path:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--jobs", nargs="+", choices=tuple(JOBS), default=list(JOBS), help="jobs to run (default: all)")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "shipped_weights.json"))
    args = p.parse_args(argv)
    out_path = Path(args.out)
    timer = BenchmarkTimer()
    jobs = {}
    with tempfile.TemporaryDirectory(prefix="shipped_weights_") as tmp:
        for job in args.jobs:
            work = Path(tmp) / job
            runs = [run_bundle(b, c, extra, work) for b, c, extra in JOBS[job]]
            jobs[job] = {"runs": runs, "results": collect(job, work)}
            print(f"{job:18s} {sum(r['seconds'] for r in runs):7.1f} s", flush=True)
    import torch

    result = {"benchmark": "shipped_weights", "command": "python benchmarks/shipped_weights.py", "jobs": jobs,
              "threads": 1, "cpu_count": os.cpu_count(), "machine": f"{platform.machine()}, Python "
              f"{platform.python_version()}", "torch": torch.__version__}
    timing = timer.stop()
    result.update(wall_s=round(timing["wall_s"], 1), timing=timing, environment=environment())
    write_json_atomic(result, out_path)
    print(f"wrote {out_path}")
    return out_path


if __name__ == "__main__":
    main()
