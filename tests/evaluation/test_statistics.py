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
import numpy as np
import pytest

from monai_genaug.evaluation import (
    ResultsTable,
    bootstrap_interval,
    paired_difference,
    percentile_interval,
    summarize,
)


def test_percentile_interval_by_hand():
    # 5 samples 1..5: quantile q at position q * (n - 1) with linear interpolation
    low, high = percentile_interval([5, 1, 4, 2, 3], confidence=0.5)  # 25 % / 75 % -> positions 1 and 3
    assert (low, high) == (2.0, 4.0)
    low, high = percentile_interval([0.0, 10.0], confidence=0.9)  # 5 % / 95 % -> 0.5 and 9.5
    assert low == pytest.approx(0.5) and high == pytest.approx(9.5)
    with pytest.raises(ValueError, match="confidence"):
        percentile_interval([1.0], confidence=1.0)


def test_summarize_matches_analytic_mean_and_std():
    values = np.array([[1.0, 2.0, 3.0, 4.0], [3.0, 4.0, 5.0, 6.0]])  # 2 seeds x 4 cases
    s = summarize(values, num_resamples=500)
    assert s["mean"] == pytest.approx(3.5)
    assert s["per_seed"] == pytest.approx([2.5, 4.5])
    assert s["std_seeds"] == pytest.approx(np.std([2.5, 4.5], ddof=1))
    assert s["std_cases"] == pytest.approx(np.std([2.0, 3.0, 4.0, 5.0], ddof=1))
    assert s["num_cases"] == 4 and s["num_seeds"] == 2
    assert s["low"] <= s["mean"] <= s["high"]
    one = summarize([0.5, 0.7])
    assert one["std_seeds"] is None and one["num_seeds"] == 1


def test_bootstrap_interval_is_seeded_covers_the_mean_and_shrinks_with_cases():
    rng = np.random.default_rng(0)
    small = rng.normal(0.6, 0.1, size=20)
    large = rng.normal(0.6, 0.1, size=400)
    a = bootstrap_interval(small, seed=3)
    assert a == bootstrap_interval(small, seed=3)  # reproducible
    assert a != bootstrap_interval(small, seed=4)
    assert a[0] < small.mean() < a[1]
    b = bootstrap_interval(large, seed=3)
    assert b[0] < large.mean() < b[1]
    assert (b[1] - b[0]) < (a[1] - a[0]) / 2  # ~ 1 / sqrt(n)
    # a constant sample has a zero-width interval at its value
    assert bootstrap_interval([0.25] * 7) == (0.25, 0.25)


def test_bootstrap_over_seeds_widens_the_interval():
    cases = np.linspace(0.4, 0.6, 30)
    grid = np.stack([cases + shift for shift in (-0.1, 0.0, 0.1, 0.05, -0.05)])
    with_seeds = bootstrap_interval(grid, over_seeds=True)
    cases_only = bootstrap_interval(grid, over_seeds=False)
    assert (with_seeds[1] - with_seeds[0]) > (cases_only[1] - cases_only[0])


def test_paired_difference_of_a_constant_shift():
    rng = np.random.default_rng(1)
    b = rng.uniform(0, 1, size=(3, 25))
    d = paired_difference(b + 0.1, b)
    assert d["mean"] == pytest.approx(0.1)
    assert d["low"] == pytest.approx(0.1) and d["high"] == pytest.approx(0.1)  # the case variation cancels
    assert (d["wins"], d["losses"], d["ties"]) == (25, 0, 0)
    mixed = paired_difference([1.0, 0.0, 0.5, 0.2], [0.0, 1.0, 0.5, 0.1])
    assert (mixed["wins"], mixed["losses"], mixed["ties"]) == (2, 1, 1)
    with pytest.raises(ValueError, match="same cases"):
        paired_difference([1.0, 2.0], [1.0, 2.0, 3.0])


def test_results_table_grid_round_trip_and_errors():
    t = ResultsTable()
    for seed in (0, 1):
        for i, case in enumerate(["c2", "c1"]):
            t.add("a", case=case, seed=seed, value=i + seed, metric="dice")
            t.add("b", case=case, seed=seed, value=i + seed - 0.5, metric="dice")
    grid, seeds, cases = t.values("a", "dice")
    assert seeds == [0, 1] and cases == ["c1", "c2"]
    np.testing.assert_allclose(grid, [[1.0, 0.0], [2.0, 1.0]])
    assert t.paired("a", "b", "dice")["mean"] == pytest.approx(0.5)
    again = ResultsTable.from_rows(t.to_rows())
    assert again.methods() == ["a", "b"] and again.metrics() == ["dice"]
    with pytest.raises(ValueError, match="no rows"):
        t.values("c", "dice")
    t.add("a", case="c1", seed=2, value=0.3, metric="dice")
    with pytest.raises(ValueError, match="cells missing"):
        t.values("a", "dice")
    with pytest.raises(ValueError, match="finite"):
        t.add("a", case="c3", value=float("nan"))
    with pytest.raises(ValueError, match="NaN"):
        summarize([0.1, np.inf])


def test_complete_cases_keeps_the_cases_every_seed_scored():
    """A metric that exists on some cases only (HD95 of a non-empty prediction) may cover other cases per seed."""
    t = ResultsTable()
    for seed, cases in ((0, ["c1", "c2", "c3"]), (1, ["c1", "c3"])):
        for i, case in enumerate(cases):
            t.add("a", case=case, seed=seed, value=float(seed + i), metric="hd95")
            t.add("b", case=case, seed=seed, value=float(seed + i) - 1.0, metric="hd95")
    with pytest.raises(ValueError, match="cells missing"):
        t.values("a", "hd95")
    grid, seeds, cases = t.values("a", "hd95", complete_cases=True)
    assert seeds == [0, 1] and cases == ["c1", "c3"]
    np.testing.assert_allclose(grid, [[0.0, 2.0], [1.0, 2.0]])
    assert t.summary("a", "hd95", complete_cases=True)["num_cases"] == 2
    assert t.paired("a", "b", "hd95", complete_cases=True)["mean"] == pytest.approx(1.0)
    t.add("c", case="c1", seed=0, value=1.0, metric="hd95")
    t.add("c", case="c2", seed=1, value=1.0, metric="hd95")
    with pytest.raises(ValueError, match="no case was scored by every seed"):
        t.values("c", "hd95", complete_cases=True)
