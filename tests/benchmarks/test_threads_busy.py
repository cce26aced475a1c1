"""The threads-beside-a-busy-process benchmark runs end to end (tiny job) and writes its JSON row."""

from __future__ import annotations

import json
import os

import pytest


@pytest.mark.slow
def test_threads_busy_quick(tmp_path, benchmark_script):
    module = benchmark_script("threads_busy")
    out = tmp_path / "threads_busy.json"
    result = module.main(["--quick", "--busy", "1", "--timeout", "600", "--out", str(out)])
    assert json.loads(out.read_text()) == result
    cores = os.cpu_count() or 1
    assert [r["num_threads"] for r in result["runs"]] == ([1, cores] if cores > 1 else [1])
    assert all(r["returncode"] == 0 and not r["timed_out"] and r["seconds"] > 0 for r in result["runs"]), result
    assert result["busy_processes"] == 1 and result["load_average_1min_at_start"] >= 0
    assert "--num_threads N" in result["command"]
