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
"""Evaluator handlers that write what a segmentation bundle produces, per case and per run.

Attach them to a MONAI ``SupervisedEvaluator`` (bundle ``"handlers"``). They read the post-processed, decollated
outputs (``engine.state.output``: one dict per case, batch keys included), so they never change what the evaluator
computes, and MONAI Label (which runs ``preprocessing`` / ``inferer`` / ``postprocessing`` only) is not affected.

- :class:`CaseMapWriter`: label map, foreground probability and uncertainty per case: PNG in 2D (label 0/255 for
  binary, label values for multi-class; probability and uncertainty scaled to 0-255), NIfTI in 3D (with the affine of
  the input file, after ``Invertd``).
- :class:`TTGAPictureSaver`: pictures to look at: ``<id>_views.png`` (the image and its generated views) and
  ``<id>_panel.png`` (image, views, truth, TTGA prediction, segmenter alone, mean probability, entropy, error map,
  with titles). 3D cases show the axial slice with the most foreground.
- :class:`SegmentationComparisonWriter`: ``metrics.csv`` with Dice, HD95 and error-estimation AUC with and without
  TTGA per case, ``summary.json`` with their means; the means also go to ``engine.state.metrics`` (logged by
  MLflow when the bundle runs with ``--tracking mlflow``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
import csv
import gzip
import io
import json
import logging
import math
import os
from pathlib import Path
import time
from typing import Any

from ignite.engine import Events
from monai.data import MetaTensor
from monai.transforms import Invertd, SaveImaged
import nibabel as nib
import numpy as np
from PIL import Image, ImageDraw, ImageFont
import torch
from torch import nn
import torch.nn.functional as F

from monai_genaug.utils.io import atomic_write, atomic_write_bytes, atomic_write_text
from monai_genaug.metrics.cases import case_metrics, flip_tta_probabilities
from monai_genaug.transforms.validation import source_name
from monai_genaug.metrics.uncertainty import uncertainty_maps
from monai_genaug.metrics.view_diversity import DIVERSITY_KEYS
from monai_genaug.utils.paths import is_empty_path
from monai_genaug.utils.images import save_image_grid

__all__ = [
    "CaseMapWriter",
    "SegmentationComparisonWriter",
    "TTAUncertaintyWriter",
    "TTGAPictureSaver",
    "case_id",
    "colormap",
    "compose_panel",
    "engine_items",
    "SegmentationGridSaver",
    "image_meta",
    "label_map_saver",
]

logger = logging.getLogger(__name__)

_PALETTE = np.array(
    [[0, 0, 0], [230, 60, 60], [60, 200, 80], [70, 110, 240], [240, 200, 50], [200, 80, 220], [60, 210, 220]],
    dtype=np.float32,
)
# anchors of a perceptual dark-to-bright colour map (black, purple, red, orange, pale yellow)
_CMAP = np.array([[0, 0, 4], [87, 16, 110], [188, 55, 84], [249, 142, 9], [252, 255, 164]], dtype=np.float32)


def _np(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        x = x.as_tensor() if hasattr(x, "as_tensor") else x
        return x.float().numpy() if x.is_floating_point() else x.numpy()
    return np.asarray(x)


def case_id(item: Mapping[str, Any], index: int, image_key: str = "image", id_key: str = "id") -> str:
    """A file-name-safe id of a case: the datalist ``id``, else the image file's stem, else ``case_<index>``."""
    cid = item.get(id_key)
    if isinstance(cid, (list, tuple)):
        cid = cid[0] if cid else None
    if not cid:
        name = source_name(item.get(image_key), "")
        cid = Path(name.strip("'")).name.split(".")[0] if name else f"case_{index:04d}"
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in str(cid))


def engine_items(engine) -> list[dict[str, Any]]:
    """The cases of the current iteration: each decollated batch dict merged with its output dict (outputs win)."""
    outputs = engine.state.output if isinstance(engine.state.output, list) else [engine.state.output]
    batch = engine.state.batch if isinstance(engine.state.batch, list) else [None] * len(outputs)
    return [{**(b if isinstance(b, Mapping) else {}), **o} for b, o in zip(batch, outputs)]


def colormap(values: np.ndarray, vmin: float = 0.0, vmax: float = 1.0) -> np.ndarray:
    """Map a 2D array to RGB uint8 with a dark-to-bright perceptual colour map."""
    v = np.clip((np.asarray(values, dtype=np.float32) - vmin) / max(vmax - vmin, 1e-12), 0.0, 1.0)
    pos = v * (len(_CMAP) - 1)
    i = np.clip(np.floor(pos).astype(int), 0, len(_CMAP) - 2)
    f = (pos - i)[..., None]
    return (_CMAP[i] * (1 - f) + _CMAP[i + 1] * f).round().astype(np.uint8)


