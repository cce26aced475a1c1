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
"""MLflow tracking defaults for the training engines, built on MONAI's ``MLFlowHandler``.

* The default tracking store is a SQLite file in the output folder (``sqlite:///<output_dir>/mlruns.db``, artifacts
  under ``<output_dir>/mlruns``): current MLflow refuses the plain file store.
* A tracking URI that cannot be reached never stops training: :func:`create_mlflow_handler` probes the URI up front
  (TCP connect for HTTP servers, a writable folder for SQLite, a known scheme otherwise) and returns ``None`` with a
  warning when it fails; :class:`SafeMLFlowHandler` turns any later tracking error into one warning and stops
  tracking for the rest of the run.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
from monai.handlers import MLFlowHandler
from monai.utils import optional_import, path_to_sqlite_uri

mlflow, _ = optional_import("mlflow")

__all__ = [
    "loss_tracking_handlers",
    "TrackingUnavailableWarning",
    "default_tracking_uri",
    "check_tracking_uri",
    "flatten_params",
    "loss_from_output",
    "SafeMLFlowHandler",
    "create_mlflow_handler",
]

logger = logging.getLogger(__name__)


class TrackingUnavailableWarning(UserWarning):
    """Emitted when MLflow tracking is switched off because its store cannot be reached; training goes on."""


def default_tracking_uri(output_dir: str | os.PathLike) -> str:
    """Return ``sqlite:///<absolute output_dir>/mlruns.db``, the default MLflow store of a training run.

    Args:
        output_dir: the training output folder (created when tracking starts).
    """
    return path_to_sqlite_uri(os.path.join(os.path.abspath(os.fspath(output_dir)), "mlruns.db"))


def check_tracking_uri(tracking_uri: str, timeout: float = 2.0) -> str | None:
    """Return why ``tracking_uri`` cannot be used, or None when it looks reachable.

    HTTP(S) servers are probed with a TCP connection (``timeout`` seconds); a SQLite URI needs a folder that exists
    or can be created; other schemes must be known to MLflow. Local paths and ``file://`` URIs are refused, as by
    MONAI's ``MLFlowHandler`` (MLflow no longer supports the file store).

    Args:
        tracking_uri: the MLflow tracking URI.
        timeout: seconds to wait for a TCP connection to an HTTP(S) tracking server.
    """
    if not isinstance(tracking_uri, str) or not tracking_uri:
        return f"tracking_uri must be a non-empty string, got {tracking_uri!r}"
    parsed = urlparse(tracking_uri)
    scheme = parsed.scheme.lower()
    if scheme in ("", "file") or "://" not in tracking_uri:
        return (
            f"'{tracking_uri}' is a file-store location, which MLflow no longer supports; "
            "use sqlite:///<folder>/mlruns.db or an http(s):// tracking server"
        )
    if scheme.startswith("sqlite"):
        db = tracking_uri.split("://", 1)[1].split("?", 1)[0]
        db = db[1:] if db.startswith("/") else db  # sqlite:///rel.db -> rel.db, sqlite:////abs.db -> /abs.db
        if db in ("", ":memory:"):
            return None
        folder = Path(db).expanduser().parent
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            return f"cannot create the SQLite folder '{folder}' ({e})"
        if not os.access(folder, os.W_OK):
            return f"the SQLite folder '{folder}' is not writable"
        return None
    if scheme in ("http", "https"):
        host = parsed.hostname
        if not host:
            return f"'{tracking_uri}' has no host name"
        port = parsed.port or (443 if scheme == "https" else 80)
        try:
            with socket.create_connection((host, port), timeout=timeout):
                return None
        except OSError as e:
            return f"no MLflow server answers at {host}:{port} ({e})"
    try:
        mlflow.MlflowClient(tracking_uri=tracking_uri)  # MLflow >= 3.14 resolves the store here
    except Exception as e:  # unknown scheme, missing driver, refused connection
        return f"MLflow cannot open '{tracking_uri}' ({type(e).__name__}: {e})"
    return None


def flatten_params(params: Mapping[str, Any], prefix: str = "", max_length: int = 500) -> dict[str, str]:
    """Flatten a nested config into MLflow parameters: ``{"unet.channels": "[8, 16]", ...}``.

    Args:
        params: nested mapping of hyper-parameters / config values.
        prefix: key prefix (used in recursion).
        max_length: longer values are cut to this many characters (MLflow limits parameter values).
    """
    out: dict[str, str] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten_params(value, prefix=f"{name}.", max_length=max_length))
            continue
        if isinstance(value, torch.Tensor):
            value = value.tolist()
        try:
            text = value if isinstance(value, str) else json.dumps(value)
        except TypeError:
            text = repr(value)
        out[name] = text[:max_length]
    return out


def loss_from_output(output: Any) -> float | None:
    """Return the scalar ``loss`` of an engine output (a dict, or a decollated list of dicts), else None.

    Use as the ``output_transform`` of ``MLFlowHandler`` / ``StatsHandler`` / an ignite ``Average`` metric for the
    trainers in :mod:`monai_genaug.engines`.
    """
    if isinstance(output, Sequence) and not isinstance(output, (str, torch.Tensor)) and len(output) > 0:
        output = output[0]
    if isinstance(output, Mapping):
        output = output.get("loss")
    if isinstance(output, torch.Tensor):
        return float(output.detach().float().mean().item())
    if isinstance(output, (int, float)):
        return float(output)
    return None


class SafeMLFlowHandler(MLFlowHandler):
    """MONAI's ``MLFlowHandler`` that never stops training: a tracking error gives one warning and ends tracking.

    Compared with the parent it also skips parameters the run already holds (a resumed run logs its
    hyper-parameters again) and offers :meth:`log_artifact` for files produced during training (sample grids).
    All constructor arguments are those of ``monai.handlers.MLFlowHandler``.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.disabled = False

    def _disable(self, where: str, error: BaseException) -> None:
        if not self.disabled:
            msg = (
                f"MLflow tracking ({self.client.tracking_uri}) failed in {where} with {type(error).__name__}: {error}; "
                "tracking is switched off for the rest of this run, training goes on."
            )
            logger.warning(msg)
            warnings.warn(msg, TrackingUnavailableWarning, stacklevel=3)
        self.disabled = True

    def _guarded(self, where: str, fn, *args: Any) -> None:
        if self.disabled:
            return
        try:
            fn(*args)
        except Exception as e:
            self._disable(where, e)

    def _log_params(self, params: dict[str, Any]) -> None:
        if self.cur_run is not None and params:
            logged = self.client.get_run(self.cur_run.info.run_id).data.params
            params = {k: v for k, v in params.items() if k not in logged}
        if params:
            super()._log_params(params)

    def start(self, engine) -> None:  # noqa: D102
        self._guarded("start", super().start, engine)

    def iteration_completed(self, engine) -> None:  # noqa: D102
        self._guarded("iteration_completed", super().iteration_completed, engine)

    def epoch_completed(self, engine) -> None:  # noqa: D102
        self._guarded("epoch_completed", super().epoch_completed, engine)

    def complete(self) -> None:  # noqa: D102
        self._guarded("complete", super().complete)

    def close(self) -> None:  # noqa: D102
        try:
            super().close()
        except Exception as e:
            self._disable("close", e)

    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        """Log scalar metrics (e.g. an evaluator's ``val_loss``) into the current run at ``step``.

        Args:
            metrics: name -> number.
            step: the step (e.g. the trainer's epoch).
        """
        if self.disabled or self.cur_run is None or not metrics:
            return
        values = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float, torch.Tensor))}
        self._guarded("log_metrics", self._log_metrics, values, step)

    def log_artifact(self, path: str | os.PathLike, artifact_path: str | None = None) -> None:
        """Log one file into the current run (no-op when tracking is off or the run has not started).

        Args:
            path: the local file.
            artifact_path: folder inside the run's artifacts (e.g. ``"samples"``).
        """
        if self.disabled or self.cur_run is None:
            return
        self._guarded(
            "log_artifact", self.client.log_artifact, self.cur_run.info.run_id, os.fspath(path), artifact_path
        )


