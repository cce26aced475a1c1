"""The HistoDiffusion tutorial runs end to end in quick mode and reports sensible numbers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_histodiffusion_tutorial_quick(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}  # the working tree, one thread
    proc = subprocess.run(
        [sys.executable, "tutorials/histodiffusion_tutorial.py", "--quick", "--output_dir", str(tmp_path),
         "--device", "cpu"],
        cwd=ROOT, capture_output=True, check=False, text=True, timeout=400, env=env,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["quick"] is True and len(summary["class_names"]) == 4
    assert all(0.0 <= a <= 1.0 for a in summary["noisy_classifier_accuracy"].values())
    assert summary["target_probability"]["10.0"] > summary["target_probability"]["0.0"]  # guidance works
    assert summary["num_synthetic"] == 32 and 0 < summary["filter"]["kept"] <= 16
    assert set(summary["downstream_accuracy"]) == {"real_only", "real+synthetic", "real+filtered"}
    assert (tmp_path / "synthetic" / "samples_grid.png").is_file()
    assert (tmp_path / "filtered" / "filtered_datalist.json").is_file()
    assert (tmp_path / "generator.pt").is_file() and (tmp_path / "classifier" / "classifier_final.pt").is_file()
