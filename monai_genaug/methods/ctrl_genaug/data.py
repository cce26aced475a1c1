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
"""Ctrl-GenAug data, evaluation and bundle glue: clips from data lists (phantom sequences or BRATS slice stacks),
the downstream sequence-classifier evaluation of synthetic augmentation, the sequence filters applied to a written
synthetic data list, and the functions the ``bundles/ctrl_genaug`` configs call.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from monai.utils import optional_import
from torch import nn

from monai_genaug.data.motion_phantoms import MOTION_CLASS_NAMES, make_motion_phantoms
from monai_genaug.data.phantoms import make_sequence_phantoms
from monai_genaug.evaluation.downstream import evaluate_training_sets, variant_summaries
from monai_genaug.filters.base import FilterChain
from monai_genaug.filters.semantic import SemanticLossFilter
from monai_genaug.filters.temporal import NearDuplicateFilter, TemporalConsistencyFilter, temporal_consistency
from monai_genaug.methods.ctrl_genaug.pipeline import CtrlGenAug
from monai_genaug.methods.ctrl_genaug.training import classifier_network, train_sequence_classifier
from monai_genaug.utils.io import atomic_write_json

__all__ = [
    "load_clips",
    "prepare_sequence_data",
    "brats_slice_clips",
    "evaluate_sequence_augmentation",
    "filter_generated",
    "bundle_sequence_data",
    "bundle_validation_split",
    "bundle_generate",
    "bundle_filter",
    "bundle_evaluate",
]

nib, _has_nib = optional_import("nibabel")

logger = logging.getLogger(__name__)


def load_clips(datalist: Sequence[Mapping[str, Any]], image_key: str = "image") -> torch.Tensor:
    """Clips ``(N, 1, F, H, W)`` of datalist entries holding tensors / arrays or NIfTI paths written by
    :meth:`CtrlGenAug.write` (frames along the third axis)."""
    out = []
    for item in datalist:
        v = item[image_key]
        if isinstance(v, (str, os.PathLike)):
            if not Path(v).is_file():
                raise FileNotFoundError(f"clip file '{v}' not found; regenerate the synthetic set.")
            arr = np.asarray(nib.load(str(v)).dataobj, dtype=np.float32)
            v = arr[None] if arr.ndim == 3 else np.moveaxis(arr, -1, 0)
        out.append(torch.as_tensor(np.asarray(v), dtype=torch.float32))
    if not out:
        return torch.zeros(0)
    shapes = {tuple(t.shape) for t in out}
    if len(shapes) > 1:
        raise ValueError(f"clips have different shapes {sorted(shapes)}; all clips must share (C, F, H, W).")
    return torch.stack(out)


# ------------------------------------------------------------------------------------------------ data
def prepare_sequence_data(
    num: int = 96,
    num_frames: int = 8,
    spatial_size: Sequence[int] = (16, 16),
    num_classes: int = 2,
    test_fraction: float = 0.5,
    seed: int = 0,
    phantoms: str = "shape",
) -> dict[str, Any]:
    """Phantom sequences split into train / test.

    Args:
        num: number of clips.
        num_frames: frames per clip.
        spatial_size: frame size.
        num_classes: classes (``"shape"`` phantoms; the ``"motion"`` phantoms have 2).
        test_fraction: share of the test split.
        seed: seed of the phantoms and the split.
        phantoms: ``"shape"`` (:func:`~monai_genaug.data.phantoms.make_sequence_phantoms`: the class is the moving
            object's shape) or ``"motion"`` (:func:`~monai_genaug.data.motion_phantoms.make_motion_phantoms`: the
            class is expansion vs contraction, an order-sensitive task; split by pair).

    Returns:
        ``{"train": {"clips", "labels"}, "test": {...}, "num_classes", "class_names"}``; clips ``(N, 1, F, H, W)``.
    """
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}.")
    if phantoms == "shape":
        items = make_sequence_phantoms(num, num_frames, spatial_size, num_classes, seed)
        names = [f"class_{k}" for k in range(num_classes)]
        units = torch.arange(num)
    elif phantoms == "motion":
        if num_classes != 2:
            raise ValueError(f"motion phantoms have 2 classes (expanding, contracting); got num_classes={num_classes}.")
        items = make_motion_phantoms(num, num_frames, spatial_size, seed)
        names = list(MOTION_CLASS_NAMES)
        units = torch.tensor([int(i["pair"]) for i in items])
    else:
        raise ValueError(f"phantoms must be 'shape' or 'motion', got {phantoms!r}.")
    clips = torch.stack([torch.as_tensor(i["image"]) for i in items]).float()
    labels = torch.tensor([int(i["label"]) for i in items])
    ids = torch.unique(units)
    perm = ids[torch.randperm(ids.numel(), generator=torch.Generator().manual_seed(seed))]
    n_test = max(1, int(round(ids.numel() * test_fraction)))
    test_units = torch.isin(units, perm[:n_test])
    te, tr = torch.nonzero(test_units).reshape(-1), torch.nonzero(~test_units).reshape(-1)
    return {
        "train": {"clips": clips[tr], "labels": labels[tr]},
        "test": {"clips": clips[te], "labels": labels[te]},
        "num_classes": num_classes,
        "class_names": names,
    }


def brats_slice_clips(
    dataset_dir: str | os.PathLike,
    num_frames: int = 8,
    slice_step: int = 2,
    window_step: int = 4,
    size: int = 32,
    modality: str = "Flair",
    tumour_threshold: float = 0.01,
    cases: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Axial slice-stack clips of BRATS volumes labelled by tumour presence (a real sequence-classification task).

    For every case folder (``<case>/{modality}_subtrMeanDivStd.nii.gz``, ``OTMultiClass.nii.gz``,
    ``brainmask.nii.gz``, the DeepMedic copy of BRATS 2013): the volume is cropped to the square around the brain's
    in-plane bounding box, normalised within the brain mask (1st-99th percentile to [0, 1], 0 outside the brain), and
    windows of ``num_frames`` axial slices ``slice_step`` apart start every ``window_step`` slices inside the brain;
    each frame is area-resized to ``size x size``. Label 1 ("tumour") when the tumour voxels (any label > 0) are at
    least ``tumour_threshold`` of the brain voxels of the clip's slices, else 0.

    Args:
        dataset_dir: folder of the case folders.
        num_frames: slices per clip.
        slice_step: slice spacing inside a clip.
        window_step: slices between the starts of consecutive clips.
        size: frame side after resizing.
        modality: file prefix of the sequence (``"Flair"`` or ``"T1c"``).
        tumour_threshold: tumour fraction of the brain voxels that makes a clip positive.
        cases: case folder names to use (default all, sorted).

    Returns:
        ``{"clips": (N, 1, F, size, size), "labels": (N,), "cases": [case per clip], "tumour_fraction": (N,),
        "class_names": ["no_tumour", "tumour"], "num_classes": 2}``.
    """
    root = Path(dataset_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"BRATS folder '{root}' not found; pass the folder holding the case folders.")
    names = sorted(p.name for p in root.iterdir() if p.is_dir()) if cases is None else list(cases)
    clips, labels, owners, fractions = [], [], [], []
    span = (num_frames - 1) * slice_step + 1
    for name in names:
        case = root / name
        files = {k: case / f for k, f in (("image", f"{modality}_subtrMeanDivStd.nii.gz"),
                                          ("label", "OTMultiClass.nii.gz"), ("brain", "brainmask.nii.gz"))}
        missing = [str(f) for f in files.values() if not f.is_file()]
        if missing:
            raise FileNotFoundError(f"BRATS case '{case}' lacks {missing}; expected the DeepMedic layout.")
        vol = np.asarray(nib.load(str(files["image"])).dataobj, dtype=np.float32)
        brain = np.asarray(nib.load(str(files["brain"])).dataobj) > 0.5
        tumour = np.asarray(nib.load(str(files["label"])).dataobj) > 0.5
        lo, hi = np.percentile(vol[brain], [1, 99])
        vol = np.where(brain, np.clip((vol - lo) / max(hi - lo, 1e-6), 0, 1), 0).astype(np.float32)
        xs, ys, zs = (np.nonzero(brain.any(axis=ax))[0] for ax in ((1, 2), (0, 2), (0, 1)))
        side = max(xs[-1] - xs[0], ys[-1] - ys[0]) + 1
        cx, cy = (xs[0] + xs[-1]) // 2, (ys[0] + ys[-1]) // 2
        pad = side
        vol_p, brain_p, tumour_p = (np.pad(a, ((pad, pad), (pad, pad), (0, 0))) for a in (vol, brain, tumour))
        x0, y0 = cx - side // 2 + pad, cy - side // 2 + pad
        crop = (slice(x0, x0 + side), slice(y0, y0 + side))
        vol_c, brain_c, tumour_c = vol_p[crop], brain_p[crop], tumour_p[crop]
        for z in range(int(zs[0]), int(zs[-1]) - span + 2, window_step):
            sl = slice(z, z + span, slice_step)
            frames = torch.from_numpy(np.ascontiguousarray(vol_c[:, :, sl].transpose(2, 1, 0)))[:, None]
            frames = F.interpolate(frames, size=(size, size), mode="area")[:, 0]
            fraction = float(tumour_c[:, :, sl].sum() / max(brain_c[:, :, sl].sum(), 1))
            clips.append(frames[None])
            labels.append(int(fraction >= tumour_threshold))
            owners.append(name)
            fractions.append(fraction)
    if not clips:
        raise ValueError(f"no clip of {num_frames} slices x {slice_step} fits the brains under '{root}'.")
    return {"clips": torch.stack(clips).float(), "labels": torch.tensor(labels), "cases": owners,
            "tumour_fraction": torch.tensor(fractions), "class_names": ["no_tumour", "tumour"], "num_classes": 2}


