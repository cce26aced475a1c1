"""The TTGA quality renderer (ttga_quality): methods, paired differences, the issue #16 goal and the limiting links."""

from __future__ import annotations

from monai_genaug.evaluation import ResultsTable, write_results
from monai_genaug.evaluation.report import render_results


def test_ttga_report_shows_the_goal_and_which_link_limits(tmp_path):
    table = ResultsTable()
    for i in range(6):
        case = f"img{i}"
        for method, dice, auc in (("segmenter", 0.60, 0.80), ("flip_tta", 0.65, 0.85), ("ttga", 0.60, 0.80),
                                  ("ttga_x_flips", 0.66, 0.86), ("reconstruction", 0.50, 0.7)):
            table.add(method, case=case, value=dice + 0.01 * i, metric="dice")
            table.add(method, case=case, value=auc + 0.005 * i, metric="error_auc")
        for metric, value in (("identity_fraction", 1.0), ("identity_loss_over_threshold", 30.0),
                              ("view_agreement", 0.999), ("view_mae", 0.004)):
            table.add("ttga_diagnostics", case=case, value=value, metric=metric)
    extra = {"title": "t", "script": "ttga_quality.py", "bundle": "ttga", "reconstruction_gate": 0.98,
             "validation": {"grid": [{"tau_alpha_bar": 0.74, "tau": 141, "lambda_i": 0.5, "dice_ttga": 0.5,
                                      "dice_segmenter": 0.5, "error_auc_ttga": 0.8}],
                            "chosen": {"tau_alpha_bar": 0.74, "lambda_i": 0.5}}}
    write_results(tmp_path / "ttga_quality.json", "ttga_quality", {"size": 64, "val_items": 4}, [0], table,
                  {"wall_s": 1.0}, primary_metric="dice", baseline="segmenter", extra=extra)
    rep = render_results(tmp_path)
    md = rep.markdown["ttga_quality.md"]
    assert "| TTGA - flip TTA (8 random flips) | dice | -0.0500 |" in md and "| worse |" in md
    assert "TTGA's error-estimation AUC above flip TTA's: no" in md
    # the gate ratio is the mean reconstruction Dice over the mean segmenter Dice: 0.525 / 0.625
    assert f"| {0.525 / 0.625:.3f} | >= 0.98 | FAILED" in md
    assert "NOT reached" in md and "all identity" in md and "views too alike" in md
    assert "| 0.74 | 141 | 0.5 | 0.500 | 0.500 | 0.800 | n/a |" in md
    assert any("Goal of issue #16" in line for line in rep.bundle["ttga"])
    assert rep.plots[-1].labels[-1] == "TTGA x flips"