def create_mlflow_handler(
    output_dir: str | os.PathLike | None = None,
    tracking_uri: str | None = None,
    experiment_name: str = "monai_genaug",
    run_name: str | None = None,
    params: Mapping[str, Any] | None = None,
    tag_name: str = "train_loss",
    iteration_log: bool = True,
    epoch_log: bool = True,
    artifacts: str | Sequence[str] | None = None,
    close_on_complete: bool = True,
    timeout: float = 2.0,
) -> SafeMLFlowHandler | None:
    """Build a :class:`SafeMLFlowHandler` for a trainer, or return None (with a warning) when the store is unreachable.

    Args:
        output_dir: training output folder; the default store is ``sqlite:///<output_dir>/mlruns.db``.
        tracking_uri: any MLflow tracking URI; overrides the default. ``$MLFLOW_TRACKING_URI`` overrides both, as
            in MONAI's handler.
        experiment_name: MLflow experiment name.
        run_name: MLflow run name; None picks the latest unfinished run of the experiment (so a resumed training
            goes on logging into its run) or creates a new one.
        params: hyper-parameters / config, flattened with :func:`flatten_params` and logged at start.
        tag_name: metric name of the per-iteration loss.
        iteration_log: log the loss every iteration.
        epoch_log: log ``engine.state.metrics`` (e.g. the trainers' ``epoch_loss``, the epoch mean loss) every
            epoch.
        artifacts: files or folders logged when the run completes.
        close_on_complete: mark the run finished when training completes.
        timeout: seconds allowed for probing an HTTP(S) tracking server.

    Raises:
        ValueError: neither ``output_dir`` nor ``tracking_uri`` (nor ``$MLFLOW_TRACKING_URI``) is given.
    """
    uri = os.environ.get("MLFLOW_TRACKING_URI") or tracking_uri
    if uri is None:
        if output_dir is None:
            raise ValueError("create_mlflow_handler needs output_dir (for the default SQLite store) or tracking_uri.")
        uri = default_tracking_uri(output_dir)
    problem = check_tracking_uri(uri, timeout=timeout)
    if problem is None:
        try:
            return SafeMLFlowHandler(
                tracking_uri=uri,
                iteration_log=iteration_log,
                epoch_log=epoch_log,
                output_transform=loss_from_output,
                tag_name=tag_name,
                experiment_name=experiment_name,
                run_name=run_name,
                experiment_param=flatten_params(params) if params else None,
                artifacts=artifacts,
                close_on_complete=close_on_complete,
            )
        except Exception as e:  # e.g. MLflow refuses the URI at client construction
            problem = f"{type(e).__name__}: {e}"
    msg = f"MLflow tracking is off: tracking URI '{uri}' cannot be used ({problem}). Training goes on without it."
    logger.warning(msg)
    warnings.warn(msg, TrackingUnavailableWarning, stacklevel=2)
    return None


def loss_tracking_handlers(handlers: Sequence[Any] | None) -> list[Any]:
    """The handlers, with every ``MLFlowHandler``'s ``output_transform`` replaced by ``loss_from_output``.

    Args:
        handlers: a bundle's ``train#handlers`` (None: none).
    """
    out = list(handlers or [])
    for h in out:
        if isinstance(h, MLFlowHandler):
            h.output_transform = loss_from_output
    return out