def evaluate_sequence_augmentation(
    train_clips: torch.Tensor,
    train_labels: Sequence[int] | torch.Tensor,
    test_clips: torch.Tensor,
    test_labels: Sequence[int] | torch.Tensor,
    synthetic: Mapping[str, tuple[torch.Tensor, Sequence[int]] | None],
    num_classes: int,
    num_steps: int = 400,
    batch_size: int = 16,
    lr: float = 3e-3,
    seeds: Sequence[int] = (0,),
    output_path: str | os.PathLike | None = None,
    classifier: str = "frames",
) -> dict[str, dict[str, Any]]:
    """Train the downstream sequence classifier on real clips alone and on real + each synthetic set; test each.

    A thin wrapper of :func:`monai_genaug.evaluation.evaluate_training_sets` (the package's one downstream
    protocol): every variant trains for the same number of steps from the same initialisation per seed. For the full
    protocol (random subset of the filtered count, intervals, label curve) use
    :func:`monai_genaug.evaluation.evaluate_downstream`.

    Args:
        train_clips: real training clips ``(N, C, F, H, W)``.
        train_labels: their classes.
        test_clips: test clips.
        test_labels: their classes.
        synthetic: ``{variant: (clips, labels)}``; ``None`` is the real-only baseline.
        num_classes: number of classes.
        num_steps: training steps per run.
        batch_size: clips per step.
        lr: AdamW learning rate (cosine decay).
        seeds: one run per seed.
        output_path: also write the results as JSON.
        classifier: ``"frames"`` (:func:`sequence_classifier`, frame-averaging) or ``"temporal"``
            (:func:`temporal_classifier`, 3D convolutions over (t, h, w): needed when the class is the motion).

    Returns:
        ``{variant: {"accuracy", "accuracy_std", "accuracy_low", "accuracy_high", "balanced_accuracy", "num_train",
        "num_synthetic", "runs"}}`` (:func:`monai_genaug.evaluation.variant_summaries`); ``"rows"`` holds the
        variant's per-case scores.
    """
    variants = {
        name: None if syn is None or not len(syn[0]) else (syn[0].float(), torch.as_tensor(syn[1]).long().reshape(-1))
        for name, syn in synthetic.items()
    }
    table, counts = evaluate_training_sets(
        "classification", (train_clips.float(), torch.as_tensor(train_labels).long().reshape(-1)),
        (test_clips.float(), torch.as_tensor(test_labels).long().reshape(-1)), num_classes, variants,
        learner_fn=lambda: classifier_network(classifier, num_classes, train_clips.shape[1:]), iterations=num_steps,
        batch_size=batch_size, lr=lr, seeds=seeds,
    )
    results = variant_summaries(table, counts, num_classes)
    for name, r in results.items():
        logger.info(f"downstream '{name}': accuracy {r['accuracy']:.3f}")
    if output_path is not None:
        atomic_write_json(output_path, results)
    return results


