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
"""Run-time settings shared by every bundle and command line: CPU threads, progress bars, the bundle folder.

* ``num_threads``: torch's intra-op thread count. The default (``None``) is **one thread per process on CPU**: the
  shipped networks are small, one thread is as fast as two on a quiet machine, and torch's default (one thread per
  core) collapses when another busy process shares the cores (oversubscription: the TTGA main job went from 26 s to
  1,121 s on a 2-core machine, issue #22). On CUDA the default leaves torch's setting alone.
* ``progress``: tqdm bars on stderr, per case (an Ignite ``ProgressBar`` on the evaluator) and per sampling /
  optimisation loop. ``True`` (default) shows them only when stderr is a terminal (tqdm's ``disable=None``), so logs
  of batch jobs are not flooded; ``False`` switches them off.
* ``bundle_root``: the bundle folder, found from the config file that MONAI's workflow read, so a bundle folder
  copied anywhere works (see :func:`bundle_root`).
"""

from __future__ import annotations

import inspect
import os
import re
import sys
from pathlib import Path
from typing import Any


from monai_genaug.handlers.progress import progress_bar
from monai_genaug.utils.options import (
    as_bool,
    optional_count,
    resolve_num_threads,
    set_num_threads,
    set_progress,
    tqdm_disable,
)

__all__ = ["as_bool", "bundle_root", "optional_count", "progress_bar", "resolve_num_threads", "set_num_threads", "set_progress",
           "tqdm_disable"]


_CONFIG_FILE = re.compile(r"[^\s'\",\[\]]+\.(?:json|ya?ml)")


def _root_of(config_root: Path) -> Path:
    return config_root.parent if config_root.name == "configs" else config_root


def _config_files_in_use() -> list[Path]:
    """Config files named by the running ``ConfigWorkflow`` / ``create_workflow`` call and by ``--config_file``."""
    from monai.bundle.workflows import ConfigWorkflow

    found: list[Path] = []
    frame = inspect.currentframe()
    while frame is not None:
        local = frame.f_locals
        owner = local.get("self")
        if isinstance(owner, ConfigWorkflow) and getattr(owner, "config_root_path", None) is not None:
            found.append(Path(owner.config_root_path) / "?")
        names = local.get("config_file")
        if isinstance(names, (str, os.PathLike, list, tuple)):
            names = [names] if isinstance(names, (str, os.PathLike)) else names
            found += [Path(m) for n in names for m in _CONFIG_FILE.findall(os.fspath(n))]
        frame = frame.f_back
    for i, arg in enumerate(sys.argv[:-1]):
        if arg in ("--config_file", "--config-file"):
            found += [Path(m) for m in _CONFIG_FILE.findall(sys.argv[i + 1])]
    return found


def bundle_root(default: str, config_name: str | None = None) -> str:
    """The folder of the bundle whose config is being run, so a bundle folder copied elsewhere works unchanged.

    Looks, in order, at the ``ConfigWorkflow`` that is parsing the config (``python -m monai.bundle run``,
    ``monai.bundle.create_workflow``: the folder above the first config file's ``configs/``), at the ``config_file``
    of the calling MONAI function and at ``--config_file`` on the command line (e.g. ``verify_net_in_out``), then at
    ``default`` (relative to the working directory: the repository-root layout) and at ``.`` when the working
    directory is itself a bundle folder. ``--bundle_root <path>`` on the command line always wins (it replaces this
    component).

    Args:
        default: the bundle folder relative to the repository root, e.g. ``"bundles/ttga"``.
        config_name: only consider config files with this name (e.g. ``"overlay.json"``: the folder of an overlay
            merged after another bundle's config).
    """
    for path in _config_files_in_use():
        if config_name is None or path.name == config_name:
            return str(_root_of(path.parent))
    if os.path.isdir(default) or not os.path.isfile(os.path.join("configs", "metadata.json")):
        return default
    return "."
