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
"""Where results go: no earlier result is lost silently, and a bad destination is named with the fix.

Rule of every bundle config that writes results (inference, evaluation, filtering, synthesis): a run refuses an
``output_dir`` where the same config finished before, unless ``--overwrite true`` is given. A finished run leaves a
small hidden record ``.<config name>.done.json`` in ``output_dir`` (written by :func:`mark_output_dir` in the config's
``finalize`` step); :func:`check_output_dir` (the config's first ``initialize`` step) refuses the folder when that
record exists. Different configs may share a folder (e.g. AdaptDiff's pseudo-label -> synthesize -> finetune ->
evaluate chain); a failed run leaves no record, so its rerun needs no flag.
"""

from __future__ import annotations

import datetime
import json
import os
import sys
from pathlib import Path

from monai_genaug.utils.io import atomic_write_bytes  # the one atomic-write helper (re-exported)
from monai_genaug.utils.options import as_bool

__all__ = [
    "atomic_write_bytes",
    "check_file_destination",
    "check_output_dir",
    "mark_output_dir",
    "run_record_path",
]

def _run_name(config: str) -> str:
    return Path(str(config)).name.replace(".json", "").replace(".yaml", "") or "run"


def run_record_path(output_dir: str | os.PathLike, config: str) -> Path:
    """The hidden record a finished run of ``config`` leaves in ``output_dir``."""
    return Path(output_dir).expanduser() / f".{_run_name(config)}.done.json"


def check_output_dir(output_dir: str | os.PathLike, overwrite: bool | str = False, config: str = "this config") -> str:
    """Check a bundle run's ``output_dir`` before anything is computed; create it; return it.

    Args:
        output_dir: the results folder.
        overwrite: replace the results of an earlier run of the same config in ``output_dir``.
        config: the config named in messages and in the run record (e.g. ``"configs/inference.json"``).

    Raises:
        NotADirectoryError: ``output_dir`` (or one of its parents) is an existing file.
        FileExistsError: ``config`` finished in ``output_dir`` before and ``overwrite`` is false.
    """
    out = Path(output_dir).expanduser()
    for p in (out, *out.parents):
        if p.exists() and not p.is_dir():
            where = "" if p == out else f" (its parent '{p}' is a file)"
            raise NotADirectoryError(
                f"output_dir '{out}' cannot be a results folder{where}: '{p}' is an existing file. Pass "
                "--output_dir with a folder path (it is created when missing)."
            )
    record = run_record_path(out, config)
    if record.is_file() and not as_bool(overwrite, "overwrite"):
        try:
            when = json.loads(record.read_text()).get("finished", "an earlier time")
        except (OSError, ValueError, AttributeError):
            when = "an earlier time"
        raise FileExistsError(
            f"output_dir '{out}' holds the results of an earlier run of {config} (finished {when}); this run would "
            "overwrite them. Pass --overwrite true to replace them, or choose another --output_dir."
        )
    out.mkdir(parents=True, exist_ok=True)
    return str(out)


def mark_output_dir(output_dir: str | os.PathLike, config: str = "this config") -> Path:
    """Record, after a run finished, that ``config`` wrote its results into ``output_dir`` (atomic write).

    Args:
        output_dir: the results folder.
        config: the config (as given to :func:`check_output_dir`).

    Returns:
        the path of the record.
    """
    record = run_record_path(output_dir, config)
    info = {
        "config": str(config),
        "finished": datetime.datetime.now().isoformat(timespec="seconds"),
        "command": " ".join(sys.argv),
    }
    atomic_write_bytes(record, json.dumps(info, indent=1).encode())
    return record


def check_file_destination(path: str | os.PathLike, what: str = "path") -> Path:
    """Check that ``path`` can be written as a file: not an existing folder, no parent that is a file.

    Args:
        path: the file to write.
        what: the argument named in messages.

    Raises:
        IsADirectoryError: ``path`` is an existing folder.
        NotADirectoryError: a parent of ``path`` is an existing file.
    """
    p = Path(path).expanduser()
    if p.is_dir():
        raise IsADirectoryError(
            f"{what} '{p}' is an existing folder; give a file path, e.g. '{p / 'datalist.json'}'."
        )
    for parent in p.parents:
        if parent.exists() and not parent.is_dir():
            raise NotADirectoryError(f"{what} '{p}' cannot be written: its parent '{parent}' is a file, not a folder.")
    return p
