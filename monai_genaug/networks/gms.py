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
"""GMS: segmentation by mapping image latents to mask latents of one frozen autoencoder, 2D and 3D, binary and
multi-class.

Huo et al., "Generative Medical Segmentation", arXiv:2403.18198 (AAAI 2025). A frozen autoencoder encodes the image;
a small :class:`~monai_genaug.networks.latent_mapping.LatentMappingNet` (no down-sampling) maps the image latent to
the latent of the mask; the same frozen decoder turns the mapped latent back into a soft mask. Only the mapping
network is trained, with a latent MSE plus a Dice loss on the decoded mask, with deep supervision
(:class:`GMSLoss`).

:class:`GMSSegmenter` is network-like: ``segmenter(images)`` returns class probabilities ``(B, K + 1, *spatial)``
(background first), so it works with any MONAI inferer (``SimpleInferer``, ``SlidingWindowInferer``) and evaluator.

**Masks in the autoencoder's space.** A mask of foreground class ``k`` becomes an "image": ``lo`` outside, ``hi``
inside (``mask_value_range``, default ``(0, 1)``), repeated over the image channels, and is encoded with the
posterior mean. The decoded mask is the channel mean mapped back to [0, 1]. The autoencoder must reconstruct both
images and such masks: train it on both (``monai_genaug.methods.gms.create_autoencoder_trainer``) or give a separate
``mask_autoencoder``.

**Multi-class: one latent per class.** With ``num_classes = K > 1`` foreground classes the mapping network outputs
``K * latent_channels`` channels: one mask latent per class, each decoded on its own (the K decodes share one
batched decoder call). The per-class soft masks ``p_k`` become probabilities ``[1 - max_k p_k, p_1, ..., p_K]``
normalised to sum to one, so ``argmax`` gives exactly one label per pixel: class ``k`` where ``p_k`` is the largest
and at least 0.5, background elsewhere. For ``K = 1`` this is ``[1 - p, p]``: the original's threshold at 0.5. The
original GMS is binary only (its issue #3); one latent per class avoids K separate models and the colour-code trick
(whose RGB mixing blurs class boundaries in a lossy autoencoder).

**Differences from the original code** (see the spec): the latent noise augmentation draws
``(mu + sigma * eps) * scale`` (the original adds the unscaled sigma to the scaled mean); the encoder runs under
``no_grad``; the scale factor is estimated from the data (1 / std of the image latents) instead of SD's 0.18215.
"""

from __future__ import annotations

import hashlib
import os
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from monai.inferers import sliding_window_inference
from torch import nn

from monai_genaug.networks.autoencoder import autoencoder_factor, build_autoencoder
from monai_genaug.networks.latent_mapping import LatentMappingNet
from monai_genaug.networks.latent_scale import latent_scale_factor
from monai_genaug.utils.checkpoint import (
    register_checkpoint_format,
    atomic_save,
    check_state_dict_compatible,
    load_checkpoint,
    to_json_config,
)
from monai_genaug.utils.labels import check_label_map

__all__ = [
    "GMS_CHECKPOINT_FORMAT",
    "GMSSegmenter",
    "LatentCache",
    "MaskReconstructor",
    "class_probabilities",
    "decoded_to_soft_masks",
    "labels_to_onehot",
    "masks_to_images",
]

GMS_CHECKPOINT_FORMAT = register_checkpoint_format(
    "monai_genaug.GMSSegmenter", "GMS", "save segmenters with GMSSegmenter.save()"
)


