# Copyright (c) monai_genaug contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.
"""Regenerate every benchmark report from the JSON results alone.

    python -m monai_genaug.evaluation.report benchmarks/results            # write *.md, README table, plots
    python -m monai_genaug.evaluation.report benchmarks/results --check    # exit 1 if any of them is stale

Writes, from the ``*.json`` files of the results folder: one Markdown file per benchmark (``*.md``), the README
benchmark table (between ``<!-- benchmark-table:start -->`` and ``<!-- benchmark-table:end -->``), the
"Performance" section of each bundle's ``docs/README.md`` (between ``<!-- performance:start -->`` and
``<!-- performance:end -->``) and PNG plots (``plots/``: bars with interval whiskers, label curves). Files in the
envelope of :func:`monai_genaug.evaluation.results.write_results` (per-case rows) are rendered with bootstrap
intervals and paired differences; files of the older shapes are rendered as they are: a single run is shown as
"1 seed, no interval", several seeds without stored per-seed values as mean ± std without interval, and per-case
values, where stored, give a bootstrap interval over the cases. Every number in the outputs comes from the JSON.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import textwrap
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from monai.utils import optional_import

from monai_genaug.evaluation.downstream import label_curve_rises
from monai_genaug.evaluation.results import SCHEMA, read_results
from monai_genaug.evaluation.statistics import ResultsTable, summarize

__all__ = ["Report", "main", "render_results", "update_block"]

README_MARKERS = ("<!-- benchmark-table:start -->", "<!-- benchmark-table:end -->")
BUNDLE_MARKERS = ("<!-- performance:start -->", "<!-- performance:end -->")
NO_INTERVAL_1 = "1 seed, no interval"
BOOT = {"confidence": 0.95, "num_resamples": 2000, "seed": 0}


@dataclass
class Plot:
    """A plot spec: ``kind`` "bars" (``labels``, ``means``, optional ``lows`` / ``highs``), "curve" (``x``,
    ``means``, ``lows``, ``highs``) or "lines" (one line per ``series`` entry ``name -> [xs, ys]`` on a numeric
    x axis named ``xlabel``)."""

    name: str
    title: str
    kind: str
    ylabel: str
    labels: list[str] = field(default_factory=list)
    means: list[float] = field(default_factory=list)
    lows: list[float] | None = None
    highs: list[float] | None = None
    xlabel: str | None = None
    series: dict[str, list[list[float]]] = field(default_factory=dict)


@dataclass
class Report:
    """What one renderer produces from its JSON files."""

    markdown: dict[str, str] = field(default_factory=dict)  # file name -> text
    readme_rows: list[tuple[str, str, str]] = field(default_factory=list)  # (script, measured, result)
    bundle: dict[str, list[str]] = field(default_factory=dict)  # bundle name -> Markdown lines
    plots: list[Plot] = field(default_factory=list)
    #: (file relative to the repository root, block name) -> Markdown lines written between
    #: ``<!-- name:start -->`` and ``<!-- name:end -->`` of that file (the markers must exist there)
    blocks: dict[tuple[str, str], list[str]] = field(default_factory=dict)

    def merge(self, other: Report) -> None:
        self.markdown.update(other.markdown)
        self.readme_rows.extend(other.readme_rows)
        for k, v in other.bundle.items():
            self.bundle.setdefault(k, []).extend(v)
        self.plots.extend(other.plots)
        for k, v in other.blocks.items():
            self.blocks.setdefault(k, []).extend(v)


# ------------------------------------------------------------------------------------------------ formatting
def f3(v: Any, digits: int = 3) -> str:
    return "n/a" if v is None else f"{float(v):.{digits}f}"


def interval(s: Mapping[str, Any], digits: int = 3) -> str:
    return f"[{float(s['low']):.{digits}f}, {float(s['high']):.{digits}f}]"


def mean_std(mean: Any, std: Any, digits: int = 3) -> str:
    return f"{f3(mean, digits)} ± {f3(std, digits)}"


def minutes(seconds: Any) -> str:
    return "n/a" if seconds is None else f"{float(seconds) / 60:.1f} min"


def table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + [
        "| " + " | ".join(str(c) for c in r) + " |" for r in rows
    ]


#: data-set names kept out of plot file names: a PNG named after a licensed data set reads as a copy of its images
#: (the repository's licence check flags such names), while a plot is a chart of results
_PLOT_NAME_WORDS = {"brats": "mri", "kvasir": "polyp", "drive": "fundus"}


def _plot_name(stem: str) -> str:
    for word, neutral in _PLOT_NAME_WORDS.items():
        stem = stem.replace(word, neutral)
    return f"plots/{stem}.png"


# ------------------------------------------------------------------------------------------------ envelope
def _summaries(tab: ResultsTable, metric: str) -> dict[str, dict[str, Any]]:
    return {m: tab.summary(m, metric, **BOOT) for m in tab.methods(metric)}


def _describe_interval(s: Mapping[str, Any]) -> str:
    seeds = "" if s["num_seeds"] == 1 else f" and {s['num_seeds']} seeds"
    return f"95 % bootstrap interval over {s['num_cases']} cases{seeds}"


def render_envelope(stem: str, obj: Mapping[str, Any]) -> Report:
    """Render a results file written by :func:`~monai_genaug.evaluation.results.write_results`."""
    rep = Report()
    extra = obj.get("extra", {})
    metric = obj.get("primary_metric", "score")
    tab = ResultsTable.from_rows(obj["rows"])
    sums = _summaries(tab, metric)
    baseline = obj.get("baseline")
    title = extra.get("title", obj["benchmark"])
    env, timing = obj.get("environment", {}), obj.get("timing", {})
    counts = extra.get("counts", {})
    quick = " (quick smoke run: sizes and steps far below a real run; do not read the numbers as results)" if obj.get(
        "quick") else ""
    lines = [f"# {title}", ""]
    if extra.get("description"):
        lines += [str(extra["description"]), ""]
    versions = env.get("versions", {})
    lines += [
        f"Written by `{env.get('command') or obj['benchmark']}`{quick}: {minutes(timing.get('wall_s'))} wall clock, "
        f"{minutes(timing.get('cpu_s'))} CPU on {env.get('device', 'n/a')} ({env.get('torch_threads')} torch threads, "
        f"{env.get('cpu_count')} cores; load average at start {timing.get('load_average_start')}, at end "
        f"{timing.get('load_average_end')}); torch {versions.get('torch')}, MONAI {versions.get('monai')}, "
        f"numpy {versions.get('numpy')}, Python {versions.get('python')}. Seeds: {obj.get('seeds')}.",
        "",
    ]
    any_s = next(iter(sums.values()))
    lines += [f"## {metric} (mean, {_describe_interval(any_s)})", ""]
    rows = []
    for m, s in sums.items():
        c = counts.get(m, {})
        n = f"{c['num_train']} ({c['num_synthetic']} synthetic)" if c else "n/a"
        rows.append([m, f3(s["mean"]), interval(s), f3(s["std_seeds"]), f3(s["std_cases"]), s["num_seeds"],
                     s["num_cases"], n])
    lines += table(["method", "mean", "95 % interval", "std over seeds", "std over cases", "seeds", "cases",
                    "training items"], rows)
    if baseline and baseline in sums:
        wanted = [(m, baseline) for m in sums if m != baseline]
        # the filter's own effect: the kept samples against as many drawn at random
        wanted += [tuple(p) for p in extra.get("pairs", [("real+filtered", "real+random")]) if set(p) <= set(sums)]
        lines += ["", f"## Paired differences (against `{baseline}`, and any pair named in the JSON or the filter "
                      "against a random subset of its size; same cases and seeds)", ""]
        pairs = [(a, b, tab.paired(a, b, metric, **BOOT)) for a, b in wanted]
        lines += table(
            ["difference", "mean", "95 % interval", "wins / losses / ties (cases)", "verdict"],
            [[f"{a} - {b}", f"{d['mean']:+.3f}", interval(d), f"{d['wins']} / {d['losses']} / {d['ties']}",
              _verdict(d)] for a, b, d in pairs],
        )
    rep.plots.append(Plot(stem, title, "bars", metric, list(sums), [s["mean"] for s in sums.values()],
                          [s["low"] for s in sums.values()], [s["high"] for s in sums.values()]))
    curve_line = ""
    lc = extra.get("label_curve")
    if lc:
        ltab = ResultsTable.from_rows(lc["rows"])
        lm = lc.get("metric", metric)
        lsums = _summaries(ltab, lm)
        sizes = [int(m.split()[0]) for m in lsums]
        first, last = list(lsums)[0], list(lsums)[-1]
        check = label_curve_rises(ltab, lm, **BOOT)
        d, rises = check["largest_minus_smallest"], check["rises"]
        lines += ["", "## Label curve of the learner (more real labels, same protocol)", ""]
        size_label = lc.get("size_label", "real labels")
        lines += table([size_label, "mean", "95 % interval"], [[n, f3(s["mean"]), interval(s)]
                                                                for n, s in zip(sizes, lsums.values())])
        lines += ["", f"{last} - {first}: {d['mean']:+.3f} {interval(d)}; the learner "
                      f"{'is' if rises else 'is NOT'} shown to gain from more labels on this task."]
        curve_line = (f"; label curve {' / '.join(f3(s['mean']) for s in lsums.values())} at "
                      f"{' / '.join(map(str, sizes))} {'labels' if size_label == 'real labels' else size_label}")
        rep.plots.append(Plot(f"{stem}_label_curve", f"{title}: label curve", "curve", lm, [str(s) for s in sizes],
                              [s["mean"] for s in lsums.values()], [s["low"] for s in lsums.values()],
                              [s["high"] for s in lsums.values()]))
    oracle = extra.get("oracle")
    if oracle:
        otab = ResultsTable.from_rows(oracle["rows"])
        om = otab.metrics()[0]
        lines += ["", "## Independent oracle (trained on all real labels; never the generator or its guide)", "",
                  f"Oracle on real test data: {f3(oracle.get('test_score'))}.", ""]
        lines += table(["synthetic set", f"mean {om}", "95 % interval", "samples"],
                       [[m, f3(s["mean"]), interval(s), s["num_cases"]] for m, s in _summaries(otab, om).items()])
    diag = extra.get("diagnostics")
    if diag:
        lines += ["", "## Diagnostics", ""]
        lines += table(["quantity", "value"], [[k, _value(v)] for k, v in diag.items()])
    lines += ["", f"Plot: `{_plot_name(stem)}`. Settings: `{json.dumps(obj.get('settings', {}), sort_keys=True)}`", ""]
    rep.markdown[f"{stem}.md"] = "\n".join(lines)
    result = "; ".join(f"{m} {f3(s['mean'])} {interval(s)}" for m, s in sums.items())
    rep.readme_rows.append((f"`{extra.get('script', obj['benchmark'])}`{' (quick)' if obj.get('quick') else ''}",
                            f"{extra.get('measured', title)}; {_describe_interval(any_s)}",
                            result + curve_line))
    if extra.get("bundle"):
        rep.bundle[extra["bundle"]] = [f"**{title}** ([details](../../../benchmarks/results/{stem}.md)): {result}"
                                       f"{curve_line}.", ""]
    return rep


def _verdict(d: Mapping[str, Any]) -> str:
    if d["low"] > 0:
        return "better"
    if d["high"] < 0:
        return "worse"
    return "no difference shown"


def _value(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.1f}" if abs(v) >= 100 else f3(v)
    if isinstance(v, (dict, list)):
        return f"`{json.dumps(v)}`"
    return str(v)


def render_adaptation(stem: str, obj: Mapping[str, Any]) -> Report:
    """An envelope of a domain-adaptation benchmark (e.g. ``adaptdiff_fundus``): the generic sections, then every
    secondary metric (``extra.secondary_metrics``) with paired differences, per-case means, the human ceiling
    (``extra.human_ceiling.rows``: a second annotator against the reference) and the share of the gap between the
    baseline and the ceiling method that the method closes (``extra.gap``)."""
    rep = render_envelope(stem, obj)
    extra, baseline = obj.get("extra", {}), obj.get("baseline")
    tab = ResultsTable.from_rows(obj["rows"])
    metric = obj.get("primary_metric", "score")
    metrics = [metric, *[m for m in extra.get("secondary_metrics", []) if m in tab.metrics()]]
    human = ResultsTable.from_rows(extra.get("human_ceiling", {}).get("rows", []))
    lines: list[str] = []
    for m in metrics[1:]:
        sums = _summaries(tab, m)
        lines += ["", f"## {m} (mean, {_describe_interval(next(iter(sums.values())))})", ""]
        lines += table(["method", "mean", "95 % interval", "std over seeds"],
                       [[k, f3(v["mean"]), interval(v), f3(v["std_seeds"])] for k, v in sums.items()])
        if baseline in sums:
            pairs = [(a, tab.paired(a, baseline, m, **BOOT)) for a in sums if a != baseline]
            lines += [""] + table([f"{m}: difference", "mean", "95 % interval", "wins / losses / ties", "verdict"],
                                  [[f"{a} - {baseline}", f"{d['mean']:+.3f}", interval(d),
                                    f"{d['wins']} / {d['losses']} / {d['ties']}", _verdict(d)] for a, d in pairs])
    human_sums = {m: human.summary(human.methods(m)[0], m, **BOOT) for m in metrics if human.methods(m)}
    if human_sums:
        lines += ["", "## Human ceiling (second observer against the first, per case)", ""]
        lines += table(["metric", "mean", "95 % interval", "cases"],
                       [[m, f3(v["mean"]), interval(v), v["num_cases"]] for m, v in human_sums.items()])
    methods = tab.methods(metric)
    grids = {(k, m): tab.values(k, m) for k in methods for m in metrics}
    cases = grids[(methods[0], metric)][2]
    header = ["case", *[f"{k} {m}" for m in metrics for k in methods]]
    human_cells = {m: dict(zip(human.values(human.methods(m)[0], m)[2], human.values(human.methods(m)[0], m)[0][0]))
                   for m in human_sums}
    header += [f"second observer {m}" for m in human_cells]
    rows = []
    for c in cases:
        row = [c]
        for m in metrics:
            for k in methods:
                grid, _, cs = grids[(k, m)]
                row.append(f3(grid[:, cs.index(c)].mean()) if c in cs else "n/a")
        row += [f3(human_cells[m].get(c)) for m in human_cells]
        rows.append(row)
    lines += ["", "## Per case (mean over seeds)", ""] + table(header, rows)
    gap = extra.get("gap")
    summary_line = ""
    if gap and {gap["baseline"], gap["method"], gap["ceiling"]} <= set(methods):
        lines += ["", f"## Goal: {gap['method']} above {gap['baseline']} (paired 95 % interval above zero), closing "
                      f"at least half the gap to {gap['ceiling']}", ""]
        rows = []
        for m in metrics:
            d = tab.paired(gap["method"], gap["baseline"], m, **BOOT)
            full = tab.paired(gap["ceiling"], gap["baseline"], m, **BOOT)
            share = d["mean"] / full["mean"] if abs(full["mean"]) > 1e-12 else float("nan")
            met = d["low"] > 0 and share >= 0.5
            rows.append([m, f"{d['mean']:+.3f} {interval(d)}", f"{full['mean']:+.3f} {interval(full)}", f3(share),
                         "met" if met else "not met"])
            if m == metric:
                summary_line = (f"; {gap['method']} - {gap['baseline']} {d['mean']:+.3f} {interval(d)}, "
                                f"{f3(share)} of the gap to {gap['ceiling']} closed (goal {'met' if met else 'not met'})")
        lines += table(["metric", f"{gap['method']} - {gap['baseline']}", f"{gap['ceiling']} - {gap['baseline']}",
                        "share of the gap closed", "goal"], rows)
    text = rep.markdown[f"{stem}.md"]
    head, sep, tail = text.rpartition("\nPlot: `")
    rep.markdown[f"{stem}.md"] = head + "\n".join(lines) + "\n" + sep + tail
    if extra.get("bundle") and extra["bundle"] in rep.bundle:
        first = rep.bundle[extra["bundle"]][0].rstrip(".")
        ceiling = "".join(f"; second observer {m} {f3(v['mean'])}" for m, v in human_sums.items())
        rep.bundle[extra["bundle"]][0] = f"{first}{summary_line}{ceiling}."
    labels, means, lows, highs = [], [], [], []
    for m in metrics:
        for k, v in [*_summaries(tab, m).items(), *([("second observer", human_sums[m])] if m in human_sums else [])]:
            labels.append(f"{k} ({m})")
            means.append(v["mean"])
            lows.append(v["low"])
            highs.append(v["high"])
    rep.plots = [Plot(stem, extra.get("title", stem), "bars", " / ".join(metrics), labels, means, lows, highs)]
    return rep


def _insert_before_plot(rep: Report, stem: str, lines: Sequence[str]) -> None:
    """Insert ``lines`` into ``stem``'s Markdown before its closing "Plot: ..." line."""
    text = rep.markdown[f"{stem}.md"]
    head, sep, tail = text.rpartition("\nPlot: `")
    rep.markdown[f"{stem}.md"] = head + "\n".join(lines) + "\n" + sep + tail


