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
"""One downstream-effect protocol for synthetic augmentation ("does synthetic data help on my data?").

The same learner, the same iterations, batch size, optimiser and augmentation train on

* ``real_only``: the real labelled set;
* ``real+all``: real + every synthetic sample;
* ``real+filtered``: real + the samples a filter kept;
* ``real+random``: real + a random subset of the synthetic samples of the filtered count (drawn per seed), which
  separates the filter's choice from the mere number of added samples;
* ``upper_bound`` (optional): real + more *real* labelled data (or target-modality labels), what the synthetic data
  stands in for;

for every seed (initialisation, batches, augmentation, random subset), and every trained model scores every test
case. The result is a tidy :class:`~monai_genaug.evaluation.statistics.ResultsTable` (per case, per seed, per
variant) from which means, bootstrap intervals and paired differences follow. :func:`label_curve` checks that the
learner is competent for the task: more real labels must raise its score, or no augmentation effect can show.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from monai_genaug.evaluation.learners import (
    CLASSIFICATION,
    SEGMENTATION,
    case_scores,
    classification_learner,
    predict,
    segmentation_learner,
    train_learner,
)
from monai_genaug.evaluation.statistics import ResultsTable, confusion_metrics

__all__ = [
    "DEFAULT_SEEDS",
    "default_learner",
    "evaluate_downstream",
    "evaluate_training_sets",
    "label_curve",
    "label_curve_rises",
    "metric_name",
    "variant_summaries",
]

#: at least five training seeds, the protocol's minimum
DEFAULT_SEEDS: tuple[int, ...] = (0, 1, 2, 3, 4)

Pair = tuple[torch.Tensor, torch.Tensor]


def metric_name(task: str) -> str:
    """The per-case metric of a task: ``"accuracy"`` (classification) or ``"dice"`` (segmentation)."""
    if task == CLASSIFICATION:
        return "accuracy"
    if task == SEGMENTATION:
        return "dice"
    raise ValueError(f"task must be {CLASSIFICATION!r} or {SEGMENTATION!r}, got {task!r}.")


def default_learner(task: str, images: torch.Tensor, num_classes: int, frames: bool = False) -> Callable[[], nn.Module]:
    """The learner chosen once for a task, shaped for ``images``: :class:`GlobalPoolCNN` for classification
    (frame by frame for ``(N, C, F, H, W)`` clips with ``frames=True``), MONAI ``UNet`` for segmentation.

    Args:
        task: ``"classification"`` or ``"segmentation"``.
        images: training images ``(N, C, *spatial)``.
        num_classes: classes (classification) or foreground classes (segmentation).
        frames: classification of clips, a 2D network applied per frame.
    """
    metric_name(task)
    c, spatial = int(images.shape[1]), images.ndim - 2
    if task == CLASSIFICATION:
        return lambda: classification_learner(2 if frames else spatial, c, num_classes, frames=frames)
    if frames:
        raise ValueError("frames=True applies to classification only.")
    return lambda: segmentation_learner(spatial, c, num_classes)


def _as_pair(pair: Any, what: str) -> Pair:
    if not isinstance(pair, (tuple, list)) or len(pair) != 2:
        raise ValueError(f"{what} must be an (images, targets) pair, got {type(pair).__name__}.")
    x, y = torch.as_tensor(pair[0]), torch.as_tensor(pair[1])
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"{what}: {x.shape[0]} images but {y.shape[0]} targets.")
    return x, y


def _cat(a: Pair, b: Pair | None) -> Pair:
    if b is None or b[0].shape[0] == 0:
        return a
    if tuple(a[0].shape[1:]) != tuple(b[0].shape[1:]):
        raise ValueError(
            f"synthetic images of shape {tuple(b[0].shape[1:])} differ from the real ones {tuple(a[0].shape[1:])}; "
            "resize them to the real size first."
        )
    return torch.cat([a[0].float(), b[0].float()]), torch.cat([a[1], b[1].to(a[1].dtype)])


def evaluate_downstream(
    task: str,
    train: Pair,
    test: Pair,
    num_classes: int,
    synthetic: Pair | None = None,
    keep: Sequence[bool] | torch.Tensor | None = None,
    upper_bound: Pair | None = None,
    extra: Mapping[str, Pair | None] | None = None,
    learner_fn: Callable[[], nn.Module] | None = None,
    iterations: int = 300,
    batch_size: int = 16,
    lr: float = 3e-3,
    seeds: Sequence[int] = DEFAULT_SEEDS,
    augment: bool = True,
    case_ids: Sequence[str] | None = None,
    device: str | torch.device = "cpu",
) -> tuple[ResultsTable, dict[str, dict[str, int]]]:
    """Run the downstream-effect protocol and score every test case with every trained model.

    Args:
        task: ``"classification"`` or ``"segmentation"``.
        train: real labelled ``(images, targets)``.
        test: test ``(images, targets)``.
        num_classes: classes (classification) or foreground classes (segmentation).
        synthetic: every synthetic ``(images, targets)`` sample, or None (then only ``real_only`` and ``extra``).
        keep: boolean mask over ``synthetic``: the filter's kept samples (adds ``real+filtered`` and ``real+random``).
        upper_bound: additional *real* labelled data; ``upper_bound`` trains on ``train`` + this.
        extra: further variants ``{name: synthetic pair added to train}`` (e.g. another filter).
        learner_fn: builds a fresh learner (default :func:`default_learner`); called after seeding, once per run.
        iterations: training steps of every run.
        batch_size: items per step.
        lr: learning rate.
        seeds: training seeds (>= 5 for a benchmark; fewer only for smoke tests).
        augment: random rot90 / flips during training (every variant alike).
        case_ids: test case ids (default ``case_000``...).
        device: device.

    Returns:
        ``(table, counts)``: the per-case table (metric :func:`metric_name`) and ``{variant: {"num_train",
        "num_synthetic"}}``.
    """
    metric_name(task)
    train, test = _as_pair(train, "train"), _as_pair(test, "test")
    if train[0].shape[0] == 0 or test[0].shape[0] == 0:
        raise ValueError("train and test must each hold at least one item.")
    variants: dict[str, Any] = {"real_only": None}
    if synthetic is not None:
        syn = _as_pair(synthetic, "synthetic")
        variants["real+all"] = syn
        if keep is not None:
            mask = torch.as_tensor(keep, dtype=torch.bool).reshape(-1)
            if mask.numel() != syn[0].shape[0]:
                raise ValueError(f"keep has {mask.numel()} entries for {syn[0].shape[0]} synthetic samples.")
            kept = torch.nonzero(mask).reshape(-1)
            variants["real+filtered"] = (syn[0][kept], syn[1][kept])

            def _random(s: int) -> Pair:
                g = torch.Generator().manual_seed(10_000 + int(s))
                idx = torch.randperm(syn[0].shape[0], generator=g)[: kept.numel()]
                return syn[0][idx], syn[1][idx]

            variants["real+random"] = _random
    elif keep is not None:
        raise ValueError("keep was given without synthetic samples.")
    for name, pair in (extra or {}).items():
        if name in variants:
            raise ValueError(f"extra variant {name!r} clashes with a protocol variant.")
        variants[name] = None if pair is None else _as_pair(pair, f"extra[{name!r}]")
    if upper_bound is not None:
        variants["upper_bound"] = _as_pair(upper_bound, "upper_bound")
    return evaluate_training_sets(
        task, train, test, num_classes, variants, learner_fn, iterations, batch_size, lr, seeds, augment, case_ids, device
    )


def evaluate_training_sets(
    task: str,
    train: Pair,
    test: Pair,
    num_classes: int,
    variants: Mapping[str, Pair | None | Callable[[int], Pair | None]],
    learner_fn: Callable[[], nn.Module] | None = None,
    iterations: int = 300,
    batch_size: int = 16,
    lr: float = 3e-3,
    seeds: Sequence[int] = DEFAULT_SEEDS,
    augment: bool = True,
    case_ids: Sequence[str] | None = None,
    device: str | torch.device = "cpu",
) -> tuple[ResultsTable, dict[str, dict[str, int]]]:
    """The loop under :func:`evaluate_downstream`: for every named variant and seed, train a fresh learner on
    ``train`` + the variant's added items and score every test case.

    Args:
        task: ``"classification"`` or ``"segmentation"``.
        train: real labelled ``(images, targets)``.
        test: test ``(images, targets)``.
        num_classes: classes / foreground classes.
        variants: ``{name: added (images, targets)}``; None adds nothing (the real-only baseline); a callable
            ``seed -> pair`` draws the added items per seed.
        learner_fn: builds a fresh learner (default :func:`default_learner`).
        iterations: training steps of every run.
        batch_size: items per step.
        lr: learning rate.
        seeds: training seeds.
        augment: random rot90 / flips.
        case_ids: test case ids (default ``case_000``...).
        device: device.

    Returns:
        ``(table, counts)`` as :func:`evaluate_downstream`; classification rows also hold ``target`` and
        ``prediction``.
    """
    metric = metric_name(task)
    train, test = _as_pair(train, "train"), _as_pair(test, "test")
    if not seeds:
        raise ValueError("seeds is empty; give at least one training seed (five for a benchmark).")
    ids = [f"case_{i:03d}" for i in range(test[0].shape[0])] if case_ids is None else [str(c) for c in case_ids]
    if len(ids) != test[0].shape[0] or len(set(ids)) != len(ids):
        raise ValueError(f"case_ids must be {test[0].shape[0]} distinct ids, got {len(ids)} ({len(set(ids))} distinct).")
    factory = learner_fn or default_learner(task, train[0], num_classes)
    table = ResultsTable()
    counts: dict[str, dict[str, int]] = {}
    for name, spec in variants.items():
        for seed in seeds:
            added = spec(int(seed)) if callable(spec) else spec
            added = None if added is None else _as_pair(added, f"variant {name!r}")
            x, y = _cat(train, added)
            torch.manual_seed(int(seed))
            net = train_learner(factory(), x, y, task, iterations, batch_size, lr, seed=int(seed), augment=augment,
                                device=device)
            logits = predict(net, test[0], device=device)
            scores = case_scores(logits, test[1], task).tolist()
            extra: list[dict[str, Any]] = [{} for _ in ids]
            if task == CLASSIFICATION:
                extra = [{"target": int(t), "prediction": int(p)}
                         for t, p in zip(test[1].reshape(-1).tolist(), logits.argmax(1).tolist())]
            for case, value, more in zip(ids, scores, extra):
                table.add(name, case=case, seed=int(seed), value=value, metric=metric, **more)
            n_added = 0 if added is None else int(added[0].shape[0])
            counts[name] = {"num_train": int(x.shape[0]), "num_synthetic": 0 if name == "upper_bound" else n_added}
    return table, counts


def variant_summaries(
    table: ResultsTable, counts: Mapping[str, Mapping[str, int]], num_classes: int | None = None, **kwargs: Any
) -> dict[str, dict[str, Any]]:
    """Per-variant summary in the shape the method-level helpers return: ``{variant: {"<metric>", "<metric>_std"``
    (over seeds; 0 with one seed), ``"<metric>_low", "<metric>_high"`` (bootstrap interval), ``"num_train",
    "num_synthetic", "runs"`` (per seed; classification adds balanced accuracy and macro F1 from the confusion
    matrix), ``"rows"`` (the variant's per-case rows)``}``.

    Args:
        table: from :func:`evaluate_downstream` / :func:`evaluate_training_sets`.
        counts: their counts.
        num_classes: classes (classification rows with ``target`` / ``prediction``: balanced accuracy, macro F1).
        kwargs: passed to :meth:`ResultsTable.summary` (confidence, num_resamples, seed).
    """
    out: dict[str, dict[str, Any]] = {}
    metric = table.metrics()[0]
    for name in table.methods(metric):
        s = table.summary(name, metric, **kwargs)
        runs = []
        for seed, mean in zip(sorted({r["seed"] for r in table.rows if r["method"] == name}), s["per_seed"]):
            run: dict[str, Any] = {"seed": seed, metric: mean}
            rows = [r for r in table.rows if r["method"] == name and r["seed"] == seed and "target" in r]
            if rows and num_classes:
                confusion = np.zeros((num_classes, num_classes), dtype=np.int64)
                for r in rows:
                    confusion[r["target"], r["prediction"]] += 1
                m = confusion_metrics(confusion)
                run.update(balanced_accuracy=m["balanced_accuracy"], macro_f1=m["macro_f1"])
            runs.append(run)
        entry: dict[str, Any] = {
            metric: s["mean"], f"{metric}_std": s["std_seeds"] or 0.0, f"{metric}_low": s["low"],
            f"{metric}_high": s["high"], **dict(counts.get(name, {})), "runs": runs,
            "rows": [dict(r) for r in table.rows if r["method"] == name],
        }
        for key in ("balanced_accuracy", "macro_f1"):
            if runs and key in runs[0]:
                v = np.array([r[key] for r in runs])
                entry[key] = float(v.mean())
                entry[f"{key}_std"] = float(v.std(ddof=1)) if len(v) > 1 else 0.0
        out[name] = entry
    return out


def _label_subsets(targets: torch.Tensor, sizes: Sequence[int], task: str, seed: int) -> list[torch.Tensor]:
    """Nested subsets (each larger one contains the smaller ones); stratified by class for classification."""
    g = torch.Generator().manual_seed(int(seed))
    n = targets.shape[0]
    if task == CLASSIFICATION:
        y = targets.long().reshape(-1)
        per_class = [torch.nonzero(y == k).reshape(-1) for k in torch.unique(y).tolist()]
        per_class = [idx[torch.randperm(idx.numel(), generator=g)] for idx in per_class]
        # interleave the classes so every prefix is (nearly) balanced
        order = [int(idx[i]) for i in range(max(i.numel() for i in per_class)) for idx in per_class if i < idx.numel()]
        order_t = torch.tensor(order)
    else:
        order_t = torch.randperm(n, generator=g)
    return [order_t[: int(s)] for s in sizes]


def label_curve(
    task: str,
    train: Pair,
    test: Pair,
    num_classes: int,
    sizes: Sequence[int],
    learner_fn: Callable[[], nn.Module] | None = None,
    iterations: int = 300,
    batch_size: int = 16,
    lr: float = 3e-3,
    seeds: Sequence[int] = DEFAULT_SEEDS,
    augment: bool = True,
    case_ids: Sequence[str] | None = None,
    device: str | torch.device = "cpu",
    subset_seed: int = 0,
) -> ResultsTable:
    """The learner's label curve: the same protocol trained on nested subsets of ``sizes`` real labelled items.

    A competent learner scores higher with more labels; :func:`label_curve_rises` checks it. Methods are named
    ``"<n> labels"``.

    Args:
        task: ``"classification"`` or ``"segmentation"``.
        train: the real labelled pool ``(images, targets)``.
        test: test ``(images, targets)``.
        num_classes: classes / foreground classes.
        sizes: increasing subset sizes (each <= the pool).
        learner_fn: the learner factory (the same as in :func:`evaluate_downstream`).
        iterations: training steps of every run.
        batch_size: items per step.
        lr: learning rate.
        seeds: training seeds.
        augment: random rot90 / flips.
        case_ids: test case ids.
        device: device.
        subset_seed: seed of the nested subsets.
    """
    train = _as_pair(train, "train")
    sizes = [int(s) for s in sizes]
    if len(sizes) < 2 or sorted(sizes) != sizes or len(set(sizes)) != len(sizes):
        raise ValueError(f"sizes must be at least two strictly increasing counts, got {sizes}.")
    if sizes[0] < 1 or sizes[-1] > train[0].shape[0]:
        raise ValueError(f"sizes must lie in [1, {train[0].shape[0]}] (the labelled pool), got {sizes}.")
    factory = learner_fn or default_learner(task, train[0], num_classes)
    table = ResultsTable()
    for size, idx in zip(sizes, _label_subsets(train[1], sizes, task, subset_seed)):
        part, _ = evaluate_downstream(
            task, (train[0][idx], train[1][idx]), test, num_classes, learner_fn=factory, iterations=iterations,
            batch_size=batch_size, lr=lr, seeds=seeds, augment=augment, case_ids=case_ids, device=device,
        )
        for row in part.rows:
            table.add(**{**row, "method": f"{size} labels", "num_labels": size})
    return table


def label_curve_rises(table: ResultsTable, metric: str, **kwargs: Any) -> dict[str, Any]:
    """Whether the label curve rises: the largest label count beats the smallest one (paired difference on the same
    cases and seeds, interval above zero) and the means do not fall by more than the interval half-width between
    neighbours.

    Args:
        table: from :func:`label_curve`.
        metric: its metric.
        kwargs: passed to :meth:`ResultsTable.paired` (confidence, num_resamples, seed).

    Returns:
        ``{"sizes", "means", "largest_minus_smallest": paired difference, "rises": bool}``.
    """
    methods = table.methods(metric)
    if len(methods) < 2:
        raise ValueError("a label curve needs at least two label counts.")
    sizes = [int(m.split()[0]) for m in methods]
    order = np.argsort(sizes)
    methods = [methods[i] for i in order]
    means = [table.summary(m, metric, num_resamples=1)["mean"] for m in methods]
    diff = table.paired(methods[-1], methods[0], metric, **kwargs)
    return {
        "sizes": sorted(sizes),
        "means": means,
        "largest_minus_smallest": diff,
        "rises": bool(diff["low"] > 0),
    }
