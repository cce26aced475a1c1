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
import json
import shutil
from pathlib import Path

import pytest

from monai_genaug.evaluation import (
    BenchmarkTimer,
    ResultsTable,
    is_complete,
    merge_results,
    read_results,
    write_results,
)
from monai_genaug.evaluation.report import main, render_results, update_block

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "benchmarks" / "results"


def test_committed_reports_match_their_json():
    """Every benchmarks/results/*.md, the README table and the bundles' Performance sections come from the JSON."""
    assert main([str(RESULTS), "--check"]) == 0


def _envelope(path, quick=False):
    table = ResultsTable()
    for seed in range(5):
        for case in range(6):
            table.add("real_only", case=f"c{case}", seed=seed, value=0.5 + 0.01 * case, metric="dice")
            table.add("real+filtered", case=f"c{case}", seed=seed, value=0.6 + 0.01 * case, metric="dice")
    curve = ResultsTable()
    for seed in range(5):
        for case in range(6):
            curve.add("4 labels", case=f"c{case}", seed=seed, value=0.3, metric="dice")
            curve.add("16 labels", case=f"c{case}", seed=seed, value=0.7, metric="dice")
    return write_results(
        path, "toy", {"iterations": 3}, range(5), table, BenchmarkTimer().stop(), primary_metric="dice",
        baseline="real_only", quick=quick,
        extra={"title": "Toy benchmark", "label_curve": {"metric": "dice", "rows": curve.to_rows()},
               "counts": {"real_only": {"num_train": 4, "num_synthetic": 0}}},
    )


def test_envelope_is_complete_and_rendered_with_intervals(tmp_path):
    path = _envelope(tmp_path / "toy.json")
    obj = read_results(path)
    assert obj["environment"]["versions"]["torch"] and obj["timing"]["wall_s"] >= 0
    assert obj["environment"]["load_average"] is None or len(obj["environment"]["load_average"]) == 3
    assert is_complete(path) and is_complete(path, quick=False) and not is_complete(path, quick=True)
    assert not list(tmp_path.glob(".*tmp"))  # the atomic write left no temporary
    md = render_results(tmp_path).markdown["toy.md"]
    row = next(line for line in md.splitlines() if line.startswith("| real+filtered |"))
    low, high = (float(v) for v in row.split("|")[3].strip(" []").split(","))
    assert row.startswith("| real+filtered | 0.625 |") and low < 0.625 < high  # constant over seeds: cases only
    assert "| real+filtered - real_only | +0.100 | [0.100, 0.100] | 6 / 0 / 0 | better |" in md  # a constant shift
    assert "is shown to gain from more labels" in md
    with pytest.raises(ValueError, match="no per-case rows"):
        write_results(tmp_path / "empty.json", "empty", {}, [0], ResultsTable(), {"wall_s": 1.0})


def test_check_flags_stale_markdown_and_blocks(tmp_path):
    results = tmp_path / "benchmarks" / "results"
    results.mkdir(parents=True)
    _envelope(results / "toy.json")
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- benchmark-table:start -->\nold\n<!-- benchmark-table:end -->\ntail\n")
    doc = tmp_path / "bundles" / "b" / "docs" / "README.md"
    doc.parent.mkdir(parents=True)
    doc.write_text("# b\n")
    args = [str(results), "--readme", str(readme), "--bundles", str(tmp_path / "bundles"), "--no-plots"]
    assert main(args + ["--check"]) == 1  # nothing generated yet
    assert main(args) == 0
    assert main(args + ["--check"]) == 0
    assert "Toy benchmark" in readme.read_text() and readme.read_text().endswith("tail\n")
    (results / "toy.md").write_text((results / "toy.md").read_text().replace("0.625", "0.700"))
    assert main(args + ["--check"]) == 1
    main(args)
    readme.write_text(readme.read_text().replace("0.625", "0.999"))
    assert main(args + ["--check"]) == 1
    main(args)
    orphan = results / "removed_benchmark.md"  # its JSON was deleted: --check fails, a normal run deletes it
    orphan.write_text("# old\n")
    assert main(args + ["--check"]) == 1
    assert main(args) == 0 and not orphan.exists() and (results / "toy.md").is_file()
    assert main(args + ["--check"]) == 0


def test_unknown_json_shape_is_refused(tmp_path):
    (tmp_path / "mystery.json").write_text(json.dumps({"accuracy": 0.9}))
    with pytest.raises(ValueError, match="no renderer"):
        render_results(tmp_path)


