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
"""Serve the monai_genaug segmentation bundles (TTGA, GMS, AdaptDiff) from MONAI Label.

The bundles' ``inference.json`` already wire ``network``, ``preprocessing``, ``inferer`` and ``postprocessing``
(MONAI model-zoo IDs). :class:`BundleSegmentationRunner` parses such a config with
:class:`monai.bundle.ConfigParser` and runs exactly these objects on one image file, the way
``SupervisedEvaluator`` does (collate, ``inferer(inputs, network)``, decollate, ``postprocessing``), with two
changes for unlabelled requests: label steps of the preprocessing tolerate a missing label
(:func:`label_optional`), and writers and label-dependent (metrics-only) steps are dropped from the
postprocessing (:func:`serving_postprocessing`). Nothing of the bundle's logic is copied.

:class:`GenAugInferTask` is a MONAI Label ``InferTask`` around a runner: the label map (the values of the
metadata's ``channel_def``, 0 = background; PNG in 2D, NIfTI with the input's affine in 3D) is the result file, and
every uncertainty map the bundle produces (TTGA: normalised predictive ``entropy``, by default) is written next to
it and described in the result JSON (``params.uncertainty.<name>``: ``file``, ``mean``, ``max``, and in 2D the PNG as
base64 ``data`` so that a remote client gets the map too). ``monailabel`` is optional: without it the task derives
from a small stand-in with the same interface, so the glue stays importable and testable.

Weights are read from the local bundle folder; nothing is downloaded (no model-zoo look-up, unlike MONAI Label's
``monaibundle`` app).
"""

from __future__ import annotations

import base64
import json
import os
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch
from monai.bundle import ConfigParser
from monai.data import decollate_batch, list_data_collate
from monai.transforms import Compose, MapTransform, SaveImaged
from monai.utils import optional_import
from PIL import Image

_InferTask, HAS_MONAILABEL = optional_import("monailabel.interfaces.tasks.infer_v2", name="InferTask")

__all__ = [
    "HAS_MONAILABEL",
    "BundleSegmentationRunner",
    "GenAugInferTask",
    "bundle_labels",
    "label_optional",
    "serving_postprocessing",
]


def _flatten(transform: Any) -> list[Any]:
    """The leaf transforms of a (nested) ``Compose``."""
    if isinstance(transform, Compose):
        return [leaf for t in transform.transforms for leaf in _flatten(t)]
    return [transform]


def _keys(transform: Any) -> tuple:
    return tuple(getattr(transform, "keys", ()) or ()) if isinstance(transform, MapTransform) else ()


def label_optional(transform: Any, label_key: str = "label") -> Any:
    """Let every dictionary transform of ``transform`` that reads ``label_key`` skip it when it is missing.

    Sets ``allow_missing_keys`` (in place) on the :class:`~monai.transforms.MapTransform` leaves whose ``keys`` contain
    ``label_key``, so a bundle's training/evaluation preprocessing also loads an image without a label.

    Args:
        transform: a transform or (nested) ``Compose``.
        label_key: the label key.

    Returns:
        ``transform`` itself.
    """
    for leaf in _flatten(transform):
        if label_key in _keys(leaf):
            leaf.allow_missing_keys = True
    return transform


def serving_postprocessing(
    postprocessing: Any, label_key: str = "label", drop_types: Sequence[type] = (SaveImaged,)
) -> Compose:
    """A bundle's ``postprocessing`` without writers and without the steps that need the label (metrics only).

    MONAI Label returns the result itself, so savers (``drop_types``, e.g. ``SaveImaged``) go, and so do dictionary
    transforms whose keys include ``label_key`` (e.g. the one-hot conversion of ``pred`` and ``label`` for metrics),
    as MONAI Label's ``BundleInferTask`` drops ``SaveImaged``.

    Args:
        postprocessing: a transform, a (nested) ``Compose`` or ``None``.
        label_key: the label key.
        drop_types: transform classes removed.
    """
    if postprocessing is None:
        return Compose([])
    kept = [
        t for t in _flatten(postprocessing) if not isinstance(t, tuple(drop_types)) and label_key not in _keys(t)
    ]
    return Compose(kept)


def bundle_labels(meta: Mapping[str, Any], pred_key: str = "pred") -> dict[str, int]:
    """Label names -> values from ``network_data_format.outputs.<pred_key>.channel_def`` (background dropped)."""
    try:
        channel_def = meta["network_data_format"]["outputs"][pred_key]["channel_def"]
    except (KeyError, TypeError):
        return {}
    return {str(name): int(idx) for idx, name in channel_def.items() if int(idx) > 0 and name != "background"}


