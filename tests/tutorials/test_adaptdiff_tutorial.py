"""The AdaptDiff tutorial runs end to end in quick mode and reports sensible numbers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_adaptdiff_tutorial_quick(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # one core: the quick mode's budget
    proc = subprocess.run(
        [
            sys.executable,
            "tutorials/adaptdiff_tutorial.py",
            "--quick",
            "--output_dir",
            str(tmp_path),
            "--device",
            "cpu",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["quick"] is True and summary["spatial_size"] == [32, 32]
    for key in ("pseudo_label_dice", "source_only_dice", "adaptdiff_dice"):
        assert 0.0 <= summary[key] <= 1.0, (key, summary[key])
    # the target modality has dark vessels: the synthetic images of the source masks too
    assert summary["real_target_contrast_inside_minus_outside"] < 0
    assert summary["synthetic_contrast_inside_minus_outside"] < 0
    assert 0 < summary["corrupted_foreground_fraction"] < 1  # erosion + dropout removed part of the pseudo-label
    for name in ("adapted_segmenter.pt", "generator.pt", "synthetic_grid.png", "synthetic/grid.png"):
        assert (tmp_path / name).is_file(), name
    assert len(list((tmp_path / "synthetic" / "images").glob("*.png"))) == summary["num_images"]["source"]