def filter_generated(
    generated: Mapping[str, Any],
    classifier: nn.Module,
    feature_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
    alpha: float = 1.0,
    k: int = 4,
    dedup_threshold: float = 0.98,
    seed: int = 3407,
    min_confidence: float | None = None,
    real_clips: torch.Tensor | None = None,
    reference_quantiles: Sequence[float] = (0.0, 1.0),
    margin: float = 0.0,
) -> dict[str, Any]:
    """Ctrl-GenAug's noisy-sample filter on generated clips: semantic (classifier loss <= alpha x group mean, and
    optionally an absolute confidence floor) >> temporal consistency >> near-duplicates (cosine >= threshold),
    groups = source clips.

    Args:
        generated: from :meth:`CtrlGenAug.generate` (``clips``, ``labels``, ``sources``).
        classifier: a classifier trained on real clips.
        feature_fn: frame encoder of the temporal and duplicate filters (e.g. the generator's learned frame encoder,
            :attr:`CtrlGenAug.frame_features`); None: pixels.
        alpha: the semantic filter's factor of the group mean.
        k: k-means clusters of the temporal filter (when not calibrated on real clips).
        dedup_threshold: cosine similarity at which a clip is a near-duplicate.
        seed: k-means seed.
        min_confidence: absolute floor on the classifier's probability of the intended class (None: none).
        real_clips: real clips to calibrate the temporal thresholds on (their score range, ``reference_quantiles``
            and ``margin``); None: the paper's k-means midpoints of the generated clips' scores.
        reference_quantiles: quantiles of the real scores used as thresholds.
        margin: widens the real-calibrated thresholds (score points).

    Returns:
        ``{"keep": (N,) bool, "scores": (N, 3), "result": FilterResult, "kept": int, "total": int,
        "temporal_thresholds": (low, high)}``.
    """
    groups = list(generated["sources"])
    temporal = TemporalConsistencyFilter(
        feature_fn, k=k, seed=seed, calibration="kmeans" if real_clips is None else "reference",
        reference_quantiles=reference_quantiles, margin=margin,
    )
    if real_clips is not None:
        temporal.fit(real_clips)
    chain = FilterChain([
        SemanticLossFilter(classifier, alpha=alpha, groups=groups, min_confidence=min_confidence),
        temporal,
        NearDuplicateFilter(feature_fn, threshold=dedup_threshold, groups=groups),
    ])
    result = chain(generated["clips"], generated["labels"])
    tdetails = result.details["results"][1].details
    return {"keep": result.keep, "scores": result.scores, "result": result, "kept": result.num_kept,
            "total": int(result.keep.numel()), "temporal_thresholds": (tdetails.get("low"), tdetails.get("high"))}


