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
"""Run every benchmark: ``--quick`` (minutes, CI-sized, proves each one runs) or ``--full`` (the real runs).

    python benchmarks/run_all.py --quick                      # smoke runs into outputs/benchmarks_quick/
    python benchmarks/run_all.py --full                       # real runs into benchmarks/results/, resumable
    python benchmarks/run_all.py --full --only adaptdiff_phantoms ctrl_genaug_motion_phantoms
    python benchmarks/run_all.py --full --rerun sampler_overhead  # run a stage again although its JSON is complete

Every stage is one benchmark script in its own process (one CPU thread, ``OMP_NUM_THREADS=1``); it writes its JSON
atomically. ``--full`` skips a stage whose JSON is complete (the evaluation envelope with ``complete: true`` and not
a quick run; for the speed benchmarks, which keep their own shape, a readable JSON), so an interrupted run resumes
where it stopped. Stages whose data are absent (Kvasir-SEG, BRATS in ``$MONAI_GENAUG_DATA``) are skipped with a
message. The wall time of each stage is printed, and the report (``python -m monai_genaug.evaluation.report``) is
regenerated for the output folder at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"
sys.path.insert(0, str(ROOT))

from monai_genaug.evaluation.results import is_complete  # noqa: E402
from monai_genaug.utils.paths import shared_data_dir  # noqa: E402


@dataclass
class Stage:
    """One benchmark run: its script, arguments for the quick and full modes, the JSON files it writes and the data
    folder it needs (relative to the shared data folder)."""

    name: str
    script: str
    quick: list[str]
    full: list[str]
    outputs: list[str]
    envelope: bool = True
    needs: str | None = None
    out_flag: list[str] = field(default_factory=list)


def stages(out: Path, data: Path) -> list[Stage]:
    kvasir, brats = str(data / "kvasir_seg"), str(data / "brats2013_deepmedic")
    o = str(out)
    return [
        Stage("sampler_overhead", "sampler_overhead.py", ["--size", "32", "--steps", "2", "--batch", "1", "--repeats", "1"],
              [], ["sampler_overhead.json"], envelope=False, out_flag=["--out", f"{o}/sampler_overhead.json"]),
        Stage("gms_speed", "gms_speed.py", ["--quick", "--size", "32", "--batch", "2", "--num_batches", "1",
                                            "--steps", "1", "--repeats", "2"], [], ["gms_speed.json"],
              out_flag=["--out", f"{o}/gms_speed.json"]),
        Stage("ttga_speed", "ttga_speed.py", ["--views", "2", "--repeats", "1", "--sizes", "32", "--volume", "16"], [],
              ["ttga_speed.json"], envelope=False, out_flag=["--output", f"{o}/ttga_speed.json"]),
        Stage("gms_quality", "gms_quality.py", ["--quick", "--work_dir", f"{o}/work_gms_quality"],
              ["--work_dir", str(ROOT / "outputs" / "gms_quality")], ["gms_quality.json"], needs="kvasir_seg",
              out_flag=["--stages", "tokenizers", "kvasir", "--data_dir", str(data), "--out_dir", o]),
        Stage("gms_crossdomain", "gms_quality.py", ["--quick", "--work_dir", f"{o}/work_gms_quality"],
              ["--work_dir", str(ROOT / "outputs" / "gms_fundus_converged")], ["gms_crossdomain.json"], needs="chase_db1",
              out_flag=["--stages", "fundus", "--reverse", "--data_dir", str(data), "--out_dir", o]),
        Stage("gms_curves", "gms_quality.py", ["--quick", "--work_dir", f"{o}/work_gms_quality"],
              ["--work_dir", str(ROOT / "outputs" / "gms_quality")], ["gms_curves.json"],
              needs="kvasir_seg", out_flag=["--stages", "curves", "--data_dir", str(data), "--out_dir", o]),
        Stage("ttga_quality", "ttga_quality.py", ["--quick", "--work_dir", f"{o}/work_ttga"], [],
              ["ttga_quality.json"], needs="kvasir_seg",
              out_flag=["--data_dir", kvasir, "--out", f"{o}/ttga_quality.json"]),
        Stage("ttga_quality_drive", "ttga_quality.py", ["--quick", "--dataset", "drive", "--work_dir",
                                                        f"{o}/work_ttga_drive"], [],
              ["ttga_quality_drive.json"], needs="drive",
              out_flag=["--data_dir", str(data / "drive"), "--out", f"{o}/ttga_quality_drive.json"]),
        Stage("histodiffusion_lowlabel_phantoms", "histodiffusion_lowlabel.py", ["--quick"], [],
              ["histodiffusion_lowlabel_phantoms.json"], out_flag=["--datasets", "phantoms", "--out_dir", o]),
        Stage("histodiffusion_lowlabel_brats", "histodiffusion_lowlabel.py", ["--quick"], [],
              ["histodiffusion_lowlabel_brats.json"], needs="brats2013_deepmedic",
              out_flag=["--datasets", "brats", "--out_dir", o]),
        Stage("ctrl_genaug_brats", "ctrl_genaug_sequences.py", [], ["--brats_dir", brats],
              ["ctrl_genaug_brats.json"], needs="brats2013_deepmedic", out_flag=["--out_dir", o]),
        Stage("ctrl_genaug_motion_phantoms", "ctrl_genaug_motion.py", ["--quick"], [],
              ["ctrl_genaug_motion_phantoms.json"], out_flag=["--out_dir", o]),
        Stage("ctrl_genaug_motion_phantoms_motion_scale", "ctrl_genaug_motion.py", [], ["--variant", "motion_scale"],
              ["ctrl_genaug_motion_phantoms_motion_scale.json"], out_flag=["--out_dir", o]),
        Stage("ctrl_genaug_motion_phantoms_motion_scale_3000steps", "ctrl_genaug_motion.py", [],
              ["--variant", "motion_scale", "--clip_steps", "3000"],
              ["ctrl_genaug_motion_phantoms_motion_scale_3000steps.json"], out_flag=["--out_dir", o]),
        Stage("adaptdiff_phantoms", "adaptdiff_brats.py", ["--quick"], ["--data", "phantoms"],
              ["adaptdiff_phantoms.json"], out_flag=["--out", f"{o}/adaptdiff_phantoms.json"]),
        Stage("adaptdiff_fundus", "adaptdiff_fundus.py", ["--quick", "--work_dir", f"{o}/work_adaptdiff_fundus"], [],
              ["adaptdiff_fundus.json"], needs="chase_db1",
              out_flag=["--data_dir", str(data), "--out", f"{o}/adaptdiff_fundus.json"]),
        Stage("adaptdiff_brats", "adaptdiff_brats.py", [], ["--data", "brats", "--brats_dir", brats],
              ["adaptdiff_brats.json"], needs="brats2013_deepmedic", out_flag=["--out", f"{o}/adaptdiff_brats.json"]),
        Stage("adaptdiff_brats_disjoint", "adaptdiff_brats.py", [], ["--data", "brats", "--brats_dir", brats, "--split",
                                                                      "disjoint", "--tag", "disjoint"],
              ["adaptdiff_brats_disjoint.json"], needs="brats2013_deepmedic",
              out_flag=["--out", f"{o}/adaptdiff_brats_disjoint.json"]),
        Stage("adaptdiff_brats3d", "adaptdiff_brats.py", [], ["--data", "brats", "--brats_dir", brats, "--spatial_dims",
                                                              "3", "--seeds", "0"],
              ["adaptdiff_brats3d.json"], needs="brats2013_deepmedic", out_flag=["--out", f"{o}/adaptdiff_brats3d.json"]),
        Stage("shipped_weights", "shipped_weights.py", ["--jobs", "adaptdiff"], [], ["shipped_weights.json"],
              envelope=False, out_flag=["--out", f"{o}/shipped_weights.json"]),
    ]


def done(stage: Stage, out: Path) -> bool:
    """Whether every JSON of a full-mode stage is complete (so the stage is skipped)."""
    for name in stage.outputs:
        path = out / name
        if stage.envelope:
            if not is_complete(path, quick=False):
                return False
        else:
            try:
                json.loads(path.read_text())
            except (OSError, ValueError):
                return False
    return True


def main(argv=None) -> dict[str, str]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = p.add_mutually_exclusive_group(required=True)
    mode.add_argument("--quick", action="store_true", help="smoke runs (minutes in all)")
    mode.add_argument("--full", action="store_true", help="the real runs, resumable stage by stage")
    p.add_argument("--out_dir", default=None,
                   help="results folder (default: outputs/benchmarks_quick for --quick, benchmarks/results for --full)")
    p.add_argument("--only", nargs="+", default=None, help="run only these stages")
    p.add_argument("--rerun", nargs="+", default=[], help="full mode: run these stages although their JSON is complete")
    p.add_argument("--data_dir", default=None, help="real data folder (default: $MONAI_GENAUG_DATA or ../shared/data)")
    p.add_argument("--timeout", type=float, default=None, help="seconds per stage (default: none)")
    p.add_argument("--no-report", action="store_true", help="do not regenerate the report at the end")
    args = p.parse_args(argv)
    out = Path(args.out_dir or (ROOT / "outputs" / "benchmarks_quick" if args.quick else BENCH / "results"))
    out.mkdir(parents=True, exist_ok=True)
    data = shared_data_dir(args.data_dir)
    all_stages = stages(out, data)
    names = [s.name for s in all_stages]
    unknown = sorted((set(args.only or []) | set(args.rerun)) - set(names))
    if unknown:
        p.error(f"unknown stages {unknown}; stages: {names}")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(
        [str(ROOT), *([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else [])])}
    status: dict[str, str] = {}
    for stage in all_stages:
        if args.only and stage.name not in args.only:
            continue
        if stage.needs and not (data / stage.needs).is_dir():
            status[stage.name] = f"skipped: {data / stage.needs} absent"
        elif args.quick and not stage.quick:
            status[stage.name] = "skipped: no quick mode (a full-size data set only; its quick twin covers the code)"
        elif args.full and stage.name not in args.rerun and done(stage, out):
            status[stage.name] = "skipped: JSON complete"
        else:
            cmd = [sys.executable, str(BENCH / stage.script), *(stage.quick if args.quick else stage.full),
                   *stage.out_flag]
            t0 = time.perf_counter()
            try:
                proc = subprocess.run(cmd, cwd=ROOT, env=env, timeout=args.timeout, capture_output=True, text=True)
                ok = proc.returncode == 0
                tail = "" if ok else (proc.stdout[-1500:] + proc.stderr[-3000:])
            except subprocess.TimeoutExpired:
                ok, tail = False, f"timed out after {args.timeout} s"
            wall = time.perf_counter() - t0
            missing = [n for n in stage.outputs if not (out / n).is_file()]
            if ok and missing:
                ok, tail = False, f"finished without writing {missing}"
            status[stage.name] = f"{'ok' if ok else 'FAILED'} in {wall:.1f} s"
            if not ok:
                print(tail, file=sys.stderr)
        print(f"{stage.name:34s} {status[stage.name]}", flush=True)
    if not args.no_report:
        from monai_genaug.evaluation.report import main as report

        extra = [] if out.resolve() == (BENCH / "results").resolve() else ["--readme", "none", "--bundles", "none"]
        report([str(out), *extra])
    failed = [k for k, v in status.items() if v.startswith("FAILED")]
    if failed:
        raise SystemExit(f"failed stages: {failed}")
    return status


if __name__ == "__main__":
    main()
