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
"""An Ignite handler that writes a PNG grid of generated samples during training (and logs it to MLflow).

The handler only needs a ``sample_fn`` returning a batch of images, so it serves diffusion samples, autoencoder
reconstructions and sequences alike. Sampling runs under ``torch.no_grad()``, optionally with the EMA weights
swapped in, and inside ``torch.random.fork_rng`` so that it never changes the training's random stream (a resumed
training draws the same numbers whether or not grids were written).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
import logging
import os
from pathlib import Path
from typing import Any

from ignite.engine import Events
import torch
from torch import nn

from monai_genaug.generative.guidance import ClassifierFreeGuidance
from monai_genaug.generative.sampler import DiffusionSampler
from monai_genaug.utils.images import save_image_grid

__all__ = [
    "SampleGridHandler",
    "GeneratorSamples",
    "ReconstructionSamples",
    "SequenceSamples",
]

logger = logging.getLogger(__name__)


class SampleGridHandler:
    """Save a grid of ``sample_fn()`` every ``interval`` epochs (or iterations) to ``output_dir``.

    Files are named ``<file_prefix>_epoch0003.png`` (``_iter000120`` when ``epoch_level`` is False).

    Args:
        sample_fn: callable with no argument returning a batch of images (B, C, H, W[, D]) or sequences.
        output_dir: folder of the PNG files.
        interval: write every this many epochs (or iterations).
        epoch_level: count epochs (True) or iterations (False).
        nrow: tiles per grid row (see :func:`~monai_genaug.utils.images.save_image_grid`).
        normalise: min-max scale every tile.
        sequence_dim: frame dimension for sequence batches; None for 2D/3D images.
        file_prefix: file name prefix.
        ema: an :class:`~monai_genaug.handlers.ema.EMAHandler`; its weights are used while sampling.
        network: put into eval mode while sampling (its mode is restored afterwards).
        mlflow_handler: a :class:`~monai_genaug.handlers.tracking.SafeMLFlowHandler` (or MONAI ``MLFlowHandler``);
            each grid is logged as an artifact under ``artifact_path``.
        artifact_path: folder of the grids inside the MLflow run.
        on_completed: also write a grid when training completes.
    """

    def __init__(
        self,
        sample_fn: Callable[[], torch.Tensor],
        output_dir: str | os.PathLike,
        interval: int = 1,
        epoch_level: bool = True,
        nrow: int | None = None,
        normalise: bool = True,
        sequence_dim: int | None = None,
        file_prefix: str = "samples",
        ema: Any | None = None,
        network: nn.Module | None = None,
        mlflow_handler: Any | None = None,
        artifact_path: str = "samples",
        on_completed: bool = False,
    ) -> None:
        if not callable(sample_fn):
            raise TypeError(f"sample_fn must be callable and return a batch of images, got {type(sample_fn).__name__}.")
        if interval < 1:
            raise ValueError(f"interval must be >= 1, got {interval}.")
        self.sample_fn = sample_fn
        self.output_dir = Path(output_dir)
        self.interval = interval
        self.epoch_level = epoch_level
        self.nrow = nrow
        self.normalise = normalise
        self.sequence_dim = sequence_dim
        self.file_prefix = file_prefix
        self.ema = ema
        self.network = network
        self.mlflow_handler = mlflow_handler
        self.artifact_path = artifact_path
        self.on_completed = on_completed
        self.paths: list[Path] = []

    def attach(self, engine) -> None:
        """Register on ``EPOCH_COMPLETED`` (or ``ITERATION_COMPLETED``) every ``interval``."""
        from ignite.engine import Events

        event = Events.EPOCH_COMPLETED if self.epoch_level else Events.ITERATION_COMPLETED
        engine.add_event_handler(event(every=self.interval), self)
        if self.on_completed:
            engine.add_event_handler(Events.COMPLETED, self)

    def sample(self) -> torch.Tensor:
        """Run ``sample_fn`` without gradients, with EMA weights when given, without touching the global RNG."""
        was_training = self.network.training if self.network is not None else None
        devices = (
            list(range(torch.cuda.device_count())) if torch.cuda.is_available() and torch.cuda.is_initialized() else []
        )
        try:
            if self.network is not None:
                self.network.eval()
            with torch.random.fork_rng(devices=devices), torch.no_grad():
                if self.ema is not None:
                    with self.ema.use_ema_weights():
                        samples = self.sample_fn()
                else:
                    samples = self.sample_fn()
        finally:
            if self.network is not None and was_training is not None:
                self.network.train(was_training)
        if not isinstance(samples, torch.Tensor):
            raise TypeError(f"sample_fn must return a torch.Tensor batch, got {type(samples).__name__}.")
        return samples

    def __call__(self, engine) -> Path:
        """Sample, write the grid, log it to MLflow; returns the PNG path."""
        count = engine.state.epoch if self.epoch_level else engine.state.iteration
        name = (
            f"{self.file_prefix}_epoch{count:04d}.png"
            if self.epoch_level
            else f"{self.file_prefix}_iter{count:06d}.png"
        )
        path = save_image_grid(
            self.sample(),
            self.output_dir / name,
            nrow=self.nrow,
            normalise=self.normalise,
            sequence_dim=self.sequence_dim,
        )
        self.paths.append(path)
        logger.info(f"saved sample grid '{path}'.")
        if self.mlflow_handler is not None:
            if hasattr(self.mlflow_handler, "log_artifact"):
                self.mlflow_handler.log_artifact(path, self.artifact_path)
            elif getattr(self.mlflow_handler, "cur_run", None) is not None:
                self.mlflow_handler.client.log_artifact(
                    self.mlflow_handler.cur_run.info.run_id, str(path), self.artifact_path
                )
        return path


class GeneratorSamples:
    """A ``sample_fn`` for :class:`~monai_genaug.handlers.sample_grid.SampleGridHandler`: decoded samples of a generator.

    Every call starts from the same seeded noise, so grids of successive epochs are comparable. Sampling goes through
    the package's one sampler (:class:`~monai_genaug.generative.sampler.DiffusionSampler`).

    Args:
        generator: the ``LatentGenerator``.
        spatial_size: image size, e.g. (64, 64) or (32, 32, 32).
        num_samples: samples per grid.
        num_inference_steps: sampler steps.
        condition: condition dict for the batch (e.g. ``{"seg": masks}``); default: for a class-conditional
            generator, classes 0, 1, ... in turn; otherwise unconditional.
        guidance: a guidance plug-in from :mod:`monai_genaug.generative.guidance` (None: plain conditional).
        eta: DDIM stochasticity.
        seed: seed of the starting noise.

    Raises:
        ValueError: the generator needs a structural condition (``seg`` / ``concat``) that ``condition`` lacks, or a
            condition's batch size differs from ``num_samples``.
    """

    def __init__(
        self,
        generator: nn.Module,
        spatial_size: Sequence[int],
        num_samples: int = 4,
        num_inference_steps: int = 10,
        condition: Mapping[str, torch.Tensor] | None = None,
        guidance: Any | None = None,
        eta: float = 0.0,
        seed: int = 0,
    ) -> None:
        needed = [k for k, on in (("seg", generator.is_spade), ("concat", generator.concat_channels)) if on]
        missing = [k for k in needed if k not in (condition or {})]
        if missing:
            raise ValueError(
                f"this generator needs condition {missing} to sample; pass sample_condition={{'{missing[0]}': ...}} "
                f"with {num_samples} items (or a sample_fn)."
            )
        wrong = {k: int(v.shape[0]) for k, v in (condition or {}).items() if v.shape[0] != num_samples}
        if wrong:
            raise ValueError(f"sample condition batch sizes {wrong} differ from num_samples={num_samples}.")
        self.generator = generator
        self.latent_shape = tuple(generator.latent_shape(tuple(spatial_size)))
        self.num_samples = int(num_samples)
        self.sampler = DiffusionSampler(num_inference_steps=num_inference_steps, eta=eta, progress=False)
        self.condition = condition
        self.guidance = guidance
        self.seed = seed

    def __call__(self) -> torch.Tensor:
        condition = self.condition
        num_classes = getattr(self.generator, "num_classes", None)
        if condition is None and num_classes:
            condition = {"class_labels": torch.arange(self.num_samples) % num_classes}
        if condition is not None:
            device = self.generator.scale_factor.device
            condition = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in condition.items()}
        rng = torch.Generator().manual_seed(self.seed)
        z = self.sampler(
            self.generator,
            shape=(self.num_samples, *self.latent_shape),
            condition=condition,
            guidance=self.guidance,
            rng=rng,
        )
        return self.generator.decode(z)


class SequenceSamples:
    """A ``sample_fn`` for :class:`~monai_genaug.handlers.sample_grid.SampleGridHandler`: clips of a sequence
    generator ``(B, C, F, H, W)`` in [0, 1] from fixed conditions and fixed seeded noise (comparable across epochs).

    Args:
        generator: the ``SequenceGenerator``.
        condition: batched condition (as built by the prepare-batch, without dropout).
        num_frames: frames per clip.
        spatial_size: frame size ``(H, W)``.
        num_inference_steps: sampler steps.
        guidance_scale: classifier-free guidance scale on prior and motion (1: none).
        seed: seed of the starting noise.
    """

    def __init__(
        self,
        generator: nn.Module,
        condition: Mapping[str, torch.Tensor],
        num_frames: int,
        spatial_size: Sequence[int],
        num_inference_steps: int = 10,
        guidance_scale: float = 1.0,
        seed: int = 0,
    ) -> None:
        self.generator = generator
        self.condition = {k: v.detach().clone() for k, v in condition.items()}
        self.shape = (int(generator.image_channels), int(num_frames), *[int(s) for s in spatial_size])
        self.batch = next(iter(self.condition.values())).shape[0] if self.condition else 1
        self.sampler = DiffusionSampler(num_inference_steps=num_inference_steps, clip_x0=(-1.0, 1.0), progress=False)
        self.guidance_scale = float(guidance_scale)
        self.seed = int(seed)

    def __call__(self) -> torch.Tensor:
        gen = self.generator
        device = gen.scale_factor.device
        cond = {k: v.to(device) for k, v in self.condition.items()}
        rng = torch.Generator().manual_seed(self.seed)
        x = torch.randn((self.batch, *self.shape), generator=rng).to(device)
        guidance = None
        if self.guidance_scale != 1.0:
            guidance = ClassifierFreeGuidance(self.guidance_scale, null_condition=gen.null_condition(cond, self.batch))
        out = self.sampler(gen, x=x, condition=cond or None, guidance=guidance, rng=rng)
        return ((out.clamp(-1, 1) + 1) / 2).cpu()


class ReconstructionSamples:
    """A ``sample_fn`` for the grid handler: fixed images on top, their reconstructions below.

    Args:
        autoencoder: the autoencoder (returns ``(reconstruction, ...)`` or a tensor).
        images: (B, C, *spatial) images to reconstruct (moved to the autoencoder's device).
    """

    def __init__(self, autoencoder: nn.Module, images: torch.Tensor) -> None:
        self.autoencoder = autoencoder
        self.images = images

    def __call__(self) -> torch.Tensor:
        device = next(self.autoencoder.parameters()).device
        images = self.images.to(device)
        out = self.autoencoder(images)
        recon = out[0] if isinstance(out, (tuple, list)) else out
        return torch.cat([images, recon.to(images.dtype)], dim=0)
