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
"""The options every trainer factory of the package shares, in one object, and the typed holder of what a factory
built around its Ignite trainer.

Every ``create_*_trainer`` takes its method-specific arguments plus ``options: TrainingOptions`` (seed, AMP,
resume / checkpoint interval, validation interval, NaN policy, MLflow tracking, extra handlers), so the same
options object drives any trainer identically::

    options = TrainingOptions(seed=3, amp=True, tracking=True, val_interval=2)
    create_diffusion_trainer(generator, loader, 10, "out/dm", options=options)
    create_segmentation_trainer(unet, loader, 10, "out/seg", options=options)

In a bundle config: ``"options": {"_target_": "monai_genaug.engines.TrainingOptions", "amp": "@amp", ...}``.

The old keywords (``amp=``, ``seed=``, ``tracking=``, ...) are accepted for one release with a ``DeprecationWarning``
that names the new spelling (:func:`resolve_training_options`; helpers that forward ``**kwargs`` to a factory use
:func:`pop_training_options`).

What a factory built (NaN guard, checkpoint handler, EMA, evaluator, best-model saver, ...) is not patched onto the
trainer as loose attributes: it is one typed :class:`TrainerHandles` at ``trainer.handles`` (attached by
:func:`attach_handles`). The trainer classes the factories return (:class:`HandledSupervisedTrainer`, and
``AutoencoderKLTrainer``) mix in :class:`HandlesMixin`, which keeps the old attribute spellings (``trainer.ema``,
``trainer.best_saver``, ...) readable for one release with a ``DeprecationWarning``.
"""

from __future__ import annotations

import dataclasses
import numbers
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from monai.engines import SupervisedTrainer

from monai_genaug.utils.options import as_bool

__all__ = [
    "TrainingOptions",
    "TRAINING_OPTION_NAMES",
    "resolve_training_options",
    "pop_training_options",
    "TrainerHandles",
    "HandlesMixin",
    "HandledSupervisedTrainer",
    "attach_handles",
]


def _as_bool(name: str, value: Any) -> bool:
    """A switch as a bool; the command-line texts ``true`` / ``false`` / ``1`` / ``0`` / ``yes`` / ``no`` count
    (``python -m monai.bundle run ... --resume false`` passes the text ``'false'``)."""
    if value is None or not isinstance(value, (bool, numbers.Integral, str)):
        raise TypeError(f"TrainingOptions.{name} must be True or False, got {value!r} ({type(value).__name__}).")
    return as_bool(value, f"TrainingOptions.{name}")


def _check_int(name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"TrainingOptions.{name} must be an integer, got {value!r} ({type(value).__name__}).")
    if value < minimum:
        raise ValueError(f"TrainingOptions.{name} must be >= {minimum}, got {value}.")


def _check_optional_str(name: str, value: Any, allow_empty: bool = False) -> None:
    if value is None:
        return
    if not isinstance(value, str):
        raise TypeError(f"TrainingOptions.{name} must be a string or None, got {value!r} ({type(value).__name__}).")
    if not allow_empty and not value.strip():
        raise ValueError(f"TrainingOptions.{name} must not be empty; pass None for the default.")


