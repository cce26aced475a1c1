"""The hostile-input sweep (issue #21): its fast API cases give no silent wrong result, no data loss and no crash
without a message; the full sweep is ``python benchmarks/hostile_inputs.py``."""

from __future__ import annotations

import json

import pytest


@pytest.fixture(scope="module")
def sweep(benchmark_script):
    return benchmark_script("hostile_inputs")


def test_quick_sweep_has_no_silent_or_unexplained_outcome(sweep, tmp_path):
    out = tmp_path / "hostile.json"
    result = sweep.main(["--quick", "--out", str(out)])
    assert json.loads(out.read_text()) == result
    bad = [c for c in result["cases"] if c["outcome"] not in ("clear_error", "handled")]
    assert not bad, bad
    assert result["counts"]["clear_error"] >= 15 and result["counts"]["handled"] >= 5
    assert {c["item"] for c in result["cases"]} >= {"#21.1", "#21.3", "#21.4", "#21.5", "#21.6", "#21.9", "#21.10",
                                                    "#21.11"}
    assert "| outcome | cases |" in sweep.table(result)


def test_sweep_classifies_outcomes(sweep):
    assert sweep.expect_error(lambda: None)[0] == "silent_wrong"
    assert sweep.expect_error(lambda: int("x"), "max_items")[0] == "crash_without_message"
    assert sweep.expect_error(lambda: (_ for _ in ()).throw(ValueError("max_items=0 ...")), "max_items")[0] == (
        "clear_error")
    assert sweep.expect_ok(lambda: 1, lambda r: r == 2)[0] == "silent_wrong"
    assert sweep.expect_ok(lambda: 1 / 0, lambda r: True)[0] == "crash_without_message"