def test_update_block():
    text = "a\n<!-- s -->\nold\n<!-- e -->\nb\n"
    assert update_block(text, "new", ("<!-- s -->", "<!-- e -->")) == "a\n<!-- s -->\nnew\n<!-- e -->\nb\n"
    added = update_block("# doc\n", "x", ("<!-- s -->", "<!-- e -->"), "## Performance")
    assert added == "# doc\n\n## Performance\n\n<!-- s -->\nx\n<!-- e -->\n"
    with pytest.raises(ValueError, match="markers"):
        update_block("plain", "x", ("<!-- s -->", "<!-- e -->"))


def test_legacy_single_run_shown_without_interval(tmp_path):
    legacy = Path(__file__).parent / "data" / "adaptdiff_brats_legacy.json"  # a pre-protocol result, kept as a fixture
    shutil.copy(legacy, tmp_path / "adaptdiff_brats.json")
    single = json.loads(legacy.read_text())  # the old shape, without per-case values
    single.update(data="phantoms", per_case_dice=None)
    (tmp_path / "adaptdiff_phantoms.json").write_text(json.dumps(single))
    md = render_results(tmp_path).markdown["adaptdiff.md"]
    phantoms = next(line for line in md.splitlines() if line.startswith("| two-modality"))
    assert "(1 seed, no interval)" in phantoms
    brats = next(line for line in md.splitlines() if line.startswith("| BRATS"))
    assert "bootstrap over 2 cases" in brats


def test_device_check_json_is_rendered(tmp_path):
    """benchmarks/device_check.py's JSON, once a GPU run lands in benchmarks/results, is rendered like the others."""
    result = {"benchmark": "device_check", "quick": False, "environment": {"device_name": "H100"},
              "parts": {"gms_sd2": {"status": "ok", "wall_s": 12.5, "description": "GMS at 224 px",
                                    "figures": {"train": {"cached_it_per_s": 41.25}}},
                        "ttga_sd15": {"status": "error", "wall_s": 1.0, "error": "RuntimeError: out of memory"}},
              "total_wall_s": 13.5}
    (tmp_path / "device_check.json").write_text(json.dumps(result))
    rep = render_results(tmp_path)
    md = rep.markdown["device_check.md"]
    assert "| train.cached_it_per_s | 41.250 |" in md and "RuntimeError: out of memory" in md
    assert rep.readme_rows[0][2].startswith("gms_sd2 ok; ttga_sd15 error; total 13.5 s")


def test_shipped_weights_numbers_are_written_between_their_markers(tmp_path):
    """benchmarks/shipped_weights.py's JSON fills the README's main-job block and the bundles' shipped-weights blocks;
    a block edited by hand is reported stale, and a missing job leaves its block alone."""
    results = tmp_path / "benchmarks" / "results"
    results.mkdir(parents=True)
    run = {"command": "python -m monai.bundle run ...", "seconds": 21.4, "load_average_before": 0.5}
    summary = {"num_cases": 4, "dice_ttga": 0.94, "dice_baseline": 0.93, "error_auc_ttga": 0.98,
               "error_auc_baseline": 0.97}
    adapt = {"source_only": {"mean_dice": 0.406, "global_dice": 0.402, "num_items": 19},
             "adaptdiff": {"mean_dice": 0.561, "global_dice": 0.556, "num_items": 19}}
    result = {"benchmark": "shipped_weights", "command": "python benchmarks/shipped_weights.py", "machine": "x86_64",
              "torch": "2", "cpu_count": 2, "jobs": {"ttga": {"runs": [run], "results": {"summary": summary}},
                                                     "adaptdiff": {"runs": [run], "results": adapt}}}
    (results / "shipped_weights.json").write_text(json.dumps(result))
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- main-job:start -->\n<!-- main-job:end -->\n"
                      "<!-- benchmark-table:start -->\n<!-- benchmark-table:end -->\n")
    docs = {}
    for name in ("ttga", "adaptdiff", "ctrl_genaug"):
        docs[name] = tmp_path / "bundles" / name / "docs" / "README.md"
        docs[name].parent.mkdir(parents=True)
        docs[name].write_text(f"# {name}\n<!-- shipped-weights:start -->\nhand typed\n<!-- shipped-weights:end -->\n")
    args = [str(results), "--readme", str(readme), "--bundles", str(tmp_path / "bundles"), "--no-plots"]
    assert main(args) == 0 and main(args + ["--check"]) == 0
    assert "The main job took 21 s" in readme.read_text()
    assert "0.940 with the detail transfer" in docs["ttga"].read_text()
    assert "| AdaptDiff (`models/model.pt`) | 0.561 | 0.556 |" in docs["adaptdiff"].read_text()
    assert "hand typed" in docs["ctrl_genaug"].read_text()  # no ctrl_genaug job in this JSON: block untouched
    docs["adaptdiff"].write_text(docs["adaptdiff"].read_text().replace("0.561", "0.600"))
    assert main(args + ["--check"]) == 1


