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
"""Order-sensitive sequence phantoms: the class is the *motion* (expansion vs contraction), not the appearance.

Made for sequence methods such as Ctrl-GenAug (Zhou et al., arXiv:2409.17091), whose conditions and filters are about
motion and temporal consistency: on these clips a classifier that averages per-frame features is at chance by
construction, because class 1 clips are the time reversals of class 0 clips drawn from the same distribution (with
``paired=True`` clip ``2j + 1`` is exactly clip ``2j`` played backwards, so every frame-order-invariant classifier
gives both the same output). Only a model that sees frame order (3D convolution over ``(t, h, w)``, temporal
attention) can separate them.

Every clip: a textured static background, a bright disk with a soft edge whose radius grows monotonically (class 0,
"expanding") or shrinks (class 1, "contracting") with a random start radius, amplitude and easing, a centre that
drifts a little, a second, distracting disk whose radius changes at random (no order), and per-frame noise.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["MOTION_CLASS_NAMES", "make_motion_phantoms"]

#: class names of :func:`make_motion_phantoms`
MOTION_CLASS_NAMES = ("expanding", "contracting")


def _disk(yy: np.ndarray, xx: np.ndarray, cy: float, cx: float, r: float, edge: float = 0.7) -> np.ndarray:
    d = np.sqrt((yy - cy) ** 2 + (xx - cx) ** 2)
    return 1.0 / (1.0 + np.exp((d - r) / edge))


def _expanding_clip(
    rng: np.random.Generator, nf: int, h: int, w: int, noise: float, amplitude: tuple[float, float], jitter: float
) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    side = min(h, w)
    # static low-frequency background texture
    bg = np.zeros((h, w))
    for _ in range(3):
        fy, fx, ph = rng.uniform(0.1, 0.6), rng.uniform(0.1, 0.6), rng.uniform(0, 2 * np.pi)
        bg += rng.uniform(0.02, 0.08) * np.sin(fy * yy + fx * xx + ph)
    bg += rng.uniform(0.1, 0.25)
    r0 = rng.uniform(0.10, 0.16) * side
    r1 = r0 + rng.uniform(*amplitude) * side
    ease = rng.uniform(0.6, 1.6)
    s = np.linspace(0.0, 1.0, nf) ** ease
    radius = r0 + (r1 - r0) * s + rng.normal(0.0, jitter * side, nf)
    margin = r1 + 1
    cy0, cx0 = rng.uniform(margin, h - margin), rng.uniform(margin, w - margin)
    drift = rng.normal(0.0, 0.04 * side, 2)
    amp = rng.uniform(0.45, 0.75)
    # the distractor: a small disk elsewhere whose radius changes in a random order
    dy, dx = rng.uniform(2, h - 2), rng.uniform(2, w - 2)
    dr = rng.uniform(0.04, 0.10, nf) * side
    damp = rng.uniform(0.2, 0.4)
    frames = np.empty((nf, h, w))
    for t in range(nf):
        f = t / max(nf - 1, 1)
        cy, cx = cy0 + drift[0] * f, cx0 + drift[1] * f
        img = bg + amp * _disk(yy, xx, cy, cx, radius[t]) + damp * _disk(yy, xx, dy, dx, dr[t])
        frames[t] = img + rng.normal(0.0, noise, (h, w))
    return np.clip(frames, 0.0, 1.0)


def make_motion_phantoms(
    num: int,
    num_frames: int = 8,
    spatial_size: Sequence[int] = (16, 16),
    seed: int = 0,
    noise: float = 0.05,
    amplitude: Sequence[float] = (0.05, 0.12),
    jitter: float = 0.05,
    paired: bool = True,
) -> list[dict]:
    """Clips whose class is the direction of a disk's size change: 0 expanding, 1 contracting.

    Args:
        num: number of clips (>= 1); labels alternate ``0, 1, 0, ...``.
        num_frames: frames per clip (>= 3).
        spatial_size: ``(H, W)``, each >= 12.
        seed: non-negative seed; clip ``i`` depends only on ``seed`` and ``i`` (``i // 2`` when ``paired``).
        noise: standard deviation of the per-frame Gaussian noise.
        amplitude: range of the radius change over the clip, as fractions of the shorter side (smaller is harder).
        jitter: standard deviation of a per-frame random radius change (fraction of the side): the direction must then
            be read from the whole clip, not from one pair of frames.
        paired: clip ``2j + 1`` is clip ``2j`` reversed in time (exactly the same frames); else every clip is drawn
            on its own (class 1: an independent expanding clip, reversed).

    Returns:
        a list of ``{"image": float32 (1, F, H, W) in [0, 1], "label": int, "pair": int}`` (``pair`` = the index of
        the expanding clip a contracting clip reverses, for splitting pairs together).

    Raises:
        ValueError: bad sizes or counts, with the fix in the message.
    """
    if int(num) < 1:
        raise ValueError(f"num must be >= 1, got {num}.")
    if int(num_frames) < 3:
        raise ValueError(f"num_frames must be >= 3 so that a size change has a direction, got {num_frames}.")
    size = tuple(int(s) for s in spatial_size)
    if len(size) != 2 or min(size) < 12:
        raise ValueError(f"spatial_size must be (H, W) with both >= 12, got {tuple(spatial_size)}.")
    amp = (float(amplitude[0]), float(amplitude[1]))
    if not 0.0 < amp[0] <= amp[1]:
        raise ValueError(f"amplitude must be (low, high) with 0 < low <= high, got {tuple(amplitude)}.")
    if int(seed) < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed}.")
    out = []
    for i in range(int(num)):
        label = i % 2
        key = i // 2 if paired else i
        rng = np.random.default_rng([int(seed), 7321, key, 0 if paired else label])
        clip = _expanding_clip(rng, int(num_frames), size[0], size[1], float(noise), amp, float(jitter))
        if label == 1:
            clip = clip[::-1]
        out.append({"image": np.ascontiguousarray(clip[None], dtype=np.float32), "label": label, "pair": key})
    return out
