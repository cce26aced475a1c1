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
"""HistoDiffusion data and evaluation glue: the labelled / unlabelled split of a class-folder data set, materialised
(cached) items, the downstream-classifier evaluation of synthetic augmentation (Ye et al., "Synthetic Augmentation
with Large-scale Unconditional Pre-training", MICCAI 2023, arXiv:2308.04020) and the centroid filtering of a written
synthetic data list.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.networks.nets import Classifier
from torch import nn

from monai_genaug.data.folders import class_folder_datalist, load_datalist, split_datalist, write_datalist
from monai_genaug.data.phantoms import write_phantom_dataset
from monai_genaug.data.synthetic import SYNTHETIC_KEY, mix_synthetic_datalist
from monai_genaug.evaluation.downstream import evaluate_training_sets, variant_summaries
from monai_genaug.evaluation.learners import classification_learner, train_learner
from monai_genaug.filters.centroid import CentroidFilter
from monai_genaug.methods.histodiffusion.pipeline import HistoDiffusion, PenultimateFeatures
from monai_genaug.utils.io import atomic_write_json
from monai_genaug.utils.paths import is_empty_path

__all__ = [
    "prepare_histodiffusion_data",
    "materialize",
    "default_downstream_network",
    "evaluate_synthetic_augmentation",
    "filter_synthetic_datalist",
    "train_real_feature_network",
]

logger = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------------ data
def _stratified_subset(items: Sequence[dict], fraction: float, seed: int, min_per_class: int = 1) -> list[dict]:
    by_class: dict[int, list[int]] = {}
    for i, item in enumerate(items):
        by_class.setdefault(int(item["label"]), []).append(i)
    rng = np.random.default_rng(seed)
    chosen: list[int] = []
    for c in sorted(by_class):
        idx = by_class[c]
        n = min(len(idx), max(min_per_class, math.floor(fraction * len(idx) + 0.5)))
        chosen.extend(idx[int(j)] for j in rng.permutation(len(idx))[:n])
    return [items[i] for i in sorted(chosen)]


def prepare_histodiffusion_data(
    dataset_dir: str | os.PathLike | None,
    output_dir: str | os.PathLike,
    labelled_fraction: float = 0.1,
    val_fraction: float = 0.1,
    test_fraction: float = 0.2,
    seed: int = 0,
    num_phantoms: int = 240,
    phantom_classes: int = 4,
    phantom_size: Sequence[int] = (32, 32),
    class_names: Sequence[str] | None = None,
    min_labelled_per_class: int = 2,
) -> dict[str, Any]:
    """Splits of a class-per-folder data set for HistoDiffusion; phantoms when ``dataset_dir`` is None.

    The training split is the **unlabelled** pool of the autoencoder and the diffusion model; its stratified
    ``labelled_fraction`` (at least ``min_labelled_per_class`` per class) is the **labelled** set of the guidance
    classifier, the filter's centroids and the downstream classifier. Without ``dataset_dir``, ``num_phantoms``
    histology-like phantoms (:func:`~monai_genaug.data.phantoms.make_class_phantoms`) are written to
    ``output_dir/phantoms`` (replaced on every call; deterministic by ``seed``).

    Args:
        dataset_dir: ``root/<class>/<image>`` folder (e.g. Kather 2016 texture), or None for phantoms.
        output_dir: where phantoms and the datalist JSON are written.
        labelled_fraction: fraction of the training split that keeps its labels.
        val_fraction: fraction of the images for validation.
        test_fraction: fraction of the images for testing.
        seed: seed of the splits and of the phantoms.
        num_phantoms: number of phantoms.
        phantom_classes: number of phantom classes.
        phantom_size: phantom (H, W).
        class_names: class folders in label order (default: all sub-folders, sorted).
        min_labelled_per_class: minimum labelled images per class.

    Returns:
        ``{"unlabelled", "labelled", "validation", "test": datalists, "class_names": [...], "datalist": path}``.
    """
    if not 0.0 < float(labelled_fraction) <= 1.0:
        raise ValueError(f"labelled_fraction must be in (0, 1], got {labelled_fraction}.")
    output_dir = Path(output_dir).expanduser()
    if is_empty_path(dataset_dir):
        names = list(class_names) if class_names is not None else None
        root = write_phantom_dataset(
            "classes",
            output_dir / "phantoms",
            num_phantoms,
            seed=seed,
            overwrite=True,
            class_names=names,
            spatial_size=tuple(phantom_size),
            num_classes=int(phantom_classes),
        )
    else:
        root = Path(dataset_dir).expanduser()
    items = class_folder_datalist(root, class_names=class_names)
    names = [n for _, n in sorted({(i["label"], i["class_name"]) for i in items})]
    splits = split_datalist(items, val_fraction=val_fraction, test_fraction=test_fraction, seed=seed)
    labelled = _stratified_subset(splits["training"], labelled_fraction, seed, min_labelled_per_class)
    out = {
        "unlabelled": splits["training"],
        "labelled": labelled,
        "validation": splits["validation"],
        "test": splits["test"],
        "class_names": names,
    }
    out["datalist"] = str(
        write_datalist(
            {k: out[k] for k in ("unlabelled", "labelled", "validation", "test")},
            output_dir / "datalist.json",
            metadata={"class_names": names, "dataset_dir": str(root)},
        )
    )
    return out


def materialize(items: Sequence[Mapping[str, Any]], transform: Callable | None = None) -> list[dict]:
    """Apply ``transform`` (e.g. a loading pipeline) to every item once and keep the results in memory.

    Returns ``{"image": tensor, "label": int, "synthetic": 0/1}`` items (small data sets: decode PNGs only once).
    """
    out = []
    for i, item in enumerate(items):
        d = transform(dict(item)) if transform is not None else dict(item)
        if "image" not in d or "label" not in d:
            raise KeyError(f"item {i} lacks 'image' or 'label' after the transform (keys: {sorted(d)}).")
        out.append(
            {
                "image": torch.as_tensor(np.asarray(d["image"])).float(),
                "label": int(np.asarray(d["label"]).reshape(-1)[0]),
                SYNTHETIC_KEY: int(d.get(SYNTHETIC_KEY, 0)),
            }
        )
    return out


# ------------------------------------------------------------------------------------------------ downstream
def default_downstream_network(
    spatial_dims: int,
    in_channels: int,
    num_classes: int,
    image_size: Sequence[int],
    channels: Sequence[int] = (16, 32, 64),
) -> nn.Module:
    """A small MONAI ``Classifier`` (strided residual conv units) for the downstream comparison on CPU."""
    if len(image_size) != spatial_dims:
        raise ValueError(f"image_size {tuple(image_size)} must have {spatial_dims} entries.")
    return Classifier(
        in_shape=(in_channels, *image_size),
        classes=num_classes,
        channels=tuple(channels),
        strides=(2,) * len(channels),
        num_res_units=1,
        dropout=0.1,
    )


def evaluate_synthetic_augmentation(
    real_train: Sequence[Mapping[str, Any]],
    test: Sequence[Mapping[str, Any]],
    synthetic: Mapping[str, Sequence[Mapping[str, Any]] | None],
    num_classes: int,
    transform: Callable | None = None,
    ratio: float | None = None,
    per_class: bool = True,
    network_fn: Callable[[], nn.Module] | None = None,
    num_iterations: int = 300,
    batch_size: int = 16,
    lr: float = 1e-3,
    weight_decay: float = 1e-4,
    seeds: Sequence[int] = (0,),
    augment: bool = True,
    device: str | torch.device = "cpu",
    output_path: str | os.PathLike | None = None,
) -> dict[str, dict[str, Any]]:
    """Train a downstream classifier on real data alone and on real + each synthetic set; test each (stage 6).

    A thin wrapper of :func:`monai_genaug.evaluation.evaluate_training_sets` (the package's one downstream protocol):
    every variant trains the same learner for the same number of iterations (``num_iterations``, batches of
    ``batch_size``), from the same initialisation per seed, with random flips / 90-degree rotations when ``augment``.
    For the full protocol (random subset of the filtered count, upper bound, intervals, label curve) use
    :func:`monai_genaug.evaluation.evaluate_downstream`.

    Args:
        real_train: the real (labelled) training datalist.
        test: the test datalist.
        synthetic: ``{variant name: synthetic datalist}``; ``None`` (or an empty list) is the real-only baseline.
        num_classes: number of classes.
        transform: loads an item (e.g. ``classification_2d_transforms(spatial_size=...)``); None when the items hold
            image tensors already.
        ratio: synthetic items per real item (None: all of each synthetic set).
        per_class: apply ``ratio`` per class.
        network_fn: builds a fresh network (default: the protocol's learner,
            :class:`monai_genaug.evaluation.GlobalPoolCNN`; :func:`default_downstream_network` is MONAI's
            ``Classifier``, which stays near chance with few labels).
        num_iterations: training iterations per variant and seed.
        batch_size: batch size.
        lr: AdamW learning rate (cosine decay).
        weight_decay: unused (the protocol's AdamW weight decay); kept for existing callers.
        seeds: one run per seed (initialisation, batches, augmentation); the ``ratio`` subset is drawn with the first.
        augment: random flips and 90-degree rotations during training.
        device: device.
        output_path: also write the results as JSON here.

    Returns:
        ``{variant: {"accuracy", "accuracy_std", "accuracy_low", "accuracy_high", "balanced_accuracy", "macro_f1",
        ..., "num_train", "num_synthetic", "runs": [...]}}`` (:func:`monai_genaug.evaluation.variant_summaries`); 
        ``"rows"`` holds the variant's per-case scores.
    """
    if not real_train:
        raise ValueError("real_train is empty.")
    if not test:
        raise ValueError("test is empty.")
    real = materialize(real_train, transform)
    test_items = materialize(test, transform)

    def stack(items: Sequence[Mapping[str, Any]]) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.stack([torch.as_tensor(i["image"]) for i in items]).float(), torch.tensor(
            [int(i["label"]) for i in items])

    variants: dict[str, Any] = {}
    for name, items in synthetic.items():
        items = materialize(items, transform) if items else []
        if items and ratio is not None:  # the seeded subset of ``ratio`` synthetic items per real item
            mixed = mix_synthetic_datalist(real, items, ratio, seed=seeds[0], per_class=per_class,
                                           keys=("image", "label"), replace=False)
            items = [i for i in mixed if int(i.get(SYNTHETIC_KEY, 0))]
        variants[name] = stack(items) if items else None
    table, counts = evaluate_training_sets(
        "classification", stack(real), stack(test_items), num_classes, variants, learner_fn=network_fn,
        iterations=num_iterations, batch_size=batch_size, lr=lr, seeds=seeds, augment=augment, device=device,
    )
    results = variant_summaries(table, counts, num_classes)
    for name, r in results.items():
        logger.info(f"downstream '{name}': accuracy {r['accuracy']:.3f}")
    if output_path is not None:
        atomic_write_json(output_path, results)
    return results


def train_real_feature_network(
    images: torch.Tensor,
    labels: torch.Tensor | Sequence[int],
    num_classes: int,
    iterations: int = 300,
    batch_size: int = 16,
    lr: float = 3e-3,
    seed: int = 0,
    device: str | torch.device = "cpu",
) -> nn.Module:
    """Train the evaluation protocol's classifier (:class:`~monai_genaug.evaluation.GlobalPoolCNN`) on the labelled
    **real** images: the feature network of the ``"real_classifier"`` centroid-filter features
    (:class:`~monai_genaug.methods.histodiffusion.pipeline.PenultimateFeatures`), independent of the generator and of
    the guidance classifier.

    Args:
        images: ``(N, C, *spatial)`` labelled real images.
        labels: ``(N,)`` class indices.
        num_classes: number of classes.
        iterations: training steps (random flips / 90-degree rotations).
        batch_size: images per step.
        lr: AdamW learning rate.
        seed: seed of the initialisation and the batches.
        device: device.

    Returns:
        The trained network in eval mode (its ``head`` input is the feature vector).
    """
    images = torch.as_tensor(images).float()
    labels = torch.as_tensor(labels).long().reshape(-1)
    if images.ndim not in (4, 5) or images.shape[0] == 0:
        raise ValueError(f"images must be a non-empty (N, C, *spatial) batch, got shape {tuple(images.shape)}.")
    torch.manual_seed(int(seed))
    net = classification_learner(images.ndim - 2, images.shape[1], int(num_classes))
    return train_learner(net, images, labels, "classification", iterations, batch_size, lr, seed=seed, device=device)


def filter_synthetic_datalist(
    pipeline: HistoDiffusion,
    reference: Sequence[Mapping[str, Any]],
    synthetic: Sequence[Mapping[str, Any]] | str | os.PathLike,
    output_dir: str | os.PathLike,
    features: str | nn.Module | Callable = "latent",
    transform: Callable | None = None,
    max_per_class: int | None = None,
    ratio_to_real: float | None = None,
    metric: str = "mse",
    centroid_source: str = "real",
    reference_class_names: Sequence[str] | None = None,
    batch_size: int = 32,
    feature_iterations: int = 300,
    seed: int = 0,
) -> dict[str, Any]:
    """Centroid-filter a synthetic datalist on disk (the bundle's ``filter.json``).

    Writes ``output_dir/filtered_datalist.json`` (the kept items, best first per class) and
    ``output_dir/filter_scores.json`` (distance to the own centroid, nearest class, rank and decision for every
    sample).

    Args:
        pipeline: the :class:`HistoDiffusion` pipeline (its generator / classifier give the features).
        reference: real labelled datalist (the centroids).
        synthetic: synthetic datalist or the path of ``synthetic_datalist.json``.
        output_dir: output folder.
        features: ``"real_classifier"`` (the penultimate layer of a classifier trained here on ``reference``:
            independent of the generator and of the guide), ``"latent"``, ``"classifier"`` or a feature module.
        transform: loads datalist items (e.g. ``classification_2d_transforms``).
        max_per_class: cap per class.
        ratio_to_real: cap per class relative to the real count.
        metric: ``"mse"`` or ``"cosine"``.
        centroid_source: ``"real"`` or ``"real+synthetic"``.
        reference_class_names: class names of ``reference`` (must equal the pipeline's, when given).
        batch_size: images per feature call.
        feature_iterations: training steps of the ``"real_classifier"`` feature network.
        seed: seed of the ``"real_classifier"`` feature network.

    Returns:
        ``{"total", "kept", "per_class": {name: [kept, total]}, "datalist", "scores"}``.
    """
    if reference_class_names is not None and list(reference_class_names) != list(pipeline.class_names):
        raise ValueError(
            f"the real data's classes {list(reference_class_names)} differ from the pipeline's {pipeline.class_names}; "
            "filter with a classifier / generator trained on these classes."
        )
    if isinstance(synthetic, (str, os.PathLike)):
        synthetic = load_datalist(synthetic, "training")
    synthetic = list(synthetic)
    if not synthetic:
        raise ValueError("the synthetic datalist is empty; run the synthesis first.")
    extractor = features
    if features == "real_classifier":
        real = materialize(reference, transform)
        network = train_real_feature_network(
            torch.stack([i["image"] for i in real]), [i["label"] for i in real], pipeline.num_classes,
            iterations=feature_iterations, seed=seed, device=pipeline.device,
        )
        extractor = PenultimateFeatures(network)
    flt = pipeline.centroid_filter(
        extractor,
        max_per_class=max_per_class,
        ratio_to_real=ratio_to_real,
        metric=metric,
        centroid_source=centroid_source,
        transform=transform,
        batch_size=batch_size,
    ).fit(list(reference))
    result = flt(synthetic)
    kept = result.select(synthetic)
    out = Path(output_dir)
    names = pipeline.class_names
    metadata = {
        "class_names": names,
        "filter": {
            "features": features if isinstance(features, str) else type(features).__name__,
            "max_per_class": max_per_class,
            "ratio_to_real": ratio_to_real,
            "metric": metric,
            "centroid_source": centroid_source,
        },
    }
    if kept:
        datalist = write_datalist({"training": kept}, out / "filtered_datalist.json", metadata=metadata)
    else:  # write_datalist leaves empty splits out; keep an explicit empty list so that readers get []
        logger.warning("the centroid filter kept no synthetic sample; filtered_datalist.json lists none.")
        datalist = atomic_write_json(out / "filtered_datalist.json", {**metadata, "path_keys": [], "training": []})
    d = result.details
    scores = [
        {
            "image": str(item.get("image")),
            "label": int(d["labels"][i]),
            "distance": float(result.scores[i]),
            "nearest": int(d["nearest"][i]),
            "rank": int(d["rank"][i]),
            "kept": bool(result.keep[i]),
            "reason": CentroidFilter.REASONS[int(d["reason"][i])],
        }
        for i, item in enumerate(synthetic)
    ]
    scores_path = atomic_write_json(out / "filter_scores.json", scores)
    labels = d["labels"]
    per_class = {
        names[c]: [int((result.keep & (labels == c)).sum()), int((labels == c).sum())] for c in range(len(names))
    }
    summary = {
        "total": len(synthetic),
        "kept": result.num_kept,
        "per_class": per_class,
        "datalist": str(datalist),
        "scores": str(scores_path),
    }
    logger.info(f"centroid filter kept {result.num_kept} of {len(synthetic)} synthetic samples: {per_class}")
    return summary
