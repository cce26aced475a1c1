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
