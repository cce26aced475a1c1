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
"""Synthetic phantom data: the embedded default data of every bundle and the fixture of every test.

Every generator is deterministic by ``seed`` and draws sample ``i`` from its own random stream
(``numpy.random.default_rng([seed, kind, i])``), so ``make_x(10, seed=s)[:3]`` equals
``make_x(3, seed=s)``. Everything is vectorised with numpy (no per-pixel Python loops); 100 endoscopy
frames of 64 x 64 take a few tenths of a second on one core.

Arrays follow MONAI's channel-first convention; spatial axes are in array order (``H, W`` for 2D,
``D, H, W`` for 3D) and written to disk in the same order (a NIfTI volume stores the array as is, so
``monai.transforms.LoadImage(ensure_channel_first=True)`` gives back the generator's array; a PNG is
written with ``H`` rows and ``W`` columns, as any photograph, which MONAI's ``PILReader`` returns as
``(C, W, H)`` unless ``reverse_indexing=False``).

Generators (each returns a list of ``num`` dicts):

==================================  =====================================================================
``make_endoscopy_phantoms``         RGB endoscopy frame with one polyp: ``image`` (3, H, W) float32 in
                                    [0, 1], ``label`` (1, H, W) uint8 in {0, 1}.
``make_grey_phantoms``              grey ultrasound-like image with one hypo-echoic lesion: ``image``
                                    (1, H, W), ``label`` (1, H, W).
``make_mri_phantoms``               3D head with a multi-class tumour: one (1, D, H, W) float32 key per
                                    modality, ``image`` (first modality), ``label`` (1, D, H, W) uint8 in
                                    0..num_classes, ``brain`` (1, D, H, W) uint8 mask, ``affine`` (4, 4).
``make_sequence_phantoms``          2D+t clip of a moving object whose shape is set by the class:
                                    ``image`` (1, T, H, W), ``label`` int, ``mask`` (1, T, H, W) uint8,
                                    ``motion`` (2, T, H, W) float32, ``centers`` (T, 2) float32.
``make_two_modality_phantoms``      one vessel tree rendered in two modalities (2D or 3D): ``source``,
                                    ``target`` (1, ...) float32, ``label`` (1, ...) uint8 (+ ``affine``
                                    in 3D).
``make_class_phantoms``             histology-like texture patches whose cell density, size and shape
                                    are set by the class: ``image`` (C, H, W), ``label`` int.
==================================  =====================================================================

:func:`write_phantom_dataset` writes any of them to disk in the layouts read by the folder datasets
(see its docstring), and ``python -m monai_genaug.data.phantoms --kind endoscopy --out DIR --num 20
--size 64 64`` does the same from a shell.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from monai_genaug.utils.io import atomic_write_bytes, nifti_bytes, png_bytes

from monai_genaug.utils.options import add_runtime_arguments, apply_runtime_arguments

__all__ = [
    "PHANTOM_KINDS",
    "MRI_MODALITIES",
    "MRI_FILE_NAMES",
    "MANIFEST_NAME",
    "phantom_affine",
    "make_endoscopy_phantoms",
    "make_grey_phantoms",
    "make_mri_phantoms",
    "make_sequence_phantoms",
    "make_two_modality_phantoms",
    "make_class_phantoms",
    "write_phantom_dataset",
    "main",
]

#: the ``kind`` values accepted by :func:`write_phantom_dataset` and the command line
PHANTOM_KINDS = ("endoscopy", "grey", "mri", "sequence", "two_modality", "classes")

#: MRI contrasts of :func:`make_mri_phantoms`: intensity of air, skull rim, CSF, grey matter, white matter
#: and of tumour classes 1 (oedema), 2 (enhancing tumour), 3 (necrosis); further classes are further nested
#: cores with intensities from :func:`_extra_class_intensity`.
MRI_MODALITIES: dict[str, dict[str, Any]] = {
    "flair": {"air": 0.0, "skull": 0.18, "csf": 0.08, "gm": 0.50, "wm": 0.40, "tumour": (0.90, 0.70, 0.55)},
    "t1c": {"air": 0.0, "skull": 0.30, "csf": 0.10, "gm": 0.42, "wm": 0.58, "tumour": (0.33, 0.95, 0.12)},
    "t1": {"air": 0.0, "skull": 0.30, "csf": 0.10, "gm": 0.42, "wm": 0.58, "tumour": (0.33, 0.45, 0.15)},
    "t2": {"air": 0.0, "skull": 0.15, "csf": 0.95, "gm": 0.55, "wm": 0.40, "tumour": (0.80, 0.60, 0.88)},
}

#: file names of the MRI case folders (BRATS-like); other files: ``OTMultiClass.nii.gz``, ``brainmask.nii.gz``
MRI_FILE_NAMES = {"flair": "Flair.nii.gz", "t1c": "T1c.nii.gz", "t1": "T1.nii.gz", "t2": "T2.nii.gz"}

#: hidden file written last into every phantom data set: kind, arguments and the list of files written
MANIFEST_NAME = ".phantom_manifest.json"

# per-generator salt of the random streams, so two kinds with the same seed are unrelated
_SALT = {"endoscopy": 1, "grey": 2, "mri": 3, "sequence": 4, "two_modality": 5, "classes": 6}
_MIN_SIZE = 8


# --------------------------------------------------------------------------------------------------
# argument checks
# --------------------------------------------------------------------------------------------------
def _check_int(value: Any, name: str, minimum: int, hint: str = "") -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an integer >= {minimum}, got {value!r} ({type(value).__name__}).{hint}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}.{hint}")
    return int(value)


def _check_size(spatial_size: Any, ndims: Sequence[int], name: str = "spatial_size") -> tuple[int, ...]:
    dims = " or ".join(str(n) for n in ndims)
    if isinstance(spatial_size, (int, np.integer)) or not isinstance(spatial_size, (Sequence, np.ndarray)):
        raise TypeError(f"{name} must be a sequence of {dims} integers, e.g. {(64,) * ndims[0]}, got {spatial_size!r}.")
    size = tuple(spatial_size)
    if len(size) not in ndims:
        raise ValueError(f"{name} must have {dims} entries (one per spatial axis), got {len(size)}: {size!r}.")
    for s in size:
        _check_int(s, f"every entry of {name}", _MIN_SIZE, f" ({name}={size!r}; phantoms need at least {_MIN_SIZE} px)")
    return tuple(int(s) for s in size)


def _check_common(num: Any, seed: Any) -> tuple[int, int]:
    return _check_int(num, "num", 1, " Ask for at least one phantom."), _check_int(
        seed, "seed", 0, " Use a non-negative integer seed."
    )


# --------------------------------------------------------------------------------------------------
# shared building blocks
# --------------------------------------------------------------------------------------------------
def _rng(kind: str, seed: int, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, _SALT[kind], index])


def _grid(shape: Sequence[int]) -> list[np.ndarray]:
    """Sparse, aspect-preserving coordinates: the longest axis spans [-1, 1], a pixel is the same size on
    every axis, and each returned array broadcasts against the others to ``shape``."""
    step = 2.0 / (max(shape) - 1)
    coords = []
    for d, n in enumerate(shape):
        c = ((np.arange(n, dtype=np.float32) - (n - 1) / 2.0) * step).astype(np.float32)
        coords.append(c.reshape([n if i == d else 1 for i in range(len(shape))]))
    return coords


def _pixel(shape: Sequence[int]) -> float:
    """Size of one pixel in the coordinates of :func:`_grid`."""
    return 2.0 / (max(shape) - 1)


def _extent(shape: Sequence[int]) -> np.ndarray:
    """Half-extent of every axis in the coordinates of :func:`_grid` (1 for the longest axis)."""
    return np.array([(n - 1) / (max(shape) - 1) for n in shape], dtype=np.float32)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return (0.5 * (1.0 + np.tanh(0.5 * x))).astype(np.float32)


def _draw_field(
    rng: np.random.Generator, ndim: int, num_modes: int = 6, min_freq: float = 0.5, max_freq: float = 2.0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Parameters of a smooth random field: a sum of ``num_modes`` plane waves with ``min_freq`` to
    ``max_freq`` cycles per half field of view, amplitudes falling as 1/frequency, unit standard deviation."""
    direction = rng.normal(size=(num_modes, ndim))
    direction /= np.linalg.norm(direction, axis=1, keepdims=True) + 1e-12
    mag = rng.uniform(min_freq, max_freq, size=num_modes)
    phases = rng.uniform(0.0, 2.0 * np.pi, size=num_modes)
    amps = rng.uniform(0.5, 1.0, size=num_modes) / mag
    amps /= np.sqrt(np.sum(amps**2) / 2.0)
    return (
        (np.pi * direction * mag[:, None]).astype(np.float32),
        phases.astype(np.float32),
        amps.astype(np.float32),
    )


