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
"""Statistics of benchmark results: a tidy table (one row per method, case and seed), means, standard deviations,
seeded bootstrap intervals over cases (and over seeds where training is random) and paired differences.

The interval is the percentile bootstrap (Efron & Tibshirani, *An Introduction to the Bootstrap*, 1993, ch. 13):
each resample draws the cases with replacement and, when several seeds were run, the seeds with replacement too
(a two-level bootstrap: the test set and the training randomness are both sources of variation), and the statistic
is the mean over the drawn (seed, case) grid. Paired differences resample the *same* cases and seeds for both
methods, so the variation shared by the methods (hard cases, unlucky seeds) cancels.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

__all__ = [
    "ResultsTable",
    "confusion_metrics",
    "bootstrap_interval",
    "paired_difference",
    "percentile_interval",
    "summarize",
]


def confusion_metrics(confusion: np.ndarray) -> dict[str, Any]:
    """Accuracy, balanced accuracy (mean recall over the classes present), macro F1 of a confusion matrix.

    Args:
        confusion: ``(K, K)`` counts, rows = truth, columns = prediction.

    Returns:
        ``{"accuracy", "balanced_accuracy", "macro_f1", "num_samples", "confusion"}``.
    """
    total = int(confusion.sum())
    if total == 0:
        raise ValueError("the evaluation loader gave no samples.")
    tp = np.diag(confusion).astype(float)
    support = confusion.sum(axis=1).astype(float)
    predicted = confusion.sum(axis=0).astype(float)
    present = support > 0
    recall = np.divide(tp, support, out=np.zeros_like(tp), where=support > 0)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros_like(tp), where=(precision + recall) > 0)
    return {
        "accuracy": float(tp.sum() / total),
        "balanced_accuracy": float(recall[present].mean()),
        "macro_f1": float(f1[present].mean()),
        "num_samples": total,
        "confusion": confusion.tolist(),
    }


def _grid(values: Any, what: str = "values") -> np.ndarray:
    """``values`` as a float ``(seeds, cases)`` array: 1D input is one seed."""
    arr = np.asarray(values, dtype=float)
    if arr.ndim == 1:
        arr = arr[None]
    if arr.ndim != 2:
        raise ValueError(f"{what} must be 1D (cases) or 2D (seeds x cases), got shape {arr.shape}.")
    if arr.size == 0:
        raise ValueError(f"{what} is empty; give at least one case.")
    if not np.isfinite(arr).all():
        raise ValueError(f"{what} holds NaN or Inf; drop or fill those cases before summarising.")
    return arr


def percentile_interval(samples: Sequence[float] | np.ndarray, confidence: float = 0.95) -> tuple[float, float]:
    """The central ``confidence`` interval of ``samples``: their ``(1 - c) / 2`` and ``(1 + c) / 2`` quantiles
    (linear interpolation between order statistics, numpy's default).

    Args:
        samples: bootstrap replicates (any 1D sequence).
        confidence: coverage in (0, 1).
    """
    if not 0.0 < float(confidence) < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}.")
    s = np.asarray(samples, dtype=float).reshape(-1)
    if s.size == 0:
        raise ValueError("samples is empty.")
    alpha = (1.0 - float(confidence)) / 2.0
    low, high = np.quantile(s, [alpha, 1.0 - alpha])
    return float(low), float(high)


def _bootstrap_means(grid: np.ndarray, num_resamples: int, seed: int, over_seeds: bool) -> np.ndarray:
    rng = np.random.default_rng(int(seed))
    n_seeds, n_cases = grid.shape
    cases = rng.integers(0, n_cases, size=(num_resamples, n_cases))
    if over_seeds and n_seeds > 1:
        seeds = rng.integers(0, n_seeds, size=(num_resamples, n_seeds))
    else:
        seeds = np.broadcast_to(np.arange(n_seeds), (num_resamples, n_seeds))
    # mean over the drawn seeds x drawn cases grid of each resample
    out = np.empty(num_resamples)
    for r in range(num_resamples):
        out[r] = grid[np.ix_(seeds[r], cases[r])].mean()
    return out


def bootstrap_interval(
    values: Any,
    confidence: float = 0.95,
    num_resamples: int = 2000,
    seed: int = 0,
    over_seeds: bool = True,
) -> tuple[float, float]:
    """Percentile-bootstrap interval of the mean of ``values`` (seeded, reproducible).

    Args:
        values: per-case scores, 1D ``(cases,)`` or 2D ``(seeds, cases)`` (one row per training seed, the same
            cases in every row).
        confidence: coverage of the interval.
        num_resamples: bootstrap resamples.
        seed: seed of the resampling (the same seed gives the same interval).
        over_seeds: also resample the seeds (rows) with replacement; False keeps every seed in every resample.

    Returns:
        ``(low, high)``.
    """
    grid = _grid(values)
    if int(num_resamples) < 1:
        raise ValueError(f"num_resamples must be >= 1, got {num_resamples}.")
    return percentile_interval(_bootstrap_means(grid, int(num_resamples), seed, over_seeds), confidence)


def summarize(
    values: Any, confidence: float = 0.95, num_resamples: int = 2000, seed: int = 0
) -> dict[str, Any]:
    """Mean, standard deviations and bootstrap interval of per-case (per-seed) scores.

    Args:
        values: 1D ``(cases,)`` or 2D ``(seeds, cases)`` scores.
        confidence: coverage of the interval.
        num_resamples: bootstrap resamples.
        seed: seed of the resampling.

    Returns:
        ``{"mean", "std_cases"`` (sample std over cases of the per-case mean over seeds), ``"std_seeds"`` (sample std
        over seeds of the per-seed mean over cases; None with one seed), ``"low", "high", "confidence",
        "num_cases", "num_seeds", "per_seed"`` (the per-seed means)``}``.
    """
    grid = _grid(values)
    n_seeds, n_cases = grid.shape
    low, high = bootstrap_interval(grid, confidence, num_resamples, seed)
    per_case = grid.mean(0)
    per_seed = grid.mean(1)
    return {
        "mean": float(grid.mean()),
        "std_cases": float(per_case.std(ddof=1)) if n_cases > 1 else None,
        "std_seeds": float(per_seed.std(ddof=1)) if n_seeds > 1 else None,
        "low": low,
        "high": high,
        "confidence": float(confidence),
        "num_cases": int(n_cases),
        "num_seeds": int(n_seeds),
        "per_seed": [float(v) for v in per_seed],
    }


def paired_difference(
    a: Any, b: Any, confidence: float = 0.95, num_resamples: int = 2000, seed: int = 0, tolerance: float = 0.0
) -> dict[str, Any]:
    """Difference ``a - b`` of two methods scored on the same cases (and seeds), with its bootstrap interval and the
    cases on which ``a`` wins or loses.

    Args:
        a: scores of method A, ``(cases,)`` or ``(seeds, cases)``.
        b: scores of method B on the same cases (and seeds), same shape.
        confidence: coverage of the interval.
        num_resamples: bootstrap resamples (cases and seeds are drawn once for both methods).
        seed: seed of the resampling.
        tolerance: a case is a tie when ``|mean_a - mean_b| <= tolerance`` (means over seeds).

    Returns:
        ``{"mean", "low", "high", "confidence", "wins", "losses", "ties", "num_cases", "num_seeds"}``.
    """
    ga, gb = _grid(a, "a"), _grid(b, "b")
    if ga.shape != gb.shape:
        raise ValueError(
            f"paired scores need the same cases and seeds: a has shape {ga.shape}, b {gb.shape}."
        )
    diff = ga - gb
    low, high = bootstrap_interval(diff, confidence, num_resamples, seed)
    per_case = diff.mean(0)
    return {
        "mean": float(diff.mean()),
        "low": low,
        "high": high,
        "confidence": float(confidence),
        "wins": int((per_case > tolerance).sum()),
        "losses": int((per_case < -tolerance).sum()),
        "ties": int((np.abs(per_case) <= tolerance).sum()),
        "num_cases": int(diff.shape[1]),
        "num_seeds": int(diff.shape[0]),
    }


class ResultsTable:
    """A tidy table of benchmark scores: one row per (method, case, seed, metric).

    Rows are plain dicts (``{"method", "case", "seed", "metric", "value"}`` plus any extra keys), so a table
    round-trips through JSON (:meth:`to_rows` / :meth:`from_rows`) and the report regenerates every summary
    from the rows alone.

    Example::

        table = ResultsTable()
        table.add("real_only", case="img_001", seed=0, value=1.0, metric="accuracy")
        table.summary("real_only", "accuracy")
        table.paired("real+filtered", "real_only", "accuracy")
    """

    def __init__(self, rows: Iterable[Mapping[str, Any]] | None = None) -> None:
        self.rows: list[dict[str, Any]] = []
        for row in rows or []:
            self.add(**dict(row))

    def add(self, method: str, case: Any, value: float, seed: int = 0, metric: str = "score", **extra: Any) -> None:
        """Add one score.

        Args:
            method: method / variant name.
            case: test case id (image, patient, clip).
            value: the score of that case.
            seed: training seed of the run.
            metric: metric name.
            extra: further columns kept in the row.
        """
        value = float(value)
        if not np.isfinite(value):
            raise ValueError(f"score of method {method!r}, case {case!r}, seed {seed} is {value}; scores must be finite.")
        self.rows.append(
            {"method": str(method), "case": str(case), "seed": int(seed), "metric": str(metric), "value": value,
             **extra}
        )

    def extend(self, other: ResultsTable) -> None:
        """Append the rows of another table."""
        self.rows.extend(dict(r) for r in other.rows)

    def __len__(self) -> int:
        return len(self.rows)

    def to_rows(self) -> list[dict[str, Any]]:
        """The rows (JSON-serialisable)."""
        return [dict(r) for r in self.rows]

    @classmethod
    def from_rows(cls, rows: Iterable[Mapping[str, Any]]) -> ResultsTable:
        """Build a table from rows written by :meth:`to_rows`."""
        return cls(rows)

    def _unique(self, key: str, **where: Any) -> list:
        seen: dict[Any, None] = {}
        for r in self.rows:
            if all(r.get(k) == v for k, v in where.items()):
                seen.setdefault(r[key], None)
        return list(seen)

    def methods(self, metric: str | None = None) -> list[str]:
        """Methods in order of first appearance (optionally only those with ``metric``)."""
        return self._unique("method", **({"metric": metric} if metric else {}))

    def metrics(self) -> list[str]:
        """Metrics in order of first appearance."""
        return self._unique("metric")

    def values(
        self, method: str, metric: str = "score", complete_cases: bool = False
    ) -> tuple[np.ndarray, list[int], list[str]]:
        """Scores of one method as a ``(seeds, cases)`` grid.

        Args:
            method: method name.
            metric: metric name.
            complete_cases: keep only the cases every seed scored (for metrics that exist on some cases only, e.g.
                HD95 where prediction and truth are non-empty, which can differ between training seeds); False
                refuses a missing cell.

        Returns:
            ``(grid, seeds, cases)`` with seeds and cases sorted.

        Raises:
            ValueError: no rows, a (seed, case) cell given twice, a missing cell (unless ``complete_cases``) or no
                case scored by every seed.
        """
        cells: dict[tuple[int, str], float] = {}
        for r in self.rows:
            if r["method"] == method and r["metric"] == metric:
                key = (r["seed"], r["case"])
                if key in cells:
                    raise ValueError(f"method {method!r}, metric {metric!r}: seed {key[0]}, case {key[1]!r} twice.")
                cells[key] = r["value"]
        if not cells:
            raise ValueError(f"no rows for method {method!r} and metric {metric!r}; methods: {self.methods()}.")
        seeds = sorted({k[0] for k in cells})
        cases = sorted({k[1] for k in cells})
        if complete_cases:
            cases = [c for c in cases if all((s, c) in cells for s in seeds)]
            if not cases:
                raise ValueError(f"method {method!r}, metric {metric!r}: no case was scored by every seed {seeds}.")
        missing = [(s, c) for s in seeds for c in cases if (s, c) not in cells]
        if missing:
            raise ValueError(
                f"method {method!r}, metric {metric!r}: {len(missing)} (seed, case) cells missing, e.g. {missing[0]}; "
                "every seed must score every case."
            )
        grid = np.array([[cells[(s, c)] for c in cases] for s in seeds], dtype=float)
        return grid, seeds, cases

    def summary(
        self, method: str, metric: str = "score", complete_cases: bool = False, **kwargs: Any
    ) -> dict[str, Any]:
        """:func:`summarize` of one method's scores (``complete_cases``: see :meth:`values`; ``kwargs``: confidence,
        num_resamples, seed)."""
        grid, _, _ = self.values(method, metric, complete_cases)
        return summarize(grid, **kwargs)

    def paired(
        self, method_a: str, method_b: str, metric: str = "score", complete_cases: bool = False, **kwargs: Any
    ) -> dict[str, Any]:
        """:func:`paired_difference` ``method_a - method_b`` on the (seed, case) cells both scored
        (``complete_cases``: see :meth:`values`)."""
        ga, sa, ca = self.values(method_a, metric, complete_cases)
        gb, sb, cb = self.values(method_b, metric, complete_cases)
        seeds = [s for s in sa if s in sb]
        cases = [c for c in ca if c in cb]
        if not seeds or not cases:
            raise ValueError(f"{method_a!r} and {method_b!r} share no (seed, case) cells; they cannot be paired.")
        ia = np.ix_([sa.index(s) for s in seeds], [ca.index(c) for c in cases])
        ib = np.ix_([sb.index(s) for s in seeds], [cb.index(c) for c in cases])
        return paired_difference(ga[ia], gb[ib], **kwargs)