def _to_rgb(image: np.ndarray, lo: float | None = None, hi: float | None = None) -> np.ndarray:
    """(C, H, W) image -> (H, W, 3) uint8 (RGB as is, otherwise the first channel in grey), scaled from [lo, hi]
    (default: the image's own min and max)."""
    img = image[:3] if image.shape[0] == 3 else np.repeat(image[:1], 3, axis=0)
    lo = float(img.min()) if lo is None else lo
    hi = float(img.max()) if hi is None else hi
    img = np.clip((img - lo) / max(hi - lo, 1e-8), 0.0, 1.0)
    return (img.transpose(1, 2, 0) * 255).round().astype(np.uint8)


def _overlay(rgb: np.ndarray, labels: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    out = rgb.astype(np.float32).copy()
    lab = np.clip(labels.astype(int), 0, len(_PALETTE) - 1)
    mask = lab > 0
    out[mask] = (1 - alpha) * out[mask] + alpha * _PALETTE[lab[mask]]
    return out.round().astype(np.uint8)


def _error_tile(rgb: np.ndarray, pred: np.ndarray, label: np.ndarray) -> np.ndarray:
    """Grey image with false positives red, false negatives blue (any other wrong class: yellow)."""
    grey = rgb.astype(np.float32).mean(-1, keepdims=True).repeat(3, -1) * 0.5
    fp = (pred > 0) & (label == 0)
    fn = (pred == 0) & (label > 0)
    other = (pred != label) & ~fp & ~fn
    grey[fp] = [255, 40, 40]
    grey[fn] = [40, 120, 255]
    grey[other] = [255, 220, 40]
    return grey.round().astype(np.uint8)


def compose_panel(
    rows: Sequence[Sequence[tuple[str, np.ndarray]]], tile_size: int = 128, title_height: int = 14
) -> Image.Image:
    """Lay out titled RGB tiles (H, W, 3 uint8) in rows; every tile is resized to ``tile_size`` (longest side)."""
    ncols = max(len(r) for r in rows)
    font = ImageFont.load_default()
    tiles = []
    for row in rows:
        out_row = []
        for title, arr in row:
            im = Image.fromarray(arr)
            scale = tile_size / max(im.size)
            out_row.append((title, im.resize((max(1, round(im.size[0] * scale)), max(1, round(im.size[1] * scale))),
                                             Image.NEAREST)))
        tiles.append(out_row)
    cell_w = tile_size + 4
    cell_h = tile_size + title_height + 4
    canvas = Image.new("RGB", (ncols * cell_w + 4, len(rows) * cell_h + 4), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for r, row in enumerate(tiles):
        for c, (title, im) in enumerate(row):
            x, y = 4 + c * cell_w, 4 + r * cell_h
            draw.text((x, y), title[:22], fill=(0, 0, 0), font=font)
            canvas.paste(im, (x, y + title_height))
    return canvas


def _atomic_image(img: Image.Image, path: Path) -> Path:
    return atomic_write(path, lambda f: img.save(f, format="PNG"))


def _slice_index(volumes: Sequence[np.ndarray | None]) -> int:
    """Index along the last axis with the most foreground in the first volume that has any (else the middle)."""
    for v in volumes:
        if v is not None and v.any():
            return int(np.argmax((v > 0).reshape(-1, v.shape[-1]).sum(0)))
    first = next(v for v in volumes if v is not None)
    return first.shape[-1] // 2


class CaseMapWriter:
    """Write each case's label map, foreground probability and uncertainty map (PNG in 2D, NIfTI in 3D).

    Files: ``<id>_label``, ``<id>_prob`` (``1 - p(background)``) and ``<id>_<key>`` for each uncertainty key
    (default ``<id>_entropy``), ``.png`` in 2D and ``.nii.gz`` in 3D (affine from the output's meta data, i.e. the
    input file's after ``Invertd``).

    Args:
        output_dir: destination folder.
        spatial_dims: 2 or 3.
        num_classes: foreground classes (binary label maps are written 0/255 in PNG).
        label_key: key of the label map (1, *spatial).
        prob_key: key of the class probabilities (C, *spatial).
        uncertainty_keys: keys of one-channel uncertainty maps in [0, 1].
    """

    def __init__(
        self,
        output_dir: str | os.PathLike,
        spatial_dims: int = 2,
        num_classes: int = 1,
        label_key: str = "pred",
        prob_key: str = "prob",
        uncertainty_keys: Sequence[str] = ("entropy",),
    ) -> None:
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}.")
        self.output_dir = Path(output_dir)
        self.spatial_dims = spatial_dims
        self.num_classes = int(num_classes)
        self.label_key = label_key
        self.prob_key = prob_key
        self.uncertainty_keys = list(uncertainty_keys)
        self.count = 0
        self.written: list[Path] = []

    def attach(self, engine) -> None:
        engine.add_event_handler(Events.STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    def _reset(self, engine=None) -> None:
        self.count = 0
        self.written = []

    def _write(self, array: np.ndarray, stem: str, kind: str, meta: Mapping[str, Any]) -> Path:
        self.output_dir.mkdir(parents=True, exist_ok=True)
        if self.spatial_dims == 2:
            if kind == "label":
                arr = array * 255 if self.num_classes == 1 else array
                img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
            else:
                img = Image.fromarray((np.clip(array, 0.0, 1.0) * 255).round().astype(np.uint8))
            return _atomic_image(img, self.output_dir / f"{stem}.png")
        affine = _np(meta.get("affine", np.eye(4))).astype(np.float64)
        data = array.astype(np.uint8) if kind == "label" else array.astype(np.float32)
        path = self.output_dir / f"{stem}.nii.gz"
        return atomic_write_bytes(path, gzip.compress(nib.Nifti1Image(data, affine).to_bytes()))

    def __call__(self, engine) -> None:
        for item in engine_items(engine):
            cid = case_id(item, self.count)
            self.count += 1
            meta = dict(getattr(item.get(self.label_key), "meta", {}) or {})
            if self.label_key in item:
                self.written.append(self._write(_np(item[self.label_key])[0], f"{cid}_label", "label", meta))
            if self.prob_key in item:
                p = _np(item[self.prob_key])
                fg = p[0] if p.shape[0] == 1 else 1.0 - p[0]
                self.written.append(self._write(fg, f"{cid}_prob", "prob", meta))
            for key in self.uncertainty_keys:
                if key in item:
                    self.written.append(self._write(_np(item[key])[0], f"{cid}_{key}", "prob", meta))


class TTAUncertaintyWriter(CaseMapWriter):
    """Write the uncertainty maps a :class:`~monai_genaug.inferers.GenerativeTTAInferer` kept for the current batch
    (``last_output``: entropy, mutual information, variance averaged over classes), on the input file's grid.

    For TTGA on another bundle (``bundles/ttga/configs/overlay.json``): that bundle's postprocessing knows nothing
    of the maps, so this handler maps them back itself with ``Invertd`` through the bundle's ``preprocessing`` (the
    applied operations of each case's ``image``) and writes ``<id>_<key>`` (``.png`` in 2D, ``.nii.gz`` in 3D).

    Args:
        output_dir: destination folder.
        inferer: the generative TTA inferer (or a wrapper of it with an ``inferer`` attribute).
        preprocessing: the bundle's preprocessing (None: maps stay on the network's grid).
        keys: the maps to write.
        image_key: the key of the image whose applied operations are inverted.
    """

    def __init__(
        self,
        output_dir: str | os.PathLike,
        inferer: Any,
        preprocessing: Any | None = None,
        keys: Sequence[str] = ("entropy", "mutual_information", "variance"),
        image_key: str = "image",
    ) -> None:
        super().__init__(output_dir, uncertainty_keys=keys)
        while not hasattr(inferer, "last_output") and hasattr(inferer, "inferer"):
            inferer = inferer.inferer
        if not hasattr(inferer, "last_output"):
            raise TypeError(f"inferer must be a GenerativeTTAInferer (or wrap one), got {type(inferer).__name__}.")
        self.inferer = inferer
        self.image_key = image_key
        self.invert = (
            Invertd(list(keys), transform=preprocessing, orig_keys=image_key, nearest_interp=False, to_tensor=True)
            if preprocessing is not None
            else None
        )

    def __call__(self, engine) -> None:
        maps = self.inferer.last_output or {}
        for i, item in enumerate(engine_items(engine)):
            cid = case_id(item, self.count, self.image_key)
            self.count += 1
            image = item.get(self.image_key)
            data: dict[str, Any] = {self.image_key: image}
            for key in self.uncertainty_keys:
                m = maps[key][i].detach().cpu().float()
                m = m.mean(dim=0, keepdim=True) if m.shape[0] > 1 else m
                data[key] = MetaTensor(m, meta=dict(getattr(image, "meta", {}) or {}),
                                       applied_operations=list(getattr(image, "applied_operations", []) or []))
            if self.invert is not None and isinstance(image, MetaTensor):
                data = self.invert(data)
            for key in self.uncertainty_keys:
                self.spatial_dims = data[key].ndim - 1
                meta = dict(getattr(data[key], "meta", {}) or {})
                self.written.append(self._write(_np(data[key])[0], f"{cid}_{key}", "prob", meta))


class TTGAPictureSaver:
    """Per case ``<id>_views.png`` (image + generated views) and ``<id>_panel.png`` (titled overview).

    The panel's first row is the image and its views; the second: truth (if any), TTGA prediction, segmenter alone,
    mean foreground probability, entropy and error map (false positives red, false negatives blue), all at the
    network's resolution. Views come from the TTGA inferer's ``last_output`` (keep ``keep_views=True``).

    Args:
        output_dir: destination folder.
        inferer: the :class:`~monai_genaug.inferers.generative_tta.GenerativeTTAInferer` of the evaluator.
        image_key: key of the network-resolution image.
        label_key: key of the truth (any resolution; resized to the image, nearest).
        prob_key: key of the network-resolution TTGA probability (C, *spatial).
        base_prob_key: key of the network-resolution segmenter-alone probability.
        entropy_key: key of the network-resolution entropy.
        max_views: views shown.
        max_cases: cases drawn (None: all).
        tile_size: pixels of the longest side of every tile.
    """

    def __init__(
        self,
        output_dir: str | os.PathLike,
        inferer: Any | None = None,
        image_key: str = "image",
        label_key: str = "label",
        prob_key: str = "prob_net",
        base_prob_key: str = "prob_base_net",
        entropy_key: str = "entropy_net",
        max_views: int = 8,
        max_cases: int | None = None,
        tile_size: int = 128,
    ) -> None:
        self.output_dir = Path(output_dir)
        self.inferer = inferer
        self.image_key, self.label_key = image_key, label_key
        self.prob_key, self.base_prob_key, self.entropy_key = prob_key, base_prob_key, entropy_key
        self.max_views = int(max_views)
        self.max_cases = max_cases
        self.tile_size = int(tile_size)
        self.count = 0
        self.written: list[Path] = []

    def attach(self, engine) -> None:
        engine.add_event_handler(Events.STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    def _reset(self, engine=None) -> None:
        self.count = 0
        self.written = []

    def _views(self) -> torch.Tensor | None:
        out = getattr(self.inferer, "last_output", None) if self.inferer is not None else None
        return None if not out or "views" not in out else out["views"]

    def __call__(self, engine) -> None:
        views = self._views()
        for b, item in enumerate(engine_items(engine)):
            index = self.count
            self.count += 1
            if self.max_cases is not None and index >= self.max_cases:
                continue
            if self.image_key not in item:
                continue
            self.written += self.draw(item, None if views is None else views[b], case_id(item, index))

    def draw(self, item: Mapping[str, Any], views: torch.Tensor | None, cid: str) -> list[Path]:
        """Write the two pictures of one case; returns their paths."""
        image = _np(item[self.image_key])
        spatial = image.shape[1:]
        label = None
        if self.label_key in item and item[self.label_key] is not None:
            lab = torch.as_tensor(_np(item[self.label_key])).float()[None]
            if tuple(lab.shape[2:]) != tuple(spatial):
                lab = F.interpolate(lab, size=tuple(spatial), mode="nearest")
            label = lab[0, 0].round().long().numpy()
        prob = _np(item[self.prob_key]) if self.prob_key in item else None
        base = _np(item[self.base_prob_key]) if self.base_prob_key in item else None
        entropy = _np(item[self.entropy_key])[0] if self.entropy_key in item else None
        pred = prob.argmax(0) if prob is not None else None
        pred_base = base.argmax(0) if base is not None else None
        v = _np(views) if views is not None else None
        if image.ndim == 4:  # 3D: one axial slice
            z = _slice_index([label, pred])
            image = image[..., z]
            label = label[..., z] if label is not None else None
            prob = prob[..., z] if prob is not None else None
            pred = pred[..., z] if pred is not None else None
            pred_base = pred_base[..., z] if pred_base is not None else None
            entropy = entropy[..., z] if entropy is not None else None
            v = v[..., z] if v is not None else None
            slice_note = f" z={z}"
        else:
            slice_note = ""
        shown = image[:3] if image.shape[0] == 3 else image[:1]
        lo, hi = float(shown.min()), float(shown.max())
        rgb = _to_rgb(image, lo, hi)
        top = [("image" + slice_note, rgb)]
        if v is not None:  # views on the image's intensity scale, so intensity changes stay visible
            top += [(f"view {i + 1}", _to_rgb(v[i], lo, hi)) for i in range(min(len(v), self.max_views))]
        bottom = []
        if label is not None:
            bottom.append(("truth", _overlay(rgb, label)))
        if pred is not None:
            bottom.append(("TTGA prediction", _overlay(rgb, pred)))
        if pred_base is not None:
            bottom.append(("segmenter alone", _overlay(rgb, pred_base)))
        if prob is not None:
            bottom.append(("mean prob (fg)", colormap(1.0 - prob[0] if prob.shape[0] > 1 else prob[0])))
        if entropy is not None:
            bottom.append(("entropy", colormap(entropy, 0.0, max(float(entropy.max()), 1e-6))))
        if label is not None and pred is not None:
            bottom.append(("error FP red FN blue", _error_tile(rgb, pred, label)))
        paths = []
        if v is not None:
            paths.append(_atomic_image(compose_panel([top], self.tile_size), self.output_dir / f"{cid}_views.png"))
        rows = [top, bottom] if bottom else [top]
        paths.append(_atomic_image(compose_panel(rows, self.tile_size), self.output_dir / f"{cid}_panel.png"))
        return paths


def _normalised_entropy(prob: np.ndarray) -> np.ndarray:
    p = np.clip(prob.astype(np.float64), 1e-12, 1.0)
    return (-(p * np.log(p)).sum(0) / math.log(max(p.shape[0], 2)))[None]


class SegmentationComparisonWriter:
    """Per-case Dice, HD95 and error-estimation AUC with and without TTGA: ``metrics.csv`` and ``summary.json``.

    Per case (when the output has a label): ``dice_ttga``, ``dice_baseline``, ``hd95_ttga``, ``hd95_baseline``,
    ``error_auc_ttga`` (entropy of the TTGA ensemble as a detector of TTGA's wrong pixels), ``error_auc_baseline``
    (entropy of the segmenter's own softmax), the wrong-pixel fractions, plus ``seconds`` per case and the identity
    optimisation's ``iterations`` / ``identity_loss`` when the TTGA inferer is given. Cases without a label get a row
    with the timings only. At the end the means (NaN-aware) go to ``summary.json`` and to ``engine.state.metrics``.

    Args:
        output_dir: destination folder.
        num_classes: foreground classes.
        inferer: the TTGA inferer (for identity-optimisation diagnostics), optional.
        pred_key: TTGA label map key.
        base_key: segmenter-alone label map key.
        label_key: truth key (same grid as the predictions).
        uncertainty_key: TTGA uncertainty key.
        base_prob_key: segmenter-alone probability key (its entropy is the baseline uncertainty).
        filename: CSV file name.
        settings: JSON-like run settings stored in ``summary.json``.
        flip_tta_examples: also evaluate flip TTA (MONAI ``TestTimeAugmentation`` with random flips, see
            :func:`~monai_genaug.metrics.cases.flip_tta_probabilities`) with this many copies (0: off); its
            columns end in ``_flip``. Needs ``network`` and ``preprocessing`` (to invert to the label's grid).
        network: the segmenter, for flip TTA.
        preprocessing: the evaluator's pre-processing (its inverse maps flip-TTA probabilities to the label grid).
        image_key: network-resolution image key (flip TTA input).
        reconstruction_gate: also segment the augmenter's identity-path reconstruction of every image
            (``inferer.augmenter.reconstruct``, without any detail transfer) and report its Dice (``dice_reconstruction``
            per case); ``summary.json`` gets ``reconstruction_gate_ratio`` = mean ``dice_reconstruction`` / mean
            ``dice_baseline`` and ``reconstruction_gate_passed`` = ratio >= this value (TTGA issue #16: 0.98). A
            generator that fails it cannot make views the segmenter reads like the image. ``None``: off. Needs
            ``network``, ``preprocessing`` and the TTGA ``inferer``.
    """

    def __init__(
        self,
        output_dir: str | os.PathLike,
        num_classes: int = 1,
        inferer: Any | None = None,
        pred_key: str = "pred",
        base_key: str = "pred_base",
        label_key: str = "label",
        uncertainty_key: str = "entropy",
        base_prob_key: str = "prob_base",
        filename: str = "metrics.csv",
        settings: Mapping[str, Any] | None = None,
        flip_tta_examples: int = 0,
        network: Any | None = None,
        preprocessing: Any | None = None,
        image_key: str = "image",
        reconstruction_gate: float | None = None,
    ) -> None:
        if flip_tta_examples and (network is None or preprocessing is None):
            raise ValueError("flip_tta_examples > 0 needs the segmenter (network) and the preprocessing transform.")
        if reconstruction_gate is not None:
            if network is None or preprocessing is None or not hasattr(getattr(inferer, "augmenter", None),
                                                                      "reconstruct"):
                raise ValueError("reconstruction_gate needs the segmenter (network), the preprocessing transform and "
                                 "the TTGA inferer (whose augmenter has reconstruct()).")
            if not 0.0 < float(reconstruction_gate) <= 1.0:
                raise ValueError(f"reconstruction_gate is a Dice ratio in (0, 1], e.g. 0.98; got {reconstruction_gate}.")
        self.reconstruction_gate = None if reconstruction_gate is None else float(reconstruction_gate)
        self.output_dir = Path(output_dir)
        self.num_classes = int(num_classes)
        self.inferer = inferer
        self.pred_key, self.base_key, self.label_key = pred_key, base_key, label_key
        self.uncertainty_key, self.base_prob_key = uncertainty_key, base_prob_key
        self.filename = filename
        self.settings = dict(settings or {})
        self.flip_tta_examples = int(flip_tta_examples)
        self.network = network
        self.image_key = image_key
        self._invert = (
            Invertd(keys="_flip", transform=preprocessing, orig_keys=image_key, nearest_interp=False, to_tensor=True)
            if self.flip_tta_examples or reconstruction_gate is not None
            else None
        )
        self.rows: list[dict[str, Any]] = []
        self._t0 = 0.0

    def attach(self, engine) -> None:
        engine.add_event_handler(Events.STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_STARTED, self._start)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.write)

    def _reset(self, engine=None) -> None:
        self.rows = []

    def _start(self, engine=None) -> None:
        self._t0 = time.perf_counter()

    def _diagnostics(self) -> dict[str, Any]:
        aug = getattr(self.inferer, "augmenter", None)
        out = getattr(aug, "last_output", None)
        if out is None:
            return {}
        return {"iterations": int(out.state.iterations), "identity_loss": float(out.state.final_loss),
                "identity_fraction": float(out.identity_fraction.float().mean())}

    def _view_diversity(self, index: int) -> dict[str, float]:
        """The views' diversity of batch item ``index`` from the TTGA inferer's last call (empty without it)."""
        last = getattr(self.inferer, "last_output", None) or {}
        return {k: float(last[k][index]) for k in (*DIVERSITY_KEYS, "segmenter_calls")
                if k in last and last[k].ndim == 1 and index < last[k].shape[0]}

    def __call__(self, engine) -> None:
        items = engine_items(engine)
        seconds = (time.perf_counter() - self._t0) / max(len(items), 1)
        diag = self._diagnostics()
        for index, item in enumerate(items):
            row: dict[str, Any] = {"id": case_id(item, len(self.rows)), "seconds": round(seconds, 3), **diag,
                                   **self._view_diversity(index)}
            label = item.get(self.label_key)
            if label is not None and self.pred_key in item:
                ttga = case_metrics(item[self.pred_key], label, self.num_classes, item.get(self.uncertainty_key))
                row.update({f"{k}_ttga": v for k, v in ttga.items()})
                if self.base_key in item:
                    unc = _normalised_entropy(_np(item[self.base_prob_key])) if self.base_prob_key in item else None
                    base = case_metrics(item[self.base_key], label, self.num_classes, unc)
                    row.update({f"{k}_baseline": v for k, v in base.items()})
                if self.flip_tta_examples:
                    row.update({f"{k}_flip": v for k, v in self._flip_metrics(item, label).items()})
                if self.reconstruction_gate is not None:
                    row["dice_reconstruction"] = self._reconstruction_metrics(item, label)["dice"]
            self.rows.append(row)

    def _reconstruction_metrics(self, item: Mapping[str, Any], label: Any) -> dict[str, float]:
        """Case metrics of the segmenter on the augmenter's identity-path reconstruction of the image."""
        image = item[self.image_key]
        device = next(self.network.parameters()).device
        recon = self.inferer.augmenter.reconstruct(image)
        with torch.no_grad():
            logits = self.network(recon.to(device))
        probs = torch.softmax(logits.float(), dim=1) if logits.shape[1] > 1 else torch.sigmoid(logits.float())
        return self._inverted_metrics(item, label, probs)

    def _flip_metrics(self, item: Mapping[str, Any], label: Any) -> dict[str, float]:
        image = item[self.image_key]
        device = next(self.network.parameters()).device
        probs = flip_tta_probabilities(self.network, image, self.flip_tta_examples, device=device)
        return self._inverted_metrics(item, label, probs)

    def _inverted_metrics(self, item: Mapping[str, Any], label: Any, probs: torch.Tensor) -> dict[str, float]:
        """Case metrics of probabilities (K, C, *spatial) on the network grid, fused and inverted to the label's."""
        image = item[self.image_key]
        maps = uncertainty_maps(probs, normalize=True)
        stacked = torch.cat([maps["mean"], maps["entropy"]], dim=0)
        meta = dict(getattr(image, "meta", {}) or {})
        ops = list(getattr(image, "applied_operations", []) or [])
        inv = self._invert({self.image_key: image, "_flip": MetaTensor(stacked, meta=meta, applied_operations=ops)})
        out = _np(inv["_flip"])
        prob, entropy = out[:-1], out[-1:]
        return case_metrics(torch.as_tensor(prob.argmax(0)[None]), label, self.num_classes, torch.as_tensor(entropy))

    def summary(self) -> dict[str, Any]:
        """Means of the numeric columns over the cases (NaN ignored) and the number of cases."""
        keys = [k for k in (self.rows[0] if self.rows else {}) if k != "id"]
        for r in self.rows:
            keys += [k for k in r if k not in keys and k != "id"]
        means: dict[str, Any] = {"num_cases": len(self.rows)}
        for k in keys:
            vals = [float(r[k]) for r in self.rows if k in r and r[k] is not None and not math.isnan(float(r[k]))]
            means[k] = float(np.mean(vals)) if vals else None
        if self.reconstruction_gate is not None and means.get("dice_reconstruction") is not None \
                and means.get("dice_baseline"):
            ratio = means["dice_reconstruction"] / means["dice_baseline"]
            means["reconstruction_gate_ratio"] = float(ratio)
            means["reconstruction_gate_passed"] = bool(ratio >= self.reconstruction_gate)
        return means

    def write(self, engine=None) -> Path | None:
        """Write ``metrics.csv`` and ``summary.json``; put the means into ``engine.state.metrics``."""
        if not self.rows:
            return None
        self.output_dir.mkdir(parents=True, exist_ok=True)
        cols: list[str] = []
        for r in self.rows:
            cols += [k for k in r if k not in cols]
        path = self.output_dir / self.filename
        buffer = io.StringIO(newline="")
        w = csv.DictWriter(buffer, fieldnames=cols)
        w.writeheader()
        for r in self.rows:
            w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})
        atomic_write_text(path, buffer.getvalue())
        summary = self.summary()
        atomic_write_text(
            self.output_dir / "summary.json",
            json.dumps({"summary": summary, "settings": self.settings}, indent=2, default=str),
        )
        if engine is not None:
            for k, v in summary.items():
                if isinstance(v, float) and k not in ("seconds",):
                    engine.state.metrics[k] = v
        shown = {k: round(v, 4) for k, v in summary.items() if isinstance(v, float) and k.startswith(("dice", "error"))}
        logger.info(f"wrote '{path}' ({len(self.rows)} cases): {shown}")
        return path


