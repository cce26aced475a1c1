"""The GMS renderer of the report tool (#17): tokenizer quality, learning curves, training cost, out-of-domain drops,
goals and diagnosis come from the JSON, and the bundle doc gets a generated block."""

from __future__ import annotations

import pytest

from monai_genaug.evaluation.report import render_results, write_plots
from monai_genaug.evaluation.results import BenchmarkTimer, write_results


def _rows(method, values, metric="dice", seed=0, prefix=""):
    return [{"method": method, "case": f"{prefix}c{i}", "seed": seed, "metric": metric, "value": v}
            for i, v in enumerate(values)]


def test_gms_quality_envelope_renders_every_section(tmp_path):
    rows = _rows("gms_fast", [0.5, 0.6, 0.7]) + _rows("unet_gms_size", [0.6, 0.7, 0.8])
    rows += _rows("tokenizer_wide", [20.0, 21.0, 22.0], "psnr") + _rows("tokenizer_wide", [0.6, 0.7, 0.8], "ssim")
    rows += _rows("tokenizer_wide", [0.9, 0.95, 0.97], "mask_dice")
    curve = [{"iteration": 10, "train_wall_s": 3.0, "train_cpu_s": 2.0, "val_dice": 0.42},
             {"iteration": 20, "train_wall_s": 6.0, "train_cpu_s": 4.0, "val_dice": 0.51}]
    extra = {
        "title": "GMS test", "bundle": "gms",
        "tokenizers": {"tokenizer_wide": {"parameters": 455395, "images": 1000, "masks": 700, "epochs": 3,
                                          "train_seconds": 120.0, "best_val_mask_dice": 0.95, "max_epochs": 30,
                                          "converged_epoch": 2, "convergence_rule": {"psnr_tolerance": 0.2,
                                                                                     "dice_tolerance": 0.003,
                                                                                     "min_epochs": 3},
                                          "convergence": [{"epoch": e, "val_psnr": 20.0 + e, "val_ssim": 0.5,
                                                           "val_mask_dice": 0.9, "train_cpu_s": 60.0 * e}
                                                          for e in (1, 2, 3)]}},
        "models": {"gms_fast": {"parameters": 393504, "curves": {"0": curve}},
                   "unet_gms_size": {"parameters": 407265, "curves": {"0": curve}}},
        "speed": {"iterations_per_cpu_second": {"gms_fast": 2.5, "unet_gms_size": 25.0}, "fast_over_original": 2.31,
                  "cost_per_iteration_relative_to_unet_benchmark": {"gms_fast": 6.0, "unet_gms_size": 0.6},
                  "cost_per_iteration_relative_to_unet_gms_size": {"gms_fast": 10.0, "unet_gms_size": 1.0}},
        "goals": {"within_1_point": {"goal": "GMS within 1 Dice point", "met": False}},
        "diagnosis": "the image latent is the limit.",
    }
    write_results(tmp_path / "gms_quality.json", "gms_quality", {}, [0], rows, BenchmarkTimer().stop(),
                  primary_metric="dice", baseline="unet_gms_size", extra=extra)
    rep = render_results(tmp_path)
    md = rep.markdown["gms_quality.md"]
    assert "| tokenizer_wide | 21.000 [" in md and "| 455395 | 1000 images + 700 masks | 3 (converged at 2) |" in md
    assert "## Convergence of `tokenizer_wide`" in md and "| 3 | 23.00 | 0.500 | 0.900 | 180 |" in md
    assert "| gms_fast | 1 | 20 | 0.510 | 6 | 4 |" in md  # learning curve: seeds, iteration, val Dice, wall s, CPU s
    assert "| gms_fast | 2.5 | 6.00 | 10.00 | 393504 |" in md and "2.31x" in md
    assert "| within_1_point | GMS within 1 Dice point | not met |" in md
    assert "Diagnosis: the image latent is the limit." in md
    assert "gms_fast - unet_gms_size | -0.100" in md
    block = rep.blocks[("bundles/gms/docs/README.md", "gms-gms_quality")]
    assert block[0] == "### GMS test" and "Diagnosis: the image latent is the limit." in block
    assert "### Goals" in block and "## Goals" not in block  # headings one level below the doc's "## Performance"
    # learning curves as line plots against iterations and wall seconds, linked from the README row and the bundle doc
    lines = {p.name: p for p in rep.plots if p.kind == "lines"}
    assert set(lines) == {"gms_quality_val_dice_vs_iterations", "gms_quality_val_dice_vs_wall_time"}
    assert lines["gms_quality_val_dice_vs_iterations"].series["gms_fast"] == [[10, 20], [0.42, 0.51]]
    assert lines["gms_quality_val_dice_vs_wall_time"].series["unet_gms_size"] == [[3.0, 6.0], [0.42, 0.51]]
    assert "[vs wall time](benchmarks/results/plots/gms_quality_val_dice_vs_wall_time.png)" in rep.readme_rows[0][2]
    assert any("plots/gms_quality_val_dice_vs_iterations.png)" in line for line in block)