# ------------------------------------------------------------------------------------------------ bundle steps
def bundle_sequence_data(
    dataset_dir: str | os.PathLike | None = None,
    num_phantoms: int = 64,
    num_frames: int = 8,
    image_size: Sequence[int] = (16, 16),
    num_classes: int = 2,
    test_fraction: float = 0.5,
    seed: int = 0,
    phantoms: str = "shape",
) -> dict[str, Any]:
    """The bundle's data: phantom sequences by default (``phantoms="shape"`` or the order-sensitive ``"motion"``,
    see :func:`prepare_sequence_data`), or ``dataset_dir/<class>/<clip>.nii.gz`` clips (frames along the third axis,
    as written by :meth:`CtrlGenAug.write`), split train / test with ``seed``."""
    if dataset_dir is None:
        return prepare_sequence_data(num_phantoms, num_frames, image_size, num_classes, test_fraction, seed, phantoms)
    from monai_genaug.data.folders import class_folder_datalist

    items = class_folder_datalist(dataset_dir, extensions=(".nii.gz", ".nii"), check_readable=False)
    clips = load_clips(items)
    if clips.shape[2] != num_frames:
        raise ValueError(f"clips in '{dataset_dir}' have {clips.shape[2]} frames; set num_frames={clips.shape[2]}.")
    labels = torch.tensor([int(i["label"]) for i in items])
    perm = torch.randperm(len(items), generator=torch.Generator().manual_seed(seed))
    n_test = max(1, int(round(len(items) * test_fraction)))
    te, tr = perm[:n_test].sort().values, perm[n_test:].sort().values
    names = sorted({i["class_name"] for i in items}, key=lambda c: [i["class_name"] for i in items].index(c))
    return {"train": {"clips": clips[tr], "labels": labels[tr]}, "test": {"clips": clips[te], "labels": labels[te]},
            "num_classes": len(names), "class_names": names}