def _eval_field(params: tuple[np.ndarray, np.ndarray, np.ndarray], coords: Sequence[np.ndarray]) -> np.ndarray:
    """Evaluate a field of :func:`_draw_field` at (broadcastable) coordinates."""
    freqs, phases, amps = params
    out: Any = np.float32(0.0)
    for k in range(len(phases)):
        arg = phases[k] + sum(freqs[k, d] * coords[d] for d in range(len(coords)))
        out = out + amps[k] * np.cos(arg)
    return np.broadcast_to(out, np.broadcast_shapes(*[np.shape(c) for c in coords])).astype(np.float32)


def _field(
    rng: np.random.Generator,
    coords: Sequence[np.ndarray],
    num_modes: int = 6,
    min_freq: float = 0.5,
    max_freq: float = 2.0,
) -> np.ndarray:
    return _eval_field(_draw_field(rng, len(coords), num_modes, min_freq, max_freq), coords)


def _random_rotation(rng: np.random.Generator, ndim: int) -> np.ndarray:
    if ndim == 2:
        a = rng.uniform(0.0, 2.0 * np.pi)
        return np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]], dtype=np.float32)
    q, r = np.linalg.qr(rng.normal(size=(ndim, ndim)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q.astype(np.float32)


def _blob(
    rng: np.random.Generator,
    coords: Sequence[np.ndarray],
    center: Sequence[float],
    radii: Sequence[float],
    irregularity: float,
    min_freq: float = 0.8,
    max_freq: float = 2.0,
) -> tuple[np.ndarray, list[np.ndarray], np.ndarray]:
    """A randomly rotated ellipsoid with an irregular boundary.

    Returns ``sd`` (normalised radius minus the perturbed boundary radius, negative inside; the boundary
    lies between ``1 - irregularity`` and ``1 + irregularity``, so the centre is always inside), the body
    coordinates (rotated, divided by the radii) and the normalised radius."""
    ndim = len(coords)
    rot = _random_rotation(rng, ndim)
    rel = [c - np.float32(center[d]) for d, c in enumerate(coords)]
    body = [sum(rot[j, d] * rel[d] for d in range(ndim)) / np.float32(radii[j]) for j in range(ndim)]
    r = np.sqrt(sum(b**2 for b in body)).astype(np.float32)
    perturb = np.tanh(_field(rng, body, 6, min_freq, max_freq))
    return (r - 1.0 - np.float32(irregularity) * perturb).astype(np.float32), body, r


def _ensure_nonempty(mask: np.ndarray, center_index: Sequence[int]) -> np.ndarray:
    if not mask.any():
        mask[tuple(int(i) for i in center_index)] = True
    return mask


def _center_index(center: Sequence[float], shape: Sequence[int]) -> tuple[int, ...]:
    px = _pixel(shape)
    return tuple(int(np.clip(round(c / px + (n - 1) / 2.0), 0, n - 1)) for c, n in zip(center, shape))


def _to_unit(x: np.ndarray) -> np.ndarray:
    return np.clip(x, 0.0, 1.0).astype(np.float32)


# --------------------------------------------------------------------------------------------------
# 2D lesion phantoms
# --------------------------------------------------------------------------------------------------
def _render_endoscopy(rng: np.random.Generator, shape: tuple[int, int]) -> dict[str, np.ndarray]:
    coords = _grid(shape)
    y, x = coords
    px = _pixel(shape)
    ext = _extent(shape)
    r2 = (y**2 + x**2).astype(np.float32)

    # mucosa: pink-red, low-frequency brightness texture and a fine darker-red vascular pattern
    mucosa = np.clip(np.array([0.80, 0.42, 0.38]) + rng.normal(0.0, 0.025, 3), 0.2, 1.0).astype(np.float32)
    low = _field(rng, coords, 6, 0.5, 2.0)
    high = _field(rng, coords, 16, 3.0, 8.0)
    veins = np.exp(-((_field(rng, coords, 8, 2.0, 5.0) / 0.15) ** 2)).astype(np.float32)
    rgb = mucosa[:, None, None] * (1.0 + 0.10 * low + 0.03 * high)[None]
    rgb = rgb * (1.0 - np.array([0.06, 0.22, 0.18], dtype=np.float32)[:, None, None] * veins[None])

    # polyp: irregular ellipse, paler and smoother than the mucosa, dome-shaded with a specular highlight
    radius = rng.uniform(0.18, 0.42)
    radii = np.maximum(radius * np.array([1.0, rng.uniform(0.65, 1.0)]), 2.0 * px)
    center = rng.uniform(-0.45, 0.45, 2) * ext
    sd, body, r = _blob(rng, coords, center, radii, rng.uniform(0.06, 0.2))
    soft = _sigmoid(-sd * radii.min() / (0.6 * px))
    mask = _ensure_nonempty(sd < 0, _center_index(center, shape))
    nz = np.sqrt(np.clip(1.0 - r**2, 0.0, 1.0))
    normal = np.stack([body[0], body[1], nz])
    normal /= np.linalg.norm(normal, axis=0, keepdims=True) + 1e-6
    light = np.array([rng.uniform(-0.5, 0.5), rng.uniform(-0.5, 0.5), 1.0], dtype=np.float32)
    light /= np.linalg.norm(light)
    half = light + np.array([0.0, 0.0, 1.0], dtype=np.float32)
    half /= np.linalg.norm(half)
    diffuse = np.clip(np.tensordot(light, normal, axes=1), 0.0, 1.0)
    specular = np.clip(np.tensordot(half, normal, axes=1), 0.0, 1.0) ** rng.uniform(30.0, 80.0)
    pale = np.clip(np.array([0.96, 0.66, 0.58]) + rng.normal(0.0, 0.02, 3), 0.0, 1.0)
    m = rng.uniform(0.45, 0.7)
    polyp_col = (mucosa * (1 - m) + pale * m).astype(np.float32)
    polyp_tex = 1.0 + 0.04 * _field(rng, body, 12, 1.0, 3.0)
    polyp = polyp_col[:, None, None] * ((0.6 + 0.45 * diffuse) * polyp_tex)[None]
    rgb = rgb * (1.0 - soft) + polyp * soft
    highlight = soft * specular * rng.uniform(0.5, 0.9)

    # wet specular spots on the mucosa
    n_spots = int(rng.integers(2, 7))
    spot_c = rng.uniform(-0.9, 0.9, (n_spots, 2)) * ext
    spot_s = rng.uniform(0.6, 1.8, n_spots) * px
    d2 = (y[None] - spot_c[:, 0, None, None]) ** 2 + (x[None] - spot_c[:, 1, None, None]) ** 2
    spots = np.exp(-d2 / (2 * spot_s[:, None, None] ** 2)) * rng.uniform(0.4, 0.9, n_spots)[:, None, None]
    highlight = np.maximum(highlight, spots.max(axis=0) * (1.0 - soft))

    # lumen: a dark region away from the polyp; light fall-off; vignetting; dark field-of-view corners
    norm_c = np.linalg.norm(center)
    direction = -center / norm_c if norm_c > 0.05 else _random_rotation(rng, 2)[0]
    lumen_c = direction * rng.uniform(0.5, 0.85) * ext
    lumen_s = rng.uniform(0.15, 0.3)
    lumen = np.exp(-((y - lumen_c[0]) ** 2 + (x - lumen_c[1]) ** 2) / (2 * lumen_s**2))
    shade = (1.0 - rng.uniform(0.6, 0.85) * lumen) * (1.0 - rng.uniform(0.2, 0.4) * r2 / 2.0)
    fov = _sigmoid((rng.uniform(1.2, 1.4) - np.sqrt(r2)) / px)
    rgb = (rgb * shade[None] + highlight[None]) * fov[None]
    rgb = rgb + rng.normal(0.0, 0.01, rgb.shape).astype(np.float32)
    return {"image": _to_unit(rgb), "label": mask[None].astype(np.uint8)}


def _render_grey(rng: np.random.Generator, shape: tuple[int, int]) -> dict[str, np.ndarray]:
    coords = _grid(shape)
    y, x = coords
    px = _pixel(shape)
    ext = _extent(shape)

    # tissue: mid-grey, smooth texture and horizontal echogenic layers
    wobble = 0.3 * _field(rng, coords, 4, 0.5, 1.5)
    layers = np.cos(np.pi * rng.uniform(2.0, 5.0) * y + rng.uniform(0, 2 * np.pi) + wobble)
    tissue = 0.5 + 0.08 * _field(rng, coords, 6, 0.5, 2.0) + 0.04 * _field(rng, coords, 16, 3.0, 7.0) + 0.05 * layers

    # lesion: dark (hypo-echoic), irregular, with posterior acoustic enhancement below it
    radius = rng.uniform(0.15, 0.35)
    radii = np.maximum(radius * np.array([rng.uniform(0.6, 1.0), 1.0]), 2.0 * px)
    center = rng.uniform(-0.45, 0.45, 2) * ext
    sd, body, _ = _blob(rng, coords, center, radii, rng.uniform(0.05, 0.25))
    soft = _sigmoid(-sd * radii.min() / (0.6 * px))
    mask = _ensure_nonempty(sd < 0, _center_index(center, shape))
    lesion = rng.uniform(0.1, 0.22) + 0.03 * _field(rng, body, 6, 2.0, 5.0)
    img = tissue * (1.0 - soft) + lesion * soft
    below = _sigmoid((y - center[0]) / (0.5 * radius)) * np.exp(-(((x - center[1]) / radius) ** 2))
    img = img + rng.uniform(0.04, 0.12) * below * (1.0 - soft)

    # depth attenuation and speckle (multiplicative gamma noise, laterally correlated)
    depth = (y - y.min()) / (y.max() - y.min())
    img = img * (1.0 - rng.uniform(0.2, 0.4) * depth)
    speckle = rng.gamma(4.0, 0.25, size=shape).astype(np.float32)
    speckle = (speckle + np.roll(speckle, 1, axis=1) + np.roll(speckle, -1, axis=1)) / 3.0
    img = img * speckle
    return {"image": _to_unit(img)[None], "label": mask[None].astype(np.uint8)}


def _make(kind: str, render: Callable, num: int, seed: int, *args: Any) -> list[dict]:
    return [render(_rng(kind, seed, i), *args) for i in range(num)]


def make_endoscopy_phantoms(num: int, spatial_size: Sequence[int] = (64, 64), seed: int = 0) -> list[dict]:
    """Endoscopy-like RGB frames with one polyp each (a Kvasir-SEG stand-in).

    A frame has pink-red mucosa with a smooth brightness texture and a fine vascular pattern, a dark lumen,
    vignetting with dark corners, wet specular spots, and one polyp: an ellipse with an irregular boundary,
    paler and smoother than the mucosa, dome-shaded with a specular highlight. Polyp size, shape and
    position vary by sample.

    Args:
        num: number of frames (>= 1).
        spatial_size: ``(H, W)``, each >= 8.
        seed: non-negative seed; sample ``i`` depends only on ``seed`` and ``i``.

    Returns:
        a list of dicts ``{"image": float32 (3, H, W) in [0, 1], "label": uint8 (1, H, W) in {0, 1}}``.
    """
    num, seed = _check_common(num, seed)
    return _make("endoscopy", _render_endoscopy, num, seed, _check_size(spatial_size, (2,)))


def make_grey_phantoms(num: int, spatial_size: Sequence[int] = (64, 64), seed: int = 0) -> list[dict]:
    """Single-channel ultrasound-like images with one lesion each.

    The tissue is mid-grey with a smooth texture and horizontal echogenic layers, depth attenuation and
    laterally correlated speckle; the lesion is a dark (hypo-echoic) irregular ellipse with posterior
    acoustic enhancement below it. Lesion size, shape and position vary by sample.

    Args:
        num: number of images (>= 1).
        spatial_size: ``(H, W)``, each >= 8.
        seed: non-negative seed; sample ``i`` depends only on ``seed`` and ``i``.

    Returns:
        a list of dicts ``{"image": float32 (1, H, W) in [0, 1], "label": uint8 (1, H, W) in {0, 1}}``.
    """
    num, seed = _check_common(num, seed)
    return _make("grey", _render_grey, num, seed, _check_size(spatial_size, (2,)))


# --------------------------------------------------------------------------------------------------
# 3D MRI phantoms
# --------------------------------------------------------------------------------------------------
def phantom_affine(spacing: Sequence[float] = (1.0, 1.0, 1.0)) -> np.ndarray:
    """A 4 x 4 voxel-to-world affine with the given voxel spacing (mm) and the origin at voxel 0."""
    spacing = tuple(float(s) for s in spacing)
    if len(spacing) != 3 or any(not np.isfinite(s) or s <= 0 for s in spacing):
        raise ValueError(f"spacing must be three positive numbers (mm per voxel), got {spacing!r}.")
    return np.diag([*spacing, 1.0]).astype(np.float64)


def _extra_class_intensity(modality_index: int, k: int) -> float:
    """Intensity of tumour class ``k`` > 3 (further nested cores): spread by the golden ratio."""
    return float(0.2 + 0.7 * ((0.618034 * (k + 2 * modality_index)) % 1.0))


def _render_mri(
    rng: np.random.Generator,
    shape: tuple[int, int, int],
    num_classes: int,
    modalities: tuple[str, ...],
    affine: np.ndarray,
) -> dict[str, np.ndarray]:
    coords = _grid(shape)
    px = _pixel(shape)
    ext = _extent(shape)

    # head: ellipsoid; outer rim = skull + scalp, then a thin CSF layer, then the brain
    head_radii = ext * rng.uniform(0.8, 0.92, 3)
    head_c = rng.uniform(-0.03, 0.03, 3) * ext
    rel = [c - np.float32(head_c[d]) for d, c in enumerate(coords)]
    r_head = np.sqrt(sum((rel[d] / np.float32(head_radii[d])) ** 2 for d in range(3))).astype(np.float32)
    edge = px / float(head_radii.min())  # one voxel in normalised head radius
    gyri = 0.02 * np.tanh(_field(rng, rel, 12, 4.0, 9.0))
    head = _sigmoid((1.0 - r_head) / (0.5 * edge))
    inner = _sigmoid((0.88 - r_head) / (0.5 * edge))
    brain_sd = r_head - (0.82 + gyri)
    brain = _sigmoid(-brain_sd / (0.5 * edge))
    brain_mask = brain_sd < 0

    # ventricles: two small ellipsoids beside the mid-line (last axis = left-right)
    vent = np.zeros(shape, dtype=np.float32)
    for side in (-1.0, 1.0):
        vc = head_c + np.array([0.05, 0.0, side * 0.12]) * head_radii
        vr = head_radii * np.array([0.12, 0.3, 0.08]) * rng.uniform(0.8, 1.2, 3)
        vr = np.maximum(vr, px)
        v = np.sqrt(sum(((coords[d] - np.float32(vc[d])) / np.float32(vr[d])) ** 2 for d in range(3)))
        vent = np.maximum(vent, _sigmoid((1.0 - v) * float(vr.min()) / (0.5 * px)))

    # grey / white matter: white matter deeper inside, boundary folded by a smooth random field
    wm = _sigmoid(((0.62 - r_head) * 10.0 + 1.2 * _field(rng, rel, 8, 1.5, 4.0)) * 2.0)

    # tumour: nested classes 1..num_classes inside the brain, each with its own irregular boundary
    brain_r = head_radii * 0.82
    min_r = (1.5 * num_classes + 1.0) * px
    t_radius = max(rng.uniform(0.25, 0.4) * float(brain_r.mean()), min(min_r, 0.45 * float(brain_r.min())))
    t_radii = t_radius * rng.uniform(0.85, 1.15, 3)
    direction = rng.normal(size=3)
    direction /= np.linalg.norm(direction)
    t_center = head_c + direction * rng.uniform(0.0, 1.0) ** (1 / 3) * np.maximum(brain_r - t_radii, 0.0) * 0.8
    fractions = [1.0, 0.62, 0.36] + [0.36 * 0.65**j for j in range(1, max(num_classes - 2, 1))]
    label = np.zeros(shape, dtype=np.uint8)
    inside = brain_mask.copy()
    soft_prev = brain.copy()
    softs = []
    rot = _random_rotation(rng, 3)
    t_rel = [c - np.float32(t_center[d]) for d, c in enumerate(coords)]
    t_body = [sum(rot[j, d] * t_rel[d] for d in range(3)) / np.float32(t_radii[j]) for j in range(3)]
    t_r = np.sqrt(sum(b**2 for b in t_body)).astype(np.float32)
    t_edge = px / float(t_radii.min())
    for k in range(1, num_classes + 1):
        f = fractions[k - 1]
        irregularity = 0.18 if k == 1 else 0.1
        sd = t_r / f - 1.0 - irregularity * np.tanh(_field(rng, [b / f for b in t_body], 6, 0.8, 2.5))
        inside = inside & (sd < 0)
        soft_prev = soft_prev * _sigmoid(-sd * f / (0.5 * t_edge))
        label[inside] = k
        softs.append(soft_prev)
    if not (label == num_classes).any():  # tiny volumes: keep every class present at least at the centre
        label[_center_index(t_center, shape)] = num_classes

    out: dict[str, np.ndarray] = {}
    for m_idx, name in enumerate(modalities):
        c = MRI_MODALITIES[name]
        tissue = c["gm"] * (1.0 - wm) + c["wm"] * wm
        tissue = tissue * (1.0 + 0.03 * _field(rng, rel, 16, 3.0, 8.0))
        vol = c["air"] + (c["skull"] - c["air"]) * head
        vol = vol * (1.0 - inner) + c["csf"] * inner
        vol = vol * (1.0 - brain) + tissue * brain
        vol = vol * (1.0 - vent * brain) + c["csf"] * vent * brain
        for k, soft in enumerate(softs, start=1):
            val = c["tumour"][k - 1] if k <= len(c["tumour"]) else _extra_class_intensity(m_idx, k)
            val = val * (1.0 + 0.04 * _field(rng, t_body, 6, 2.0, 6.0))
            vol = vol * (1.0 - soft) + val * soft
        vol = vol * (1.0 + 0.08 * _field(rng, coords, 4, 0.3, 1.0))  # bias field, per modality
        sigma = 0.015
        n1, n2 = rng.normal(0.0, sigma, (2, *shape)).astype(np.float32)
        vol = np.sqrt((vol + n1) ** 2 + n2**2)  # Rician noise
        out[name] = _to_unit(vol)[None]
    out["image"] = out[modalities[0]].copy()
    out["label"] = label[None]
    out["brain"] = brain_mask[None].astype(np.uint8)
    out["affine"] = affine.copy()
    return out


def make_mri_phantoms(
    num: int,
    spatial_size: Sequence[int] = (32, 32, 32),
    seed: int = 0,
    num_classes: int = 3,
    modalities: Sequence[str] = ("flair", "t1c"),
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
) -> list[dict]:
    """3D MRI-like head volumes with a nested multi-class tumour (a BRATS stand-in).

    The head is an ellipsoid with a skull rim, a thin CSF layer, a brain with folded grey/white-matter
    contrast and two ventricles, and a tumour of nested regions. Classes: 1 = oedema (outer), 2 = enhancing
    tumour, 3 = necrosis (core); classes above 3 are further nested cores. Note this order differs from the
    BRATS files (1 necrosis, 2 oedema, 4 enhancing). Every modality renders the same anatomy with its own
    contrast (:data:`MRI_MODALITIES`): FLAIR shows bright oedema, T1c a bright enhancing rim and a dark
    necrotic core. Each modality gets its own bias field and Rician noise.

    Args:
        num: number of volumes (>= 1).
        spatial_size: ``(D, H, W)``, each >= 8; every tumour class is present from about 32^3 on with up to
            three classes, from about 40^3 on with four or five (smaller volumes may miss inner classes).
        seed: non-negative seed; sample ``i`` depends only on ``seed`` and ``i``.
        num_classes: number of foreground classes (>= 1); the label map holds 0..num_classes.
        modalities: names of the rendered modalities, any of ``"flair"``, ``"t1c"``, ``"t1"``, ``"t2"``.
        spacing: voxel spacing in mm, stored in ``affine``.

    Returns:
        a list of dicts with one float32 (1, D, H, W) array in [0, 1] per modality, ``"image"`` (a copy of
        the first modality), ``"label"`` uint8 (1, D, H, W) in 0..num_classes, ``"brain"`` uint8
        (1, D, H, W) brain mask and ``"affine"`` float64 (4, 4).
    """
    num, seed = _check_common(num, seed)
    size = _check_size(spatial_size, (3,))
    num_classes = _check_int(num_classes, "num_classes", 1, " (number of tumour classes besides background)")
    if isinstance(modalities, str):
        modalities = (modalities,)
    modalities = tuple(modalities)
    if not modalities or len(set(modalities)) != len(modalities):
        raise ValueError(f"modalities must be a non-empty sequence of distinct names, got {modalities!r}.")
    unknown = [m for m in modalities if m not in MRI_MODALITIES]
    if unknown:
        raise ValueError(f"unknown MRI modalities {unknown}; choose from {sorted(MRI_MODALITIES)}.")
    reserved = {"image", "label", "brain", "affine"} & set(modalities)
    if reserved:
        raise ValueError(f"modality names {sorted(reserved)} clash with output keys.")
    affine = phantom_affine(spacing)
    return _make("mri", _render_mri, num, seed, size, num_classes, modalities, affine)


# --------------------------------------------------------------------------------------------------
# sequences (2D + t)
# --------------------------------------------------------------------------------------------------
def _render_sequence(rng: np.random.Generator, shape: tuple[int, int], num_frames: int, cls: int) -> dict[str, Any]:
    coords = _grid(shape)
    y, x = coords
    px = _pixel(shape)
    ext = _extent(shape)
    tau = np.linspace(0.0, 1.0, num_frames, dtype=np.float32)

    background = 0.25 + 0.08 * np.tanh(_field(rng, coords, 6, 0.5, 2.0))
    background = background + 0.03 * np.tanh(_field(rng, coords, 16, 3.0, 7.0))

    # object: class 0 a disk, class c >= 1 a shape with c + 1 lobes; a smooth trajectory (drift + bend),
    # a steady rotation and a gentle pulsation
    lobes = 0 if cls == 0 else cls + 1
    amp = 0.0 if cls == 0 else 0.3
    r0 = max(rng.uniform(0.25, 0.35), 2.5 * px)
    c0 = rng.uniform(-0.25, 0.25, 2) * ext
    heading = rng.uniform(0.0, 2.0 * np.pi)
    v = np.array([np.sin(heading), np.cos(heading)]) * rng.uniform(0.25, 0.45)
    bend = np.array([np.cos(heading), -np.sin(heading)]) * rng.normal(0.0, 0.1)
    centers = (c0[None] + tau[:, None] * v[None] + (tau**2 - tau)[:, None] * bend[None]).astype(np.float32)
    theta = (rng.uniform(0.0, 2.0 * np.pi) + rng.choice([-1.0, 1.0]) * rng.uniform(0.4, 1.2) * tau).astype(np.float32)
    pulse = 2.0 * np.pi * rng.uniform(0.3, 0.7) * tau + rng.uniform(0, 2 * np.pi)
    scale = (1.0 + 0.12 * np.sin(pulse)).astype(np.float32)
    scale = scale / scale[0]
    texture = _draw_field(rng, 2, 6, 1.0, 3.0)
    level = rng.uniform(0.7, 0.85)

    def body(t_idx: Any, py: np.ndarray, px_: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Body coordinates (object frame, radius units) of image points at frames t_idx."""
        cy, cx = centers[t_idx, 0], centers[t_idx, 1]
        ct, st, s = np.cos(theta[t_idx]), np.sin(theta[t_idx]), scale[t_idx]
        dy, dx = py - cy, px_ - cx
        return (ct * dy + st * dx) / (s * r0), (-st * dy + ct * dx) / (s * r0)

    tt = np.arange(num_frames)[:, None, None]
    by, bx = body(tt, y[None], x[None])
    rho = np.sqrt(by**2 + bx**2)
    boundary = 1.0 + amp * np.cos(lobes * np.arctan2(by, bx))
    sd = (rho - boundary) * (scale[:, None, None] * r0)  # in image coordinates (approx.)
    soft = _sigmoid(-sd / (0.6 * px))
    mask = sd < 0
    obj = level * (1.0 + 0.06 * _eval_field(texture, [by, bx]))
    frames = background[None] * (1.0 - soft) + obj * soft
    frames = frames + rng.normal(0.0, 0.015, frames.shape).astype(np.float32)

    # ground-truth motion: where the material point under each frame-0 object pixel is at frame t
    by0, bx0 = body(0, y, x)
    by0, bx0 = np.broadcast_to(by0, shape), np.broadcast_to(bx0, shape)
    s_t = (scale * r0)[:, None, None]
    ct, st = np.cos(theta)[:, None, None], np.sin(theta)[:, None, None]
    pos_y = centers[:, 0, None, None] + s_t * (ct * by0[None] - st * bx0[None])
    pos_x = centers[:, 1, None, None] + s_t * (st * by0[None] + ct * bx0[None])
    motion = np.stack([pos_y - y[None], pos_x - x[None]]) / np.float32(px)  # pixels along (H, W)
    motion = motion * mask[0][None, None]
    motion[:, 0] = 0.0  # exact by definition (removes rounding noise)
    center_px = centers / np.float32(px) + (np.array(shape, dtype=np.float32) - 1) / 2.0
    return {
        "image": _to_unit(frames)[None],
        "label": int(cls),
        "mask": mask[None].astype(np.uint8),
        "motion": motion.astype(np.float32),
        "centers": center_px.astype(np.float32),
    }


def make_sequence_phantoms(
    num: int, num_frames: int = 8, spatial_size: Sequence[int] = (32, 32), num_classes: int = 2, seed: int = 0
) -> list[dict]:
    """Image sequences (2D + t) of a moving object whose shape is set by its class (for Ctrl-GenAug).

    A bright textured object moves over a static textured background along a smooth trajectory (a drift
    with a gentle bend) while it rotates and pulses. Class 0 is a disk, class ``c >= 1`` a shape with
    ``c + 1`` lobes (class 1 elongated, class 2 three-lobed, ...). Classes cycle ``i % num_classes``, so
    every class is equally represented. Layout: ``image[0, t]`` is frame ``t``.

    Args:
        num: number of sequences (>= 1).
        num_frames: frames per sequence ``T`` (>= 2).
        spatial_size: ``(H, W)``, each >= 8.
        num_classes: number of classes (>= 1).
        seed: non-negative seed; sample ``i`` depends only on ``seed`` and ``i``.

    Returns:
        a list of dicts: ``"image"`` float32 (1, T, H, W) in [0, 1] (channel, frame, H, W); ``"label"`` int
        class; ``"mask"`` uint8 (1, T, H, W) object mask; ``"motion"`` float32 (2, T, H, W), the
        displacement in pixels along (H, W) from each frame-0 pixel of the object to the position of the same
        material point at frame ``t`` (zero at ``t = 0`` and on the static background); ``"centers"`` float32
        (T, 2), the object centre per frame in pixel indices (row, column).
    """
    num, seed = _check_common(num, seed)
    size = _check_size(spatial_size, (2,))
    num_frames = _check_int(num_frames, "num_frames", 2, " A sequence needs at least two frames.")
    num_classes = _check_int(num_classes, "num_classes", 1)
    return [_render_sequence(_rng("sequence", seed, i), size, num_frames, i % num_classes) for i in range(num)]


# --------------------------------------------------------------------------------------------------
# one anatomy, two modalities (vessel trees, for AdaptDiff)
# --------------------------------------------------------------------------------------------------
def _vessel_tree(rng: np.random.Generator, shape: Sequence[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Centre-line points (M, ndim) and radii (M,) of a branching tree of smooth curves, plus its root."""
    ndim = len(shape)
    px = _pixel(shape)
    ext = _extent(shape)
    step = min(0.03, px)
    root = rng.uniform(-0.5, 0.5, ndim) * ext
    points, radii = [], []

    def curve(start: np.ndarray, direction: np.ndarray, length: float, r_start: float, r_end: float) -> tuple:
        n = max(int(length / step), 2)
        s = np.linspace(0.0, length, n)
        # curvature: a smooth random vector function of the arc length
        freq = rng.uniform(1.0, 3.0, (3, 1))
        amp = rng.normal(0.0, 1.2, (3, ndim))
        phase = rng.uniform(0.0, 2 * np.pi, (3, 1))
        curv = (amp[:, None, :] * np.sin(np.pi * freq[:, :, None] * s[None, :, None] + phase[:, :, None])).sum(0)
        d = direction / np.linalg.norm(direction)
        pts = np.empty((n, ndim))
        p = start.astype(np.float64)
        for i in range(n):  # n ~ length / pixel: a loop over centre-line points, not over pixels
            pts[i] = p
            d = d + step * curv[i]
            d /= np.linalg.norm(d)
            p = p + step * d
        return pts, np.linspace(r_start, r_end, n)

    n_main = int(rng.integers(3, 6))
    for j in range(n_main):
        direction = rng.normal(size=ndim)
        if ndim == 2:
            a = 2 * np.pi * (j + rng.uniform(-0.25, 0.25)) / n_main
            direction = np.array([np.sin(a), np.cos(a)])
        w0 = max(rng.uniform(0.035, 0.055), (1.2 if ndim == 2 else 1.6) * px)
        pts, rad = curve(root, direction, rng.uniform(1.0, 1.8), w0, max(0.4 * w0, 0.6 * px))
        points.append(pts)
        radii.append(rad)
        for _ in range(int(rng.integers(1, 4))):
            k = int(rng.integers(len(pts) // 5, max(len(pts) * 3 // 4, len(pts) // 5 + 1)))
            parent = pts[min(k + 1, len(pts) - 1)] - pts[max(k - 1, 0)]
            branch = parent / (np.linalg.norm(parent) + 1e-12) + rng.normal(0.0, 0.9, ndim)
            b_pts, b_rad = curve(pts[k], branch, rng.uniform(0.3, 0.7), 0.7 * rad[k], max(0.3 * rad[k], 0.6 * px))
            points.append(b_pts)
            radii.append(b_rad)
    return np.concatenate(points).astype(np.float32), np.concatenate(radii).astype(np.float32), root


def _tube_distance(
    shape: Sequence[int], points: np.ndarray, radii: np.ndarray, cap: float, chunk: int = 32
) -> np.ndarray:
    """Signed distance to the union of balls (points, radii), negative inside, capped at ``cap``.

    Each ball only touches the pixels of its bounding box (radius + cap), so the cost grows with the number
    of centre-line points times the box size, not with the image size times the number of points."""
    ndim = len(shape)
    px = _pixel(shape)
    half = (np.array(shape, dtype=np.float32) - 1) / 2.0
    dims = np.array(shape)
    strides = np.array([int(np.prod(shape[d + 1 :])) for d in range(ndim)])
    out = np.full(int(np.prod(shape)), cap, dtype=np.float32)
    order = np.argsort(radii)  # chunks of similar radii share a small box
    points, radii = points[order], radii[order]
    for i in range(0, len(points), chunk):
        p, r = points[i : i + chunk], radii[i : i + chunk]
        w = int(np.ceil((float(r.max()) + cap) / px))
        offsets = np.stack(np.meshgrid(*[np.arange(-w, w + 1)] * ndim, indexing="ij"), axis=-1).reshape(-1, ndim)
        cand = np.round(p / px + half).astype(np.int64)[:, None, :] + offsets[None]  # (m, K, ndim) pixel indices
        valid = np.all((cand >= 0) & (cand < dims), axis=-1)
        diff = (cand.astype(np.float32) - half) * np.float32(px) - p[:, None, :]
        d = np.sqrt(np.einsum("mkd,mkd->mk", diff, diff)) - r[:, None]
        np.minimum.at(out, (cand[valid] * strides).sum(-1), d[valid])
    return out.reshape(tuple(shape))


def _render_two_modality(rng: np.random.Generator, shape: tuple[int, ...], affine: np.ndarray | None) -> dict:
    coords = _grid(shape)
    px = _pixel(shape)
    points, radii, root = _vessel_tree(rng, shape)
    sd = _tube_distance(shape, points, radii, cap=4.0 * px)
    mask = _ensure_nonempty(sd < 0, _center_index(root, shape))
    r2 = sum(c**2 for c in coords)

    # source: bright vessels on a dark, finely textured background, additive Gaussian noise (OCTA/MRA-like)
    soft_s = _sigmoid(-sd / (0.5 * px))
    bg_s = 0.1 + 0.04 * _field(rng, coords, 6, 0.5, 2.0) + 0.03 * _field(rng, coords, 16, 4.0, 9.0)
    ves_s = rng.uniform(0.75, 0.95) * (1.0 + 0.05 * _field(rng, coords, 6, 2.0, 5.0))
    source = bg_s * (1.0 - soft_s) + ves_s * soft_s + rng.normal(0.0, 0.03, shape)

    # target: dark vessels on a bright, smooth background, blurrier edges, vignetting and a bias field,
    # a gamma curve and multiplicative noise (fundus/black-blood-like)
    soft_t = _sigmoid(-sd / (1.2 * px))
    bg_t = 0.62 + 0.08 * _field(rng, coords, 5, 0.5, 1.5)
    ves_t = rng.uniform(0.22, 0.35)
    target = bg_t * (1.0 - soft_t) + ves_t * soft_t
    target = target * (1.0 - rng.uniform(0.15, 0.3) * r2 / len(shape)) * (1.0 + 0.12 * _field(rng, coords, 3, 0.3, 0.8))
    target = np.clip(target, 0.0, 1.0) ** rng.uniform(0.7, 1.4)
    target = target * rng.normal(1.0, 0.05, shape) + rng.normal(0.0, 0.01, shape)

    out = {
        "source": _to_unit(source)[None],
        "target": _to_unit(target)[None],
        "label": mask[None].astype(np.uint8),
    }
    if affine is not None:
        out["affine"] = affine.copy()
    return out


def make_two_modality_phantoms(num: int, spatial_size: Sequence[int] = (64, 64), seed: int = 0) -> list[dict]:
    """One vessel tree per sample rendered in two modalities with identical masks (for AdaptDiff).

    The anatomy is a branching tree of smooth tapering tubes. The ``source`` modality shows bright vessels
    on a dark textured background with additive noise; the ``target`` modality shows dark, blurrier vessels
    on a bright background with vignetting, a bias field, a random gamma curve and multiplicative noise, so
    the intensity relationship between vessel and background is inverted. 2D or 3D by
    ``len(spatial_size)``.

    Args:
        num: number of samples (>= 1).
        spatial_size: ``(H, W)`` or ``(D, H, W)``, each >= 8.
        seed: non-negative seed; sample ``i`` depends only on ``seed`` and ``i``.

    Returns:
        a list of dicts ``{"source": float32 (1, *spatial_size) in [0, 1], "target": same, "label": uint8
        (1, *spatial_size) in {0, 1}}``; 3D samples also hold ``"affine"`` (4, 4), 1 mm isotropic.
    """
    num, seed = _check_common(num, seed)
    size = _check_size(spatial_size, (2, 3))
    affine = phantom_affine() if len(size) == 3 else None
    return _make("two_modality", _render_two_modality, num, seed, size, affine)


# --------------------------------------------------------------------------------------------------
# class phantoms (histology-like textures)
# --------------------------------------------------------------------------------------------------
def _render_class(rng: np.random.Generator, shape: tuple[int, int], channels: int, num_classes: int, cls: int) -> dict:
    coords = _grid(shape)
    y, x = coords
    px = _pixel(shape)
    ext = _extent(shape)
    t = cls / (num_classes - 1) if num_classes > 1 else 0.0  # 0: sparse, small, elongated; 1: dense, large, round

    # eosin-pink stroma with fibrous (anisotropic) texture
    fibre_dir = rng.uniform(0.0, np.pi)
    along = np.cos(fibre_dir) * y + np.sin(fibre_dir) * x
    fibres = np.cos(np.pi * rng.uniform(6.0, 10.0) * along + 1.5 * _field(rng, coords, 6, 0.5, 2.0))
    bg_col = np.array([0.93, 0.66 + 0.08 * t, 0.80]) + rng.normal(0.0, 0.02, 3)
    stroma = 1.0 - (0.06 * (1 - t) + 0.02) * fibres - 0.04 * _field(rng, coords, 6, 0.5, 2.0)
    bg = bg_col[:, None, None] * stroma[None]

    # nuclei: haematoxylin-purple ellipses; density, size and roundness set by the class
    area = float(np.prod(ext)) * 4.0
    n_nuclei = max(int(round(area * (10 + 25 * t) * rng.uniform(0.85, 1.15))), 1)
    size = (0.04 + 0.025 * t) * rng.uniform(0.8, 1.2, n_nuclei)
    size = np.maximum(size, 1.0 * px)
    elong = 1.0 + (1.8 * (1 - t)) * rng.uniform(0.6, 1.0, n_nuclei)
    centers = rng.uniform(-1.0, 1.0, (n_nuclei, 2)) * ext
    angle = fibre_dir + rng.normal(0.0, 0.3 + 1.2 * t, n_nuclei)
    nuc = np.zeros(shape, dtype=np.float32)
    for i in range(0, n_nuclei, 64):
        sl = slice(i, i + 64)
        dy = y[None] - centers[sl, 0, None, None]
        dx = x[None] - centers[sl, 1, None, None]
        ca, sa = np.cos(angle[sl])[:, None, None], np.sin(angle[sl])[:, None, None]
        u = (ca * dy + sa * dx) * elong[sl, None, None] ** 0.5 / size[sl, None, None]
        v = (-sa * dy + ca * dx) / (elong[sl, None, None] ** 0.5 * size[sl, None, None])
        sd = (np.sqrt(u**2 + v**2) - 1.0) * size[sl, None, None]
        nuc = np.maximum(nuc, _sigmoid(-sd / (0.5 * px)).max(axis=0))
    nuc_col = np.array([0.36, 0.22, 0.55]) * (1.0 - 0.25 * t) + rng.normal(0.0, 0.02, 3)
    chromatin = 1.0 + 0.1 * _field(rng, coords, 16, 6.0, 12.0)
    rgb = bg * (1.0 - nuc) + (nuc_col[:, None, None] * chromatin[None]) * nuc
    rgb = rgb + rng.normal(0.0, 0.01, rgb.shape)
    if channels == 1:
        rgb = (0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2])[None]
    return {"image": _to_unit(rgb), "label": int(cls)}


def make_class_phantoms(
    num: int, spatial_size: Sequence[int] = (64, 64), num_classes: int = 2, seed: int = 0, channels: int = 3
) -> list[dict]:
    """Histology-like texture patches for classification (e.g. HistoDiffusion).

    A patch is pink stroma with a fibrous texture and purple nuclei. The class moves the nuclei from sparse,
    small and elongated along the fibres (class 0) to dense, large and round (class ``num_classes - 1``);
    it also shifts the stroma colour. Classes cycle ``i % num_classes``.

    Args:
        num: number of patches (>= 1).
        spatial_size: ``(H, W)``, each >= 8.
        num_classes: number of classes (>= 1).
        seed: non-negative seed; sample ``i`` depends only on ``seed`` and ``i``.
        channels: 3 for RGB, 1 for grey (luminance).

    Returns:
        a list of dicts ``{"image": float32 (channels, H, W) in [0, 1], "label": int class}``.
    """
    num, seed = _check_common(num, seed)
    size = _check_size(spatial_size, (2,))
    num_classes = _check_int(num_classes, "num_classes", 1)
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 (grey) or 3 (RGB), got {channels!r}.")
    return [_render_class(_rng("classes", seed, i), size, channels, num_classes, i % num_classes) for i in range(num)]


# --------------------------------------------------------------------------------------------------
# writers
# --------------------------------------------------------------------------------------------------
def _class_names(class_names: Sequence[str] | None, num_classes: int) -> list[str]:
    if class_names is None:  # zero-padded, so that sorting the folder names keeps the class order
        width = len(str(num_classes - 1))
        return [f"class_{c:0{width}d}" for c in range(num_classes)]
    names = [str(n) for n in class_names]
    if len(names) != num_classes:
        raise ValueError(f"class_names has {len(names)} names but num_classes is {num_classes}; give one per class.")
    bad = [n for n in names if not n or n.startswith(".") or "/" in n or "\\" in n or n in ("..",)]
    if bad or len(set(names)) != len(names):
        raise ValueError(
            f"class_names must be distinct, non-empty folder names without '/' or a leading '.', got {names}."
        )
    return names


def _prepare_out_dir(out_dir: Path, overwrite: bool, planned: set[str] | frozenset[str] = frozenset()) -> None:
    """Check and prepare the destination; ``planned``: the files this call writes (a crashed or concurrent call of
    the same writer may have left some of them, without a manifest: they are not someone else's data)."""
    if out_dir.exists() and not out_dir.is_dir():
        raise NotADirectoryError(f"out_dir '{out_dir}' exists and is not a folder; choose another path.")
    if out_dir.is_dir() and any(out_dir.iterdir()):
        if not overwrite:
            raise FileExistsError(
                f"out_dir '{out_dir}' exists and is not empty; choose an empty or new folder, or pass "
                "overwrite=True (--overwrite) to replace a phantom data set written there before."
            )
        manifest = out_dir / MANIFEST_NAME
        files: list[str] = []
        if manifest.is_file():
            try:
                files = list(json.loads(manifest.read_text()).get("files", []))
            except (OSError, ValueError, AttributeError):
                files = []
        known = {Path(f).as_posix() for f in files} | set(planned)
        foreign = sorted(  # visible files an earlier call of this writer did not list: the user's data
            p.relative_to(out_dir).as_posix()
            for p in out_dir.rglob("*")
            if p.is_file() and not any(part.startswith(".") for part in p.relative_to(out_dir).parts)
            and p.relative_to(out_dir).as_posix() not in known
        )
        if foreign:
            raise FileExistsError(
                f"out_dir '{out_dir}' holds {len(foreign)} file(s) this phantom writer did not write (e.g. "
                f"'{foreign[0]}'); "
                "overwrite only replaces a phantom data set written there before, never other data. Choose an empty "
                "or new folder."
            )
        if files:  # remove only the files an earlier call of this writer listed
            root = out_dir.resolve()
            parents = set()
            for rel in files:
                p = (out_dir / rel).resolve()
                if root in p.parents and p.is_file():
                    p.unlink()
                    parents.update(q for q in p.parents if root in q.parents)
            for q in sorted(parents, key=lambda q: len(q.parts), reverse=True):  # folders it emptied
                if q.is_dir() and not any(q.iterdir()):
                    q.rmdir()
            manifest.unlink()
    out_dir.mkdir(parents=True, exist_ok=True)


def write_phantom_dataset(
    kind: str,
    out_dir: str | os.PathLike,
    num: int,
    seed: int = 0,
    overwrite: bool = False,
    class_names: Sequence[str] | None = None,
    **kwargs: Any,
) -> Path:
    """Generate ``num`` phantoms of ``kind`` and write them in the layout the folder datasets read.

    Layouts (``<stem>`` is ``phantom_0000``, ``phantom_0001``, ...; MRI cases are ``case_0000``, ...):

    - ``"endoscopy"``, ``"grey"`` (Kvasir-SEG layout): ``out_dir/images/<stem>.png`` (RGB or L) and
      ``out_dir/masks/<stem>.png`` (L, 0/255). PNG masks are 0/255, NIfTI masks and labels 0/1 (0..K).
    - ``"mri"`` (BRATS-like): ``out_dir/case_0000/{Flair,T1c}.nii.gz`` (one file per modality, names in
      :data:`MRI_FILE_NAMES`), ``OTMultiClass.nii.gz`` (uint8 label map) and ``brainmask.nii.gz``; all
      ``(D, H, W)`` volumes with the phantom affine.
    - ``"sequence"``: ``out_dir/<class_name>/<stem>.nii.gz``, the clip as an ``(H, W, T)`` float32 volume
      (frames along the last axis, like a slice stack), 1 mm pixels. Only the clip is written, not its
      motion field. Classes cycle ``i % num_classes`` and ``num >= num_classes``, so every class folder
      holds at least one sample.
    - ``"two_modality"``: ``out_dir/{source,target}/images/<stem>`` and ``out_dir/{source,target}/masks/<stem>``
      (the masks are identical), ``.png`` for 2D and ``.nii.gz`` for 3D.
    - ``"classes"``: ``out_dir/<class_name>/<stem>.png`` from :func:`make_class_phantoms`.

    Every file is written to a temporary name and renamed into place, so a failure never leaves a
    half-written file. A hidden manifest (:data:`MANIFEST_NAME`: kind, arguments, files) is written last.

    Args:
        kind: one of :data:`PHANTOM_KINDS`.
        out_dir: destination folder; created when missing; must be empty unless ``overwrite``.
        num: number of samples (>= 1).
        seed: non-negative seed.
        overwrite: allow an ``out_dir`` holding a phantom data set written there before (its manifest lists every
            file); those files are removed first. A folder holding any other visible file (e.g. a user's images) is
            refused whatever ``overwrite`` says.
        class_names: folder names of the classes for ``"sequence"`` and ``"classes"``, in class-index order
            (default ``class_0``, ``class_1``, ..., zero-padded beyond ten classes); the manifest records them
            in this order, since sorting custom names may not give the class order.
        kwargs: passed to the generator (e.g. ``spatial_size``, ``num_classes``, ``num_frames``,
            ``modalities``, ``channels``).

    Returns:
        the output folder.
    """
    generators: dict[str, Callable[..., list[dict]]] = {
        "endoscopy": make_endoscopy_phantoms,
        "grey": make_grey_phantoms,
        "mri": make_mri_phantoms,
        "sequence": make_sequence_phantoms,
        "two_modality": make_two_modality_phantoms,
        "classes": make_class_phantoms,
    }
    if kind not in generators:
        raise ValueError(f"unknown phantom kind {kind!r}; choose one of {list(PHANTOM_KINDS)}.")
    if class_names is not None and kind not in ("sequence", "classes"):
        raise ValueError(f"class_names only applies to kinds 'sequence' and 'classes', not {kind!r}.")
    samples = generators[kind](num, seed=seed, **kwargs)  # validates num, seed and kwargs before touching disk
    names = None
    if kind in ("sequence", "classes"):
        default = inspect.signature(generators[kind]).parameters["num_classes"].default
        names = _class_names(class_names, int(kwargs.get("num_classes", default)))
        if num < len(names):
            raise ValueError(
                f"num={num} is smaller than num_classes={len(names)}: a class folder would stay empty. "
                "Ask for at least one sample per class (classes cycle i % num_classes)."
            )
    out = Path(out_dir).expanduser()
    width = max(4, len(str(len(samples) - 1)))
    encoded: list[tuple[str, bytes]] = []  # encoded first, so the folder check knows every file this call writes

    def put(rel: str, data: bytes) -> None:
        encoded.append((rel, data))

    for i, s in enumerate(samples):
        stem = f"phantom_{i:0{width}d}"
        if kind in ("endoscopy", "grey"):
            put(f"images/{stem}.png", png_bytes(s["image"]))
            put(f"masks/{stem}.png", png_bytes(s["label"] * 255))
        elif kind == "mri":
            case = f"case_{i:0{width}d}"
            for m in [k for k in MRI_FILE_NAMES if k in s]:
                put(f"{case}/{MRI_FILE_NAMES[m]}", nifti_bytes(s[m][0], s["affine"]))
            put(f"{case}/OTMultiClass.nii.gz", nifti_bytes(s["label"][0], s["affine"]))
            put(f"{case}/brainmask.nii.gz", nifti_bytes(s["brain"][0], s["affine"]))
        elif kind == "sequence":
            clip = np.ascontiguousarray(np.moveaxis(s["image"][0], 0, -1))  # (T, H, W) -> (H, W, T)
            put(f"{names[s['label']]}/{stem}.nii.gz", nifti_bytes(clip, phantom_affine()))
        elif kind == "two_modality":
            ext = ".png" if s["label"].ndim == 3 else ".nii.gz"
            for side in ("source", "target"):
                if ext == ".png":
                    put(f"{side}/images/{stem}{ext}", png_bytes(s[side]))
                    put(f"{side}/masks/{stem}{ext}", png_bytes(s["label"] * 255))
                else:
                    put(f"{side}/images/{stem}{ext}", nifti_bytes(s[side][0], s["affine"]))
                    put(f"{side}/masks/{stem}{ext}", nifti_bytes(s["label"][0], s["affine"]))
        else:  # classes
            put(f"{names[s['label']]}/{stem}.png", png_bytes(s["image"]))

    _prepare_out_dir(out, overwrite, planned={rel for rel, _ in encoded})
    files = [Path(rel) for rel, _ in encoded]
    for rel, data in encoded:
        atomic_write_bytes(out / rel, data)

    manifest = {
        "generator": "monai_genaug.data.phantoms",
        "kind": kind,
        "num": int(num),
        "seed": int(seed),
        "kwargs": kwargs,
        "class_names": names,
        "files": [f.as_posix() for f in files],
    }
    text = json.dumps(manifest, indent=1, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o))
    atomic_write_bytes(out / MANIFEST_NAME, text.encode())
    return out


# --------------------------------------------------------------------------------------------------
# command line
# --------------------------------------------------------------------------------------------------
def main(argv: Sequence[str] | None = None) -> Path:
    """Command line: ``python -m monai_genaug.data.phantoms --kind endoscopy --out DIR --num 20 --size 64 64``."""
    parser = argparse.ArgumentParser(
        prog="python -m monai_genaug.data.phantoms", description="Write a synthetic phantom data set to disk."
    )
    parser.add_argument("--kind", required=True, choices=PHANTOM_KINDS, help="which phantoms to write")
    parser.add_argument("--out", required=True, help="output folder (must be empty unless --overwrite)")
    parser.add_argument("--num", type=int, default=20, help="number of samples (default 20)")
    parser.add_argument("--size", type=int, nargs="+", default=None, help="spatial size, e.g. 64 64 or 32 32 32")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--num-classes", type=int, default=None, help="mri, sequence, classes: number of classes")
    parser.add_argument("--num-frames", type=int, default=None, help="sequence: frames per clip")
    parser.add_argument("--modalities", nargs="+", default=None, help=f"mri: any of {sorted(MRI_MODALITIES)}")
    parser.add_argument("--channels", type=int, default=None, help="classes: 1 (grey) or 3 (RGB)")
    parser.add_argument("--class-names", nargs="+", default=None, help="sequence, classes: class folder names")
    parser.add_argument(
        "--overwrite", action="store_true",
        help="replace a phantom data set written in --out before (a folder holding other files is always refused)",
    )
    add_runtime_arguments(parser)
    args = parser.parse_args(argv)
    apply_runtime_arguments(args)
    kwargs: dict[str, Any] = {}
    for key, value in (
        ("spatial_size", args.size),
        ("num_classes", args.num_classes),
        ("num_frames", args.num_frames),
        ("modalities", args.modalities),
        ("channels", args.channels),
    ):
        if value is not None:
            kwargs[key] = tuple(value) if isinstance(value, list) else value
    try:
        out = write_phantom_dataset(
            args.kind,
            args.out,
            args.num,
            seed=args.seed,
            overwrite=args.overwrite,
            class_names=args.class_names,
            **kwargs,
        )
    except (TypeError, ValueError, FileExistsError, NotADirectoryError) as e:
        parser.error(str(e))
    print(out)
    return out


if __name__ == "__main__":
    main()