def _np(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        x = x.as_tensor() if hasattr(x, "as_tensor") else x
        return x.numpy()
    return np.asarray(x)


class BundleSegmentationRunner:
    """Run a segmentation bundle's ``inference`` config on single image files.

    Args:
        bundle_dir: the bundle folder (holds ``configs/`` and ``models/``).
        config_file: inference config(s), relative to ``bundle_dir`` or absolute; several are merged in order.
        overrides: top-level ID overrides (``{"num_views": 2}``); ``bundle_root`` is always the absolute
            ``bundle_dir``.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"`` or ``None`` (the config's ``device``). CUDA falls back to CPU
            when unavailable.
        image_key: the input key of the preprocessing.
        label_key: the label key (made optional in the preprocessing, its steps dropped from the postprocessing).
        pred_key: the key of the label map after the postprocessing.
        uncertainty_keys: keys of one-channel uncertainty maps after the postprocessing that are returned when
            present.
    """

    def __init__(
        self,
        bundle_dir: str | os.PathLike,
        config_file: str | Sequence[str] = "configs/inference.json",
        overrides: Mapping[str, Any] | None = None,
        device: str | torch.device | None = None,
        image_key: str = "image",
        label_key: str = "label",
        pred_key: str = "pred",
        uncertainty_keys: Sequence[str] = ("entropy",),
    ) -> None:
        self.bundle_dir = Path(bundle_dir).resolve()
        files = [config_file] if isinstance(config_file, (str, os.PathLike)) else list(config_file)
        paths = [p if Path(p).is_absolute() else self.bundle_dir / p for p in files]
        for p in paths:
            if not Path(p).is_file():
                raise FileNotFoundError(
                    f"bundle config '{p}' does not exist; give bundle_dir (the folder with configs/ and models/, "
                    f"got '{bundle_dir}') and a config_file inside it."
                )
        self.config_files = [str(p) for p in paths]
        meta_file = self.bundle_dir / "configs" / "metadata.json"
        self.meta: dict[str, Any] = json.loads(meta_file.read_text()) if meta_file.is_file() else {}
        self.overrides = dict(overrides or {})
        self.image_key, self.label_key, self.pred_key = image_key, label_key, pred_key
        self.uncertainty_keys = list(uncertainty_keys)

        parser = ConfigParser()
        parser.read_config(self.config_files)
        if meta_file.is_file():
            parser.read_meta(str(meta_file))
        parser.update({"bundle_root": str(self.bundle_dir), **self.overrides})
        if device is not None:
            dev = torch.device(device)
            if dev.type == "cuda" and not torch.cuda.is_available():
                dev = torch.device("cpu")
            parser["device"] = f"$torch.device('{dev}')"
        for key in ("network", "preprocessing", "inferer"):
            if key not in parser:
                raise ValueError(f"bundle config {self.config_files} has no '{key}' ID; it cannot be served.")
        self.parser = parser
        self.device = torch.device(parser.get_parsed_content("device"))
        self.network = parser.get_parsed_content("network")
        self.network.eval()
        self.preprocessing = label_optional(parser.get_parsed_content("preprocessing"), label_key)
        self.inferer = parser.get_parsed_content("inferer")
        post = parser.get_parsed_content("postprocessing") if "postprocessing" in parser else None
        self.postprocessing = serving_postprocessing(post, label_key)
        self.spatial_dims = int(parser.get_parsed_content("spatial_dims")) if "spatial_dims" in parser else 2
        self.labels = bundle_labels(self.meta, pred_key)
        self._lock = threading.Lock()

    @property
    def description(self) -> str:
        return str(self.meta.get("name") or self.meta.get("description") or self.bundle_dir.name)

    def __call__(self, image: str | os.PathLike) -> dict[str, Any]:
        """Segment one image file.

        Args:
            image: path of an image file the bundle's preprocessing reads (2D: PNG/JPEG; 3D: one NIfTI file for a
                config whose ``image_key`` is a single file).

        Returns:
            ``{"pred": (1, *spatial) int array on the file's grid, <uncertainty key>: (1, *spatial) float array, ...,
            "meta": the label map's meta data}``.
        """
        path = Path(image)
        if not path.is_file():
            raise FileNotFoundError(
                f"image '{image}' is not a file; MONAI Label must pass one image file (DICOM series are not served)."
            )
        with self._lock, torch.no_grad():
            data = self.preprocessing({self.image_key: str(path)})
            batch = list_data_collate([data])
            inputs = batch[self.image_key].to(self.device)
            batch["pred"] = self.inferer(inputs, self.network)
            item = self.postprocessing(decollate_batch(batch, detach=True)[0])
        if self.pred_key not in item:
            raise KeyError(f"the postprocessing of {self.config_files} produced no '{self.pred_key}' key.")
        pred = item[self.pred_key]
        out: dict[str, Any] = {"pred": _np(pred).astype(np.int64), "meta": dict(getattr(pred, "meta", {}) or {})}
        for key in self.uncertainty_keys:
            if key in item:
                out[key] = _np(item[key]).astype(np.float32)
        return out

    def write(self, array: np.ndarray, path: str | os.PathLike, meta: Mapping[str, Any] | None = None,
              label: bool = True) -> Path:
        """Write a (1, *spatial) map: PNG in 2D (labels as values, maps in [0, 1] scaled to 0-255), NIfTI in 3D.

        Args:
            array: the map.
            path: destination file (its suffix is replaced by ``.png`` / ``.nii.gz``).
            meta: meta data whose ``affine`` goes into the NIfTI file.
            label: a label map (uint8 values) rather than a [0, 1] map.
        """
        arr = np.asarray(array)[0]
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        stem = path.name.split(".")[0]
        if self.spatial_dims == 2:
            path = path.with_name(stem + ".png")
            data = arr if label else np.clip(arr, 0.0, 1.0) * 255.0
            Image.fromarray(np.clip(np.round(data), 0, 255).astype(np.uint8)).save(path)
            return path
        path = path.with_name(stem + ".nii.gz")
        affine = _np((meta or {}).get("affine", np.eye(4))).astype(np.float64)
        nib.save(nib.Nifti1Image(arr.astype(np.uint8) if label else arr.astype(np.float32), affine), str(path))
        return path


class _InferTaskStandIn:
    """The part of MONAI Label's ``InferTask`` interface the task uses, for when ``monailabel`` is not installed."""

    def __init__(self, type: str, labels: Any, dimension: int, description: str, config: dict | None = None) -> None:
        self.type = type
        self.labels = [] if labels is None else [labels] if isinstance(labels, str) else labels
        self.dimension = dimension
        self.description = description
        self._config: dict[str, Any] = dict(config or {})

    def info(self) -> dict[str, Any]:
        return {
            "type": self.type,
            "labels": self.labels,
            "dimension": self.dimension,
            "description": self.description,
            "config": self.config(),
        }

    def config(self) -> dict[str, Any]:
        return self._config

    def get_path(self, validate: bool = True) -> None:
        return None


_Base: type = _InferTask if HAS_MONAILABEL else _InferTaskStandIn


class GenAugInferTask(_Base):  # type: ignore[misc,valid-type]
    """MONAI Label infer task serving a monai_genaug segmentation bundle: label map + uncertainty maps.

    The bundle is parsed once, on the first request (or at construction with ``preload``). A request may change the
    IDs listed in ``options`` (shown as the task's config in MONAI Label, e.g. ``num_views``): the bundle is then
    parsed again with these overrides (the last ``cache_size`` variants are kept).

    Args:
        bundle_dir: the local bundle folder.
        config_file: inference config(s) relative to ``bundle_dir``.
        overrides: fixed top-level ID overrides (server side).
        options: IDs a request may override, with their defaults (``None``: the config's value).
        uncertainty_keys: uncertainty maps returned when the bundle produces them.
        uncertainty_dir: folder for the uncertainty files (default: a temporary folder).
        embed_uncertainty: put each 2D uncertainty PNG as base64 into the result JSON.
        device: device of the served networks (``None``: the config's).
        preload: parse the bundle and load the weights at construction.
        cache_size: parsed variants kept (one per distinct request options).
        description: shown in MONAI Label (default: the metadata's ``name``).
        type: MONAI Label infer type.
    """

    def __init__(
        self,
        bundle_dir: str | os.PathLike,
        config_file: str | Sequence[str] = "configs/inference.json",
        overrides: Mapping[str, Any] | None = None,
        options: Mapping[str, Any] | Sequence[str] | None = None,
        uncertainty_keys: Sequence[str] = ("entropy",),
        uncertainty_dir: str | os.PathLike | None = None,
        embed_uncertainty: bool = True,
        device: str | None = None,
        preload: bool = False,
        cache_size: int = 2,
        description: str | None = None,
        type: str = "segmentation",
    ) -> None:
        self.bundle_dir = Path(bundle_dir).resolve()
        self.config_file = config_file
        self.overrides = dict(overrides or {})
        self.uncertainty_keys = list(uncertainty_keys)
        self.uncertainty_dir = Path(uncertainty_dir) if uncertainty_dir else Path(tempfile.gettempdir()) / "genaug_uq"
        self.embed_uncertainty = bool(embed_uncertainty)
        self.device = device
        self.cache_size = max(1, int(cache_size))
        self._runners: OrderedDict[str, BundleSegmentationRunner] = OrderedDict()
        self._lock = threading.Lock()
        meta_file = self.bundle_dir / "configs" / "metadata.json"
        if not meta_file.is_file():
            raise FileNotFoundError(
                f"'{meta_file}' does not exist: bundle_dir must be a bundle folder (configs/metadata.json)."
            )
        meta = json.loads(meta_file.read_text())
        parser = ConfigParser()
        files = [config_file] if isinstance(config_file, (str, os.PathLike)) else list(config_file)
        parser.read_config([str(self.bundle_dir / f) for f in files])
        parser.update({"bundle_root": str(self.bundle_dir), **self.overrides})
        dims = int(parser["spatial_dims"]) if isinstance(parser.get("spatial_dims"), int) else 2
        opts = {k: None for k in options} if isinstance(options, Sequence) and not isinstance(options, str) else dict(
            options or {}
        )
        config = {k: (parser.get(k) if v is None else v) for k, v in opts.items()}
        super().__init__(
            type=type,
            labels=bundle_labels(meta),
            dimension=dims,
            description=description or str(meta.get("name", self.bundle_dir.name)),
            config=config,
        )
        self._defaults = dict(config)
        if preload:
            self.runner()

    def is_valid(self) -> bool:
        """True when the bundle's config files exist (weights are checked, with a clear message, on loading)."""
        files = [self.config_file] if isinstance(self.config_file, (str, os.PathLike)) else self.config_file
        return all((self.bundle_dir / f).is_file() for f in files)

    def runner(self, request: Mapping[str, Any] | None = None) -> BundleSegmentationRunner:
        """The runner for a request's options (parsed on first use, cached)."""
        request = request or {}
        opts = {k: request[k] for k in self._defaults if k in request and request[k] != self._defaults[k]}
        device = request.get("device") or self.device
        key = json.dumps({"opts": opts, "device": str(device)}, sort_keys=True, default=str)
        with self._lock:
            if key in self._runners:
                self._runners.move_to_end(key)
                return self._runners[key]
            runner = BundleSegmentationRunner(
                self.bundle_dir,
                self.config_file,
                overrides={**self.overrides, **opts},
                device=device,
                uncertainty_keys=self.uncertainty_keys,
            )
            self._runners[key] = runner
            while len(self._runners) > self.cache_size:
                self._runners.popitem(last=False)
            return runner

    def __call__(self, request: Mapping[str, Any]) -> tuple[str | None, dict[str, Any]]:
        """Segment ``request["image"]``; return the label file and the result JSON (uncertainty maps described)."""
        image = request.get("image")
        if not isinstance(image, (str, os.PathLike)):
            raise TypeError(f"request['image'] must be an image file path, got {type(image).__name__}.")
        runner = self.runner(request)
        result = runner(image)
        ext = ".png" if runner.spatial_dims == 2 else ".nii.gz"
        handle = tempfile.NamedTemporaryFile(suffix=ext, delete=False)
        handle.close()
        label_file = runner.write(result["pred"], handle.name, result["meta"], label=True)
        stem = Path(str(image)).name.split(".")[0]
        model = request.get("model") or self.bundle_dir.name
        uncertainty: dict[str, Any] = {}
        for key in self.uncertainty_keys:
            if key not in result:
                continue
            arr = result[key]
            path = runner.write(arr, self.uncertainty_dir / f"{stem}_{model}_{key}", result["meta"], label=False)
            entry: dict[str, Any] = {"file": str(path), "mean": float(arr.mean()), "max": float(arr.max())}
            if self.embed_uncertainty and runner.spatial_dims == 2:
                entry["data"] = base64.b64encode(path.read_bytes()).decode("ascii")
                entry["encoding"] = "png;base64"
            uncertainty[key] = entry
        values = sorted(int(v) for v in np.unique(result["pred"]))
        params: dict[str, Any] = {
            "model": model,
            "label_values": values,
            "labels": self.labels,
            "shape": list(result["pred"].shape[1:]),
            "uncertainty": uncertainty,
        }
        return str(label_file), params