def label_map_saver(
    output_dir: str | os.PathLike,
    spatial_dims: int = 2,
    num_classes: int = 1,
    key: str = "pred",
    postfix: str = "seg",
    data_root_dir: str | os.PathLike = "",
) -> SaveImaged:
    """A ``SaveImaged`` writing label maps: PNG in 2D (binary as 0/255, multi-class as label values), NIfTI in 3D
    (uint8 labels with the affine of the inverted prediction, i.e. the input file's affine).

    Args:
        output_dir: destination folder.
        spatial_dims: 2 (PNG) or 3 (NIfTI).
        num_classes: foreground classes K.
        key: key of the (1, *spatial) label map.
        postfix: file name postfix (``<input stem>_<postfix>.png``).
        data_root_dir: the data folder; the input's sub-folders below it are kept (``case_0001/Flair_seg.nii.gz``),
            which keeps case folders whose files share a name apart.
    """
    data_root_dir = "" if is_empty_path(data_root_dir) else str(data_root_dir)
    if spatial_dims == 2:
        saver = SaveImaged(
            keys=key,
            output_dir=str(output_dir),
            output_postfix=postfix,
            output_ext=".png",
            output_dtype=np.uint8,
            scale=255 if num_classes == 1 else None,
            writer="PILWriter",
            separate_folder=False,
            data_root_dir=data_root_dir,
            print_log=False,
        )
        return saver.set_options(write_kwargs={"reverse_indexing": False})  # (H, W) arrays, as loaded
    return SaveImaged(
        keys=key,
        output_dir=str(output_dir),
        output_postfix=postfix,
        output_ext=".nii.gz",
        output_dtype=np.uint8,
        resample=False,
        separate_folder=False,
        data_root_dir=data_root_dir,
        print_log=False,
    )


