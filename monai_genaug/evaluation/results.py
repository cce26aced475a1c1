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
"""The JSON envelope every benchmark writes: settings, seeds, per-case rows, software versions, wall time and load
average, written atomically so an interrupted run never leaves a half-written result (and a resumable runner can
trust that a complete file means a finished stage)."""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from collections.abc import Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

from monai_genaug.evaluation.statistics import ResultsTable
from monai_genaug.utils.io import atomic_write_json

__all__ = [
    "SCHEMA",
    "BenchmarkTimer",
    "environment",
    "is_complete",
    "merge_results",
    "read_results",
    "write_json_atomic",
    "write_results",
]

#: ``schema`` value of the envelope; the report renders files with this key generically
SCHEMA = "monai_genaug.benchmark/1"

_PACKAGES = ("monai_genaug", "monai", "torch", "numpy", "pytorch-ignite")


def environment() -> dict[str, Any]:
    """Software versions, machine and load average at call time (the load says how busy a shared machine was)."""
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    try:
        import torch

        versions["torch"] = torch.__version__
        device = f"cuda ({torch.cuda.get_device_name(0)})" if torch.cuda.is_available() else "cpu"
        threads = int(torch.get_num_threads())
    except ImportError:  # pragma: no cover - torch is a dependency
        device, threads = "cpu", None
    try:
        load = [round(v, 2) for v in os.getloadavg()]
    except (OSError, AttributeError):  # pragma: no cover - not on every platform
        load = None
    return {
        "versions": versions,
        "machine": platform.machine(),
        "system": platform.system(),
        "cpu_count": os.cpu_count(),
        "torch_threads": threads,
        "device": device,
        "load_average": load,
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]) if sys.argv and sys.argv[0] else None,
    }


def write_json_atomic(obj: Any, path: str | os.PathLike) -> Path:
    """Write ``obj`` as indented JSON (NaN refused) through a temporary file and an atomic rename."""
    return atomic_write_json(path, obj, indent=1, allow_nan=False)


class BenchmarkTimer:
    """Wall time and CPU time of a benchmark (or a stage), and the load average at start and end.

    Example::

        timer = BenchmarkTimer()
        ...  # the benchmark
        write_results(path, "my_benchmark", settings, seeds, table, timing=timer.stop())
    """

    def __init__(self) -> None:
        self._wall = time.perf_counter()
        self._cpu = time.process_time()
        self._load = environment()["load_average"]

    def stop(self) -> dict[str, Any]:
        """``{"wall_s", "cpu_s", "load_average_start", "load_average_end"}``."""
        return {
            "wall_s": round(time.perf_counter() - self._wall, 2),
            "cpu_s": round(time.process_time() - self._cpu, 2),
            "load_average_start": self._load,
            "load_average_end": environment()["load_average"],
        }


def write_results(
    path: str | os.PathLike,
    benchmark: str,
    settings: Mapping[str, Any],
    seeds: Sequence[int],
    table: ResultsTable | Sequence[Mapping[str, Any]],
    timing: Mapping[str, Any],
    primary_metric: str = "score",
    baseline: str | None = None,
    extra: Mapping[str, Any] | None = None,
    quick: bool = False,
) -> Path:
    """Write a benchmark's results in the envelope the report reads (atomically).

    Args:
        path: the JSON file (``benchmarks/results/<name>.json``).
        benchmark: benchmark name (also the Markdown file's stem).
        settings: every option of the run (JSON-serialisable).
        seeds: training seeds of the run.
        table: per-case rows (a :class:`ResultsTable` or its rows).
        timing: from :meth:`BenchmarkTimer.stop` (wall time, CPU time, load average).
        primary_metric: the metric tables and README rows show first.
        baseline: the method every other one is paired against (e.g. ``"real_only"``).
        extra: further results (label curve, oracle scores, diagnostics), JSON-serialisable.
        quick: whether this was a smoke run (the report marks it).
    """
    rows = table.to_rows() if isinstance(table, ResultsTable) else [dict(r) for r in table]
    if not rows:
        raise ValueError(f"benchmark {benchmark!r} has no per-case rows; nothing would back its numbers.")
    if "wall_s" not in timing:
        raise ValueError("timing must hold 'wall_s' (use BenchmarkTimer().stop()).")
    obj = {
        "schema": SCHEMA,
        "benchmark": str(benchmark),
        "complete": True,
        "quick": bool(quick),
        "settings": dict(settings),
        "seeds": [int(s) for s in seeds],
        "primary_metric": str(primary_metric),
        "baseline": baseline,
        "rows": rows,
        "extra": dict(extra or {}),
        "timing": dict(timing),
        "environment": environment(),
    }
    return write_json_atomic(obj, path)


