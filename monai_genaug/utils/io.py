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
"""The one atomic-write helper of the package, and the byte encoders of the files it writes.

Every file the package writes (checkpoints, JSON reports and data lists, PNG / NIfTI images, pictures) goes through
:func:`atomic_write`: the content is written to a hidden temporary file in the destination folder, flushed to disk
and renamed into place, so a reader never sees a half-written file and an interrupted run leaves the previous file
(or none), plus no temporary.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import numpy as np
from monai.utils import optional_import
from PIL import Image

nib, _has_nib = optional_import("nibabel")

__all__ = ["atomic_write", "atomic_write_bytes", "atomic_write_json", "atomic_write_text", "nifti_bytes", "png_bytes"]


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], Any], mode: int = 0o644) -> Path:
    """Write a file atomically: ``write(f)`` fills a temporary file next to ``path``, which is then renamed to it.

    Args:
        path: destination file; its folder is created when missing.
        write: called with the open binary temporary file.
        mode: permission bits of the written file (``mkstemp`` creates 0600; written files are meant to be shared).

    Returns:
        the destination path.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return path


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_write`)."""
    return atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any, indent: int | None = 2, **kwargs: Any) -> Path:
    """Write ``obj`` as JSON (plus a final newline) to ``path`` atomically; ``kwargs`` go to ``json.dumps``."""
    return atomic_write_text(path, json.dumps(obj, indent=indent, **kwargs) + "\n")


def png_bytes(array: np.ndarray) -> bytes:
    """PNG of a channel-first (1 or 3, H, W) array in [0, 1] (float) or an integer array (uint8 values)."""
    a = np.asarray(array)
    if a.dtype.kind == "f":
        a = np.round(np.clip(a, 0.0, 1.0) * 255.0)
    a = a.astype(np.uint8)
    img = Image.fromarray(a[0]) if a.shape[0] == 1 else Image.fromarray(np.ascontiguousarray(a.transpose(1, 2, 0)))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def nifti_bytes(array: np.ndarray, affine: np.ndarray) -> bytes:
    """Gzipped NIfTI-1 of an array (stored as is, spatial axes in array order), reproducible byte for byte."""
    img = nib.Nifti1Image(np.asarray(array), np.asarray(affine, dtype=np.float64))
    img.header.set_xyzt_units("mm", "sec")
    img.set_qform(img.affine, code=1)
    img.set_sform(img.affine, code=1)
    return gzip.compress(img.to_bytes(), compresslevel=6, mtime=0)