def _seed_run(path, seed, shift, settings=None, quick=False):
    table = ResultsTable()
    for case in range(4):
        table.add("a", case=f"c{case}", seed=seed, value=0.5 + 0.1 * case + shift, metric="dice")
        table.add("b", case=f"c{case}", seed=seed, value=0.4 + 0.1 * case + shift, metric="dice")
    return write_results(path, "toy_seeds", settings or {"size": 64, "trained": seed}, [seed], table,
                         {"wall_s": 10.0, "cpu_s": 5.0}, primary_metric="dice", baseline="b",
                         extra={"title": "toy", "chosen": {"lam": seed}}, quick=quick)


def test_merge_results_joins_seeds_and_keeps_what_differs_per_run(tmp_path):
    paths = [_seed_run(tmp_path / f"s{s}.json", s, 0.05 * s) for s in (1, 0, 2)]
    out = merge_results(paths, tmp_path / "toy_seeds.json", per_run_settings=["trained"], per_run_extra=["chosen"])
    obj = read_results(out)
    assert obj["seeds"] == [0, 1, 2] and len(obj["rows"]) == 3 * 8 and obj["settings"] == {"size": 64}
    assert [r["seeds"] for r in obj["extra"]["runs"]] == [[0], [1], [2]]
    assert [r["trained"] for r in obj["extra"]["runs"]] == [0, 1, 2]
    assert [r["chosen"] for r in obj["extra"]["runs"]] == [{"lam": 0}, {"lam": 1}, {"lam": 2}]
    assert obj["extra"]["title"] == "toy" and obj["timing"]["wall_s"] == 30.0 and obj["timing"]["cpu_s"] == 15.0
    s = ResultsTable.from_rows(obj["rows"]).summary("a", "dice")
    assert s["num_seeds"] == 3 and s["per_seed"] == pytest.approx([0.65, 0.70, 0.75])
    assert is_complete(out)
    with pytest.raises(ValueError, match="setting 'trained' differs"):
        merge_results(paths[:2], tmp_path / "bad.json")
    with pytest.raises(ValueError, match="appear in two files"):
        merge_results([paths[0], paths[0]], tmp_path / "bad.json", per_run_settings=["trained"])
    with pytest.raises(ValueError, match="not 'toy_seeds'|quick"):
        merge_results([paths[0], _seed_run(tmp_path / "q.json", 5, 0.0, quick=True)], tmp_path / "bad.json",
                      per_run_settings=["trained"])
    with pytest.raises(ValueError, match="at least two"):
        merge_results(paths[:1], tmp_path / "bad.json")
    assert not (tmp_path / "bad.json").exists()


def test_sequence_controls_say_where_the_chain_breaks(tmp_path):
    """A sequence benchmark whose filter kept nothing: the goals table says so and the diagnosis gives the numbers."""
    from monai_genaug.evaluation.report import render_sequence_controls

    table = ResultsTable()
    for seed in (0, 1):
        for case, value in (("c0", 1.0), ("c1", 0.0)):
            for method in ("real_only", "real+filtered"):
                table.add(method, case=case, seed=seed, value=value, metric="accuracy")
    oracle = ResultsTable()
    for i, value in enumerate((1.0, 0.0, 0.0, 1.0)):
        oracle.add("generated (all)", case=f"g{i}", seed=100, value=value, metric="oracle_accuracy")
    checks = {"temporal_consistency": {"real_train": 99.5, "real_test": 99.4, "generated": 95.0, "kept": None,
                                       "real_range": [99.0, 99.9], "filter_thresholds": [99.0, 99.9]},
              "goals": {"filtered_vs_real_only": ["real+filtered", "real_only"], "consistency_within_points": 2.0,
                        "kept_agreement_at_least": 0.9}}
    extra = {"counts": {"real+all": {"num_train": 6, "num_synthetic": 4},
                        "real+filtered": {"num_train": 2, "num_synthetic": 0}},
             "oracle": {"rows": oracle.to_rows(), "test_score": 0.9}, "checks": checks}
    path = write_results(tmp_path / "seq.json", "seq", {}, [0, 1], table, BenchmarkTimer().stop(),
                         primary_metric="accuracy", baseline="real_only", extra=extra)
    md = render_sequence_controls("seq", json.loads(path.read_text())).markdown["seq.md"]
    assert "| oracle class agreement of kept clips >= 0.9 | no clip kept | not met |" in md
    assert "- the filter kept 0 of 4 generated clips;" in md
    assert "on 0.500 [" in md and "against 0.900 on real test clips" in md
    assert "generated 95.00 vs real 99.50 (gap -4.50); the temporal filter's lowest lower threshold (real-calibrated) " \
           "is 99.00;" in md
