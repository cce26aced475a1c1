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
"""``--tracking mlflow`` in every bundle (MONAI's switch), made safe and informative.

MONAI's bundle tracking (``python -m monai.bundle run ... --tracking mlflow``) appends an ``MLFlowHandler`` to the
``handlers`` of ``evaluator`` and to ``train#handlers`` of ``train#trainer``, adds the top-level IDs it needs when
a config lacks them (``tracking_uri``, ``experiment_name``, ``run_name``, ``is_not_rank0``) and writes the executed
config to ``save_execute_config``. The bundles of this package define these IDs and wire:

* ``is_not_rank0``: :func:`skip_tracking` (the handler's ``_disabled_``): off on non-zero ranks and, with a warning
  naming the store, when the MLflow store cannot be written (the run goes on without tracking; MONAI's handler
  would fail after a minute of retries);
* the evaluator's ``val_handlers``: :func:`tracked_handlers`, which logs the run's settings (the plain top-level
  values of the executed config) as parameters and the executed config as an artifact, and turns later MLflow
  errors into one warning (:class:`~monai_genaug.handlers.tracking.SafeMLFlowHandler`);
* trainers built by the package's factories: :func:`tracking_requested` switches their own MLflow handler on
  (``--tracking mlflow``; ``--mlflow_tracking true`` is kept as an alias) and :func:`track_config` adds the
  executed config to its artifacts.

Trainers whose iteration output is one dict:

MONAI's bundle tracking (``python -m monai.bundle run ... --tracking mlflow``) appends an ``MLFlowHandler`` to
``train#handlers`` whose loss transform, ``from_engine(['loss'], first=True)``, expects the decollated list output of
a default ``SupervisedTrainer``. The package's diffusion and autoencoder trainers keep the batch output as one dict
(``decollate=False``); :func:`loss_tracking_handlers` gives such handlers the package's
:func:`~monai_genaug.handlers.tracking.loss_from_output`, which reads the loss from either form.
"""

from __future__ import annotations

import json
import logging
import os
import re
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from monai.handlers import MLFlowHandler

from monai_genaug.bundle.runtime import as_bool
from monai_genaug.handlers.tracking import (
    loss_tracking_handlers,
    SafeMLFlowHandler,
    TrackingUnavailableWarning,
    check_tracking_uri,
    flatten_params,
)

__all__ = [
    "config_settings",
    "executed_config_path",
    "loss_tracking_handlers",
    "skip_tracking",
    "track_config",
    "tracked_handlers",
    "tracking_requested",
]

logger = logging.getLogger(__name__)


def _is_not_rank0() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized() and torch.distributed.get_rank() > 0


def skip_tracking(tracking_uri: str | None = None, trainer_tracks: bool = False) -> bool:
    """``is_not_rank0`` of a bundle (the ``_disabled_`` of MONAI's tracking handlers): True on non-zero ranks, and
    True with a :class:`TrackingUnavailableWarning` naming the store when ``tracking_uri`` (or
    ``$MLFLOW_TRACKING_URI``) cannot be used, e.g. a SQLite file in a folder that is not writable.

    Args:
        tracking_uri: the bundle's MLflow tracking URI.
        trainer_tracks: the bundle's trainer is built by a package factory that makes its own MLflow handler (switched
            on by :func:`tracking_requested`, with its own unreachable-store check): MONAI's handler is not built.
    """
    if trainer_tracks or _is_not_rank0():
        return True
    uri = os.environ.get("MLFLOW_TRACKING_URI") or tracking_uri
    if not uri:
        return False
    reason = check_tracking_uri(uri)
    if reason is None:
        return False
    msg = f"MLflow tracking is off for this run: {reason} (tracking_uri={uri!r}); the run goes on without tracking."
    logger.warning(msg)
    warnings.warn(msg, TrackingUnavailableWarning, stacklevel=2)
    return True


_MANGLED_CONFIG = re.compile(r"^(?P<dir>.+) \+ '/(?P<name>config_[0-9_]+\.json)'$")