def _goal_lines(goals: Mapping[str, Any]) -> list[str]:
    rows = []
    for name, g in goals.items():
        met = g["met"]
        met = ", ".join(f"{k}: {'met' if v else 'not met'}" for k, v in met.items()) if isinstance(met, Mapping) else (
            "met" if met else "not met")
        rows.append([name, g["goal"], met])
    return table(["goal", "criterion", "result"], rows)


def _epochs(record: Mapping[str, Any]) -> str:
    """A tokenizer's epochs, with whether its validation curves converged (records trained to convergence)."""
    epochs = record.get("epochs", "n/a")
    if "convergence" not in record:
        return str(epochs)
    if record.get("converged_epoch") is not None:
        return f"{epochs} (converged at {record['converged_epoch']})"
    return f"{epochs} (cap {record.get('max_epochs')}; not converged)"


def _convergence_lines(records: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Per-epoch validation curves of the tokenizers trained to convergence, and the rule that stopped them."""
    lines: list[str] = []
    for name, r in records.items():
        if not r.get("convergence"):
            continue
        rule = r.get("convergence_rule", {})
        lines += ["", f"## Convergence of `{name}` (validation images, after each epoch; stopped once PSNR and mask "
                      f"upper bound both flattened: no later epoch better by more than {rule.get('psnr_tolerance')} "
                      f"dB / {rule.get('dice_tolerance')} Dice, with the last quarter of the epochs after it, at "
                      f"least {rule.get('min_epochs')} epochs)", ""]
        lines += table(["epoch", "PSNR", "SSIM", "mask upper bound", "train CPU s"],
                       [[p["epoch"], f"{p['val_psnr']:.2f}", f3(p["val_ssim"]), f3(p["val_mask_dice"]),
                         f"{p['train_cpu_s']:.0f}"] for p in r["convergence"]])
        lines += ["", f"Epochs: {_epochs(r)}."]
    return lines


def render_gms(stem: str, obj: Mapping[str, Any]) -> Report:
    """GMS envelopes (``gms_quality``, ``gms_speed``, ``gms_crossdomain``): the generic sections, then the
    tokenizers' reconstruction quality, learning curves, training cost, out-of-domain drops, goals and diagnosis
    stored in ``extra``; the bundle doc gets a ``<!-- gms-<stem>:start/end -->`` block of the same tables."""
    rep = render_envelope(stem, obj)
    extra = obj.get("extra", {})
    tab = ResultsTable.from_rows(obj["rows"])
    lines: list[str] = []
    metrics = [m for m in ("psnr", "ssim", "mask_dice") if m in tab.metrics()]
    if metrics:
        lines += ["", "## Tokenizers (test images: image PSNR / SSIM, mask upper bound = Dice of decode(encode(mask)); "
                      "mean and 95 % bootstrap interval over images)", ""]
        rec = extra.get("tokenizers", {})
        rows = []
        for m in tab.methods(metrics[0]):
            r = rec.get(m, {})
            rows.append([m, *[f"{f3(v['mean'])} {interval(v)}" for v in (tab.summary(m, k, **BOOT) for k in metrics)],
                         r.get("parameters", "n/a"), f"{r.get('images', 'n/a')} images + {r.get('masks', 'n/a')} masks",
                         _epochs(r), minutes(r.get("train_seconds")), f3(r.get("best_val_mask_dice"))])
        lines += table(["tokenizer", *metrics, "parameters", "trained on", "epochs", "time", "val mask Dice"], rows)
        lines += _convergence_lines(rec)
    for m in [m for m in extra.get("secondary_metrics", []) if m in tab.metrics()]:
        sums = _summaries(tab, m)
        lines += ["", f"## {m} (mean, {_describe_interval(next(iter(sums.values())))})", ""]
        lines += table(["method", "mean", "95 % interval"], [[k, f3(v["mean"]), interval(v)] for k, v in sums.items()])
    if extra.get("inference"):
        lines += ["", "Inference images / s: " + ", ".join(f"{k} {v['images_per_second']:.0f}"
                                                         for k, v in extra["inference"].items()) + "."]
    models = extra.get("models", {})
    if models and any("curves" in v for v in models.values()):
        lines += ["", "## Learning curves (validation Dice, mean over the model's seeds, against iterations and "
                      "training seconds)", ""]
        rows = []
        for m, v in models.items():
            curves = list(v["curves"].values())
            for i in range(max(len(c) for c in curves)):  # early-stopped seeds leave the mean
                pts = [c[i] for c in curves if len(c) > i]
                rows.append([m, len(pts), pts[0]["iteration"], f3(sum(p["val_dice"] for p in pts) / len(pts)),
                             f"{sum(p.get('train_wall_s', 0) for p in pts) / len(pts):.0f}",
                             f"{sum(p.get('train_cpu_s', 0) for p in pts) / len(pts):.0f}" if "train_cpu_s" in pts[0]
                             else "n/a"])
        lines += table(["model", "seeds", "iteration", "val Dice", "train wall s", "train CPU s"], rows)
        if "speed" in extra or "plateaus" in extra:  # Kvasir-SEG runs: one x axis shared by every model
            plots = _curve_plots(stem, extra.get("title", stem), models)
            rep.plots += plots
            lines += ["", "Plots: " + ", ".join(f"`{_plot_name(p.name)}`" for p in plots) + "."]
    plateaus = extra.get("plateaus")
    if plateaus:
        lines += ["", f"## Plateaus (criterion: {extra.get('plateau_criterion', 'n/a')})", ""]
        cost = extra.get("cost_per_iteration_relative_to_unet_gms_size", {})
        lines += table(["model", "seed", "trained (iterations)", "flattened", "at iteration", "CPU s", "wall s",
                        "best val Dice (iteration)", "final val Dice", "cost / iteration vs GMS-size UNet"],
                       [[m, sd, p.get("iterations", "n/a"), "yes" if p["flattened"] else "no",
                         p["plateau_iteration"] or "-",
                         f"{p['plateau_cpu_s']:.0f}" if p["flattened"] else "-",
                         f"{p['plateau_wall_s']:.0f}" if p["flattened"] else "-",
                         f"{f3(p['best_val_dice'])} ({p['best_iteration']})", f3(p["final_val_dice"]),
                         f"{cost[m]:.2f}" if m in cost else "n/a"]
                        for m, per_seed in plateaus.items() for sd, p in per_seed.items()])
    gaps = extra.get("gaps_to_unet_gms_size")
    if gaps:
        lines += ["", "## GMS - GMS-size UNet on test at the best validation checkpoints (paired over seeds and "
                      "images), and against the short run of the same seeds where it used the same tokenizer", ""]
        labels = {"long": "long run (to the plateau or the cap)", "short": "short run",
                  "change": "change (long - short)"}
        lines += table(["model", "run", "Dice difference", "95 % interval"],
                       [[m, label, f"{g[k]['mean']:+.3f}", interval(g[k])]
                        for m, g in gaps.items() for k, label in labels.items() if k in g])
    window = extra.get("latent_window")
    if window:
        lines += ["", "## Latent window: whole-image latent mapped in one call minus through the window (same models, "
                      "paired over seeds and images)", ""]
        lines += table(["direction / domain", "Dice difference", "95 % interval", "wins / losses / ties"],
                       [[k, f"{v['mean']:+.3f}", interval(v), f"{v['wins']} / {v['losses']} / {v['ties']}"]
                        for k, v in window.items()])
    speed = extra.get("speed")
    if speed:
        lines += ["", "## Training cost (CPU seconds of the interleaved runs)", ""]
        lines += table(["model", "iterations / CPU s", "cost per iteration / benchmark UNet", "/ GMS-size UNet",
                        "trainable parameters"],
                       [[m, f"{v:.1f}", f"{speed['cost_per_iteration_relative_to_unet_benchmark'][m]:.2f}",
                         f"{speed['cost_per_iteration_relative_to_unet_gms_size'][m]:.2f}",
                         models.get(m, {}).get("parameters", "n/a")]
                        for m, v in speed["iterations_per_cpu_second"].items()])
        lines += ["", f"Cheap recipe over the original: {speed['fast_over_original']:.2f}x iterations per CPU second."]
    in_domain = {k: v["test_in_domain"] for k, v in extra.get("tokenizers", {}).items() if "test_in_domain" in v}
    if in_domain:
        lines += ["", "## Tokenizer per source (means over the source's test images, inside the field of view)", ""]
        lines += table(["source", "psnr", "ssim", "mask upper bound", "val mask Dice", "epochs", "foreground weight"],
                       [[k, f3(v["psnr"]), f3(v["ssim"]), f3(v["mask_dice"]),
                         f3(extra["tokenizers"][k].get("best_val_mask_dice")), _epochs(extra["tokenizers"][k]),
                         extra["tokenizers"][k].get("mask_foreground_weight", "n/a")] for k, v in in_domain.items()])
        lines += _convergence_lines(extra["tokenizers"])
    drops = extra.get("drops")
    if drops:
        lines += ["", "## In-domain minus out-of-domain Dice (bootstrap over seeds and each set's images)", ""]
        lines += table(["model", "drop", "95 % interval"], [[m, f"{d['mean']:+.3f}", interval(d)] for m, d in drops.items()])
        lines += [""] + table(["direction", "GMS drop - UNet drop", "95 % interval"],
                              [[k, f"{d['mean']:+.3f}", interval(d)]
                               for k, d in extra.get("gms_drop_minus_unet_drop", {}).items()])
    if extra.get("goals"):
        lines += ["", "## Goals", ""] + _goal_lines(extra["goals"])
    if extra.get("diagnosis"):
        lines += ["", f"Diagnosis: {extra['diagnosis']}"]
    _insert_before_plot(rep, stem, lines)
    plots = [p for p in rep.plots if p.kind == "lines"]
    if plots and rep.readme_rows:
        script, measured, result = rep.readme_rows[-1]
        rep.readme_rows[-1] = (script, measured, result + "; curves: " + ", ".join(
            f"[vs {p.name.rpartition('_vs_')[2].replace('_', ' ')}](benchmarks/results/{_plot_name(p.name)})"
            for p in plots))
    if extra.get("bundle"):
        rep.blocks[(f"bundles/{extra['bundle']}/docs/README.md", f"gms-{stem}")] = [
            f"### {extra.get('title', stem)}", "", f"[details](../../../benchmarks/results/{stem}.md)",
            *[f"#{line}" if line.startswith("## ") else line for line in lines],
            *[f"\n![{p.title}](../../../benchmarks/results/{_plot_name(p.name)})" for p in plots]]
    return rep


def _oracle_summary(extra: Mapping[str, Any], name: str) -> dict[str, Any] | None:
    """The oracle's summary of one synthetic set of ``extra.oracle.rows`` (None: no oracle or no such set)."""
    if not extra.get("oracle"):
        return None
    otab = ResultsTable.from_rows(extra["oracle"]["rows"])
    om = otab.metrics()[0]
    return otab.summary(name, om, **BOOT) if name in otab.methods(om) else None


def _sequence_goal_diagnosis(obj: Mapping[str, Any]) -> list[str]:
    """Where the chain from generator to downstream gain breaks, in numbers of the envelope (``extra.counts``,
    ``extra.oracle``, ``extra.checks``, ``extra.folds``): kept clips, class agreement of all generated clips, the
    consistency gap against the temporal filter's lower threshold, the clip stage's validation agreement, motion."""
    extra = obj.get("extra", {})
    checks, counts = extra.get("checks", {}), extra.get("counts", {})
    out: list[str] = []
    if "real+filtered" in counts and "real+all" in counts:
        out.append(f"- the filter kept {counts['real+filtered']['num_synthetic']} of "
                   f"{counts['real+all']['num_synthetic']} generated clips;")
    g = _oracle_summary(extra, "generated (all)")
    if g is not None:
        out.append(f"- class: the oracle agrees with the intended class on {g['mean']:.3f} {interval(g)} of all "
                   f"generated clips, against {extra['oracle']['test_score']:.3f} on real test clips;")
    trend = checks.get("size_trend")
    if trend:
        out.append(f"- motion direction (model-free): the bright area changes in the class's direction in "
                   f"{trend['generated']:.3f} of generated clips, {trend['real_train']:.3f} of real training clips;")
    tc = checks.get("temporal_consistency", {})
    if tc.get("generated") is not None:
        th = tc.get("filter_thresholds") or []
        lows = [t[0] for t in th if isinstance(t, list) and t and t[0] is not None] or (
            [th[0]] if th and not isinstance(th[0], list) and th[0] is not None else [])
        low = f"; the temporal filter's lowest lower threshold (real-calibrated) is {min(lows):.2f}" if lows else ""
        out.append(f"- temporal consistency: generated {tc['generated']:.2f} vs real {tc['real_train']:.2f} "
                   f"(gap {tc['generated'] - tc['real_train']:+.2f}){low};")
    histories = [f["early_stopping"]["history"] for f in extra.get("folds", []) if f.get("early_stopping")]
    if checks.get("early_stopping", {}).get("history"):
        histories.append(checks["early_stopping"]["history"])
    agreements = [h["agreement"] for hist in histories for h in hist if "agreement" in h]
    if agreements:
        out.append(f"- clip-stage selection: class agreement of clips generated from validation conditions between "
                   f"{min(agreements):.3f} and {max(agreements):.3f} over {len(agreements)} checks;")
    abl, steer = checks.get("motion_ablation"), checks.get("motion_steering")
    if abl:
        out.append(f"- motion: validation loss {abl['val_loss_with_motion']:.4f} with it, "
                   f"{abl['val_loss_motion_nulled']:.4f} nulled"
                   + (f"; generated motion's cosine to its condition {steer['own']:.3f} vs {steer['reversed']:.3f} "
                      "to the reversed one" if steer else "") + ".")
    return ["", "## Where the chain breaks (from the numbers of this file)", "", *out] if out else []


def _curve_plots(stem: str, title: str, models: Mapping[str, Any]) -> list[Plot]:
    """Validation Dice against iterations and against training wall seconds, one line per model (mean over its
    seeds at each checkpoint)."""
    def mean_curve(curves: Sequence[Sequence[Mapping[str, float]]], key: str) -> list[list[float]]:
        """Mean over the seeds still training at each checkpoint (early-stopped seeds leave the mean)."""
        at = [[c[i] for c in curves if len(c) > i] for i in range(max(len(c) for c in curves))]
        return [[sum(p[key] for p in pts) / len(pts) for pts in at],
                [sum(p["val_dice"] for p in pts) / len(pts) for pts in at]]

    out = []
    for key, xlabel, suffix in (("iteration", "iterations", "iterations"),
                                ("train_wall_s", "training wall seconds (interleaved)", "wall_time")):
        series = {m: mean_curve(list(v["curves"].values()), key) for m, v in models.items() if v.get("curves")}
        out.append(Plot(f"{stem}_val_dice_vs_{suffix}", f"{title}: validation Dice vs {xlabel}", "lines",
                        "validation Dice", xlabel=xlabel, series=series))
    return out


def render_sequence_controls(stem: str, obj: Mapping[str, Any]) -> Report:
    """An envelope of a sequence-augmentation benchmark with checks of its sequence parts (e.g.
    ``ctrl_genaug_motion_phantoms``): the generic sections, then the frame-averaging learner on the same task
    (``extra.frame_averaging.rows``), the clip stage's loss, the motion ablation and steering, temporal consistency
    against the real clips, the early-stopping history (``extra.checks``) and the issue's goals (``extra.checks.goals``:
    a paired interval above zero, a consistency gap in points, the oracle agreement of kept samples)."""
    rep = render_envelope(stem, obj)
    extra, metric = obj.get("extra", {}), obj.get("primary_metric", "score")
    checks = extra.get("checks", {})
    lines: list[str] = []
    fa = extra.get("frame_averaging")
    if fa:
        ftab = ResultsTable.from_rows(fa["rows"])
        lines += ["", "## A frame-averaging learner on the same task (real only; order-invariant by design)", ""]
        lines += table(["learner", "mean", "95 % interval", "seeds"],
                       [[m, f3(v["mean"]), interval(v), v["num_seeds"]] for m, v in _summaries(ftab, metric).items()])
    loss, abl, steer = checks.get("clip_stage_loss"), checks.get("motion_ablation"), checks.get("motion_steering")
    tc = checks.get("temporal_consistency", {})
    rows = []
    if loss:
        rows.append(["clip-stage denoising loss, validation clips, fixed noise: before -> after",
                     f"{loss['val_fixed_noise_before']:.4f} -> {loss['val_fixed_noise_after']:.4f}",
                     "falls" if loss["falls"] else "does NOT fall"])
        rows.append(["clip-stage training loss, first -> last tenth of the steps",
                     f"{loss['train_first_tenth']:.4f} -> {loss['train_last_tenth']:.4f}", ""])
    if abl:
        rows.append(["validation loss with the motion / with the motion nulled",
                     f"{abl['val_loss_with_motion']:.4f} / {abl['val_loss_motion_nulled']:.4f}",
                     "motion used" if abl["motion_used"] else "motion NOT used"])
    if steer:
        margin = f" by > {steer['margin']:g}" if "margin" in steer else ""
        rows.append(["cosine of generated clips' motion to their condition / to the reversed motion",
                     f"{steer['own']:.3f} / {steer['reversed']:.3f}",
                     f"steers{margin}" if steer["steers"] else f"does NOT steer{margin}"])
    trend = checks.get("size_trend")
    if trend:
        rows.append(["share of clips whose bright area grows (class 0) / shrinks (class 1): real / generated",
                     f"{trend['real_train']:.3f} / {trend['generated']:.3f}", ""])
        rows.append(["share of generated clips the oracle calls class 1", f"{trend['oracle_class1_share_generated']:.3f}",
                     ""])
    if tc:
        kept = "n/a" if tc.get("kept") is None else f"{tc['kept']:.2f}"
        rows.append(["temporal consistency real training / test / generated / kept",
                     f"{tc['real_train']:.2f} / {tc['real_test']:.2f} / {tc['generated']:.2f} / {kept}", ""])
        rows.append(["real range / temporal-filter thresholds", f"{_value(tc['real_range'])} / "
                     f"{_value(tc['filter_thresholds'])}", ""])
    if rows:
        lines += ["", "## Sequence parts: does each one do its job?", ""] + table(["check", "value", "verdict"], rows)
    es = checks.get("early_stopping")
    if es and es.get("history"):
        keys = [k for k in es["history"][0] if k != "step"]
        lines += ["", f"## Clip stage: model selection on validation clips (best step {es['best_step']}, stopped at "
                      f"{es.get('stopped_at') or 'the last step'})", ""]
        lines += table(["step", *keys], [[h["step"], *[f3(h[k]) for k in keys]] for h in es["history"]])
    goals = checks.get("goals")
    if goals:
        tab = ResultsTable.from_rows(obj["rows"])
        a, b = goals["filtered_vs_real_only"]
        d = tab.paired(a, b, metric, **BOOT)
        grows = [[f"{a} - {b} > 0 (paired 95 % interval)", f"{d['mean']:+.3f} {interval(d)}",
                  "met" if d["low"] > 0 else "not met"]]
        if tc:
            lim = float(goals["consistency_within_points"])
            for name in ("generated", "kept"):
                if tc.get(name) is not None:
                    gap = tc[name] - tc["real_train"]
                    grows.append([f"temporal consistency of {name} clips within {lim:g} points of real",
                                  f"{gap:+.2f}", "met" if abs(gap) <= lim else "not met"])
        if extra.get("oracle"):
            k = _oracle_summary(extra, "kept by the filter")
            if k is not None:
                grows.append([f"oracle class agreement of kept clips >= {goals['kept_agreement_at_least']}",
                              f"{k['mean']:.3f} {interval(k)}",
                              "met" if k["mean"] >= float(goals["kept_agreement_at_least"]) else "not met"])
            else:
                grows.append([f"oracle class agreement of kept clips >= {goals['kept_agreement_at_least']}",
                              "no clip kept", "not met"])
        lines += ["", "## Goals of the issue", ""] + table(["goal", "measured", "verdict"], grows)
        lines += _sequence_goal_diagnosis(obj)
    text = rep.markdown[f"{stem}.md"]
    head, sep, tail = text.rpartition("\nPlot: `")
    rep.markdown[f"{stem}.md"] = head + "\n".join(lines) + "\n" + sep + tail
    return rep


#: envelope files with their own renderer (by file stem); every other envelope goes to :func:`render_envelope`
_TTGA_LABELS = {"segmenter": "segmenter alone (its own entropy)", "flip_tta": "flip TTA (8 random flips)",
                "ttga": "TTGA", "ttga_x_flips": "TTGA x flips"}
_TTGA_PAIRS = (("ttga", "segmenter"), ("ttga", "flip_tta"), ("ttga_x_flips", "flip_tta"), ("ttga_x_flips", "ttga"))


def render_ttga_quality(stem: str, obj: Mapping[str, Any]) -> Report:
    """TTGA on Kvasir-SEG or DRIVE under the protocol (``benchmarks/ttga_quality.py [--dataset drive]``): methods,
    paired differences, the issue #16 goal and the links of the chain (reconstruction gate, identity fit, identity
    fraction, view diversity)."""
    rep = Report()
    extra, s = obj.get("extra", {}), obj.get("settings", {})
    data_name = "DRIVE test" if s.get("dataset") == "drive" else "Kvasir-SEG test"
    tab = ResultsTable.from_rows(obj["rows"])
    methods = [m for m in _TTGA_LABELS if m in tab.methods("dice")]
    # a merged file's own environment is the merging process's: show the first run's (threads, device)
    env = (extra.get("runs") or [{}])[0].get("environment") or obj.get("environment", {})
    timing = obj.get("timing", {})
    quick = " (quick smoke run: not a result)" if obj.get("quick") else ""
    sums = {(m, k): tab.summary(m, k, complete_cases=True, **BOOT) for m in methods
            for k in ("dice", "hd95", "error_auc") if m in tab.methods(k)}
    seeds = list(obj.get("seeds") or [0])
    runs = extra.get("runs") or [{"seeds": seeds, "validation": extra.get("validation"),
                                  "generator": s.get("generator")}]
    trained = (f"one trained segmenter and generator (seed {seeds}), so every interval is a 95 % bootstrap over the "
               "test images (paired for differences)" if len(seeds) == 1 else
               f"{len(seeds)} training seeds {seeds} (segmenter and generator retrained, hyper-parameters chosen on "
               "validation per seed), so every interval is a 95 % bootstrap over the test images and the seeds "
               "(paired for differences)")
    dice = {m: sums[(m, "dice")] for m in methods}
    n = dice[methods[0]]["num_cases"]
    lines = [f"# {extra.get('title', stem)}", "",
             f"Written by `benchmarks/{extra.get('script', stem)}`{quick}: {minutes(timing.get('wall_s'))} wall clock "
             f"on "
             f"{env.get('device', 'n/a')} ({env.get('torch_threads')} torch thread(s), load average at start "
             f"{timing.get('load_average_start')}). {n} test images, {s.get('size')} px, metrics on the "
             f"{s.get('metrics_grid', 'network grid')}; {trained}. Budget: {s.get('budget', 'n/a')}.", "",
             "## Methods (mean, 95 % interval)", ""]
    rows = []
    for m in methods:
        cells = [_TTGA_LABELS[m]]
        for k in ("dice", "hd95", "error_auc"):
            v = sums.get((m, k))
            cells.append("n/a" if v is None else f"{f3(v['mean'], 1 if k == 'hd95' else 3)} "
                         f"{interval(v, 1 if k == 'hd95' else 3)} ({v['num_cases']})")
        rows.append(cells)
    lines += table(["method", "Dice", "HD95 (px)", "error-estimation AUC"], rows)
    lines += ["", "HD95 counts only images where prediction and truth are both non-empty, the AUC only images with at "
                  "least one wrong pixel (image counts in brackets; with several seeds, the images every seed "
                  "scored).", ""]
    if len(seeds) > 1:
        lines += ["## Every seed (mean Dice over the test images)", ""]
        seed_rows = [[_TTGA_LABELS[m], *[f3(v) for v in dice[m]["per_seed"]]] for m in methods]
        if "reconstruction" in tab.methods("dice"):  # the gate, per run
            rec = tab.summary("reconstruction", "dice", complete_cases=True, **BOOT)["per_seed"]
            seed_rows.append([f"reconstruction gate ratio (needed >= {extra.get('reconstruction_gate', 0.98)})",
                              *[f3(r / max(d, 1e-8)) for r, d in zip(rec, dice["segmenter"]["per_seed"])]])
        lines += table(["method", *[f"seed {k}" for k in seeds]], seed_rows)
        lines += [""]
    lines += [
              "## Paired differences (same test images)", ""]
    prow, paired = [], {}
    for a, b in _TTGA_PAIRS:
        if a not in methods or b not in methods:
            continue
        for k in ("dice", "error_auc"):
            d = tab.paired(a, b, k, complete_cases=True, **BOOT)
            paired[(a, b, k)] = d
            prow.append([f"{_TTGA_LABELS[a]} - {_TTGA_LABELS[b]}", k, f"{d['mean']:+.4f}", interval(d, 4),
                         f"{d['wins']} / {d['losses']} / {d['ties']}", _verdict(d)])
    lines += table(["difference", "metric", "mean", "95 % interval", "wins / losses / ties", "verdict"], prow)
    goal = []
    if ("ttga", "flip_tta", "error_auc") in paired:
        auc, dce = paired[("ttga", "flip_tta", "error_auc")], paired[("ttga", "flip_tta", "dice")]
        goal.append(f"TTGA's error-estimation AUC above flip TTA's: {'yes' if auc['low'] > 0 else 'no'} "
                    f"({auc['mean']:+.4f} {interval(auc, 4)})")
        goal.append(f"TTGA's Dice at least flip TTA's (interval not below 0): {'yes' if dce['high'] >= 0 else 'no'} "
                    f"({dce['mean']:+.4f} {interval(dce, 4)})")
    if ("ttga_x_flips", "ttga", "dice") in paired:
        both = all(paired[("ttga_x_flips", o, k)]["low"] > 0
                   for o in ("flip_tta", "ttga") for k in ("dice", "error_auc"))
        goal.append(f"TTGA x flips above both in Dice and AUC: {'yes' if both else 'no'}")
    lines += ["", f"## Goal of issue #16{' (set on Kvasir-SEG; the same checks here)' if s.get('dataset') == 'drive' else ''}",
              "", *[f"- {g}" for g in goal]]
    diag = {k: tab.summary("ttga_diagnostics", k, complete_cases=True, **BOOT) for k in tab.metrics()
            if "ttga_diagnostics" in tab.methods(k)}
    gate = extra.get("reconstruction_gate", 0.98)
    links = []
    if "reconstruction" in tab.methods("dice"):
        ratio = tab.summary("reconstruction", "dice", complete_cases=True, **BOOT)["mean"] / dice["segmenter"]["mean"]
        links.append(["reconstruction gate: Dice on reconstruct(image) / Dice on the image", f3(ratio),
                      f">= {gate}", "passed" if ratio >= gate else "FAILED: the identity path alone loses accuracy"])
    if "identity_loss_over_threshold" in diag:
        d = diag["identity_loss_over_threshold"]
        links.append(["identity-fit loss / early-stop threshold (mean)", f"{d['mean']:.3g} {interval(d, 3)}", "<= 1",
                      "reached" if d["mean"] <= 1 else "NOT reached: the identity embedding does not fit"])
    if "identity_fraction" in diag:
        d = diag["identity_fraction"]
        ok = 0.2 < d["mean"] < 0.9
        links.append(["identity fraction (kept area of the views)", f"{f3(d['mean'])} {interval(d)}", "in (0.2, 0.9)",
                      "localised" if ok else ("all identity: the views equal the reconstruction" if d["mean"] >= 0.9
                                              else "almost nothing kept")])
    if "view_agreement" in diag:
        d, mae = diag["view_agreement"], diag.get("view_mae")
        links.append(["view diversity: agreement of the views' predictions with the image's", f3(d["mean"]),
                      "< 0.98", "diverse" if d["mean"] < 0.98 else "views too alike: TTGA = the segmenter alone"])
        if mae is not None:
            links.append(["view diversity: mean absolute difference view - image", f3(mae["mean"]), "", ""])
        if "view_pairwise_agreement" in diag:
            links.append(["view diversity: agreement of the predictions between views",
                          f3(diag["view_pairwise_agreement"]["mean"]), "", ""])
    lines += ["", "## Which link limits TTGA (means over the test images)", ""]
    lines += table(["link", "value", "needed", "reading"], links)
    for run in runs:
        which = f" (seed {run['seeds'][0]})" if len(runs) > 1 else ""
        val = run.get("validation") or {}
        if val.get("grid"):
            lines += ["", f"## Hyper-parameters chosen on {s.get('val_items')} validation images (best TTGA Dice)"
                          f"{which}", ""]
            lines += table(["tau_alpha_bar", "tau", "lambda_i", "TTGA Dice", "segmenter Dice", "TTGA error AUC",
                            "reconstruction gate ratio"],
                           [[g["tau_alpha_bar"], g["tau"], g["lambda_i"], f3(g["dice_ttga"]), f3(g["dice_segmenter"]),
                             f3(g["error_auc_ttga"]), f3(g.get("gate_ratio"))] for g in val["grid"]])
            c = val["chosen"]
            lines += ["", f"Chosen: tau_alpha_bar {c['tau_alpha_bar']}, lambda_i {c['lambda_i']}."]
        g = run.get("generator")
        if g:
            lines += ["", f"Generator{which}: {g.get('config')}; {g.get('epochs_done')} of {g.get('epochs_asked')} "
                          f"epochs in {minutes(g.get('seconds'))} of training, resumed across calls (the last call's "
                          f"budget {minutes(g.get('budget_s'))}); final denoising loss "
                          f"{f3(g.get('final_loss'), 4)}, grounding loss {f3(g.get('final_grounding_loss'), 4)}"
                          + (f"; loss per epoch {', '.join(f3(v, 4) for v in g['loss_curve'])}" if g.get("loss_curve")
                             else "") + "."]
    lines += ["", f"Plot: `{_plot_name(stem)}`. Settings: `{json.dumps(s, sort_keys=True)}`", ""]
    rep.markdown[f"{stem}.md"] = "\n".join(lines)
    rep.plots.append(Plot(stem, f"{extra.get('title', stem)}: Dice", "bars", "Dice",
                          [_TTGA_LABELS[m] for m in methods], [dice[m]["mean"] for m in methods],
                          [dice[m]["low"] for m in methods], [dice[m]["high"] for m in methods]))
    summary = "; ".join(f"{_TTGA_LABELS[m]} Dice {f3(dice[m]['mean'])} {interval(dice[m])}, AUC "
                        f"{f3(sums[(m, 'error_auc')]['mean'])}" for m in methods if (m, "error_auc") in sums)
    reading = "; ".join(f"{row[0].split(':')[0]} {row[1]} ({row[3]})" for row in links if row[3])
    script = "ttga_quality.py --dataset drive" if s.get("dataset") == "drive" else "ttga_quality.py"
    rep.readme_rows.append((f"`{script}`{' (quick)' if obj.get('quick') else ''}",
                            f"{data_name}, {n} images, {s.get('size')} px, {len(seeds)} seed{'s' if len(seeds) > 1 else ''}: Dice and "
                            "error-estimation AUC; 95 % bootstrap interval over the images"
                            + (" and seeds" if len(seeds) > 1 else ""), summary))
    rep.bundle["ttga"] = [f"**{data_name}, {n} images, {s.get('size')} px, {len(seeds)} seed{'s' if len(seeds) > 1 else ''}** "
                          f"([details](../../../benchmarks/results/{stem}.md)){quick}: {summary}.", "",
                          f"Goal of issue #16{' (checks as on Kvasir-SEG)' if s.get('dataset') == 'drive' else ''}: "
                          f"{'; '.join(goal)}. Links: {reading}.", ""]
    return rep


def render_ttga_gate(stem: str, obj: Mapping[str, Any]) -> Report:
    """TTGA's reconstruction gate against the noise level on validation images (``ttga_quality.py --gate_study``):
    per generator, inversion stride, alpha-bar and identity-fit setting the gate ratio, the identity-fit loss, the
    views' diversity; the generators' loss curves (converged?) and the 64 vs 128 px cost probe."""
    rep = Report()
    extra, s = obj.get("extra", {}), obj.get("settings", {})
    tab = ResultsTable.from_rows(obj["rows"])
    gate, needed = extra.get("reconstruction_gate", 0.98), extra.get("view_agreement_needed", 0.98)
    quick = " (quick smoke run: not a result)" if obj.get("quick") else ""

    def mean(method: str, metric: str) -> float | None:
        return tab.summary(method, metric, **BOOT)["mean"] if method in tab.methods(metric) else None

    rows, settings_of = [], {}
    for c in map(dict, extra.get("cells", [])):  # copies: the envelope stays as read
        m = c["method"]
        ratio = mean(m, "dice_reconstruction") / max(mean(m, "dice_image"), 1e-8)
        agree = mean(m, "view_pairwise_agreement")
        c["gate_ratio"], c["view_agreement"] = ratio, agree
        settings_of.setdefault((c["alpha_bar"], c["inversion_stride"], c["iterations"], c["lr"]), []).append(c)
        rows.append([c["generator"], c["inversion_stride"], c["alpha_bar"], c["tau"], c["iterations"], c["lr"],
                     f3(ratio), "passed" if ratio >= gate else "failed",
                     f3(mean(m, "identity_initial_over_threshold"), 1), f3(mean(m, "identity_loss_over_threshold"), 1),
                     f3(mean(m, "view_agreement")), f3(agree), f3(mean(m, "view_mae")),
                     f3(mean(m, "identity_fraction"))])
    # a setting passes when its views differ (pairwise agreement measured < needed) and the gate holds; it passes
    # robustly when it holds for every generator it was run with
    passing = []
    for (a, stride, n, lr), cs in settings_of.items():
        differ = [c["view_agreement"] for c in cs if c["view_agreement"] is not None]
        ok = [c for c in cs if c["gate_ratio"] >= gate]
        if ok and differ and max(differ) < needed:
            passing.append((a, stride, n, lr, ok, cs))
    lines = [f"# {extra.get('title', stem)}", "",
             f"Written by `benchmarks/{extra.get('script', stem)}`{quick}: {minutes(obj['timing'].get('wall_s'))} wall "
             f"clock, load average at start {obj['timing'].get('load_average_start')}. {s.get('val_items')} "
             f"validation images ({s.get('data')}), {s.get('size')} px; no test image is used. Budget: "
             f"{s.get('budget', 'n/a')}.", "",
             f"Gate ratio = mean Dice of the segmenter on `reconstruct(image)` (the identity path alone) / its mean "
             f"Dice on the image (needed >= {gate}). Identity loss = the identity embedding's MSE at its first / last "
             f"iteration over the early-stop threshold (needed <= 1). Views: 2 per image, lambda_i {s.get('lambda_i')}; "
             f"agreement of the segmenter's predictions on the views with its prediction on the image, and between "
             f"the two views (views that differ: pairwise agreement < {needed}; a lossy identity path alone lowers the "
             f"first, not the second).", "",
             "## Gate against the noise level and the identity fit", ""]
    lines += table(["generator", "inversion stride", "alpha-bar", "tau", "identity iterations", "lr", "gate ratio",
                    "gate", "identity loss / threshold, first", "last", "agreement with the image",
                    "agreement between views", "view MAE",
                    "identity fraction"], rows)
    n_gen = len({c["generator"] for c in extra.get("cells", [])})
    robust = [p for p in passing if len(p[4]) == n_gen]
    if robust:
        verdict = "the gate passes with views that differ for every generator at: " + "; ".join(
            f"alpha-bar {a}, stride {stride}, {n} iterations, lr {lr} (gate "
            f"{', '.join(f3(c['gate_ratio']) for c in cs)})" for a, stride, n, lr, _, cs in robust)
    elif passing:
        verdict = (f"the gate passes with views that differ for some of the {n_gen} generators, never for all: "
                   + "; ".join(f"alpha-bar {a}, stride {stride}, {n} iterations, lr {lr}: {len(ok)} of "
                               f"{len(cs)} generator{'s' if len(cs) > 1 else ''} tried (gate {', '.join(f3(c['gate_ratio']) for c in cs)})"
                               for a, stride, n, lr, ok, cs in passing))
    else:
        verdict = (f"no setting passes the gate with views that differ (agreement between views < {needed}): where "
                   "the gate passes the views are too alike, where they differ the identity path loses Dice")
    lines += ["", f"Reading: {verdict}."]
    gens = extra.get("generators", {})
    if gens:
        grow = []
        for label, g in gens.items():
            loss, k = g["loss"], min(5, len(g["loss"]) // 2)
            last, before = sum(loss[-k:]) / k, sum(loss[-2 * k:-k]) / k
            grow.append([label, g["epochs"], minutes(sum(g["seconds"])), f3(before, 4), f3(last, 4),
                         f"{100 * (last - before) / before:+.0f} %", ", ".join(f3(v, 4) for v in loss)])
        lines += ["", "## Has the generator converged? (denoising loss per epoch, one CPU thread)", ""]
        lines += table(["generator", "epochs", "training wall time", f"mean loss, epochs before the last {k}",
                        f"mean loss, last {k} epochs", "change", "loss per epoch"], grow)
    probe = extra.get("cost_probe")
    if probe:
        pj = probe.get("projection", {})
        steps = pj.get("generator_epochs", 0) * pj.get("steps_per_epoch", 0)
        prow = [[f"{n} px", f3(probe[n]["train_step"], 2), f3(probe[n]["ttga_image"], 2),
                 minutes(steps * probe[n]["train_step"]),
                 minutes(pj.get("test_images", 0) * probe[n]["ttga_image"])] for n in ("64", "128") if n in probe]
        lines += ["", "## Cost of 128 px (CPU seconds, median of interleaved repeats)", ""]
        lines += table(["size", "s per generator training step (batch 16)", "s per TTGA image (4 views)",
                        f"generator of one seed ({pj.get('generator_epochs')} epochs x {pj.get('steps_per_epoch')} "
                        "steps)", f"TTGA views of one test pass ({pj.get('test_images')} images)"], prow)
    lines += ["", f"Settings: `{json.dumps(s, sort_keys=True)}`", ""]
    rep.markdown[f"{stem}.md"] = "\n".join(lines)
    fits = [(mean(c["method"], "identity_initial_over_threshold"), mean(c["method"], "identity_loss_over_threshold"))
             for c in extra.get("cells", [])]
    fits = [(f, last) for f, last in fits if f is not None and last is not None]
    summary = verdict
    if fits:
        summary += (f"; identity-fit loss / threshold {min(x for _, x in fits):.1f} to {max(x for _, x in fits):.1f} "
                    f"(needed <= 1; it falls by at most {100 * max(1 - last / f for f, last in fits):.0f} % over the "
                    "identity iterations)")
    if probe and "128" in probe and steps:
        summary += (f"; 128 px: a generator of one seed costs {minutes(steps * probe['128']['train_step'])} of one "
                    f"core against {minutes(steps * probe['64']['train_step'])} at 64 px")
    rep.readme_rows.append((f"`ttga_quality.py --gate_study`{' (quick)' if obj.get('quick') else ''}",
                            f"Kvasir-SEG validation, {s.get('val_items')} images: reconstruction gate vs alpha-bar "
                            "(means, no interval)", summary))
    rep.bundle["ttga"] = [f"**Reconstruction gate on Kvasir-SEG validation images** "
                          f"([details](../../../benchmarks/results/{stem}.md)){quick}: {summary}.", ""]
    return rep


ENVELOPE_RENDERERS: dict[str, Callable[[str, Mapping[str, Any]], Report]] = {
    "ttga_quality": render_ttga_quality,
    "ttga_quality_drive": render_ttga_quality,
    "ttga_gate": render_ttga_gate,
    "adaptdiff_fundus": render_adaptation,
    "adaptdiff_brats3d": render_adaptation,
    "gms_quality": render_gms,
    "gms_speed": render_gms,
    "gms_crossdomain": render_gms,
    "gms_curves": render_gms,
    "ctrl_genaug_motion_phantoms": render_sequence_controls,
    "ctrl_genaug_motion_phantoms_class_embedding": render_sequence_controls,
    "ctrl_genaug_motion_phantoms_motion_scale": render_sequence_controls,
    "ctrl_genaug_motion_phantoms_motion_scale_3000steps": render_sequence_controls,
    "ctrl_genaug_brats": render_sequence_controls,
}


# ------------------------------------------------------------------------------------------------ older shapes
def _case_interval(per_case: Mapping[str, float] | None) -> str:
    if not per_case:
        return f"({NO_INTERVAL_1})"
    s = summarize(list(per_case.values()), **BOOT)
    return f"{interval(s)} (bootstrap over {s['num_cases']} cases, 1 seed)"


def render_adaptdiff(files: Mapping[str, Mapping[str, Any]]) -> Report:
    rep = Report()
    rows, readme, plots_l, plots_m, plots_lo, plots_hi = [], [], [], [], [], []
    notes = []
    for name, r in sorted(files.items()):
        d, s = r["dice"], r["settings"]
        if r["data"] == "brats":
            title = f"BRATS 2013 FLAIR -> T1c, {s.get('structure', 'whole_tumour').replace('_', ' ')}, " \
                    f"{s.get('split', 'disjoint')} patients"
        else:
            title = "two-modality vessel phantoms"
        title += f", source inversion p={s['invert_prob']}"
        pc = r.get("per_case_dice") or {}
        sanity = d.get("source_on_source_modality")
        cells = []
        for key in ("source_only", "adaptdiff", "upper_bound"):
            cells.append(f"{f3(d[key])} {_case_interval(pc.get(key))}")
        rows.append([title, f"{s['size']} px", f3(sanity), *cells, f3(r["pseudo_label_dice_vs_hidden_truth"]),
                     f"{r['mask_contrast']['target_real']:+.3f} / {r['mask_contrast']['target_synthetic']:+.3f}",
                     minutes(r.get("total_s")), f"`{name}`"])
        short = f"{'BRATS ' + s.get('split', '') if r['data'] == 'brats' else 'phantoms'}"
        readme.append(f"{short}: {f3(d['source_only'])} / {f3(d['adaptdiff'])} / {f3(d['upper_bound'])}")
        notes.append(
            f"- `{name}`: pseudo-labels cover {100 * r['pseudo_label_foreground']:.1f} % of the target pixels where "
            f"the true structure covers {100 * r['true_target_foreground']:.1f} % (Dice "
            f"{f3(r['pseudo_label_dice_vs_hidden_truth'])} against the hidden labels); AdaptDiff - source-only "
            f"{d['adaptdiff'] - d['source_only']:+.3f}; stage times "
            + ", ".join(f"{k} {v:.0f} s" for k, v in r.get("timings_s", {}).items()) + "."
        )
        for key in ("source_only", "adaptdiff", "upper_bound"):
            plots_l.append(f"{short}: {key}")
            plots_m.append(d[key])
            if pc.get(key):
                ss = summarize(list(pc[key].values()), **BOOT)
                plots_lo.append(ss["low"])
                plots_hi.append(ss["high"])
            else:
                plots_lo.append(d[key])
                plots_hi.append(d[key])
    lines = [
        "# AdaptDiff benchmark (CPU)",
        "",
        "Written by `benchmarks/adaptdiff_brats.py` (data, split and settings in its docstring and in the JSON files "
        "next to this table). Dice of the target-modality test set: **source-only** segmenter, **AdaptDiff** (the "
        "same segmenter fine-tuned on synthetic target-style images drawn for the source masks by a SPADE diffusion "
        "model trained on target pseudo-labels), and the **upper bound** trained with the target labels. BRATS: mean "
        "over the test patients of the Dice over all their axial slices; the interval is a bootstrap over those "
        "patients (two patients: the interval only shows how far apart they are). Every run is one training seed. "
        "Pseudo-label Dice is measured against the hidden target labels (diagnostic only). Contrast = mean intensity "
        "inside minus outside the mask (real target / synthetic target).",
        "",
        *table(["setting", "size", "source-only on the source modality", "source-only", "AdaptDiff", "upper bound",
                "pseudo-label Dice", "contrast real / synthetic", "run time", "file"], rows),
        "",
        "## Per run",
        "",
        *notes,
        "",
        "With one seed and two test patients, no difference in this table is shown to be real; the protocol of "
        "`monai_genaug.evaluation` (five seeds, per-case rows, paired intervals) is what a rerun should use.",
        "",
        f"Plot: `{_plot_name('adaptdiff')}`.",
        "",
    ]
    rep.markdown["adaptdiff.md"] = "\n".join(lines)
    rep.readme_rows.append(("`adaptdiff_brats.py`", "target-modality Dice: source-only / AdaptDiff / upper bound "
                            f"(trained with target labels); {NO_INTERVAL_1} (BRATS: 2 test patients)",
                            "; ".join(readme)))
    rep.bundle["adaptdiff"] = [f"Target-modality Dice, source-only / AdaptDiff / upper bound ({NO_INTERVAL_1}; "
                               "[details](../../../benchmarks/results/adaptdiff.md)): " + "; ".join(readme) + ".", ""]
    rep.plots.append(Plot("adaptdiff", "AdaptDiff: target-modality Dice", "bars", "Dice", plots_l, plots_m,
                          plots_lo, plots_hi))
    return rep


_TTGA_METHODS = ("baseline", "flip", "ttga_plain", "ttga")


def render_ttga(files: Mapping[str, Mapping[str, Any]]) -> Report:
    rep = Report()
    lines = ["# TTGA benchmarks", ""]
    readme = []
    q = files.get("ttga_quality.json")
    if q is not None:
        res, s = q["results"], q["settings"]
        lines += [f"## Quality on {q['dataset']} ({res['num_images']} test images of the fixed split, {s['size']} px "
                  "network input, metrics at native resolution)", "",
                  f"One trained segmenter and generator ({NO_INTERVAL_1}); mean ± std over the images (the per-image "
                  "values were not stored, so no bootstrap interval).", ""]
        rows = []
        for key in _TTGA_METHODS:
            m = res["methods"].get(key)
            if not m or m["dice"]["mean"] is None:
                continue
            rows.append([m["label"], mean_std(m["dice"]["mean"], m["dice"]["std"]),
                         mean_std(m["hd95"]["mean"], m["hd95"]["std"], 1),
                         mean_std(m["error_auc"]["mean"], m["error_auc"]["std"])])
        lines += table(["method", "Dice", "HD95 (px)", "error-estimation AUC"], rows)
        for other in ("baseline", "flip", "ttga_plain"):
            d = res.get(f"ttga_minus_{other}_dice")
            if d and d["n"]:
                lines += ["", f"TTGA - {res['methods'][other]['label']}: mean Dice difference {d['mean']:+.4f} (TTGA "
                              f"better on {d['wins']}, worse on {d['losses']} of {d['n']} images)."]
        lines += ["", f"Settings: `{json.dumps(s, sort_keys=True)}`", ""]
        m = res["methods"]
        readme.append("Kvasir-SEG Dice / AUC: " + "; ".join(
            f"{m[k]['label']} {f3(m[k]['dice']['mean'])} / {f3(m[k]['error_auc']['mean'])}" for k in _TTGA_METHODS
            if k in m and m[k]["dice"]["mean"] is not None) + f" ({NO_INTERVAL_1})")
        shown = [k for k in _TTGA_METHODS if k in m and m[k]["dice"]["mean"] is not None]
        rep.plots.append(Plot("ttga_quality", "TTGA on Kvasir-SEG: Dice (no interval)", "bars", "Dice",
                              [m[k]["label"] for k in shown], [m[k]["dice"]["mean"] for k in shown]))
        lines += [f"Plot: `{_plot_name('ttga_quality')}`.", ""]
    sp = files.get("ttga_speed.json")
    if sp is not None:
        lines += [f"## Speed and memory ({sp['device']}, {sp['threads']} thread(s))", ""]
        lines += table(["image", "views", "inversion + identity opt. (s)", "views + segmentation, batched (s)",
                        "same, per-view per-branch loop (s)", "speed-up (generation)", "speed-up (per image)"],
                       [[f"{r['image_size']} px", r["num_views"], f"{r['prepare_seconds']:.2f}",
                         f"{r['batched_seconds']:.2f}", f"{r['loop_seconds']:.2f}", f"{r['speedup_generation']:.2f}x",
                         f"{r['speedup_per_image']:.2f}x"] for r in sp["batched_vs_loop"]])
        lines += [""] + table(["image", "identity-optimisation iterations / s"],
                              [[f"{r['image_size']} px", f"{r['iterations_per_second']:.2f}"]
                               for r in sp["identity_optimisation"]])
        mm = sp.get("memory_3d")
        if mm:
            lines += ["", f"3D: TTGA on a {'x'.join(map(str, mm['volume']))} volume ({mm['num_views']} views, "
                          f"{mm['identity_iterations']} identity iterations): peak RSS {mm['peak_rss_mb']:.0f} MB "
                          f"({mm['ttga_peak_increment_mb']:+.0f} MB over loading the generator), {mm['seconds']:.0f} s."]
        lines += ["", "Speed-ups are ratios measured in the same run (one run each, no interval).", ""]
        readme.append("speed-up batched / loop " + ", ".join(
            f"{r['speedup_generation']:.2f}x at {r['image_size']} px" for r in sp["batched_vs_loop"]))
    rep.markdown["ttga.md"] = "\n".join(lines)
    if q is not None:
        rep.readme_rows.append(("`ttga_quality.py`, `ttga_speed.py`", "segmenter alone / flip TTA / TTGA (plain "
                                "views, bundle default): Dice and error-estimation AUC; batched vs per-view generation",
                                "; ".join(readme)))
    elif sp is not None:
        rep.readme_rows.append(("`ttga_speed.py`", "TTGA: batched vs per-view generation", "; ".join(readme)))
    rep.bundle["ttga"] = ["[details](../../../benchmarks/results/ttga.md): " + "; ".join(readme) + ".", ""]
    return rep


def render_sampler(files: Mapping[str, Mapping[str, Any]]) -> Report:
    rep = Report()
    r = files["sampler_overhead.json"]
    c = r["config"]
    lines = ["# Sampler overhead", "",
             f"Full guided sampling run / the same number of raw UNet calls on the same stacked batch ({c['steps']} "
             f"steps, {c['guidance']}, `{c['preset']}` preset, {c['image_size']} px), {r['device']}, {r['threads']} "
             f"threads, medians of {len(r['full_sampling_s'])} repeats (a ratio within one run).", "",
             *table(["quantity", "value"], [
                 ["ratio full / raw", f"{r['ratio_full_over_raw']:.3f} (target <= {r['target']:.2f})"],
                 ["full sampling (s, median)", f"{r['full_sampling_s_median']:.3f}"],
                 ["raw UNet calls (s, median)", f"{r['raw_unet_calls_s_median']:.3f}"],
                 ["full sampling repeats (s)", ", ".join(f"{v:.3f}" for v in r["full_sampling_s"])],
                 ["raw UNet repeats (s)", ", ".join(f"{v:.3f}" for v in r["raw_unet_calls_s"])]]), ""]
    rep.markdown["sampler_overhead.md"] = "\n".join(lines)
    rep.readme_rows.append(("`sampler_overhead.py`", f"full guided sampling / raw UNet calls (target <= "
                            f"{r['target']:.2f})", f"{r['ratio_full_over_raw']:.2f} "
                            f"({r['full_sampling_s_median']:.3f} s vs {r['raw_unet_calls_s_median']:.3f} s, "
                            f"medians of {len(r['full_sampling_s'])})"))
    return rep


def _flatten(obj: Any, prefix: str = "") -> list[tuple[str, Any]]:
    if isinstance(obj, Mapping):
        out: list[tuple[str, Any]] = []
        for k, v in obj.items():
            out += _flatten(v, f"{prefix}.{k}" if prefix else str(k))
        return out
    return [(prefix, obj)]


def render_device_check(files: Mapping[str, Mapping[str, Any]]) -> Report:
    """``benchmarks/device_check.py``'s JSON (its own shape: environment, and per part status, wall time, figures)."""
    rep = Report()
    r = files["device_check.json"]
    env = r.get("environment", {})
    lines = ["# GPU check", "", f"Written by `benchmarks/device_check.py`{' --quick' if r.get('quick') else ''}: "
             f"`{json.dumps(env, sort_keys=True)}`. One run per part (no seeds, no interval); units are in the key "
             "names.", ""]
    summary = []
    for name, part in r.get("parts", {}).items():
        lines += [f"## {name}: {part.get('status')} ({f3(part.get('wall_s'), 1)} s)", ""]
        if part.get("description"):
            lines += [str(part["description"]), ""]
        if part.get("error"):
            lines += [f"Error: `{part['error']}`", ""]
        figures = _flatten(part.get("figures") or {})
        if figures:
            lines += table(["figure", "value"], [[k, _value(v)] for k, v in figures]) + [""]
        summary.append(f"{name} {part.get('status')}")
    rep.markdown["device_check.md"] = "\n".join(lines)
    rep.readme_rows.append(("`device_check.py`", f"GPU check on {env.get('device_name', env.get('device', 'n/a'))} "
                            "(one run per part, no interval)", "; ".join(summary) +
                            f"; total {f3(r.get('total_wall_s'), 1)} s ([details](benchmarks/results/device_check.md))"))
    return rep


def render_hostile_inputs(files: Mapping[str, Mapping[str, Any]]) -> Report:
    """``benchmarks/hostile_inputs.py``'s JSON (issue #21): outcome counts, then one row per hostile input."""
    rep = Report()
    r = files["hostile_inputs.json"]
    counts = r.get("counts", {})
    lines = ["# Hostile-input sweep", "", f"Written by `{r.get('command', 'python benchmarks/hostile_inputs.py')}` "
             f"({r.get('platform', 'n/a')}, torch {r.get('torch', 'n/a')}). Outcomes: `clear_error` (an error naming "
             "the option or file), `handled` (accepted, result checked), `silent_wrong`, `data_loss`, "
             "`crash_without_message`.", ""]
    lines += table(["outcome", "cases"], [[k, v] for k, v in counts.items()]) + [""]
    rows = [[c["case"], c["face"], c["item"], c["outcome"], str(c["message"])[:140].replace("|", "/")]
            for c in r.get("cases", [])]
    lines += table(["case", "face", "item", "outcome", "message"], rows)
    rep.markdown["hostile_inputs.md"] = "\n".join(lines) + "\n"
    return rep



def render_threads_busy(files: Mapping[str, Mapping[str, Any]]) -> Report:
    """``benchmarks/threads_busy.py``'s JSON (issue #22): the main job beside busy processes, per thread setting."""
    rep = Report()
    r = files["threads_busy.json"]
    lines = ["# CPU threads beside a busy process", "",
             f"`{r['command']}` beside {r['busy_processes']} CPU-bound process(es) on {r['cpu_count']} cores "
             f"({r['machine']}; 1-minute load average {r['load_average_1min_at_start']} at the start). Runs alternate "
             "between the settings; a run that hit the per-run timeout gives a lower bound (marked >=).", ""]
    rows = [[str(i + 1), str(run["num_threads"]), (">= " if run["timed_out"] else "") + f"{run['seconds']:.1f}",
             f"{run['load_average_1min_before']:.2f}", "ok" if run["returncode"] == 0 else
             ("timed out" if run["timed_out"] else f"exit {run['returncode']}")] for i, run in enumerate(r["runs"])]
    lines += table(["run", "torch threads", "wall s", "load average before", "outcome"], rows) + [""]
    ratio = r.get("default_over_one_thread")
    if ratio is not None:
        lines += [f"Median wall time with torch's default ({r['cpu_count']} threads) over one thread: {ratio:.2f}x"
                  " (a lower bound when a default-thread run timed out).", ""]
    rep.markdown["threads_busy.md"] = "\n".join(lines)
    medians = ", ".join(f"{n} thread(s) {v:.1f} s" for n, v in r.get("median_seconds", {}).items())
    rep.readme_rows.append(("`threads_busy.py`", f"main job beside {r['busy_processes']} busy process(es), median "
                            "wall time per torch thread count", medians + (f"; ratio {ratio:.2f}x" if ratio else "")
                            + " ([details](benchmarks/results/threads_busy.md))"))
    for bundle in ("ttga",):
        rep.bundle.setdefault(bundle, []).extend([f"CPU threads beside a busy process (`benchmarks/threads_busy.py`): "
                                                  f"{medians}.", ""])
    return rep

def render_shipped_weights(files: Mapping[str, Mapping[str, Any]]) -> Report:
    """``benchmarks/shipped_weights.py``'s JSON: what the shipped weights do on the embedded phantoms, written into
    README.md (the main job's wall time) and the bundles' docs (``shipped-weights`` blocks)."""
    rep = Report()
    r = files["shipped_weights.json"]
    jobs = r.get("jobs", {})
    src = "measured by `python benchmarks/shipped_weights.py`, one run, one torch thread"

    def load(v: Any) -> str:
        return "n/a" if v is None else f"{v:.2f}"

    lines = ["# Shipped weights on the embedded phantoms", "",
             f"Written by `{r.get('command')}` ({r.get('machine')}, torch {r.get('torch')}, {r.get('cpu_count')} "
             "cores). One run per job on the bundles' phantoms with the shipped, phantom-trained weights: what a user "
             "sees on a fresh clone, not a measure of the methods (see the other benchmarks).", ""]
    rows = [[job, run["command"], f"{run['seconds']:.1f}", load(run.get("load_average_before"))]
            for job, j in jobs.items() for run in j["runs"]]
    lines += table(["job", "command", "wall s", "load average before"], rows) + [""]
    if "ttga" in jobs:
        run = jobs["ttga"]["runs"][0]
        rep.blocks[("README.md", "main-job")] = [
            f"The main job took {run['seconds']:.0f} s on this machine's last measurement (one torch thread, 1-minute "
            f"load average {load(run.get('load_average_before'))} before it; {src.split(', ', 1)[0]}).", ""]
        s = jobs["ttga"]["results"]["summary"]
        text = (f"With the shipped weights on the {s['num_cases']} phantom test images ({src}): Dice of the fused "
                f"prediction {f3(s['dice_ttga'])} with the detail transfer (the default)")
        if "ttga_plain_views" in jobs:
            text += f", {f3(jobs['ttga_plain_views']['results']['summary']['dice_ttga'])} with plain views " \
                    "(`--detail_weight 0`)"
        text += (f", {f3(s['dice_baseline'])} for the segmenter alone; error-estimation AUC {f3(s['error_auc_ttga'])}"
                 f" (TTGA entropy) vs {f3(s['error_auc_baseline'])} (the segmenter's own entropy).")
        if s.get("view_mae") is not None:
            text += (f" The default views differ little from the image: MAE {s['view_mae']:.4f}, SSIM "
                     f"{f3(s['view_ssim'])}, the segmenter's predictions on them agree with its prediction on the "
                     f"image on {f3(s['view_agreement'])} of the pixels.")
        rep.blocks[("bundles/ttga/docs/README.md", "shipped-weights")] = [text, ""]
        lines += [f"TTGA: {text}", ""]
    if "adaptdiff" in jobs:
        a = jobs["adaptdiff"]["results"]
        block = [f"Result of `evaluate.json` on the {a['source_only']['num_items']} target test phantoms (anatomies "
                 f"never seen in training), {src}:", ""]
        block += table(["segmenter", "mean Dice", "global Dice"],
                       [["source-only (`models/source_segmenter.pt`)", f3(a["source_only"]["mean_dice"]),
                         f3(a["source_only"]["global_dice"])],
                        ["AdaptDiff (`models/model.pt`)", f3(a["adaptdiff"]["mean_dice"]),
                         f3(a["adaptdiff"]["global_dice"])]]) + [""]
        rep.blocks[("bundles/adaptdiff/docs/README.md", "shipped-weights")] = block
        lines += ["AdaptDiff:", "", *block]
    if "ctrl_genaug" in jobs:
        c = jobs["ctrl_genaug"]["results"]
        accs = "; ".join(f"{k.replace('_', ' ')} {f3(v['accuracy'])} [{f3(v['accuracy_low'])}, "
                         f"{f3(v['accuracy_high'])}] ({len(v['seeds'])} seeds)" for k, v in c["downstream"].items())
        text = (f"With the shipped weights on the default phantoms ({src}; {c['num_test_clips']} test clips): the "
                f"filter kept {c['kept']} of {c['total']} generated clips; temporal consistency (100 x mean "
                f"consecutive-frame cosine) {c['temporal_consistency_real']:.1f} for real clips vs "
                f"{c['temporal_consistency_synthetic']:.1f} for generated ones; downstream accuracy: {accs}.")
        rep.blocks[("bundles/ctrl_genaug/docs/README.md", "shipped-weights")] = [text, ""]
        lines += [f"Ctrl-GenAug: {text}", ""]
    rep.markdown["shipped_weights.md"] = "\n".join(lines)
    return rep


#: older result shapes: renderer, JSON files it reads (a file in the envelope shape is rendered on its own instead)
LEGACY: list[tuple[Callable[[Mapping[str, Mapping[str, Any]]], Report], Callable[[str], bool]]] = [
    (render_sampler, lambda n: n == "sampler_overhead.json"),
    (render_ttga, lambda n: n in ("ttga_quality.json", "ttga_speed.json")),
    (render_adaptdiff, lambda n: n.startswith("adaptdiff_")),
    (render_device_check, lambda n: n == "device_check.json"),
    (render_hostile_inputs, lambda n: n == "hostile_inputs.json"),
    (render_threads_busy, lambda n: n == "threads_busy.json"),
    (render_shipped_weights, lambda n: n == "shipped_weights.json"),
]
#: renderers of shapes that are not benchmarks of a method (no "before the evaluation protocol" label)
NOT_METHOD_BENCHMARKS = {render_device_check, render_hostile_inputs, render_threads_busy, render_shipped_weights}


def render_results(results_dir: str | Path) -> Report:
    """Render every ``*.json`` of ``results_dir``; a JSON no renderer knows raises (so nothing goes unreported)."""
    results_dir = Path(results_dir)
    if not results_dir.is_dir():
        raise FileNotFoundError(f"results folder {results_dir} does not exist.")
    objs = {p.name: read_results(p) for p in sorted(results_dir.glob("*.json"))}
    if not objs:
        raise ValueError(f"no *.json results in {results_dir}.")
    report = Report()
    legacy_seen: set[str] = set()
    for render, takes in LEGACY:
        group = {n: o for n, o in objs.items() if takes(n) and o.get("schema") != SCHEMA}
        legacy_seen.update(group)
        if group:
            old = render(group)
            if render in NOT_METHOD_BENCHMARKS:
                report.merge(old)
                continue
            old.readme_rows = [(a, f"{b} (run before the evaluation protocol)", c) for a, b, c in old.readme_rows]
            old.bundle = {k: [f"Before the evaluation protocol: {v[0]}", *v[1:]] for k, v in old.bundle.items()}
            report.merge(old)
    for name, obj in objs.items():
        if obj.get("schema") == SCHEMA:
            report.merge(ENVELOPE_RENDERERS.get(Path(name).stem, render_envelope)(Path(name).stem, obj))
        elif name not in legacy_seen:
            raise ValueError(
                f"{results_dir / name} has no renderer: write it with monai_genaug.evaluation.write_results "
                "(or add a renderer for its shape to monai_genaug.evaluation.report)."
            )
    return report


# ------------------------------------------------------------------------------------------------ blocks and plots
def update_block(text: str, block: str, markers: tuple[str, str], heading: str | None = None) -> str:
    """Replace what lies between ``markers`` in ``text`` by ``block``; without markers, append ``heading`` and the
    marked block at the end (raises when there is no heading to add)."""
    start, end = markers
    body = f"{start}\n{block.rstrip()}\n{end}"
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.S)
    if pattern.search(text):
        return pattern.sub(lambda _: body, text, count=1)
    if heading is None:
        raise ValueError(f"markers {start} ... {end} not found.")
    return text.rstrip() + f"\n\n{heading}\n\n{body}\n"


def readme_block(rows: Sequence[tuple[str, str, str]]) -> str:
    return "\n".join(table(["benchmark", "measured", "result (mean, 95 % interval where stored)"], rows))


def bundle_block(lines: Sequence[str]) -> str:
    return "\n".join(["Generated from `benchmarks/results/*.json` by `python -m monai_genaug.evaluation.report "
                      "benchmarks/results`; do not edit by hand.", "", *lines]).rstrip()


def write_plots(plots: Sequence[Plot], results_dir: Path) -> list[Path]:
    """Write the PNG plots (skipped with a message when matplotlib is absent)."""
    matplotlib, has_mpl = optional_import("matplotlib")
    if not has_mpl:
        print("matplotlib is not installed: plots skipped.", file=sys.stderr)
        return []
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = []
    for p in plots:
        fig, ax = plt.subplots(figsize=(max(5.0, 0.6 * len(p.labels) + 2), 3.4))
        if p.kind == "lines":
            for label, (xs, ys) in p.series.items():
                ax.plot(xs, ys, marker="o", markersize=3, label=label)
            ax.set_xlabel(p.xlabel or "")
            ax.legend(fontsize=7)
            ax.grid(alpha=0.3)
        else:
            x = list(range(len(p.labels)))
            yerr = None
            if p.lows is not None and p.highs is not None:
                yerr = [[m - lo for m, lo in zip(p.means, p.lows)], [hi - m for m, hi in zip(p.means, p.highs)]]
            if p.kind == "curve":
                ax.errorbar(x, p.means, yerr=yerr, marker="o", capsize=4)
                ax.set_xlabel(p.xlabel or "real labelled items")
            else:
                ax.bar(x, p.means, yerr=yerr, capsize=4, color="#4c72b0")
            ax.set_xticks(x)
            ax.set_xticklabels(p.labels, rotation=30, ha="right", fontsize=7)
        ax.set_ylabel(p.ylabel)
        ax.set_title(textwrap.fill(p.title, 70), fontsize=8)
        fig.tight_layout()
        path = results_dir / _plot_name(p.name)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=80, metadata={"Software": None})
        plt.close(fig)
        out.append(path)
    return out


