"""The Ctrl-GenAug tutorial runs end to end in quick mode and reports sensible numbers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_ctrl_genaug_tutorial_quick(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "tutorials/ctrl_genaug_tutorial.py", "--quick", "--output_dir", str(tmp_path)],
        cwd=ROOT, capture_output=True, check=False, text=True, timeout=300, env=env,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    s = json.loads((tmp_path / "summary.json").read_text())
    assert s["quick"] is True and s["num_synthetic"] == 24 and 0 < s["kept"] < 24
    assert s["loss"]["frames"][1] < s["loss"]["frames"][0]  # pre-training learns
    assert 0 < s["temporal_consistency"]["generated"] <= 100
    assert set(s["downstream_accuracy"]) == {"real_only", "real+synthetic", "real+filtered"}
    assert (tmp_path / "synthetic" / "samples_sheet.png").is_file() and (tmp_path / "generator.pt").is_file()