def bundle_validation_split(data: Mapping[str, Any], validation_fraction: float = 0.0, seed: int = 0) -> dict[str, Any]:
    """The bundle's data with a seeded share of the training clips moved to ``data["validation"]`` (the clip stage
    selects / stops early on them, ``train_clips.json``); ``validation_fraction=0``: the data unchanged.

    Raises a clear error unless at least one clip stays on each side."""
    fraction = float(validation_fraction)
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"validation_fraction must be in [0, 1), got {validation_fraction}.")
    if fraction == 0.0:
        return dict(data)
    train = data["train"]
    n = int(train["clips"].shape[0])
    n_val = int(round(n * fraction))
    if n_val < 1 or n_val >= n:
        raise ValueError(f"validation_fraction={fraction} of {n} training clips leaves {n_val} validation and "
                         f"{n - n_val} training clips; both must be >= 1 (use more clips or another fraction).")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(int(seed)))
    va, tr = perm[:n_val].sort().values, perm[n_val:].sort().values
    return {**data, "train": {"clips": train["clips"][tr], "labels": train["labels"][tr]},
            "validation": {"clips": train["clips"][va], "labels": train["labels"][va]}}


def bundle_generate(
    generator_path: str | os.PathLike | CtrlGenAug,
    data: Mapping[str, Any],
    output_dir: str | os.PathLike,
    num_clips: int | None = None,
    num_per_clip: int = 2,
    guidance_scale: float = 2.0,
    num_inference_steps: int = 20,
    device: str | torch.device = "cpu",
) -> dict[str, Any]:
    """Generate clips from the conditions of the first ``num_clips`` real *training* clips; write them.

    ``generator_path`` is a saved generator or an already loaded :class:`CtrlGenAug` (the bundle's ``inferer``)."""
    pipe = generator_path if isinstance(generator_path, CtrlGenAug) else CtrlGenAug.load(generator_path, device=device)
    train = data["train"]
    n = len(train["clips"]) if num_clips is None else min(int(num_clips), len(train["clips"]))
    t0 = time.time()
    gen = pipe.generate(train["clips"][:n], train["labels"][:n], num_per_clip=num_per_clip,
                        guidance_scale=guidance_scale, num_inference_steps=num_inference_steps)
    entries = CtrlGenAug.write(gen, output_dir, class_names=data.get("class_names"))
    return {"num": len(entries), "seconds": time.time() - t0, "datalist": str(Path(output_dir) / "synthetic_datalist.json")}


def _read_synthetic(datalist_path: str | os.PathLike) -> tuple[list[dict], dict[str, Any]]:
    path = Path(datalist_path)
    if not path.is_file():
        raise FileNotFoundError(f"synthetic datalist '{path}' not found; run configs/inference.json first.")
    entries = json.loads(path.read_text())["training"]
    generated = {"clips": load_clips(entries), "labels": [int(e["label"]) for e in entries],
                 "sources": [e["source"] for e in entries], "seeds": [int(e["seed"]) for e in entries]}
    return entries, generated


