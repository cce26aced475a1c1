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
"""HistoDiffusion: unconditional latent-diffusion pre-training, noisy-latent classifier guidance, centroid filtering.

Ye, Ni, Jin, Huang, Xue, "Synthetic Augmentation with Large-scale Unconditional Pre-training", MICCAI 2023,
arXiv:2308.04020. The pipeline, composed from the package's parts:

1. an autoencoder and an **unconditional** latent diffusion model trained on unlabelled images
   (:meth:`HistoDiffusion.autoencoder_trainer`, :meth:`HistoDiffusion.diffusion_trainer`: the engines of
   :mod:`monai_genaug.engines`);
2. a timestep-conditioned latent classifier (:class:`~monai_genaug.networks.noisy_classifier.NoisyLatentClassifier`)
   trained on the small labelled set, on noisy latents at random timesteps by default (the release trains at t = 0
   only: ``noised=False``) (:meth:`HistoDiffusion.classifier_trainer`);
3. class-guided synthesis through the package's one sampler with the classifier-guidance plug-in
   (``eps' = eps - s sqrt(1 - a_t) grad log p(y | z_t, t)``, ``a_t`` from the scheduler; DDIM with ``eta``), one
   class per batch, images written as ``<class>/<source>_<label>_<seed>.png`` plus a datalist
   (:meth:`HistoDiffusion.synthesize`);
4. centroid filtering of the synthetic set (:meth:`HistoDiffusion.centroid_filter`,
   :class:`~monai_genaug.filters.centroid.CentroidFilter`) with any feature extractor (:class:`LatentFeatures`,
   :class:`ClassifierFeatures`, or a user backbone such as an SSL ViT);
5. downstream training on real + kept synthetic images (:func:`evaluate_synthetic_augmentation`).

Defaults follow the paper's code where it is sound (noise schedule: T = 1000, scaled-linear betas 0.0015 -> 0.0155;
DDIM eta 1, guidance scale 10) and fix its bugs (``a_t`` looked up with a fixed ``t // 20``; attention pool fixed to
2 x 2; classifier trained at t = 0 only; centroids over real + synthetic; off-by-one cap).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from monai_genaug.data.folders import write_datalist
from monai_genaug.data.synthetic import write_synthetic_images
from monai_genaug.engines.autoencoder import create_autoencoder_trainer
from monai_genaug.engines.classifier import create_noisy_classifier_trainer
from monai_genaug.engines.diffusion import create_diffusion_trainer
from monai_genaug.filters.base import iterate_sample_batches
from monai_genaug.filters.centroid import CentroidFilter
from monai_genaug.generative.guidance import ClassifierGuidance, NoGuidance
from monai_genaug.generative.latent_generator import LatentGenerator, generator_config
from monai_genaug.generative.sampler import DiffusionSampler
from monai_genaug.networks.noisy_classifier import NoisyLatentClassifier, classifier_config
from monai_genaug.utils.checkpoint import check_state_dict_compatible, load_checkpoint
from monai_genaug.utils.config import merge_config
from monai_genaug.utils.images import save_image_grid
from monai_genaug.utils.labels import class_indices

__all__ = [
    "HISTODIFFUSION_SCHEDULE",
    "ClassifierFeatures",
    "HistoDiffusion",
    "LatentFeatures",
    "PenultimateFeatures",
    "ClassSynthesisResult",
    "estimate_scale_factor",
    "histodiffusion_generator_config",
    "informative_max_timestep",
    "load_autoencoder_weights",
]

logger = logging.getLogger(__name__)

#: HistoDiffusion's noise schedule (CompVis "linear" = linear in sqrt(beta) = MONAI's scaled_linear_beta)
HISTODIFFUSION_SCHEDULE: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "schedule": "scaled_linear_beta",
    "beta_start": 0.0015,
    "beta_end": 0.0155,
}


def histodiffusion_generator_config(
    preset: str = "small",
    spatial_dims: int = 2,
    image_channels: int = 3,
    overrides: Mapping[str, Any] | None = None,
    **kwargs: Any,
) -> dict[str, Any]:
    """An unconditional :class:`LatentGenerator` config with HistoDiffusion's noise schedule.

    Args:
        preset: size preset of :func:`~monai_genaug.generative.latent_generator.generator_config`.
        spatial_dims: 2 or 3.
        image_channels: image channels (3 for H&E).
        overrides: nested entries merged into the config, e.g. ``{"unet": {"channels": [32, 64]}}``.
        kwargs: other :func:`generator_config` arguments (e.g. ``num_train_timesteps``, ``use_flash_attention``).
    """
    args = {**HISTODIFFUSION_SCHEDULE, **kwargs}
    for key in ("num_prompts", "num_classes", "seg_channels"):
        if args.get(key):
            raise ValueError(f"HistoDiffusion's diffusion model is unconditional; do not pass {key}.")
    cfg = generator_config(preset, spatial_dims=spatial_dims, image_channels=image_channels, latent=True, **args)
    return merge_config(cfg, overrides or {})


def load_autoencoder_weights(generator: LatentGenerator, path: str | os.PathLike) -> None:
    """Load an autoencoder file (``autoencoder_final.pt`` of the autoencoder trainer, or a generator checkpoint)
    into ``generator.autoencoder``.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the file holds no autoencoder weights, or the generator has no autoencoder.
        CheckpointMismatchError: the weights do not fit the generator's autoencoder.
    """
    if generator.autoencoder is None:
        raise ValueError("this generator has no autoencoder (pixel-space diffusion); nothing to load.")
    ckpt = load_checkpoint(path)
    if isinstance(ckpt, Mapping) and "autoencoder" in ckpt and isinstance(ckpt["autoencoder"], Mapping):
        state = ckpt["autoencoder"]
    elif isinstance(ckpt, Mapping) and "state_dict" in ckpt:
        prefix = "autoencoder."
        state = {k[len(prefix) :]: v for k, v in ckpt["state_dict"].items() if k.startswith(prefix)}
    else:
        state = {}
    if not state:
        raise ValueError(
            f"'{path}' holds no autoencoder weights; give autoencoder_final.pt from the autoencoder trainer or a "
            "LatentGenerator checkpoint."
        )
    check_state_dict_compatible(generator.autoencoder, state, name=f"{path} (autoencoder)")
    generator.autoencoder.load_state_dict(state)


def estimate_scale_factor(
    generator: LatentGenerator, loader: Any, image_key: str = "image", max_batches: int = 4
) -> float:
    """Set ``generator.scale_factor`` to 1 / std of the latents of the first ``max_batches`` batches of ``loader``
    (:meth:`LatentGenerator.estimate_scale_factor_from_loader`; the generator is left in eval mode).

    Raises:
        ValueError: the loader is empty or its batches lack ``image_key``.
    """
    generator.eval()
    return generator.estimate_scale_factor_from_loader(loader, image_key, max_batches)


# ------------------------------------------------------------------------------------------------ features
class LatentFeatures(nn.Module):
    """Filter features from a generator's autoencoder: per-channel mean and std of the posterior-mean latent plus
    the latent average-pooled to a ``grid`` per axis, flattened.

    A feature extractor with no training beyond the pipeline's own autoencoder; a stronger, independent backbone
    (an SSL ViT as in the paper) can be passed to :class:`~monai_genaug.filters.centroid.CentroidFilter` instead.

    Args:
        generator: the ``LatentGenerator``.
        grid: pooled grid size per spatial axis.
    """

    def __init__(self, generator: LatentGenerator, grid: int = 2) -> None:
        super().__init__()
        if generator.autoencoder is None:
            raise ValueError("LatentFeatures needs a generator with an autoencoder.")
        self.generator = generator
        self.grid = int(grid)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        z = self.generator.encode(images)
        flat = z.flatten(2)
        pool = F.adaptive_avg_pool2d if z.ndim == 4 else F.adaptive_avg_pool3d
        return torch.cat([flat.mean(2), flat.std(2), pool(z, self.grid).flatten(1)], dim=1)


class ClassifierFeatures(nn.Module):
    """Filter features from the noisy-latent classifier: its attention-pooled embedding of the clean latent.

    Args:
        classifier: the :class:`~monai_genaug.networks.noisy_classifier.NoisyLatentClassifier`.
        generator: the ``LatentGenerator`` that encodes the images.
        timestep: noise level the classifier is queried at (0: clean latents, no noise added).
    """

    def __init__(self, classifier: NoisyLatentClassifier, generator: LatentGenerator, timestep: int = 0) -> None:
        super().__init__()
        self.classifier = classifier
        self.generator = generator
        self.timestep = int(timestep)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.classifier.features(self.generator.encode(images), self.timestep)


class PenultimateFeatures(nn.Module):
    """Filter features from a network trained on the labelled **real** images: the input of its last layer
    (``layer``, e.g. :class:`~monai_genaug.evaluation.GlobalPoolCNN`'s ``head``: the pooled convolution features).

    Independent of the generator and of the guidance classifier, as the paper's centroid filter on the features of a
    separately (self-)supervised backbone; build one with
    :func:`~monai_genaug.methods.histodiffusion.data.train_real_feature_network`.

    Args:
        network: the trained network (kept in eval mode).
        layer: dotted name of the last layer whose input is the feature vector.

    Raises:
        ValueError: ``network`` has no module ``layer``.
    """

    def __init__(self, network: nn.Module, layer: str = "head") -> None:
        super().__init__()
        try:
            self.layer = network.get_submodule(layer)
        except AttributeError as err:
            raise ValueError(
                f"the feature network has no module {layer!r}; name its last (classification) layer."
            ) from err
        self.network = network.eval()
        self.layer_name = layer

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        captured: list[torch.Tensor] = []
        handle = self.layer.register_forward_hook(lambda _m, inputs, _out: captured.append(inputs[0]))
        try:
            self.network.eval()
            self.network(images)
        finally:
            handle.remove()
        return captured[0].flatten(1)


def informative_max_timestep(
    accuracy: Mapping[int, float], chance: float, margin: float = 0.05
) -> int | None:
    """The largest timestep up to which the noisy classifier is informative: every tested ``t <=`` it scores at least
    ``chance + margin`` (e.g. balanced accuracy on the validation split, chance ``1 / K``).

    Args:
        accuracy: ``{timestep: accuracy}`` of the noisy classifier on validation latents.
        chance: chance level of that accuracy.
        margin: required lead over chance.

    Returns:
        The timestep (guidance then acts at ``t <=`` it), or None when the classifier is not informative even at the
        smallest tested timestep (then guide nowhere: use scale 0).
    """
    if not accuracy:
        raise ValueError("accuracy is empty; give the classifier's accuracy at one or more timesteps.")
    best = None
    for t in sorted(int(k) for k in accuracy):
        if float(accuracy[t]) < float(chance) + float(margin):
            break
        best = t
    return best


# ------------------------------------------------------------------------------------------------ pipeline
def _save_class_grid(images: torch.Tensor, labels: torch.Tensor, path: Path, per_class: int = 8) -> None:
    """One row of up to ``per_class`` samples per class (middle slice for 3D)."""
    rows = []
    for c in torch.unique(labels).tolist():
        picked = images[labels == c][:per_class]
        if picked.shape[0] < per_class:  # pad short rows so the grid stays one row per class
            picked = torch.cat([picked, picked.new_zeros(per_class - picked.shape[0], *picked.shape[1:])])
        rows.append(picked)
    batch = torch.cat(rows)
    if batch.shape[1] not in (1, 3):
        batch = batch[:, :1]
    save_image_grid(batch, path, nrow=per_class, normalise=False)


@dataclass
class ClassSynthesisResult:
    """What :meth:`HistoDiffusion.synthesize` returns.

    Attributes:
        labels: ``(N,)`` intended class per sample.
        seeds: ``(N,)`` seed per sample (file names ``{source}_{label}_{seed}``).
        images: ``(N, C, *spatial)`` decoded images (None when ``keep_images=False``).
        datalist: datalist entries of the written files (empty without ``output_dir``).
        datalist_path: the datalist JSON (None without ``output_dir``).
        seconds: wall-clock sampling time (UNet, guidance and decoding).
        settings: the synthesis settings.
    """

    labels: torch.Tensor
    seeds: torch.Tensor
    images: torch.Tensor | None = None
    datalist: list[dict] = field(default_factory=list)
    datalist_path: str | None = None
    seconds: float = 0.0
    settings: dict[str, Any] = field(default_factory=dict)


class HistoDiffusion:
    """HistoDiffusion as one object: pre-training, noisy-latent classifier, guided synthesis and filtering.

    Args:
        generator: an unconditional latent :class:`LatentGenerator` (e.g. from
            :func:`histodiffusion_generator_config`).
        classifier: the noisy-latent classifier (may be added later with :meth:`set_classifier`).
        class_names: one name per class; default ``class_0, ...`` from the classifier's ``num_classes``.
        num_classes: number of classes when neither ``classifier`` nor ``class_names`` is given.
        device: device of training and sampling.

    Raises:
        ValueError: the generator is conditional, has no autoencoder, or the classifier does not match the
            generator's latents / the class names.

    Example::

        hd = HistoDiffusion.from_preset("small", image_channels=3, num_classes=9, image_size=(64, 64))
        hd.autoencoder_trainer(unlabelled_loader, 50, "out/ae").run()
        hd.diffusion_trainer(unlabelled_loader, 200, "out/ldm").run()
        hd.classifier_trainer(labelled_loader, 100, "out/clf").run()
        result = hd.synthesize(num_per_class=100, spatial_size=(64, 64), output_dir="out/synthetic")
        kept = hd.centroid_filter(max_per_class=50).fit(labelled_images, labels)(result.images, result.labels)
    """

    def __init__(
        self,
        generator: LatentGenerator,
        classifier: NoisyLatentClassifier | None = None,
        class_names: Sequence[str] | None = None,
        num_classes: int | None = None,
        device: str | torch.device = "cpu",
    ) -> None:
        if not isinstance(generator, LatentGenerator):
            raise TypeError(f"generator must be a LatentGenerator, got {type(generator).__name__}.")
        if generator.autoencoder is None:
            raise ValueError("HistoDiffusion is latent diffusion: the generator needs an autoencoder.")
        conditional = generator.num_classes is not None or generator.uses_context or generator.is_spade
        if conditional or generator.concat_channels:
            raise ValueError(
                "HistoDiffusion guides an unconditional diffusion model with a classifier; build the generator "
                "without class / prompt / mask / concat conditioning (histodiffusion_generator_config)."
            )
        self.device = torch.device(device)
        self.generator = generator.to(self.device)
        if class_names is not None:
            class_names = [str(c) for c in class_names]
            if len(set(class_names)) != len(class_names) or len(class_names) < 2:
                raise ValueError(f"class_names must hold at least 2 distinct names, got {class_names}.")
        k = len(class_names) if class_names is not None else None
        if classifier is not None:
            k = self._check_classifier(classifier, k)
        if k is None:
            k = num_classes
        if k is None or int(k) < 2:
            raise ValueError("give the classifier, class_names or num_classes (>= 2).")
        if num_classes is not None and int(num_classes) != int(k):
            raise ValueError(f"num_classes={num_classes} contradicts the classifier / class_names ({k} classes).")
        self.num_classes = int(k)
        self.class_names = class_names if class_names is not None else [f"class_{c}" for c in range(self.num_classes)]
        self.classifier = classifier.to(self.device) if classifier is not None else None

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_preset(
        cls,
        preset: str = "small",
        spatial_dims: int = 2,
        image_channels: int = 3,
        num_classes: int | None = None,
        class_names: Sequence[str] | None = None,
        image_size: Sequence[int] = (32, 32),
        classifier_preset: str | None = None,
        generator_overrides: Mapping[str, Any] | None = None,
        classifier_overrides: Mapping[str, Any] | None = None,
        device: str | torch.device = "cpu",
        **generator_kwargs: Any,
    ) -> HistoDiffusion:
        """An untrained pipeline from size presets.

        Args:
            preset: generator preset (``"tiny"``, ``"small"``, ``"base"``).
            spatial_dims: 2 or 3.
            image_channels: image channels.
            num_classes: number of classes (or give ``class_names``).
            class_names: class names.
            image_size: image spatial size (sizes the classifier's attention pool).
            classifier_preset: classifier preset (default: ``"tiny"`` for a tiny generator, else ``"small"``).
            generator_overrides: nested overrides of the generator config.
            classifier_overrides: overrides of the classifier config.
            device: device.
            generator_kwargs: other :func:`histodiffusion_generator_config` arguments.
        """
        k = len(class_names) if class_names is not None else num_classes
        if k is None:
            raise ValueError("give num_classes or class_names.")
        gen = LatentGenerator.from_config(
            histodiffusion_generator_config(
                preset, spatial_dims, image_channels, overrides=generator_overrides, **generator_kwargs
            )
        )
        latent_shape = gen.latent_shape(tuple(image_size))
        clf = NoisyLatentClassifier.from_config(
            classifier_config(
                classifier_preset or ("tiny" if preset == "tiny" else "small"),
                spatial_dims=spatial_dims,
                in_channels=latent_shape[0],
                num_classes=int(k),
                input_shape=latent_shape[1:],
                **dict(classifier_overrides or {}),
            )
        )
        return cls(gen, clf, class_names=class_names, num_classes=num_classes, device=device)

    @classmethod
    def load(
        cls,
        generator_path: str | os.PathLike,
        classifier_path: str | os.PathLike | None = None,
        class_names: Sequence[str] | None = None,
        device: str | torch.device = "cpu",
    ) -> HistoDiffusion:
        """A pipeline from a generator checkpoint and (optionally) a classifier checkpoint.

        Class names come from ``class_names`` or the classifier file; they must agree when both are given.
        """
        gen = LatentGenerator.load(str(generator_path))
        clf = None
        if classifier_path is not None:
            clf = NoisyLatentClassifier.load(classifier_path)
            stored = NoisyLatentClassifier.read_extra(classifier_path).get("class_names")
            if stored and class_names is not None and list(stored) != [str(c) for c in class_names]:
                raise ValueError(
                    f"class_names {list(class_names)} differ from those stored with the classifier "
                    f"'{classifier_path}': {list(stored)}."
                )
            class_names = class_names if class_names is not None else stored
        return cls(gen, clf, class_names=class_names, device=device)

    def save(self, output_dir: str | os.PathLike) -> dict[str, str]:
        """Write ``generator.pt`` and (when present) ``classifier.pt`` into ``output_dir``; returns their paths."""
        out = Path(output_dir)
        out.mkdir(parents=True, exist_ok=True)
        paths = {"generator": str(out / "generator.pt")}
        self.generator.save(paths["generator"])
        if self.classifier is not None:
            paths["classifier"] = str(out / "classifier.pt")
            self.classifier.save(paths["classifier"], extra={"class_names": self.class_names})
        return paths

    def _check_classifier(self, classifier: nn.Module, num_classes: int | None) -> int:
        k = getattr(classifier, "num_classes", None)
        if k is None:
            raise ValueError("the classifier must expose num_classes (e.g. a NoisyLatentClassifier).")
        if num_classes is not None and int(k) != int(num_classes):
            raise ValueError(
                f"the classifier predicts {k} classes but the pipeline has {num_classes} "
                f"(class_names / num_classes); train a classifier for these classes."
            )
        channels = getattr(classifier, "in_channels", None)
        if channels is not None and int(channels) != int(self.generator.latent_channels):
            raise ValueError(
                f"the classifier takes {channels} input channels but the generator's latents have "
                f"{self.generator.latent_channels}; build it with in_channels=generator.latent_channels."
            )
        return int(k)

    def set_classifier(self, classifier: NoisyLatentClassifier) -> None:
        """Attach a (trained) classifier; it must match the pipeline's classes and the generator's latents."""
        self._check_classifier(classifier, self.num_classes)
        self.classifier = classifier.to(self.device)

    # ------------------------------------------------------------------ training (engines)
    def autoencoder_trainer(self, train_loader: Any, max_epochs: int, output_dir: str | os.PathLike, **kwargs: Any):
        """Stage 1: a ready autoencoder trainer (:func:`~monai_genaug.engines.autoencoder.create_autoencoder_trainer`)
        for ``generator.autoencoder``; its final file is ``output_dir/autoencoder_final.pt``."""
        kwargs.setdefault("config", self.generator.config.get("autoencoder"))
        kwargs.setdefault("device", self.device)
        return create_autoencoder_trainer(self.generator.autoencoder, train_loader, max_epochs, output_dir, **kwargs)

    def estimate_scale_factor(self, loader: Any, image_key: str = "image", max_batches: int = 4) -> float:
        """Set the generator's latent scale factor to 1 / std of the latents of the first ``max_batches`` batches."""
        return estimate_scale_factor(self.generator, loader, image_key, max_batches)

    def diffusion_trainer(
        self,
        train_loader: Any,
        max_epochs: int,
        output_dir: str | os.PathLike,
        estimate_scale: bool = True,
        **kwargs: Any,
    ):
        """Stage 2: a ready unconditional latent-diffusion trainer
        (:func:`~monai_genaug.engines.diffusion.create_diffusion_trainer`); the scale factor is estimated from the
        loader first (``estimate_scale``). Latents are posterior means unless ``sample_posterior=True`` is passed
        (the original samples the posterior; a briefly trained autoencoder's posterior noise is large). Final files:
        ``output_dir/generator_final.pt`` / ``generator_ema.pt``."""
        if estimate_scale:
            self.estimate_scale_factor(train_loader)
        kwargs.setdefault("device", self.device)
        kwargs.setdefault("sample_posterior", False)
        return create_diffusion_trainer(self.generator, train_loader, max_epochs, output_dir, **kwargs)

    def classifier_trainer(
        self,
        train_loader: Any,
        max_epochs: int,
        output_dir: str | os.PathLike,
        noised: bool = True,
        **kwargs: Any,
    ):
        """Stage 3: a ready noisy-latent classifier trainer
        (:func:`~monai_genaug.engines.classifier.create_noisy_classifier_trainer`); ``noised=False`` trains at t = 0
        only (the release). Final file: ``output_dir/classifier_final.pt`` (with the class names)."""
        if self.classifier is None:
            raise ValueError("the pipeline has no classifier; pass one or use HistoDiffusion.from_preset().")
        kwargs.setdefault("device", self.device)
        kwargs.setdefault("class_names", self.class_names)
        return create_noisy_classifier_trainer(
            self.classifier, self.generator, train_loader, max_epochs, output_dir, noised=noised, **kwargs
        )

    # ------------------------------------------------------------------ guided synthesis
    def _check_classes(self, classes: Sequence[int | str] | str | None) -> list[int]:
        if classes is None:
            return list(range(self.num_classes))
        classes = class_indices(classes, self.class_names)  # names or indices
        if len(set(classes)) != len(classes):
            raise ValueError(f"classes has duplicates: {classes}.")
        return classes

    def guidance(
        self, label: int | torch.Tensor, scale: float = 10.0, max_timestep: int | None = None
    ) -> ClassifierGuidance | NoGuidance:
        """The classifier-guidance plug-in for ``label`` (plain :class:`NoGuidance` when ``scale == 0``), acting
        only at timesteps ``<= max_timestep`` when given (see :func:`informative_max_timestep`)."""
        if not float(scale) >= 0:
            raise ValueError(f"guidance scale must be >= 0, got {scale}.")
        if float(scale) == 0.0:
            return NoGuidance()
        if self.classifier is None:
            raise ValueError("classifier guidance needs a classifier; train one or set guidance_scale=0.")
        self.classifier.eval()
        return ClassifierGuidance(self.classifier, class_labels=label, scale=float(scale), max_timestep=max_timestep)

    def sample_latents(
        self,
        label: int,
        num_samples: int,
        spatial_size: Sequence[int],
        guidance_scale: float = 10.0,
        eta: float = 1.0,
        num_inference_steps: int = 50,
        rng: torch.Generator | None = None,
        progress: bool = False,
        guidance_max_timestep: int | None = None,
    ) -> torch.Tensor:
        """``num_samples`` latents guided towards class ``label`` (one batch); the classifier gradient acts only at
        timesteps ``<= guidance_max_timestep`` when given."""
        self._check_classes([label])
        self.generator.eval()
        sampler = DiffusionSampler(num_inference_steps=num_inference_steps, eta=eta, progress=progress)
        shape = (int(num_samples), *self.generator.latent_shape(tuple(spatial_size)))
        guidance = self.guidance(int(label), guidance_scale, guidance_max_timestep)
        return sampler(self.generator, shape=shape, guidance=guidance, rng=rng)

    def synthesize(
        self,
        num_per_class: int | Mapping[int, int],
        spatial_size: Sequence[int],
        classes: Sequence[int] | None = None,
        guidance_scale: float = 10.0,
        eta: float = 1.0,
        num_inference_steps: int = 50,
        batch_size: int = 16,
        seed: int = 0,
        output_dir: str | os.PathLike | None = None,
        source: str = "histodiffusion",
        value_range: tuple[float, float] = (0.0, 1.0),
        keep_images: bool = True,
        progress: bool = False,
        guidance_max_timestep: int | None = None,
    ) -> ClassSynthesisResult:
        """Class-guided synthesis, one class per batch, optionally written to disk with a datalist.

        Sample ``i`` of class ``y`` gets seed ``seed + i`` and the file ``output_dir/<class name>/
        {source}_{y}_{seed + i}.png``; a batch starting at sample ``i`` draws its noise from a generator seeded by
        ``(seed + i, y)``, so the set is reproducible for the same ``batch_size``.

        Args:
            num_per_class: samples per class (one int, or ``{class index: count}``).
            spatial_size: image spatial size (divisible by ``generator.spatial_divisor``).
            classes: class indices or names to synthesise (default: all, or the keys of ``num_per_class``).
            guidance_scale: classifier-guidance scale s (>= 0; 0: unguided samples).
            eta: DDIM stochasticity (HistoDiffusion: 1).
            num_inference_steps: sampler steps (HistoDiffusion: 50).
            batch_size: samples per sampler call.
            seed: base seed.
            output_dir: write ``<class>/<name>.png`` and ``synthetic_datalist.json`` here (None: keep in memory).
            source: source id of the file names.
            value_range: intensity range of the images (decoded images are clamped to it).
            keep_images: return the decoded images in the result.
            progress: show the sampler's progress bar.
            guidance_max_timestep: apply the classifier gradient only at timesteps ``<= guidance_max_timestep``
                (None: at every step; choose it where the classifier beats chance, :func:`informative_max_timestep`).

        Raises:
            ValueError: class out of range, negative guidance scale or count, no classifier for a scale > 0,
                negative ``guidance_max_timestep``.
        """
        if not float(guidance_scale) >= 0:
            raise ValueError(f"guidance_scale must be >= 0, got {guidance_scale}.")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
        if guidance_max_timestep is not None and int(guidance_max_timestep) < 0:
            raise ValueError(f"guidance_max_timestep must be >= 0 or None, got {guidance_max_timestep}.")
        if isinstance(num_per_class, Mapping):
            counts = {class_indices([c], self.class_names)[0]: int(n) for c, n in num_per_class.items()}
            classes = self._check_classes(classes if classes is not None else sorted(counts))
            missing = [c for c in classes if c not in counts]
            if missing:
                raise ValueError(f"num_per_class has no count for class(es) {missing}.")
        else:
            classes = self._check_classes(classes)
            counts = dict.fromkeys(classes, int(num_per_class))
        negative = {c: n for c, n in counts.items() if n < 0}
        if negative:
            raise ValueError(f"sample counts must be >= 0, got {negative}.")
        if guidance_scale > 0 and self.classifier is None:
            raise ValueError("guidance_scale > 0 needs a classifier; train one or set guidance_scale=0.")
        self.generator.eval()
        labels, seeds, images = [], [], []
        entries: list[dict] = []
        start = time.perf_counter()
        for c in classes:
            for i0 in range(0, counts[c], batch_size):
                n = min(batch_size, counts[c] - i0)
                batch_seed = int(np.random.SeedSequence([seed + i0, c]).generate_state(1)[0])
                rng = torch.Generator().manual_seed(batch_seed)
                z = self.sample_latents(
                    c, n, spatial_size, guidance_scale, eta, num_inference_steps, rng, progress, guidance_max_timestep
                )
                with torch.no_grad():
                    x = self.generator.decode(z).clamp(*value_range).cpu()
                batch_seeds = list(range(seed + i0, seed + i0 + n))
                if output_dir is not None:
                    entries += write_synthetic_images(
                        x, [c] * n, batch_seeds, output_dir, source, self.class_names, value_range
                    )
                if keep_images:
                    images.append(x)
                labels += [c] * n
                seeds += batch_seeds
        seconds = time.perf_counter() - start
        settings = {
            "guidance_scale": float(guidance_scale),
            "guidance_max_timestep": None if guidance_max_timestep is None else int(guidance_max_timestep),
            "eta": float(eta),
            "num_inference_steps": int(num_inference_steps),
            "batch_size": int(batch_size),
            "seed": int(seed),
            "spatial_size": [int(s) for s in spatial_size],
            "source": source,
            "counts": {self.class_names[c]: counts[c] for c in classes},
        }
        path = None
        if output_dir is not None:
            if images:
                _save_class_grid(torch.cat(images), torch.tensor(labels), Path(output_dir) / "samples_grid.png")
            path = str(
                write_datalist(
                    {"training": entries},
                    Path(output_dir) / "synthetic_datalist.json",
                    base_dir=output_dir,
                    metadata={"class_names": self.class_names, "synthesis": settings},
                )
            )
        return ClassSynthesisResult(
            labels=torch.tensor(labels, dtype=torch.long),
            seeds=torch.tensor(seeds, dtype=torch.long),
            images=torch.cat(images) if keep_images and images else None,
            datalist=entries,
            datalist_path=path,
            seconds=seconds,
            settings=settings,
        )

    # ------------------------------------------------------------------ filtering
    def feature_extractor(self, kind: str = "latent", network: nn.Module | None = None) -> nn.Module:
        """A filter feature extractor: ``"real_classifier"`` (:class:`PenultimateFeatures` of ``network``, a model
        trained on the labelled real images: independent of the generator and of the guide), ``"latent"``
        (:class:`LatentFeatures`) or ``"classifier"`` (:class:`ClassifierFeatures`: the guide itself, circular)."""
        if kind == "real_classifier":
            if network is None:
                raise ValueError(
                    "real_classifier features need the network trained on the labelled real images "
                    "(train_real_feature_network)."
                )
            return PenultimateFeatures(network)
        if kind == "latent":
            return LatentFeatures(self.generator)
        if kind == "classifier":
            if self.classifier is None:
                raise ValueError("classifier features need a classifier.")
            return ClassifierFeatures(self.classifier, self.generator)
        raise ValueError(
            f"unknown feature extractor {kind!r}; use 'real_classifier', 'latent', 'classifier' or pass a module."
        )

    def centroid_filter(self, features: str | nn.Module | Callable = "latent", **kwargs: Any) -> CentroidFilter:
        """A :class:`~monai_genaug.filters.centroid.CentroidFilter` for this pipeline's classes (not fitted).

        Args:
            features: ``"latent"``, ``"classifier"`` or any image -> feature module / callable.
            kwargs: other :class:`CentroidFilter` arguments (``max_per_class``, ``ratio_to_real``, ``transform``...).
        """
        fn = self.feature_extractor(features) if isinstance(features, str) else features
        kwargs.setdefault("num_classes", self.num_classes)
        kwargs.setdefault("device", self.device)
        return CentroidFilter(fn, **kwargs)

    @torch.no_grad()
    def class_probabilities(self, images: torch.Tensor, timestep: int = 0, batch_size: int = 32) -> torch.Tensor:
        """Softmax of the classifier on the (clean) latents of ``images``: ``(N, num_classes)``."""
        if self.classifier is None:
            raise ValueError("class_probabilities needs a classifier.")
        self.classifier.eval()
        out = []
        for batch in iterate_sample_batches(images, batch_size):
            z = self.generator.encode(batch.to(self.device))
            out.append(torch.softmax(self.classifier(z, timestep), dim=1).cpu())
        return torch.cat(out)