def executed_config_path(config: Any) -> str | None:
    """The file of the executed config that MONAI's ``--tracking`` wrote, from ``@save_execute_config``.

    MONAI builds that ID as ``output_dir + " + '/config_<time>.json'"``, which is a path expression only when
    ``output_dir`` is one; with ``--output_dir /some/folder`` it is the literal text ``/some/folder + '/config_...'``,
    and MONAI's own handler then logs no artifact. Both forms are accepted here.

    Args:
        config: the value of ``@save_execute_config`` (a path, the literal text above, or anything else: None).
    """
    if not isinstance(config, (str, os.PathLike)):
        return None
    text = os.fspath(config)
    if os.path.isfile(text):
        return text
    m = _MANGLED_CONFIG.match(text)
    if m and os.path.isfile(os.path.join(m["dir"], m["name"])):
        return os.path.join(m["dir"], m["name"])
    return None


def config_settings(config: str | os.PathLike | Mapping[str, Any] | None) -> dict[str, Any]:
    """The settings of an executed bundle config: its top-level values that are plain data (numbers, strings that
    are not ``$`` expressions or ``@`` references, lists of those), for MLflow parameters.

    Args:
        config: the executed config (a mapping, or the JSON file MONAI wrote to ``save_execute_config``); anything
            else gives no settings.
    """
    path = executed_config_path(config)
    if path is not None:
        config = json.loads(Path(path).read_text())
    if not isinstance(config, Mapping):
        return {}

    def plain(v: Any) -> bool:
        if isinstance(v, str):
            return not v.startswith(("$", "@", "%"))
        if isinstance(v, (list, tuple)):
            return all(plain(x) for x in v)
        return v is None or isinstance(v, (bool, int, float))

    skip = {"save_execute_config"}  # the path of this very file (logged as the artifact)
    return {k: v for k, v in config.items() if not k.startswith("_") and k not in skip and plain(v)}


def tracked_handlers(
    handlers: Sequence[Any] | None, config: str | os.PathLike | Mapping[str, Any] | None = None
) -> list[Any]:
    """A bundle's handlers with every ``MLFlowHandler`` logging the run's settings and its executed config.

    Each ``MLFlowHandler`` becomes a :class:`~monai_genaug.handlers.tracking.SafeMLFlowHandler` (a later MLflow
    error gives one warning and ends tracking, the run goes on), logs :func:`config_settings` of ``config`` as
    parameters and has the config file among its artifacts.

    Args:
        handlers: the bundle's handlers (None: none).
        config: the executed config file (``@save_execute_config``) or mapping.
    """
    out = list(handlers or [])
    params = flatten_params(config_settings(config))
    for h in out:
        if isinstance(h, MLFlowHandler):
            if not isinstance(h, SafeMLFlowHandler):
                h.__class__ = SafeMLFlowHandler
                h.disabled = False
            h.experiment_param = {**params, **dict(h.experiment_param or {})}
            path = executed_config_path(config)
            kept = tuple(a for a in h.artifacts if a and os.path.exists(a))
            h.artifacts = kept + ((path,) if path is not None and path not in kept else ())
    return out


def tracking_requested(config: Any = None, alias: bool | None = False) -> bool:
    """Whether a trainer built by the package's factories should track to MLflow: ``--tracking mlflow`` was given
    (MONAI then writes the executed config and sets ``save_execute_config`` to its path), or the older switch
    ``alias`` (``--mlflow_tracking true``) is on. Always False on non-zero ranks.

    Args:
        config: the bundle's ``@save_execute_config``.
        alias: the bundle's ``mlflow_tracking`` option.
    """
    if _is_not_rank0():
        return False
    return (alias is not None and as_bool(alias, "mlflow_tracking")) or executed_config_path(config) is not None


def track_config(trainer: Any, config: str | os.PathLike | None = None) -> Any:
    """Add the executed config file to the artifacts (and its settings to the parameters) of the MLflow handler of a
    package-built trainer (``trainer.handles.mlflow_handler``); return the trainer.

    Args:
        trainer: a trainer from the package's factories (no MLflow handler: unchanged).
        config: the executed config file (``@save_execute_config``).
    """
    handler = getattr(getattr(trainer, "handles", None), "mlflow_handler", None)
    if isinstance(handler, MLFlowHandler) and config is not None:
        tracked_handlers([handler], config)
    return trainer
