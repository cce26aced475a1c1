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
"""The README main job beside a busy process, with one torch thread and with torch's default (one per core).

Issue #22: on a 2-core machine with one other busy process the main job took 1,121 s with torch's default threads
and 26 s with one thread (oversubscription), which is why every bundle's ``num_threads`` defaults to one thread per
process on CPU. This script measures that row again: it starts ``--busy`` CPU-bound processes (a Python spin loop
each), runs ``python -m monai.bundle run --config_file bundles/ttga/configs/inference.json`` once per thread
setting, in alternating order, into a temporary folder, and writes wall seconds, the thread counts, the CPU count
and the 1-minute load average before each run (the machine must be otherwise quiet for the numbers to mean
anything; the load average says whether it was) to ``benchmarks/results/threads_busy.json``.

    python benchmarks/threads_busy.py [--busy 1] [--timeout 1500] [--quick]

``--quick`` runs a tiny job (one image, two views, two identity iterations) for the script's test.
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

from monai_genaug.evaluation.results import BenchmarkTimer, environment, write_json_atomic

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
MAIN_JOB = ["-m", "monai.bundle", "run", "--config_file", "bundles/ttga/configs/inference.json"]
QUICK = ["--max_items", "1", "--num_views", "2", "--min_iterations", "1", "--max_iterations", "2",
         "--inversion_stride", "100", "--num_pictures", "0"]
SPIN = "import time\nwhile True:\n    sum(i * i for i in range(10000))\n"


def run_job(num_threads: int, output_dir: Path, timeout: float, extra: list[str]) -> dict:
    """One run of the main job with ``--num_threads num_threads``; wall seconds, or the timeout as a lower bound."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    cmd = [sys.executable, *MAIN_JOB, "--output_dir", str(output_dir), "--num_threads", str(num_threads),
           "--progress", "false", *extra]
    load = os.getloadavg()[0]
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout, check=False)
        seconds, timed_out, rc = time.perf_counter() - start, False, proc.returncode
        tail = (proc.stdout + proc.stderr)[-1500:] if proc.returncode else ""
    except subprocess.TimeoutExpired:
        seconds, timed_out, rc, tail = time.perf_counter() - start, True, None, ""
    return {"num_threads": num_threads, "seconds": round(seconds, 2), "timed_out": timed_out, "returncode": rc,
            "load_average_1min_before": round(load, 2), "error_tail": tail}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--busy", type=int, default=1, help="CPU-bound processes running beside the job")
    parser.add_argument("--timeout", type=float, default=1500.0, help="seconds per run (then a lower bound)")
    parser.add_argument("--quick", action="store_true", help="a tiny job (for the script's test)")
    parser.add_argument("--out", default=str(RESULTS / "threads_busy.json"))
    args = parser.parse_args(argv)

    timer = BenchmarkTimer()
    cores = os.cpu_count() or 1
    settings = [1, cores] if cores > 1 else [1]
    extra = QUICK if args.quick else []
    result = {
        "command": "python " + " ".join(MAIN_JOB) + " --num_threads N" + (" " + " ".join(extra) if extra else ""),
        "busy_processes": args.busy,
        "cpu_count": cores,
        "load_average_1min_at_start": round(os.getloadavg()[0], 2),
        "machine": f"{platform.processor() or platform.machine()}, Python {platform.python_version()}",
        "quick": args.quick,
        "runs": [],
    }
    busy = [subprocess.Popen([sys.executable, "-c", SPIN]) for _ in range(args.busy)]
    try:
        time.sleep(1.0)
        with tempfile.TemporaryDirectory() as tmp:
            for i, n in enumerate(settings + settings[::-1] if not args.quick else settings):
                result["runs"].append(run_job(n, Path(tmp) / f"run{i}", args.timeout, extra))
    finally:
        for p in busy:
            p.kill()
            p.wait()
    by = {n: [r["seconds"] for r in result["runs"] if r["num_threads"] == n] for n in settings}
    result["median_seconds"] = {str(n): sorted(v)[len(v) // 2] for n, v in by.items()}
    if len(settings) == 2:
        one, default = result["median_seconds"]["1"], result["median_seconds"][str(cores)]
        result["default_over_one_thread"] = round(default / one, 2)
    result.update(timing=timer.stop(), environment=environment())
    write_json_atomic(result, args.out)
    return result


if __name__ == "__main__":
    print(json.dumps(main(), indent=2))