@dataclass(frozen=True)
class TrainingOptions:
    """The training options shared by every ``create_*_trainer`` of the package (the part that is not about the
    method): reproducibility, precision, checkpoint / resume, validation cadence, NaN policy, MLflow tracking and
    extra handlers. Values are checked on construction; a bad value raises a ``TypeError`` / ``ValueError`` naming
    the field and what it accepts.

    Args:
        seed: seed of the global RNGs at a fresh start and of the trainers' own noise / timestep draws (validation
            draws use ``seed + 1``); an integer >= 0.
        amp: automatic mixed precision (CUDA). The four switches (``amp``, ``resume``, ``nan_raise``, ``tracking``)
            also take the command-line texts ``true`` / ``false`` / ``1`` / ``0`` / ``yes`` / ``no``.
        resume: continue from ``output_dir/checkpoint_last.pt`` when it exists.
        save_interval: epochs between resumable checkpoints (>= 1).
        val_interval: epochs between validations, for trainers given a validation loader (>= 1).
        nan_raise: on a non-finite loss raise :class:`~monai_genaug.handlers.nan_guard.NonFiniteLossError` (True) or
            stop quietly with an error log (False).
        tracking: log to MLflow (also on whenever ``tracking_uri`` is given).
        tracking_uri: MLflow URI; default ``sqlite:///<output_dir>/mlruns.db``. Unreachable -> warning, no tracking.
        experiment_name: MLflow experiment; None: the trainer's own default (e.g. ``"gms"``, ``"segmentation"``).
        run_name: MLflow run name.
        params: extra hyper-parameters to log to MLflow (next to the ones each trainer logs itself).
        extra_handlers: more Ignite handlers (objects with ``attach(engine)``), attached after the trainer's own and
            before the resumable checkpoint.
    """

    seed: int = 0
    amp: bool = False
    resume: bool = True
    save_interval: int = 1
    val_interval: int = 1
    nan_raise: bool = True
    tracking: bool = False
    tracking_uri: str | None = None
    experiment_name: str | None = None
    run_name: str | None = None
    params: Mapping[str, Any] = field(default_factory=dict)
    extra_handlers: Sequence[Any] = ()

    def __post_init__(self) -> None:
        _check_int("seed", self.seed, 0)
        _check_int("save_interval", self.save_interval, 1)
        _check_int("val_interval", self.val_interval, 1)
        for name in ("amp", "resume", "nan_raise", "tracking"):
            object.__setattr__(self, name, _as_bool(name, getattr(self, name)))
        if isinstance(self.tracking_uri, Path):
            object.__setattr__(self, "tracking_uri", str(self.tracking_uri))
        _check_optional_str("tracking_uri", self.tracking_uri)
        _check_optional_str("experiment_name", self.experiment_name)
        _check_optional_str("run_name", self.run_name)
        params = {} if self.params is None else self.params
        if not isinstance(params, Mapping):
            raise TypeError(
                f"TrainingOptions.params must be a mapping of names to values, got {type(params).__name__}."
            )
        object.__setattr__(self, "params", dict(params))
        handlers = () if self.extra_handlers is None else self.extra_handlers
        if not isinstance(handlers, Sequence) or isinstance(handlers, (str, bytes)):
            raise TypeError(
                f"TrainingOptions.extra_handlers must be a list of handlers, got {type(handlers).__name__}."
            )
        for handler in handlers:
            if not callable(getattr(handler, "attach", None)):
                raise TypeError(
                    f"TrainingOptions.extra_handlers: {handler!r} has no attach(engine) method; pass Ignite / MONAI "
                    "handler objects."
                )
        object.__setattr__(self, "extra_handlers", tuple(handlers))
        object.__setattr__(self, "seed", int(self.seed))

    def replace(self, **changes: Any) -> TrainingOptions:
        """A copy with ``changes`` applied (and checked), e.g. ``options.replace(resume=False)``."""
        return dataclasses.replace(self, **changes)

    def tracking_kwargs(self, default_experiment: str) -> dict[str, Any]:
        """The keywords of :func:`~monai_genaug.engines.workflow.standard_training_handlers` these options set, with
        ``default_experiment`` as MLflow experiment unless one is given."""
        return {
            "nan_raise": self.nan_raise,
            "tracking": self.tracking,
            "tracking_uri": self.tracking_uri,
            "experiment_name": self.experiment_name or default_experiment,
            "run_name": self.run_name,
        }

    def logged_params(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """The MLflow parameters of a trainer: its own ``params`` plus ``amp`` and ``seed``, then the user's
        ``self.params`` (which win on a clash)."""
        return {**dict(params), "amp": self.amp, "seed": self.seed, **self.params}


#: names of the :class:`TrainingOptions` fields (the old keywords of the factories that map onto them)
TRAINING_OPTION_NAMES: tuple[str, ...] = tuple(f.name for f in fields(TrainingOptions))


def resolve_training_options(
    factory: str, options: TrainingOptions | Mapping[str, Any] | None, legacy: Mapping[str, Any]
) -> TrainingOptions:
    """The options a factory runs with: ``options`` (a :class:`TrainingOptions`, a mapping of its fields, or None for
    the defaults), or - deprecated, for one release - the old keywords in ``legacy``.

    Args:
        factory: name of the calling factory (for the messages).
        options: the new-style options.
        legacy: the keywords the factory received in ``**kwargs``.

    The old keywords, when given next to ``options``, override its fields (with the same warning).

    Raises:
        TypeError: an unknown keyword (with the list of known ones), or ``options`` of another type.
    """
    unknown = sorted(set(legacy) - set(TRAINING_OPTION_NAMES))
    if unknown:
        raise TypeError(
            f"{factory}() got unexpected keyword argument(s) {unknown}; the shared training options are "
            f"{list(TRAINING_OPTION_NAMES)} (pass them as options=TrainingOptions(...))."
        )
    if options is None:
        options = TrainingOptions()
    elif isinstance(options, Mapping):
        options = TrainingOptions(**options)
    elif not isinstance(options, TrainingOptions):
        raise TypeError(f"{factory}(): options must be a TrainingOptions, got {type(options).__name__}.")
    if not legacy:
        return options
    spelled = ", ".join(f"{key}={value!r}" for key, value in legacy.items())
    warnings.warn(
        f"{factory}({', '.join(f'{key}=' for key in legacy)}...) is deprecated and will be removed in the next "
        f"release; pass options=TrainingOptions({spelled}) (monai_genaug.engines.TrainingOptions) instead.",
        DeprecationWarning,
        stacklevel=3,
    )
    return options.replace(**legacy)


def pop_training_options(kwargs: dict[str, Any], caller: str, **defaults: Any) -> TrainingOptions:
    """For functions that forward ``**kwargs`` to a trainer factory (e.g. a method's ``*_trainer`` helpers): take
    ``options`` and the deprecated option keywords out of ``kwargs`` (see :func:`resolve_training_options`) and fill
    ``defaults`` into the fields the caller left at their default (e.g. the method's MLflow experiment name).

    Args:
        kwargs: the forwarded keywords; modified in place (the option keywords are removed).
        caller: name of the calling function (for the messages).
        defaults: field values used where the caller's options keep the ``TrainingOptions()`` default.
    """
    legacy = {key: kwargs.pop(key) for key in TRAINING_OPTION_NAMES if key in kwargs}
    options = resolve_training_options(caller, kwargs.pop("options", None), legacy)
    blank = TrainingOptions()
    unset = {name: value for name, value in defaults.items() if getattr(options, name) == getattr(blank, name)}
    return options.replace(**unset) if unset else options


@dataclass
class TrainerHandles:
    """What a trainer factory built around the Ignite trainer, kept in one typed place: ``trainer.handles``.

    Every field is None when the trainer has no such part (e.g. no ``ema`` without EMA, no ``evaluator`` without a
    validation loader).

    Args:
        options: the :class:`TrainingOptions` the trainer was built with.
        nan_guard: the :class:`~monai_genaug.handlers.nan_guard.NaNGuard`.
        checkpoint: the :class:`~monai_genaug.handlers.resume.ResumableCheckpointHandler`.
        mlflow_handler: the MLflow handler (None when tracking is off or unreachable).
        ema: the :class:`~monai_genaug.handlers.ema.EMAHandler` (``use_ema_weights()`` samples with the EMA weights).
        sample_grid: the :class:`~monai_genaug.handlers.sample_grid.SampleGridHandler`.
        final_saver: the handler that writes the final model files on normal completion.
        evaluator: the validation evaluator.
        best_saver: the :class:`~monai_genaug.handlers.validation.BestModelSaver` (``best``, ``best_epoch``).
        lr_scheduler: the learning-rate schedule stepped by the trainer.
        prepare_batch: the prepare-batch object of the trainer (e.g. GMS's latent cache lives there).
        loss: the training loss module.
        scale_init: the :class:`~monai_genaug.handlers.scale_factor.ScaleFactorInitializer` (GMS).
        model_path: where the final / best model file is written.
    """

    options: TrainingOptions = field(default_factory=TrainingOptions)
    nan_guard: Any | None = None
    checkpoint: Any | None = None
    mlflow_handler: Any | None = None
    ema: Any | None = None
    sample_grid: Any | None = None
    final_saver: Any | None = None
    evaluator: Any | None = None
    best_saver: Any | None = None
    lr_scheduler: Any | None = None
    prepare_batch: Any | None = None
    loss: Any | None = None
    scale_init: Any | None = None
    model_path: Path | None = None


#: old trainer attribute -> its ``TrainerHandles`` field (readable for one release through :class:`HandlesMixin`)
_LEGACY_ATTRIBUTES = {
    "ema": "ema",
    "nan_guard": "nan_guard",
    "checkpoint": "checkpoint",
    "mlflow_handler": "mlflow_handler",
    "sample_grid": "sample_grid",
    "final_saver": "final_saver",
    "evaluator": "evaluator",
    "best_saver": "best_saver",
    "lr_scheduler": "lr_scheduler",
    "model_path": "model_path",
    "prepare": "prepare_batch",
    "gms_loss": "loss",
    "scale_init": "scale_init",
    "final_path": "model_path",
    "autoencoder_path": "model_path",
}


class HandlesMixin:
    """Mixed into the package's trainers: the old attribute spellings (``trainer.ema``, ``trainer.best_saver``, ...)
    read ``trainer.handles`` for one release, with a ``DeprecationWarning`` naming ``trainer.handles.<field>``."""

    def __getattr__(self, name: str) -> Any:  # only called for attributes not found the normal way
        handles = self.__dict__.get("handles")
        if handles is not None and name in _LEGACY_ATTRIBUTES:
            new = _LEGACY_ATTRIBUTES[name]
            warnings.warn(
                f"trainer.{name} is deprecated and will be removed in the next release; use trainer.handles.{new}.",
                DeprecationWarning,
                stacklevel=2,
            )
            return getattr(handles, new)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")


class HandledSupervisedTrainer(HandlesMixin, SupervisedTrainer):
    """MONAI's ``SupervisedTrainer`` with the typed ``handles`` of :class:`TrainerHandles` (set by
    :func:`attach_handles`); everything else is MONAI's."""

    handles: TrainerHandles


def attach_handles(trainer: Any, handles: TrainerHandles) -> Any:
    """Store ``handles`` as ``trainer.handles`` (the one attribute a factory sets on its trainer); return the
    trainer."""
    if not isinstance(handles, TrainerHandles):
        raise TypeError(f"handles must be a TrainerHandles, got {type(handles).__name__}.")
    trainer.handles = handles
    return trainer
