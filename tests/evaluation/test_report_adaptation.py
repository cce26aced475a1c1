"""The domain-adaptation renderer (adaptdiff_fundus): secondary metric, human ceiling, per-case table, share of the gap."""

from __future__ import annotations

import pytest

from monai_genaug.evaluation import ResultsTable, write_results
from monai_genaug.evaluation.report import render_results


def _envelope(tmp_path, lift: float) -> str:
    table, human = ResultsTable(), ResultsTable()
    for seed in (0, 1, 2):
        for i, child in enumerate(["c1", "c2", "c3", "c4"]):
            base = 0.5 + 0.02 * i + 0.001 * seed
            for metric, shift in (("dice", 0.0), ("cldice", -0.05)):
                table.add("source_only", case=child, seed=seed, value=base + shift, metric=metric)
                table.add("adaptdiff", case=child, seed=seed, value=base + shift + lift + 0.002 * i, metric=metric)
                table.add("upper_bound", case=child, seed=seed, value=base + shift + 0.2, metric=metric)
                if seed == 0:
                    human.add("second_observer", case=child, seed=0, value=0.8 + shift, metric=metric)
    extra = {"title": "t", "bundle": "adaptdiff", "secondary_metrics": ["cldice"],
             "human_ceiling": {"rows": human.to_rows()},
             "gap": {"baseline": "source_only", "method": "adaptdiff", "ceiling": "upper_bound"}}
    write_results(tmp_path / "adaptdiff_fundus.json", "adaptdiff_fundus", {}, [0, 1, 2], table, {"wall_s": 1.0},
                  primary_metric="dice", baseline="source_only", extra=extra)
    return render_results(tmp_path)


@pytest.mark.parametrize("lift, goal", [(0.15, "met"), (0.02, "not met")])
def test_adaptation_report_sections_and_gap(tmp_path, lift, goal):
    rep = _envelope(tmp_path, lift)
    md = rep.markdown["adaptdiff_fundus.md"]
    for heading in ("## cldice", "## Human ceiling", "## Per case (mean over seeds)", "## Goal"):
        assert heading in md
    share = (lift + 0.003) / 0.2  # mean of the extra 0.002 * i over the four cases is 0.003
    gap_rows = [line for line in md.splitlines() if line.startswith("| dice |") and "[" in line]
    assert f"| {share:.3f} | {goal} |" in gap_rows[-1]
    assert "| c4 | 0.561 |" in md  # per-case mean over seeds of source_only: 0.5 + 0.06 + 0.001
    assert "second observer dice 0.800" in rep.bundle["adaptdiff"][0]
    assert len(rep.plots) == 1 and "second observer (dice)" in rep.plots[0].labels