def image_meta(batch: Sequence[Mapping[str, Any]], image_key: str = "image") -> list[dict]:
    """The meta data of the images of a decollated batch (``MetricsSaver(batch_transform=...)``: file names)."""
    return [dict(getattr(item[image_key], "meta", {})) for item in batch]


class SegmentationGridSaver:
    """Write one PNG of ``image | truth | prediction`` rows for the first ``num_images`` cases of an evaluation.

    3D cases show the middle slice along the last axis; images with other than 1 or 3 channels show their first
    channel; labels are colour-coded (class 1 red, 2 green, 3 blue, ...). Label maps are drawn at the image's size
    (nearest neighbour); tiles smaller than ``min_tile_size`` are enlarged by an integer factor (nearest neighbour),
    so 64 px images or 32^3 volumes stay readable.

    Args:
        output_dir: destination folder.
        filename: PNG file name.
        num_images: rows in the grid.
        image_key: batch key of the (network-resolution) image.
        label_key: batch/output key of the truth label map (1, *spatial) or its one-hot form.
        pred_key: output key of the predicted label map (1, *spatial) (e.g. a copy made before ``Invertd``).
        min_tile_size: the longer side of a tile is enlarged to at least this many pixels (1: network size).
    """

    def __init__(
        self,
        output_dir: str | os.PathLike,
        filename: str = "predictions.png",
        num_images: int = 4,
        image_key: str = "image",
        label_key: str = "label",
        pred_key: str = "pred_net",
        min_tile_size: int = 128,
    ) -> None:
        self.path = Path(output_dir) / filename
        self.min_tile_size = max(1, int(min_tile_size))
        self.num_images = int(num_images)
        self.image_key = image_key
        self.label_key = label_key
        self.pred_key = pred_key
        self.rows: list[torch.Tensor] = []

    def attach(self, engine) -> None:
        engine.add_event_handler(Events.STARTED, lambda e: self.rows.clear())
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.collect)
        engine.add_event_handler(Events.COMPLETED, self.write)

    @staticmethod
    def _plane(x: torch.Tensor) -> torch.Tensor:
        x = torch.as_tensor(x).detach().float().cpu()
        if hasattr(x, "as_tensor"):
            x = x.as_tensor()
        return x[..., x.shape[-1] // 2] if x.ndim == 4 else x  # (C, H, W)

    def _labels(self, y: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
        y = self._plane(y)
        if y.shape[0] > 1:
            y = y.argmax(0, keepdim=True).float()
        y = nn.functional.interpolate(y[None], size=tuple(size), mode="nearest")[0, 0].round().long()
        palette = torch.from_numpy(_PALETTE) / 255.0
        return palette[y.clamp(0, len(palette) - 1)].permute(2, 0, 1)

    def collect(self, engine) -> None:
        batch, output = engine.state.batch, engine.state.output
        if not isinstance(batch, list) or len(self.rows) >= 3 * self.num_images:
            return
        for b, o in zip(batch, output):
            if len(self.rows) >= 3 * self.num_images:
                break
            merged = {**b, **o}
            if any(k not in merged for k in (self.image_key, self.label_key, self.pred_key)):
                return
            img = self._plane(merged[self.image_key])
            img = img[:3] if img.shape[0] == 3 else img[:1].expand(3, -1, -1)
            lo, hi = img.min(), img.max()
            img = (img - lo) / (hi - lo).clamp_min(1e-8)
            scale = max(1, -(-self.min_tile_size // max(img.shape[1:])))  # ceil division
            if scale > 1:
                img = nn.functional.interpolate(img[None], scale_factor=scale, mode="nearest")[0]
            size = img.shape[1:]
            self.rows += [img, self._labels(merged[self.label_key], size), self._labels(merged[self.pred_key], size)]

    def write(self, engine=None) -> Path | None:
        if not self.rows:
            return None
        save_image_grid(torch.stack(self.rows), self.path, nrow=3, normalise=False)
        logger.info(f"saved '{self.path}' (image | truth | prediction).")
        return self.path
