"""The TTGA tutorial runs end to end in quick mode and writes its pictures and a sensible summary."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_ttga_tutorial_quick(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "tutorials/ttga_tutorial.py", "--quick", "--output_dir", str(tmp_path), "--device", "cpu"],
        cwd=ROOT, capture_output=True, text=True, timeout=300, env=env, check=False,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["quick"] is True and len(summary["cases"]) == 2
    identity = summary["identity"]
    assert 10 <= identity["iterations"] <= 30 and identity["final_loss"] <= identity["initial_loss"]
    assert len(identity["identity_fraction"]) == 8 and all(0.0 <= f <= 1.0 for f in identity["identity_fraction"])
    for case in summary["cases"]:
        assert 0.0 <= case["dice_ttga"] <= 1.0 and 0.0 <= case["dice_alone"] <= 1.0
        assert 0.0 <= case["dice_ttga_plain_views"] <= 1.0
    assert summary["test_time_augmentation"]["volume_variation"] >= 0.0
    for name in ("views.png", "identity_masks.png", "case_0_panel.png", "case_1_views.png"):
        assert (tmp_path / name).is_file(), name
