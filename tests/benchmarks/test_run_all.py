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
import sys
from pathlib import Path

import pytest

from monai_genaug.evaluation import BenchmarkTimer, ResultsTable, is_complete, write_results

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

import run_all  # noqa: E402


def _envelope(path: Path, quick: bool) -> None:
    table = ResultsTable()
    table.add("real_only", case="c0", value=1.0, metric="accuracy")
    write_results(path, path.stem, {}, [0], table, BenchmarkTimer().stop(), primary_metric="accuracy", quick=quick)


def test_full_mode_resumes_stage_by_stage(tmp_path):
    stages = {s.name: s for s in run_all.stages(tmp_path, tmp_path / "data")}
    ctrl, sampler = stages["ctrl_genaug_motion_phantoms"], stages["sampler_overhead"]
    assert not run_all.done(ctrl, tmp_path)
    _envelope(tmp_path / "ctrl_genaug_motion_phantoms.json", quick=True)
    assert not run_all.done(ctrl, tmp_path)  # a quick result never stands in for a full one
    _envelope(tmp_path / "ctrl_genaug_motion_phantoms.json", quick=False)
    assert run_all.done(ctrl, tmp_path)
    (tmp_path / "sampler_overhead.json").write_text("{truncated")
    assert not run_all.done(sampler, tmp_path)
    (tmp_path / "sampler_overhead.json").write_text(json.dumps({"ratio_full_over_raw": 1.0}))
    assert run_all.done(sampler, tmp_path)
    with pytest.raises(SystemExit):
        run_all.main(["--full", "--out_dir", str(tmp_path), "--only", "no_such_stage"])


@pytest.mark.timeout(600)
def test_quick_mode_runs_benchmarks_and_renders_them(tmp_path):
    """The quick mode of two protocol benchmarks end to end (each a subprocess), then the report of their JSON."""
    status = run_all.main(["--quick", "--out_dir", str(tmp_path), "--only", "adaptdiff_phantoms", "ctrl_genaug_motion_phantoms"])
    assert all(v.startswith("ok in") for v in status.values()), status
    for name in ("adaptdiff_phantoms", "ctrl_genaug_motion_phantoms"):
        assert is_complete(tmp_path / f"{name}.json", quick=True)
        md = (tmp_path / f"{name}.md").read_text()
        assert "quick smoke run" in md and "95 % interval" in md
    rows = json.loads((tmp_path / "ctrl_genaug_motion_phantoms.json").read_text())["rows"]
    assert {r["method"] for r in rows} == {"real_only", "real+all", "real+filtered", "real+random"}
