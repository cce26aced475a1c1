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
"""Ignite handlers that write the final model of a training run: only after a normally completed run (no NaN stop, no
exception), atomically, on rank 0 under DDP.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from ignite.engine import Events
from torch import nn

from monai_genaug.handlers.ema import EMAHandler
from monai_genaug.handlers.resume import find_non_finite
from monai_genaug.handlers.validation import BestModelSaver
from monai_genaug.networks.autoencoder import load_autoencoder, save_autoencoder
from monai_genaug.networks.lora import has_lora, save_lora
from monai_genaug.utils.checkpoint import atomic_save, to_json_config

__all__ = [
    "completed_normally",
    "FinalModelHandler",
    "FinalGeneratorSaver",
    "FinalAutoencoderSaver",
    "FinalClassifierSaver",
    "KeepBestAutoencoder",
]

logger = logging.getLogger(__name__)


def completed_normally(engine, modules: Mapping[str, nn.Module], what: str = "model") -> bool:
    """True when every iteration of the run happened, no NaN stop occurred and the weights in ``modules`` are finite
    (a warning says why not in the last case)."""
    state = engine.state
    finished = state.epoch_length is not None and state.iteration >= state.epoch_length * state.max_epochs
    if not finished or getattr(state, "nan_detected", False):
        return False
    if find_non_finite(dict(modules)):
        warnings.warn(f"final {what} weights are not finite; no final {what} file written.", stacklevel=2)
        return False
    return True


class FinalModelHandler:
    """Call ``save_fn(engine)`` once, on ``COMPLETED``, if training :func:`completed_normally` (never after a NaN stop,
    an interruption, or with non-finite weights).

    Args:
        save_fn: writes the final model; receives the engine.
        modules: the networks whose weights must be finite.
        what: name used in messages.
        skip_if: optional predicate; when it returns True nothing is written (e.g. a best model already was).
    """

    def __init__(
        self,
        save_fn: Callable[[Any], Any],
        modules: Mapping[str, nn.Module],
        what: str = "model",
        skip_if: Callable[[], bool] | None = None,
    ) -> None:
        self.save_fn = save_fn
        self.modules = modules
        self.what = what
        self.skip_if = skip_if

    def attach(self, engine) -> None:
        """Register on ``COMPLETED``."""
        engine.add_event_handler(Events.COMPLETED, self)

    def __call__(self, engine) -> None:
        if self.skip_if is not None and self.skip_if():
            return
        if completed_normally(engine, self.modules, self.what):
            self.save_fn(engine)


class FinalGeneratorSaver:
    """Write the trained generator when training completes normally (not after a NaN stop or an interruption).

    Files: ``generator_final.pt`` (live weights) and ``generator_ema.pt`` (EMA weights), both loadable with
    ``LatentGenerator.load``. When the UNet carries LoRA adapters, ``lora_final.pt`` / ``lora_ema.pt`` adapter files
    are written instead (:func:`monai_genaug.networks.lora.save_lora`; load them with ``load_lora`` into the base UNet).

    Args:
        generator: the ``LatentGenerator``.
        output_dir: destination folder.
        ema: the :class:`~monai_genaug.handlers.ema.EMAHandler`, or None.
    """

    def __init__(self, generator: nn.Module, output_dir: str | os.PathLike, ema: EMAHandler | None = None) -> None:
        self.generator = generator
        self.output_dir = Path(output_dir)
        self.ema = ema
        self.paths: list[Path] = []

    def attach(self, engine) -> None:
        """Register on ``COMPLETED``."""
        engine.add_event_handler(Events.COMPLETED, self)

    def _write(self, stem: str) -> Path:
        if has_lora(self.generator.unet):
            path = self.output_dir / f"lora_{stem}.pt"
            save_lora(self.generator.unet, path)
        else:
            path = self.output_dir / f"generator_{stem}.pt"
            self.generator.save(str(path))
        self.paths.append(path)
        return path

    def __call__(self, engine) -> None:
        if not completed_normally(engine, {"generator": self.generator}, "generator"):
            return
        try:
            self._write("final")
            if self.ema is not None:
                with self.ema.use_ema_weights():
                    self._write("ema")
        except ValueError as e:  # e.g. a generator built without a config cannot be saved as a LatentGenerator file
            warnings.warn(
                f"final generator files not written ({e}); the weights are in the training checkpoint.", stacklevel=2
            )
            return
        logger.info(f"saved final generator files {[str(p) for p in self.paths]}.")


class FinalAutoencoderSaver:
    """Write ``autoencoder_final.pt`` (autoencoder + discriminator state dicts and config) at normal completion.

    Args:
        autoencoder: the trained autoencoder.
        output_dir: destination folder.
        discriminator: the discriminator (saved too when given).
        config: JSON config of the autoencoder (e.g. the ``"autoencoder"`` block of a generator config).
        filename: file name.
    """

    def __init__(
        self,
        autoencoder: nn.Module,
        output_dir: str | os.PathLike,
        discriminator: nn.Module | None = None,
        config: dict | None = None,
        filename: str = "autoencoder_final.pt",
    ) -> None:
        self.autoencoder = autoencoder
        self.discriminator = discriminator
        self.config = to_json_config(config or {})
        self.path = Path(output_dir) / filename

    def attach(self, engine) -> None:
        """Register on ``COMPLETED``."""
        engine.add_event_handler(Events.COMPLETED, self)

    def __call__(self, engine) -> None:
        modules = {"autoencoder": self.autoencoder}
        if self.discriminator is not None:
            modules["discriminator"] = self.discriminator
        if not completed_normally(engine, modules, "autoencoder"):
            return
        ckpt: dict[str, Any] = {"format": "monai_genaug.AutoencoderKL", "config": self.config}
        ckpt.update({k: {n: v.detach().cpu() for n, v in m.state_dict().items()} for k, m in modules.items()})
        atomic_save(ckpt, self.path)
        logger.info(f"saved final autoencoder '{self.path}'.")


class FinalClassifierSaver:
    """Write ``classifier_final.pt`` (:meth:`NoisyLatentClassifier.save`) when training completes normally.

    Args:
        classifier: the classifier (must have ``save(path, extra)``).
        output_dir: destination folder.
        extra: JSON-like entries stored with the weights (class names, training settings).
        filename: file name.
    """

    def __init__(
        self,
        classifier: nn.Module,
        output_dir: str | os.PathLike,
        extra: Mapping[str, Any] | None = None,
        filename: str = "classifier_final.pt",
    ) -> None:
        self.classifier = classifier
        self.path = Path(output_dir) / filename
        self.extra = dict(extra or {})

    def attach(self, engine) -> None:
        """Register on ``COMPLETED``."""
        engine.add_event_handler(Events.COMPLETED, self)

    def __call__(self, engine) -> None:
        if not completed_normally(engine, {"classifier": self.classifier}, "classifier"):
            return
        extra = dict(self.extra)
        if "val_accuracy" in getattr(engine, "latest_val_metrics", {}):
            extra["val_accuracy"] = engine.latest_val_metrics["val_accuracy"]
        self.classifier.save(self.path, extra=extra)
        logger.info(f"saved final classifier '{self.path}'.")


class KeepBestAutoencoder:
    """On ``COMPLETED``: load the best validated autoencoder weights back (if any) and freeze the autoencoder.

    Without a validated best (no ``saver`` or no validation yet) the final weights are written to ``path`` instead,
    unless the run stopped on a non-finite loss. The file is the :mod:`monai_genaug.networks.autoencoder` format.

    Args:
        autoencoder: the trained ``AutoencoderKL``.
        saver: the :class:`~monai_genaug.handlers.validation.BestModelSaver` that wrote ``path``, or None.
        path: the autoencoder checkpoint.
        config: the config the autoencoder was built from (kept in the checkpoint).
    """

    def __init__(
        self, autoencoder: nn.Module, saver: BestModelSaver | None, path: Path, config: Mapping[str, Any]
    ) -> None:
        self.autoencoder = autoencoder
        self.saver = saver
        self.path = path
        self.config = config

    def attach(self, engine) -> None:
        engine.add_event_handler(Events.COMPLETED, self)

    def __call__(self, engine) -> None:
        if self.saver is not None and self.saver.best is not None and self.path.is_file():
            best, _ = load_autoencoder(self.path, map_location="cpu")
            self.autoencoder.load_state_dict(best.state_dict())
        elif not getattr(engine.state, "nan_detected", False):
            save_autoencoder(self.autoencoder, self.path, self.config)
        self.autoencoder.requires_grad_(False)
        self.autoencoder.eval()
