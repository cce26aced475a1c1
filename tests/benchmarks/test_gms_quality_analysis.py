"""The analysis of ``benchmarks/gms_quality.py`` (#17): where a learning curve flattens, which models' CPU times are
comparable, the per-image GMS - UNet gap, the latent-window comparison and the model names it accepts."""

from __future__ import annotations

import pytest
import torch

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


def _tiny_set(n, size=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    image = torch.rand(n, 1, size, size, generator=g)
    return {"image": image, "label": (image > 0.6).long(), "id": [f"c{i}" for i in range(n)]}


def test_lockstep_early_stop_leaves_the_other_runners_batches_unchanged(gq):
    torch.set_num_threads(1)
    train, val = _tiny_set(12), _tiny_set(4, seed=1)

    def runner(name, cap):
        return gq.Runner(name, cap, 1e-3, 2, seed=0, channels=(4, 8), image_channels=1)

    a, b = runner("a", 12), runner("b", 12)
    gq.train_lockstep([a, b], train, val, 12, [4, 8], 2, 2, 0, 0.5, stop=lambda r: r.name == "a")
    assert a.stopped_at == 4 and a.iterations == 4 and [p["iteration"] for p in a.curve] == [4]
    assert b.stopped_at == 12 and [p["iteration"] for p in b.curve] == [4, 8, 12]  # its cap is a checkpoint
    alone = runner("b", 12)
    gq.train_lockstep([alone], train, val, 12, [4, 8], 2, 2, 0, 0.5)
    assert all(torch.equal(p, q) for p, q in zip(b.net.state_dict().values(), alone.net.state_dict().values()))
    # a shorter cap ends a runner there, mid-chunk included
    short = runner("short", 5)
    gq.train_lockstep([short], train, val, 12, [4, 8], 2, 2, 0, 0.5)
    assert short.iterations == 5 and [p["iteration"] for p in short.curve] == [4, 5]


def test_plateau_stop_needs_checkpoints_after_the_plateau(gq):
    class Fake:
        def __init__(self, values):
            self.curve, self.iterations = _curve(values), 100 * len(values)

    stop = gq.plateau_stop(0.01, 400, min_checkpoints_after=3)
    assert stop(Fake([0.3, 0.5, 0.6, 0.6, 0.6, 0.6]))  # flat from 300, three checkpoints after it
    assert not stop(Fake([0.3, 0.5, 0.6, 0.6, 0.6]))  # only two after it
    assert not stop(Fake([0.3, 0.5, 0.6, 0.62, 0.64, 0.66]))  # still rising
    assert not gq.plateau_stop(0.01, 700)(Fake([0.3, 0.5, 0.6, 0.6, 0.6, 0.6]))  # before min_iterations


def test_tokenizer_trains_until_its_validation_curves_flatten_and_resumes(gq, tmp_path):
    torch.set_num_threads(1)
    data, val = _tiny_set(8), _tiny_set(4, seed=1)
    loose = {"psnr_tolerance": 100.0, "dice_tolerance": 1.0, "min_epochs": 4}  # flat from the first epoch
    _, rec = gq.train_tokenizer("small", data["image"], data["label"][:2], val, 10, 4, tmp_path / "loose",
                                converge=loose)
    assert rec["epochs"] == 4 and rec["converged_epoch"] == 1 and rec["max_epochs"] == 10
    assert [p["epoch"] for p in rec["convergence"]] == [1, 2, 3, 4]
    assert all(p["val_psnr"] > 0 and 0 <= p["val_mask_dice"] <= 1 for p in rec["convergence"])
    never = {"psnr_tolerance": -1.0, "dice_tolerance": -1.0, "min_epochs": 1}  # no epoch ever counts as stable
    _, rec = gq.train_tokenizer("small", data["image"], data["label"][:0], val, 2, 4, tmp_path / "never",
                                converge=never)
    assert rec["epochs"] == 2 and rec["converged_epoch"] is None
    # a second run with a higher cap resumes from epoch 2 and keeps the curve
    _, rec = gq.train_tokenizer("small", data["image"], data["label"][:0], val, 3, 4, tmp_path / "never",
                                converge=never)
    assert rec["epochs"] == 3 and [p["epoch"] for p in rec["convergence"]] == [1, 2, 3]


def test_curves_verdict_depends_on_every_curve_flattening(gq):
    from types import SimpleNamespace

    args = SimpleNamespace(plateau_tolerance=0.01, curve_iterations=800, curve_unet_iterations=1600, iterations=300,
                           size=64, batch=8, lr=2e-3, curve_every=100, curve_min_iterations=400, mapping_channels=16,
                           curve_tokenizer="tokenizer_wide_converged")
    flat = [0.3, 0.5, 0.6, 0.6, 0.6, 0.6]

    def runs(unet_values):
        out = {}
        for seed in (0, 1):
            rows = [{"method": m, "case": f"c{i}", "seed": seed, "metric": "dice", "value": v + 0.01 * i}
                    for m, v in (("gms_fast", 0.5), ("unet_gms_size", 0.6)) for i in range(6)]
            info = {m: {"curve": _curve(vals), "parameters": 1, "train_wall_s": 1.0, "train_cpu_s": cpu,
                        "iterations": 100 * len(vals)}
                    for m, vals, cpu in (("gms_fast", flat, 60.0), ("unet_gms_size", unet_values, 8.0))}
            out[seed] = {"rows": rows, "info": info}
        return out

    for unet, verdict in ((flat, "the gap holds at the plateau"), ([0.3, 0.4, 0.5, 0.55, 0.6, 0.65], "does not settle")):
        r = runs(unet)
        extra = gq.curves_extra(ResultsTable.from_rows([x for v in r.values() for x in v["rows"]]), r, {}, args)
        assert extra["gaps_to_unet_gms_size"]["gms_fast"]["long"]["mean"] == pytest.approx(-0.1)
        assert extra["goals"]["within_1_point_of_same_size_unet"]["met"] == {"gms_fast": False}
        assert "short" not in extra["gaps_to_unet_gms_size"]["gms_fast"]  # no short run with this tokenizer
        assert verdict in extra["diagnosis"] and "gms_fast flattened in 2 of 2 seeds (at iterations 300, 300)" in extra[
            "diagnosis"]
        assert extra["cost_per_iteration_relative_to_unet_gms_size"]["gms_fast"] == pytest.approx(7.5)