def bundle_filter(
    data: Mapping[str, Any],
    synthetic_datalist: str | os.PathLike,
    output_dir: str | os.PathLike,
    classifier_steps: int = 400,
    alpha: float = 1.0,
    k: int = 4,
    dedup_threshold: float = 0.98,
    seed: int = 3407,
    classifier: str = "frames",
    min_confidence: float | None = None,
    calibration: str = "kmeans",
    generator_path: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Train the real-data sequence classifier, run the three filters, write the kept datalist and all scores.

    ``classifier`` picks the semantic filter's network (:func:`classifier_network`), ``min_confidence`` its absolute
    floor; ``calibration="reference"`` takes the temporal thresholds from the real training clips' range; a
    ``generator_path`` whose generator has a learned frame encoder gives the temporal / duplicate filters its frame
    features (else pixels)."""
    if calibration not in ("kmeans", "reference"):
        raise ValueError(f"calibration must be 'kmeans' or 'reference', got {calibration!r}.")
    entries, generated = _read_synthetic(synthetic_datalist)
    train = data["train"]
    n_cls = int(data["num_classes"])
    clf = train_sequence_classifier(train["clips"], train["labels"], n_cls, classifier_steps,
                                    network=classifier_network(classifier, n_cls, train["clips"].shape[1:]))
    features = None if generator_path is None else CtrlGenAug.load(generator_path).frame_features
    res = filter_generated(generated, clf, feature_fn=features, alpha=alpha, k=k, dedup_threshold=dedup_threshold,
                           seed=seed, min_confidence=min_confidence,
                           real_clips=train["clips"] if calibration == "reference" else None)
    out = Path(output_dir)
    kept = [e for e, keep in zip(entries, res["keep"].tolist()) if keep]
    atomic_write_json(out / "filtered_datalist.json", {"training": kept})
    names = ["semantic_loss", "temporal_consistency", "duplicate_similarity"]
    atomic_write_json(out / "filter_scores.json", [{"image": e["image"], "kept": bool(k_), **{n: float(s) for n, s in zip(names, row)}}
                 for e, k_, row in zip(entries, res["keep"].tolist(), res["scores"].tolist())])
    real_tc = temporal_consistency(train["clips"], features)
    summary = {"kept": res["kept"], "total": res["total"], "temporal_thresholds": list(res["temporal_thresholds"]),
               "temporal_consistency_real": float(real_tc.mean()),
               "temporal_consistency_synthetic": float(res["scores"][:, 1].mean()) if res["total"] else None,
               "datalist": str(out / "filtered_datalist.json")}
    atomic_write_json(out / "filter_summary.json", summary)
    return summary


def bundle_evaluate(
    data: Mapping[str, Any],
    synthetic_datalist: str | os.PathLike,
    filtered_datalist: str | os.PathLike,
    output_path: str | os.PathLike,
    num_steps: int = 400,
    seeds: Sequence[int] = (0,),
    classifier: str = "frames",
) -> dict[str, dict[str, Any]]:
    """Downstream sequence classification: real only, real + all synthetic clips, real + filtered clips
    (``classifier``: see :func:`evaluate_sequence_augmentation`)."""
    _, syn = _read_synthetic(synthetic_datalist)
    path = Path(filtered_datalist)
    if not path.is_file():
        raise FileNotFoundError(f"filtered datalist '{path}' not found; run configs/filter.json first.")
    kept = json.loads(path.read_text())["training"]
    filt = (load_clips(kept), [int(e["label"]) for e in kept]) if kept else None
    return evaluate_sequence_augmentation(
        data["train"]["clips"], data["train"]["labels"], data["test"]["clips"], data["test"]["labels"],
        {"real_only": None, "real+synthetic": (syn["clips"], syn["labels"]), "real+filtered": filt},
        int(data["num_classes"]), num_steps=num_steps, seeds=seeds, output_path=output_path, classifier=classifier,
    )