def merge_results(
    paths: Sequence[str | os.PathLike],
    path: str | os.PathLike,
    per_run_settings: Sequence[str] = (),
    per_run_extra: Sequence[str] = (),
) -> Path:
    """Merge envelopes of the same benchmark run with different training seeds (e.g. one seed per machine, or per
    resumable session) into one envelope whose statistics bootstrap over cases and seeds.

    Rows are concatenated and the seeds joined; the settings must agree except ``per_run_settings`` (e.g. the
    generator's training record); what differs per run (``per_run_settings``, ``per_run_extra`` such as the
    validation grid each seed chose its hyper-parameters on, and each run's timing and environment) goes to
    ``extra["runs"]``, one entry per input in seed order; the timing is the sum of the runs'.

    Args:
        paths: complete envelopes of one benchmark (same ``quick`` mode, disjoint seeds).
        path: the merged JSON.
        per_run_settings: settings keys allowed to differ between the runs (moved to ``extra["runs"]``).
        per_run_extra: ``extra`` keys kept per run (moved to ``extra["runs"]``).

    Raises:
        ValueError: fewer than two files, an incomplete file, different benchmarks or modes, overlapping seeds, or a
            setting that differs between runs (named) and is not in ``per_run_settings``.
    """
    if len(paths) < 2:
        raise ValueError(f"merge_results needs at least two result files, got {len(paths)}.")
    runs = []
    for p in paths:
        obj = read_results(p)
        if obj.get("schema") != SCHEMA or not obj.get("complete"):
            raise ValueError(f"{p} is not a complete results envelope; rerun its benchmark before merging.")
        runs.append((p, obj))
    runs.sort(key=lambda run: min(run[1]["seeds"]))
    objs = [obj for _, obj in runs]
    first = objs[0]
    seeds: list[int] = []
    for p, obj in runs:
        if obj["benchmark"] != first["benchmark"] or bool(obj.get("quick")) != bool(first.get("quick")):
            raise ValueError(f"{p} is benchmark {obj['benchmark']!r} (quick={obj.get('quick')}), not "
                             f"{first['benchmark']!r} (quick={first.get('quick')}); merge runs of one benchmark only.")
        if set(obj["seeds"]) & set(seeds):
            raise ValueError(f"seeds {sorted(set(obj['seeds']) & set(seeds))} appear in two files; each training seed "
                             "must be run once.")
        seeds += [int(s) for s in obj["seeds"]]
        for key in set(obj["settings"]) | set(first["settings"]):
            if key not in per_run_settings and obj["settings"].get(key) != first["settings"].get(key):
                raise ValueError(f"setting {key!r} differs between the runs ({first['settings'].get(key)!r} vs "
                                 f"{obj['settings'].get(key)!r}); rerun with the same settings or list it in "
                                 "per_run_settings.")
    settings = {k: v for k, v in first["settings"].items() if k not in per_run_settings}
    extra = {k: v for k, v in first.get("extra", {}).items() if k not in per_run_extra}
    extra["runs"] = [{"seeds": o["seeds"], **{k: o["settings"].get(k) for k in per_run_settings},
                      **{k: o.get("extra", {}).get(k) for k in per_run_extra},
                      "timing": o.get("timing"), "environment": o.get("environment")} for o in objs]
    timing = {"wall_s": round(sum(float(o["timing"]["wall_s"]) for o in objs), 2),
              "cpu_s": round(sum(float(o["timing"].get("cpu_s") or 0.0) for o in objs), 2),
              "load_average_start": first["timing"].get("load_average_start"),
              "load_average_end": objs[-1]["timing"].get("load_average_end"), "merged_runs": len(objs)}
    rows = [row for o in objs for row in o["rows"]]
    return write_results(path, first["benchmark"], settings, sorted(seeds), rows, timing,
                         primary_metric=first.get("primary_metric", "score"), baseline=first.get("baseline"),
                         extra=extra, quick=bool(first.get("quick")))


def read_results(path: str | os.PathLike) -> dict[str, Any]:
    """Read a results JSON (any shape); a clear error names a missing or malformed file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"results file {path} does not exist; run the benchmark that writes it first.")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"results file {path} is not valid JSON ({e}); rerun the benchmark that writes it.") from e


def is_complete(path: str | os.PathLike, quick: bool | None = None) -> bool:
    """Whether ``path`` holds a complete envelope (a finished stage a resumable runner may skip).

    Args:
        path: results JSON.
        quick: when given, the file must also be of that mode (a quick result never stands in for a full one).
    """
    try:
        obj = read_results(path)
    except (FileNotFoundError, ValueError):
        return False
    if obj.get("schema") != SCHEMA or not obj.get("complete") or not obj.get("rows"):
        return False
    return quick is None or bool(obj.get("quick")) == bool(quick)