def _outputs(results_dir: Path, readme: Path | None, bundles: Path | None) -> tuple[dict[Path, str], Report]:
    report = render_results(results_dir)
    outputs = {results_dir / name: text for name, text in report.markdown.items()}
    if readme is not None:
        outputs[readme] = update_block(readme.read_text(), readme_block(report.readme_rows), README_MARKERS)
    if bundles is not None:
        for name, lines in report.bundle.items():
            doc = bundles / name / "docs" / "README.md"
            if doc.is_file():
                outputs[doc] = update_block(doc.read_text(), bundle_block(lines), BUNDLE_MARKERS, "## Performance")
    for (target, name), lines in report.blocks.items():
        first, _, rest = target.partition("/")
        doc = readme if target == "README.md" else (bundles / rest if first == "bundles" and bundles else None)
        if doc is None or not doc.is_file():
            continue
        text = outputs.get(doc, doc.read_text())
        markers = (f"<!-- {name}:start -->", f"<!-- {name}:end -->")
        outputs[doc] = update_block(text, "\n".join(lines), markers)
    return outputs, report


def orphaned_outputs(results_dir: Path, outputs: Mapping[Path, str], report: Report) -> list[Path]:
    """Generated-looking files of ``results_dir`` (``*.md``, ``plots/*.png``) that no JSON gives any more."""
    expected = {p.resolve() for p in outputs} | {(results_dir / _plot_name(p.name)).resolve() for p in report.plots}
    found = [*results_dir.glob("*.md"), *results_dir.glob("plots/*.png")]
    return sorted(p for p in found if p.resolve() not in expected)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results_dir", help="folder of the benchmark JSON files (benchmarks/results)")
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 when an output is stale")
    parser.add_argument("--readme", default=None,
                        help="README with the benchmark table (default: <repo>/README.md; 'none': no README)")
    parser.add_argument("--bundles", default=None, help="bundles folder (default: <repo>/bundles; 'none': no bundles)")
    parser.add_argument("--no-plots", action="store_true", help="do not write the PNG plots")
    args = parser.parse_args(argv)
    results_dir = Path(args.results_dir)
    repo = results_dir.resolve().parents[1]
    readme = Path(args.readme) if args.readme else repo / "README.md"
    bundles = Path(args.bundles) if args.bundles else repo / "bundles"
    outputs, report = _outputs(results_dir, readme if args.readme != "none" and readme.is_file() else None,
                               bundles if args.bundles != "none" and bundles.is_dir() else None)
    orphans = orphaned_outputs(results_dir, outputs, report)
    if args.check:
        stale = [p for p, text in outputs.items() if not p.is_file() or p.read_text() != text]
        for p in stale:
            print(f"stale: {p} differs from what the JSON gives; run python -m monai_genaug.evaluation.report "
                  f"{args.results_dir}", file=sys.stderr)
        for p in orphans:
            print(f"orphan: {p} comes from no JSON (its JSON was removed); run python -m "
                  f"monai_genaug.evaluation.report {args.results_dir} to delete it", file=sys.stderr)
        if not stale and not orphans:
            print(f"{len(outputs)} files match the JSON results.")
        return 1 if stale or orphans else 0
    for path in orphans:
        path.unlink()
        print(f"deleted {path} (no JSON gives it)")
    for path, text in outputs.items():
        if not path.is_file() or path.read_text() != text:
            path.write_text(text)
            print(f"wrote {path}")
    if not args.no_plots:
        for p in write_plots(report.plots, results_dir):
            print(f"wrote {p}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