def test_gms_curves_envelope_renders_plateaus_gaps_and_plots(tmp_path):
    rows = _rows("gms_fast_w32", [0.5, 0.6, 0.7]) + _rows("unet_gms_size", [0.6, 0.7, 0.8])
    rising = [{"iteration": i, "train_wall_s": 2.0 * i, "train_cpu_s": 1.0 * i, "val_dice": 0.1 * i} for i in (1, 2, 3, 4)]
    extra = {
        "title": "GMS curves", "bundle": "gms",
        "models": {"gms_fast_w32": {"parameters": 1560112, "curves": {"0": rising, "1": rising[:2]}},
                   "unet_gms_size": {"parameters": 407265, "curves": {"0": rising}}},
        "plateau_criterion": "no later checkpoint beats it by more than 0.01",
        "plateaus": {"gms_fast_w32": {"0": {"flattened": False, "plateau_iteration": None, "first_stable_checkpoint": 4,
                                            "plateau_cpu_s": 4.0, "plateau_wall_s": 8.0, "best_val_dice": 0.4,
                                            "best_iteration": 4, "final_val_dice": 0.4, "iterations": 4}},
                     "unet_gms_size": {"0": {"flattened": True, "plateau_iteration": 2, "first_stable_checkpoint": 2,
                                             "plateau_cpu_s": 2.0, "plateau_wall_s": 4.0, "best_val_dice": 0.205,
                                             "best_iteration": 3, "final_val_dice": 0.2}}},
        "gaps_to_unet_gms_size": {"gms_fast_w32": {"change": {"mean": 0.1, "low": 0.05, "high": 0.15},
                                                   "long": {"mean": -0.1, "low": -0.12, "high": -0.08},
                                                   "short": {"mean": -0.2, "low": -0.25, "high": -0.15}}},
        "cost_per_iteration_relative_to_unet_gms_size": {"gms_fast_w32": 15.5, "unet_gms_size": 1.0},
    }
    write_results(tmp_path / "gms_curves.json", "gms_curves", {}, [0], rows, BenchmarkTimer().stop(),
                  primary_metric="dice", baseline="unet_gms_size", extra=extra)
    rep = render_results(tmp_path)
    md = rep.markdown["gms_curves.md"]
    assert "criterion: no later checkpoint beats it by more than 0.01" in md
    assert "| gms_fast_w32 | 0 | 4 | no | - | - | - | 0.400 (4) | 0.400 | 15.50 |" in md
    assert "| unet_gms_size | 0 | n/a | yes | 2 | 2 | 4 | 0.205 (3) | 0.200 | 1.00 |" in md  # older record
    # the long run, the short run, then the paired change (in this order whatever the JSON's order)
    i_long = md.index("| gms_fast_w32 | long run (to the plateau or the cap) | -0.100 | [-0.120, -0.080] |")
    i_short = md.index("| gms_fast_w32 | short run | -0.200 |")
    assert i_long < i_short < md.index("| gms_fast_w32 | change (long - short) | +0.100 | [0.050, 0.150] |")
    # an early-stopped seed leaves the mean curve; the longer seed's checkpoints still show
    assert "| gms_fast_w32 | 1 | 4 | 0.400 |" in md
    pytest.importorskip("matplotlib")
    written = write_plots([p for p in rep.plots if p.kind == "lines"], tmp_path)
    assert sorted(p.name for p in written) == ["gms_curves_val_dice_vs_iterations.png",
                                               "gms_curves_val_dice_vs_wall_time.png"]
    assert all(p.read_bytes()[:4] == b"\x89PNG" for p in written)


def test_gms_crossdomain_envelope_renders_drops(tmp_path):
    rows = []
    for m, (a, b) in {"gms_fast d->c": (0.7, 0.6), "unet_gms_size d->c": (0.8, 0.5)}.items():
        rows += _rows(m, [a, a + 0.02], "dice_in_domain", prefix="in:")
        rows += _rows(m, [b, b + 0.02, b - 0.02], "dice_out_of_domain", prefix="out:")
    extra = {"secondary_metrics": ["dice_in_domain"],
             "drops": {"gms_fast d->c": {"mean": 0.1, "low": 0.05, "high": 0.15},
                       "unet_gms_size d->c": {"mean": 0.3, "low": 0.25, "high": 0.35}},
             "gms_drop_minus_unet_drop": {"d->c": {"mean": -0.2, "low": -0.27, "high": -0.13}},
             "goals": {"smaller_drop": {"goal": "GMS drop - UNet drop < 0", "met": {"d->c": True}}},
             "tokenizers": {"drive": {"test_in_domain": {"psnr": 23.3, "ssim": 0.58, "mask_dice": 0.61},
                                      "best_val_mask_dice": 0.55, "epochs": 3, "mask_foreground_weight": 10.0}},
             "latent_window": {"d->c out_of_domain": {"mean": -0.004, "low": -0.01, "high": 0.002, "wins": 1,
                                                      "losses": 2, "ties": 0}}}
    write_results(tmp_path / "gms_crossdomain.json", "gms_crossdomain", {}, [0], rows, BenchmarkTimer().stop(),
                  primary_metric="dice_out_of_domain", extra=extra)
    md = render_results(tmp_path).markdown["gms_crossdomain.md"]
    assert "## dice_in_domain" in md and "| gms_fast d->c | 0.710 |" in md
    assert "| unet_gms_size d->c | +0.300 | [0.250, 0.350] |" in md
    assert "| d->c | -0.200 | [-0.270, -0.130] |" in md and "d->c: met" in md
    assert "| drive | 23.300 | 0.580 | 0.610 | 0.550 | 3 | 10.0 |" in md
    assert "| d->c out_of_domain | -0.004 | [-0.010, 0.002] | 1 / 2 / 0 |" in md