# ----------------------------------------------------------------------------------------------------------------
# masks
# ----------------------------------------------------------------------------------------------------------------
def labels_to_onehot(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Foreground one-hot ``(B, K, *spatial)`` float masks of a ``(B, 1, *spatial)`` label map (background dropped)."""
    classes = torch.arange(1, num_classes + 1, device=labels.device).view(1, -1, *([1] * (labels.ndim - 2)))
    return (labels == classes).float()


def masks_to_images(
    labels: torch.Tensor, num_classes: int, channels: int, value_range: Sequence[float] = (0.0, 1.0)
) -> torch.Tensor:
    """Turn a label map into one "image" per foreground class, as the autoencoder sees masks.

    Args:
        labels: (B, 1, *spatial) integer label map with values 0..num_classes (checked by the caller).
        num_classes: foreground classes K.
        channels: image channels (the mask is repeated over them).
        value_range: (outside, inside) values.

    Returns:
        (B * K, channels, *spatial): sample-major, class-minor (sample b, class k at index ``b * K + k - 1``).
    """
    lo, hi = float(value_range[0]), float(value_range[1])
    onehot = labels_to_onehot(labels, num_classes)  # (B, K, *S)
    img = lo + (hi - lo) * onehot
    img = img.reshape(-1, 1, *labels.shape[2:])
    return img.expand(-1, channels, *labels.shape[2:]).contiguous()


def decoded_to_soft_masks(decoded: torch.Tensor, num_classes: int, value_range: Sequence[float] = (0.0, 1.0)) -> torch.Tensor:
    """Decoded mask "images" ``(B * K, C, *spatial)`` -> per-class soft masks ``(B, K, *spatial)`` in [0, 1].

    The channel mean is mapped from ``value_range`` to [0, 1] and clamped (the original's RGB average).
    """
    lo, hi = float(value_range[0]), float(value_range[1])
    soft = (decoded.mean(dim=1) - lo) / (hi - lo)
    return soft.reshape(-1, num_classes, *decoded.shape[2:]).clamp(0.0, 1.0)


def class_probabilities(soft: torch.Tensor) -> torch.Tensor:
    """Per-class soft masks ``(B, K, *spatial)`` -> ``[1 - max_k p_k, p_1, ..., p_K]`` normalised to sum to one.

    ``argmax`` of the result gives one label per pixel: class ``k`` where ``p_k`` is the largest and >= 0.5.
    """
    bg = 1.0 - soft.amax(dim=1, keepdim=True)
    probs = torch.cat([bg, soft], dim=1)
    return probs / probs.sum(dim=1, keepdim=True).clamp_min(1e-6)


class MaskReconstructor(nn.Module):
    """Encode and decode label maps with a (frozen) autoencoder: the upper bound of a GMS model's accuracy.

    ``reconstructor(labels)`` returns class probabilities ``(B, K + 1, *spatial)`` of the reconstructed masks (same
    encoding and decoding as :class:`GMSSegmenter`), so MONAI's ``MeanDice`` on its ``argmax`` measures how well the
    autoencoder can represent masks at all.

    Args:
        autoencoder: a MONAI ``AutoencoderKL``.
        num_classes: foreground classes K.
        mask_value_range: the (outside, inside) values of a mask encoded as an image.
    """

    def __init__(self, autoencoder: nn.Module, num_classes: int = 1, mask_value_range: Sequence[float] = (0.0, 1.0)) -> None:
        super().__init__()
        self.autoencoder = autoencoder
        self.num_classes = int(num_classes)
        self.mask_value_range = tuple(float(v) for v in mask_value_range)
        self.spatial_dims = int(autoencoder.encoder.spatial_dims)
        self.channels = int(autoencoder.encoder.in_channels)

    @torch.no_grad()
    def forward(self, labels: torch.Tensor) -> torch.Tensor:
        """Class probabilities of the reconstructed label map ``(B, 1, *spatial)``."""
        labels = check_label_map(labels, self.num_classes, self.spatial_dims)
        imgs = masks_to_images(labels, self.num_classes, self.channels, self.mask_value_range)
        mu, _ = self.autoencoder.encode(imgs.float())
        return class_probabilities(decoded_to_soft_masks(self.autoencoder.decode(mu), self.num_classes, self.mask_value_range))


# ----------------------------------------------------------------------------------------------------------------
# latent cache
# ----------------------------------------------------------------------------------------------------------------
class LatentCache:
    """A content-addressed LRU cache of frozen-encoder outputs, so training re-encodes only what it has not seen.

    The key of a sample is a hash of its exact bytes (values, shape, dtype) and a tag, so a cached latent is returned
    only for a bit-identical input: an image changed by on-the-fly augmentation (flip, colour jitter, crop) gets a new
    key and is encoded afresh. Caching therefore never changes the result of training; it only saves time, fully for
    deterministic pipelines and partly for augmentations with few outcomes (flips / 90-degree rotations give at most
    eight variants of a 2D image). Latent noise augmentation is applied after the lookup, on the cached posterior.

    Args:
        max_bytes: memory budget of the stored tensors; the least recently used entries are dropped beyond it.
        device: where stored tensors live (None: where they were computed).
    """

    def __init__(self, max_bytes: int = 512 * 2**20, device: str | torch.device | None = None) -> None:
        if max_bytes <= 0:
            raise ValueError(f"max_bytes must be positive, got {max_bytes}.")
        self.max_bytes = int(max_bytes)
        self.device = None if device is None else torch.device(device)
        self._store: OrderedDict[str, tuple[torch.Tensor, ...]] = OrderedDict()
        self._bytes = 0
        self.hits = 0
        self.misses = 0

    @staticmethod
    def key(x: torch.Tensor, tag: str = "") -> str:
        """Hash of a tensor's exact content (plus ``tag``, e.g. ``"image"`` or ``"mask"``)."""
        t = x.detach()
        t = t.as_tensor() if hasattr(t, "as_tensor") else t
        t = t.to("cpu").contiguous()
        h = hashlib.blake2b(digest_size=20)
        h.update(f"{tag}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        return h.hexdigest()

    def get(self, key: str) -> tuple[torch.Tensor, ...] | None:
        """The cached tensors of ``key`` (marked as recently used), or None."""
        value = self._store.get(key)
        if value is None:
            self.misses += 1
            return None
        self._store.move_to_end(key)
        self.hits += 1
        return value

    def put(self, key: str, value: Sequence[torch.Tensor]) -> None:
        """Store detached copies of ``value`` under ``key``, evicting the least recently used beyond the budget."""
        stored = tuple(v.detach().to(self.device) if self.device is not None else v.detach() for v in value)
        size = sum(v.numel() * v.element_size() for v in stored)
        if key in self._store:
            self._bytes -= sum(v.numel() * v.element_size() for v in self._store.pop(key))
        if size > self.max_bytes:
            return
        self._store[key] = stored
        self._bytes += size
        while self._bytes > self.max_bytes:
            _, old = self._store.popitem(last=False)
            self._bytes -= sum(v.numel() * v.element_size() for v in old)

    def clear(self) -> None:
        """Drop every entry and reset the counters."""
        self._store.clear()
        self._bytes = 0
        self.hits = self.misses = 0

    def __len__(self) -> int:
        return len(self._store)

    @property
    def nbytes(self) -> int:
        """Bytes held by the stored tensors."""
        return self._bytes

    def __repr__(self) -> str:
        return f"LatentCache(entries={len(self)}, bytes={self._bytes}, hits={self.hits}, misses={self.misses})"


# ----------------------------------------------------------------------------------------------------------------
# the segmenter
# ----------------------------------------------------------------------------------------------------------------
class GMSSegmenter(nn.Module):
    """GMS segmenter: frozen autoencoder + trainable latent mapping network + latent scale factor.

    Huo et al., "Generative Medical Segmentation", arXiv:2403.18198.

    ``segmenter(images)`` returns probabilities ``(B, K + 1, *spatial)`` (background first; ``include_background=
    False`` returns the K per-class soft masks). For training, ``segmenter(latents, latent_input=True,
    return_heads=True, decode_levels=...)`` returns the mapped latents of every head and the decoded masks of
    ``decode_levels`` (what :class:`GMSLoss` takes); :class:`~monai_genaug.methods.gms.GMSPrepareBatch` produces
    these calls for MONAI's ``SupervisedTrainer``.

    Args:
        autoencoder: the frozen tokenizer, a MONAI ``AutoencoderKL`` (``encode`` -> ``(mu, sigma)``, ``decode``);
            e.g. ``LatentGenerator.autoencoder`` with ``scale_factor=float(generator.scale_factor)``.
        mapping_net: a :class:`LatentMappingNet` with ``in_channels = latent channels`` and ``out_channels =
            num_classes * mask latent channels``.
        num_classes: foreground classes K (1 = binary). Labels are 0 (background) .. K.
        scale_factor: multiplies the image (and mask) latents; see :meth:`estimate_scale_factor`.
        mask_autoencoder: a separate frozen autoencoder for masks (same spatial factor), or None to use
            ``autoencoder`` for masks too (the GMS recipe).
        mask_scale_factor: scale of the mask latents; None: ``scale_factor`` (required None when masks share the
            image autoencoder).
        mask_value_range: the (outside, inside) values of a mask encoded as an image.
        include_background: ``forward`` returns ``K + 1`` normalised probabilities (True) or the K raw per-class
            soft masks (False).
        config: the JSON config the segmenter was built from (kept in checkpoints; see :func:`gms_config`).
        latent_roi_size: the latent sliding window (see :meth:`map_latents`): the mapping network runs on latent
            windows of this size (e.g. the latent size of the training crops, ``spatial_size // factor``) instead of
            on the whole latent. None (default) maps the whole latent at once. Training is unaffected.
        latent_overlap: overlap of neighbouring latent windows (fraction of the window), blended with Gaussian
            weights.

    Example::

        seg = GMSSegmenter.from_config(gms_config("small", spatial_dims=2, image_channels=3, num_classes=1))
        seg.estimate_scale_factor(train_images)
        probs = seg(images)                      # (B, 2, H, W); labels = probs.argmax(1)
    """

    def __init__(
        self,
        autoencoder: nn.Module,
        mapping_net: nn.Module,
        num_classes: int = 1,
        scale_factor: float = 1.0,
        mask_autoencoder: nn.Module | None = None,
        mask_scale_factor: float | None = None,
        mask_value_range: Sequence[float] = (0.0, 1.0),
        include_background: bool = True,
        config: Mapping[str, Any] | None = None,
        latent_roi_size: Sequence[int] | int | None = None,
        latent_overlap: float = 0.25,
    ) -> None:
        super().__init__()
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes (foreground classes) must be an integer >= 1, got {num_classes!r}.")
        lo, hi = (float(v) for v in mask_value_range)
        if not hi != lo:
            raise ValueError(f"mask_value_range must hold two different values (outside, inside), got {mask_value_range}.")
        self.autoencoder = autoencoder
        self.mask_autoencoder = mask_autoencoder
        self.mapping = mapping_net
        self.num_classes = num_classes
        self.mask_value_range = (lo, hi)
        self.include_background = bool(include_background)
        self.register_buffer("scale_factor", torch.tensor(float(scale_factor)))
        if mask_scale_factor is not None and mask_autoencoder is None:
            raise ValueError("mask_scale_factor needs a separate mask_autoencoder; with one autoencoder the scales are equal.")
        self.register_buffer(
            "mask_scale_factor", torch.tensor(float(mask_scale_factor if mask_scale_factor is not None else scale_factor))
        )
        self.config: dict[str, Any] = dict(config) if config is not None else {}

        self.spatial_dims = int(getattr(mapping_net, "spatial_dims", self.config.get("spatial_dims", 2)))
        self.set_latent_window(latent_roi_size, latent_overlap)
        self.factor = autoencoder_factor(autoencoder)
        self.image_channels = int(autoencoder.encoder.in_channels)
        self.latent_channels = int(autoencoder.latent_channels)
        mask_ae = self.mask_ae
        self.mask_latent_channels = int(mask_ae.latent_channels)
        self.mask_channels = int(mask_ae.encoder.in_channels)
        if mask_autoencoder is not None and autoencoder_factor(mask_autoencoder) != self.factor:
            raise ValueError(
                f"the mask autoencoder down-samples by {autoencoder_factor(mask_autoencoder)}, the image autoencoder by "
                f"{self.factor}; the latents must have the same size."
            )
        m_in = getattr(mapping_net, "in_channels", self.latent_channels)
        m_out = getattr(mapping_net, "out_channels", self.mask_latent_channels * num_classes)
        if m_in != self.latent_channels or m_out != self.mask_latent_channels * num_classes:
            raise ValueError(
                f"the mapping network maps {m_in} -> {m_out} channels but GMS needs {self.latent_channels} (image latent) "
                f"-> {self.mask_latent_channels * num_classes} (num_classes={num_classes} x {self.mask_latent_channels} "
                "mask latent channels, one latent per class)."
            )
        self.freeze_autoencoders()

    # ------------------------------------------------------------------ construction and checkpoints
    @classmethod
    def from_config(
        cls, config: Mapping[str, Any], autoencoder: nn.Module | None = None, include_background: bool = True
    ) -> GMSSegmenter:
        """Build a segmenter from a :func:`gms_config` (or a checkpoint's config).

        Args:
            config: the config.
            autoencoder: an already built (e.g. trained) autoencoder to use instead of a new one from the config.
            include_background: see the class.
        """
        config = to_json_config(config)
        try:
            sd = int(config["spatial_dims"])
            image_channels = int(config["image_channels"])
            num_classes = int(config["num_classes"])
            ae_cfg = dict(config["autoencoder"])
            map_cfg = dict(config["mapping"])
        except KeyError as e:
            raise ValueError(f"GMS config lacks the key {e}; build it with gms_config().") from e
        if autoencoder is None:
            autoencoder = build_autoencoder(sd, image_channels, **ae_cfg)
        mapping = LatentMappingNet(spatial_dims=sd, **map_cfg)
        return cls(
            autoencoder,
            mapping,
            num_classes=num_classes,
            scale_factor=float(config.get("scale_factor", 1.0)),
            mask_value_range=config.get("mask_value_range", (0.0, 1.0)),
            include_background=include_background,
            config=config,
        )

    def save(self, path: str | os.PathLike, extra: Mapping[str, Any] | None = None) -> None:
        """Write weights (autoencoder included) + config atomically; ``extra`` must be JSON-like."""
        if not self.config:
            raise ValueError("this segmenter was built without a config; build it with GMSSegmenter.from_config().")
        if self.mask_autoencoder is not None:
            raise ValueError("saving a segmenter with a separate mask autoencoder is not supported; save the parts.")
        config = dict(self.config)
        config["scale_factor"] = float(self.scale_factor)
        state = {k: v.detach().cpu() for k, v in self.state_dict().items()}
        atomic_save(
            {"format": GMS_CHECKPOINT_FORMAT, "config": config, "state_dict": state, "extra": to_json_config(extra or {})},
            path,
        )

    @classmethod
    def load(
        cls, path: str | os.PathLike, map_location: str | torch.device | None = "cpu", include_background: bool = True
    ) -> GMSSegmenter:
        """Rebuild a segmenter from a checkpoint written by :meth:`save` (``weights_only=True``)."""
        ckpt = load_checkpoint(path, map_location=map_location, expected_format=GMS_CHECKPOINT_FORMAT)
        seg = cls.from_config(ckpt["config"], include_background=include_background)
        check_state_dict_compatible(seg, ckpt["state_dict"], name=str(path))
        seg.load_state_dict(ckpt["state_dict"])
        return seg

    # ------------------------------------------------------------------ freezing
    @property
    def mask_ae(self) -> nn.Module:
        """The autoencoder used for masks (the image autoencoder unless a separate one was given)."""
        return self.mask_autoencoder if self.mask_autoencoder is not None else self.autoencoder

    def freeze_autoencoders(self) -> None:
        """Freeze the autoencoder(s): no gradients, eval mode (kept in eval by :meth:`train`)."""
        for ae in (self.autoencoder, self.mask_autoencoder):
            if ae is not None:
                ae.requires_grad_(False)
                ae.eval()

    def train(self, mode: bool = True) -> GMSSegmenter:
        """Set the mapping network's mode; the frozen autoencoders stay in eval mode."""
        super().train(mode)
        for ae in (self.autoencoder, self.mask_autoencoder):
            if ae is not None:
                ae.eval()
        return self

    def trainable_parameters(self) -> list[nn.Parameter]:
        """The parameters GMS trains: the mapping network's."""
        return [p for p in self.mapping.parameters() if p.requires_grad]

    # ------------------------------------------------------------------ checks
    def check_images(self, images: torch.Tensor, name: str = "images") -> None:
        """Raise a clear error when ``images`` cannot go through the autoencoder (type, shape, channels, size)."""
        if not isinstance(images, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(images).__name__}.")
        axes = ", ".join("HWD"[: self.spatial_dims])
        if images.ndim != self.spatial_dims + 2:
            raise ValueError(
                f"{name} must be (B, {self.image_channels}, {axes}) for this {self.spatial_dims}D GMS model, got shape "
                f"{tuple(images.shape)}."
            )
        if images.shape[1] != self.image_channels:
            raise ValueError(
                f"{name} have {images.shape[1]} channels but the autoencoder takes {self.image_channels} "
                "(3 for RGB, 1 for grey, one per MRI modality); convert the images or use a matching model."
            )
        spatial = tuple(int(s) for s in images.shape[2:])
        if any(s % self.factor or s < self.factor for s in spatial):
            good = tuple(max(self.factor, round(s / self.factor) * self.factor) for s in spatial)
            raise ValueError(
                f"{name} spatial size {spatial} cannot go through the autoencoder: every size must be a positive multiple "
                f"of its down-sampling factor {self.factor}. Resize (monai.transforms.Resized(spatial_size={good})) or pad "
                f"(monai.transforms.DivisiblePadd(k={self.factor})) the images."
            )

    def _check_latents(self, latents: torch.Tensor) -> None:
        if not isinstance(latents, torch.Tensor):
            raise TypeError(f"latents must be a torch.Tensor, got {type(latents).__name__}.")
        if latents.ndim != self.spatial_dims + 2 or latents.shape[1] != self.latent_channels:
            raise ValueError(
                f"image latents must be (B, {self.latent_channels}, *spatial) ({self.spatial_dims}D), got shape "
                f"{tuple(latents.shape)}; pass images without latent_input=True."
            )

    # ------------------------------------------------------------------ encoding and decoding
    @torch.no_grad()
    def image_posterior(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Unscaled posterior ``(mu, sigma)`` of the frozen encoder for ``images``."""
        self.check_images(images)
        x = images.as_tensor() if hasattr(images, "as_tensor") else images
        return self.autoencoder.encode(x)

    def encode_images(
        self, images: torch.Tensor, sample: bool = False, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Scaled image latents: ``mu * scale`` or a posterior sample ``(mu + sigma * eps) * scale``."""
        mu, sigma = self.image_posterior(images)
        return self.scale_latents(mu, sigma if sample else None, generator)

    def scale_latents(
        self, mu: torch.Tensor, sigma: torch.Tensor | None = None, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """``mu * scale``, or ``(mu + sigma * eps) * scale`` with ``eps ~ N(0, 1)`` drawn from ``generator``."""
        if sigma is not None:
            eps = torch.randn(mu.shape, generator=generator, device=generator.device if generator else mu.device)
            mu = mu + sigma * eps.to(mu.device, mu.dtype)
        return mu * self.scale_factor

    @torch.no_grad()
    def mask_posterior_mean(self, labels: torch.Tensor) -> torch.Tensor:
        """Unscaled mask latents ``(B, K * mask_latent_channels, *latent)`` of a checked label map."""
        imgs = masks_to_images(labels, self.num_classes, self.mask_channels, self.mask_value_range)
        mu, _ = self.mask_ae.encode(imgs.to(self.scale_factor.dtype))
        b = labels.shape[0]
        return mu.reshape(b, self.num_classes * mu.shape[1], *mu.shape[2:])

    def encode_masks(self, labels: torch.Tensor) -> torch.Tensor:
        """Scaled mask latents ``(B, K * mask_latent_channels, *latent)`` of a ``(B, 1, *spatial)`` label map."""
        labels = check_label_map(labels, self.num_classes, self.spatial_dims)
        self.check_images(
            torch.empty(labels.shape[0], self.image_channels, *labels.shape[2:], device="meta"), name="masks"
        )
        return self.mask_posterior_mean(labels) * self.mask_scale_factor

    def decode_masks(self, latents: torch.Tensor) -> torch.Tensor:
        """Decode mapped latents ``(B, K * c, *latent)`` to per-class soft masks ``(B, K, *spatial)`` in [0, 1].

        Gradients flow through the frozen decoder (for the Dice loss).
        """
        b, k, c = latents.shape[0], self.num_classes, self.mask_latent_channels
        if latents.shape[1] != k * c:
            raise ValueError(f"mask latents must have {k * c} channels (K={k} x {c}), got {latents.shape[1]}.")
        z = latents.reshape(b * k, c, *latents.shape[2:]) / self.mask_scale_factor
        return decoded_to_soft_masks(self.mask_ae.decode(z), k, self.mask_value_range)  # (B, K, *spatial)

    # ------------------------------------------------------------------ latent sliding window
    def set_latent_window(self, roi_size: Sequence[int] | int | None, overlap: float = 0.25) -> None:
        """Set (or, with ``roi_size=None``, remove) the latent sliding window of :meth:`map_latents`.

        Args:
            roi_size: latent window size, one value per spatial axis or one for all; every value >= 1.
            overlap: overlap of neighbouring windows, in [0, 1).

        Raises:
            ValueError: a size that is not positive, of the wrong length, or an overlap outside [0, 1).
        """
        if not 0.0 <= float(overlap) < 1.0:
            raise ValueError(f"latent_overlap must be in [0, 1), got {overlap}.")
        self.latent_overlap = float(overlap)
        if roi_size is None:
            self.latent_roi_size = None
            return
        dims = self.spatial_dims
        size = [int(roi_size)] * dims if isinstance(roi_size, int) else [int(v) for v in roi_size]
        if len(size) != dims or any(v < 1 for v in size):
            raise ValueError(
                f"latent_roi_size must be a positive int or {dims} positive ints (latent voxels, e.g. the training "
                f"spatial_size divided by the autoencoder factor), got {roi_size!r}."
            )
        self.latent_roi_size = tuple(size)

    def map_latents(self, z: torch.Tensor) -> torch.Tensor:
        """The mapping network's output latent for image latents ``z``, through the latent sliding window if set.

        A volume larger than the tokenizer's training size is encoded whole (the autoencoder is convolutional), its
        latent is mapped window by window (MONAI ``sliding_window_inference`` with Gaussian blending, windows of
        ``latent_roi_size``, the size the mapping network and its self-attention were trained on; the memory of
        full self-attention, quadratic in the latent voxels, stays that of one window) and the mapped latent is
        decoded whole. A latent no larger than the window is mapped in one call, exactly as without the window.
        """
        roi = self.latent_roi_size
        if roi is None or all(s <= r for s, r in zip(z.shape[2:], roi)):
            return self.mapping(z)
        return sliding_window_inference(
            z, roi, 1, self.mapping, overlap=self.latent_overlap, mode="gaussian", progress=False
        )

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        x: torch.Tensor,
        latent_input: bool = False,
        return_heads: bool = False,
        decode_levels: Sequence[str] | None = None,
    ) -> torch.Tensor | dict[str, dict[str, torch.Tensor]]:
        """Segment images (default) or, for training, map latents and decode the supervised heads.

        Args:
            x: images (B, image_channels, *spatial) with sizes divisible by the autoencoder factor, or scaled image
                latents when ``latent_input``.
            latent_input: ``x`` is already a scaled image latent (e.g. a cached / noise-augmented one).
            return_heads: return ``{"latents": {head: latent}, "masks": {head: (B, K, *spatial) soft masks}}`` for
                every head of the mapping network instead of probabilities.
            decode_levels: heads to decode when ``return_heads`` (default: all).

        Returns:
            probabilities (B, K + 1, *spatial) (or (B, K, *spatial) without background), or the heads dict.
        """
        if latent_input:
            self._check_latents(x)
            z = x
        else:
            z = self.encode_images(x)
        if not return_heads:
            soft = self.decode_masks(self.map_latents(z))
            return class_probabilities(soft) if self.include_background else soft
        heads = self.mapping.forward_heads(z) if hasattr(self.mapping, "forward_heads") else {"out": self.mapping(z)}
        levels = list(heads) if decode_levels is None else list(decode_levels)
        missing = [lvl for lvl in levels if lvl not in heads]
        if missing:
            raise ValueError(f"decode_levels {missing} are not heads of the mapping network, which has {list(heads)}.")
        return {"latents": heads, "masks": {lvl: self.decode_masks(heads[lvl]) for lvl in levels}}

    @torch.no_grad()
    def predict_labels(self, images: torch.Tensor) -> torch.Tensor:
        """Label maps ``(B, 1, *spatial)`` (long, 0..K): one label per pixel."""
        soft = self.decode_masks(self.map_latents(self.encode_images(images)))
        return class_probabilities(soft).argmax(dim=1, keepdim=True)

    # ------------------------------------------------------------------ scale factor
    @torch.no_grad()
    def estimate_scale_factor(
        self,
        data: torch.Tensor | Iterable[Any],
        image_key: str = "image",
        max_batches: int | None = None,
        set_value: bool = True,
    ) -> float:
        """Set ``scale_factor = 1 / std`` of the unscaled image posterior means and return it.

        The estimate is the package's one :func:`~monai_genaug.networks.latent_scale.latent_scale_factor` (sample
        std, streamed in float64; the population std GMS used before differs by ``sqrt(N / (N - 1))``).

        Args:
            data: an image tensor, or an iterable of image tensors or of dicts with ``image_key`` (a data loader).
            image_key: key of the images in dict batches.
            max_batches: stop after this many batches.
            set_value: store the value (for both image and mask latents when they share the autoencoder).
        """
        value = latent_scale_factor(
            lambda images: self.image_posterior(images)[0],
            data,
            image_key=image_key,
            max_batches=max_batches,
            device=self.scale_factor.device,
        )
        if set_value:
            self.scale_factor.fill_(value)
            if self.mask_autoencoder is None:
                self.mask_scale_factor.fill_(value)
        return value


