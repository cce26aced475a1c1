"""The analysis of ``benchmarks/gms_quality.py`` (#17): where a learning curve flattens, which models' CPU times are
comparable, the per-image GMS - UNet gap, the latent-window comparison and the model names it accepts."""

from __future__ import annotations

import pytest

from monai_genaug.evaluation.statistics import ResultsTable


@pytest.fixture(scope="module")
def gq(benchmark_script):
    return benchmark_script("gms_quality")


def _curve(values):
    return [{"iteration": 100 * (i + 1), "train_cpu_s": 10.0 * (i + 1), "train_wall_s": 20.0 * (i + 1), "val_dice": v}
            for i, v in enumerate(values)]


def test_plateau_needs_the_last_quarter_flat(gq):
    flat = gq.plateau(_curve([0.30, 0.50, 0.60, 0.605, 0.608, 0.60, 0.609, 0.606]), 0.01, 800)
    assert flat["flattened"] and flat["plateau_iteration"] == 300 and flat["plateau_cpu_s"] == 30.0
    assert flat["best_val_dice"] == 0.609 and flat["best_iteration"] == 700 and flat["final_val_dice"] == 0.606
    rising = gq.plateau(_curve([0.30, 0.40, 0.50, 0.55, 0.58, 0.60, 0.63, 0.65]), 0.01, 800)
    assert not rising["flattened"] and rising["plateau_iteration"] is None and rising["first_stable_checkpoint"] == 800
    # stable only from the 7th of 8 checkpoints: less than a quarter of the run after it, so not flattened
    late = gq.plateau(_curve([0.30, 0.40, 0.50, 0.55, 0.58, 0.60, 0.65, 0.652]), 0.01, 800)
    assert not late["flattened"] and late["first_stable_checkpoint"] == 700


def test_interleaved_and_gap_rows(gq):
    info = {"gms_fast": {"trained_beside": ["unet_gms_size"]}, "unet_gms_size": {"trained_beside": ["gms_fast"]},
            "gms_original": {"trained_beside": []}}
    assert gq.interleaved(info, "gms_fast", "unet_gms_size")
    assert not gq.interleaved(info, "gms_fast", "gms_original") and not gq.interleaved(info, "gms_fast", "missing")
    assert gq.interleaved({"a": {}, "b": {}}, "a", "b")  # results cached before trained_beside: all together
    rows = [{"method": m, "case": c, "seed": 0, "metric": "dice", "value": v}
            for m, vals in (("gms", (0.5, 0.7)), ("unet", (0.6, 0.6))) for c, v in zip(("a", "b"), vals)]
    gap = gq._gap_table(rows, "gms", "unet", "long")
    assert [(r["case"], r["method"], r["metric"], round(r["value"], 6)) for r in gap] == [
        ("a", "long", "dice_gap", -0.1), ("b", "long", "dice_gap", 0.1)]


def test_latent_window_comparison_is_paired_per_domain(gq):
    rows = []
    for seed in (0, 1):
        for i in range(4):
            for metric, v in (("dice_in_domain", 0.5), ("dice_in_domain_whole_latent", 0.45)):
                rows.append({"method": "gms_fast s->t", "case": f"in:{i}", "seed": seed, "metric": metric,
                             "value": v + 0.01 * i})
            rows.append({"method": "unet_gms_size s->t", "case": f"in:{i}", "seed": seed, "metric": "dice_in_domain",
                         "value": 0.7})
    out = gq.latent_window_comparison(ResultsTable.from_rows(rows), [("s", "t")])
    assert list(out) == ["s->t in_domain"]  # the out-of-domain domain was not scored whole here
    d = out["s->t in_domain"]
    assert d["mean"] == pytest.approx(-0.05) and d["losses"] == 4 and d["wins"] == 0  # per image, mean over seeds and d["high"] < 0


def test_kvasir_model_names(gq):
    with pytest.raises(ValueError, match="gms_<recipe>_w<width>"):
        gq.kvasir_runner("gms_slow", None, None, 1.0, {})
    with pytest.raises(ValueError, match="unknown Kvasir-SEG model 'gms_fast_x32'"):
        gq.kvasir_runner("gms_fast_x32", None, None, 1.0, {})
