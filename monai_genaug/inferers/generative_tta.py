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
"""Generative test-time augmentation as a MONAI inferer: views -> any inner inferer -> fused probability + uncertainty.

Ma et al., "Test-Time Generative Augmentation for Medical Image Segmentation", arXiv:2406.17608 (stage 4, spec A6):
every image of the batch is turned into N TTGA views (one batch from a
:class:`~monai_genaug.methods.ttga.TTGAAugmenter`), the segmenter runs on the views (and the original image, by
default) through an inner MONAI inferer (``SimpleInferer``, ``SlidingWindowInferer`` for large 3D volumes, ...),
its outputs become probabilities (softmax / sigmoid), and the probabilities are averaged (unweighted). The spread of
the stack gives the uncertainty maps of :mod:`monai_genaug.metrics.uncertainty`: predictive entropy, mutual
information, expected entropy and variance.

What ``__call__`` returns (``output``):

- ``"mean"`` (default): the mean probability (B, C, *spatial). It slots into ``SupervisedEvaluator(inferer=...)``,
  bundle ``"inferer"`` entries and MONAI Label; post transforms should *not* apply an activation again (use
  ``AsDiscreted(argmax=True)`` or ``AsDiscreted(threshold=0.5)`` directly). The full result of the last call,
  uncertainty maps, views and (with the original image in the ensemble) its plain prediction ``original`` included,
  is kept in :attr:`GenerativeTTAInferer.last_output`.
- ``"concat"``: one tensor for pipelines that must carry the uncertainty through ``decollate_batch`` and post
  transforms: channels ``[0, C)`` the mean probability, then one channel each for
  :data:`CONCAT_UNCERTAINTY` = entropy, mutual information, variance (averaged over classes). Split it with
  ``monai.transforms.SplitDimd`` or slice it.
- ``"dict"``: ``{"pred", "entropy", "expected_entropy", "mutual_information", "variance", "views"}`` for Python use.

If ``inputs`` is a ``MetaTensor`` the returned tensor carries its meta data (affine...), as ``SimpleInferer`` does.

Views x flips (``flip_axes``): the generated views and flips are complementary augmentations (appearance vs
geometry), so every member of the stack (the image and its views) can also be segmented flipped along each given set
of spatial axes and flipped back; the ensemble then has ``(N + 1) x (1 + len(flip_axes))`` members for the cost of
that many segmenter calls (the generation is unchanged). ``last_output["segmenter_calls"]`` counts them.

With the original image in the ensemble, :attr:`GenerativeTTAInferer.last_output` also holds, per image, the views'
diversity (:func:`~monai_genaug.metrics.view_diversity.view_diversity`: MAE / SSIM to the image, agreement of the
predictions), so an ensemble of views that equal the input shows as such next to the Dice.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from monai.data import MetaTensor
from monai.inferers import Inferer, SimpleInferer
from monai.utils import convert_to_dst_type

from monai_genaug.generative.protocols import ViewGenerator
from monai_genaug.metrics.uncertainty import uncertainty_maps
from monai_genaug.metrics.view_diversity import DIVERSITY_KEYS, hard_prediction, view_diversity

__all__ = ["CONCAT_UNCERTAINTY", "GenerativeTTAInferer"]

#: the uncertainty channels appended after the mean probability with ``output="concat"``
CONCAT_UNCERTAINTY = ("entropy", "mutual_information", "variance")

_OUTPUTS = ("mean", "concat", "dict")


class GenerativeTTAInferer(Inferer):
    """Run a segmenter on TTGA views of every image and fuse the probabilities, with uncertainty maps.

    Args:
        augmenter: the :class:`TTGAAugmenter` that makes the views (its cache avoids re-inverting an image seen
            before).
        inferer: the inner inferer applied to the stack of views, default ``SimpleInferer()``.
        num_views: N views per image (default: the augmenter's ``num_views``).
        include_original: also run the segmenter on the original image (spec A6: yes).
        activation: ``"softmax"`` (over channels), ``"sigmoid"``, ``None`` (the network already outputs
            probabilities) or a callable on the (K, C, *spatial) logits.
        output: ``"mean"``, ``"concat"`` or ``"dict"`` (see the module docstring).
        binary: how to compute entropies: ``True`` per-channel Bernoulli (sigmoid), ``False`` categorical (softmax),
            ``None`` follows ``activation`` (sigmoid -> binary; otherwise binary only for one channel).
        normalize_uncertainty: divide entropies / mutual information by their maximum so they lie in [0, 1].
        view_batch_size: at most this many views per inner-inferer call (``None``: all at once).
        keep_views: keep the generated views in :attr:`last_output` (for visualisation).
        seed: if given, every call re-seeds the view generator with ``seed`` so the output is a deterministic
            function of the input; ``None`` uses the augmenter's running generator.
        identity_dilation: take the identity region of the views from the segmenter itself instead of the generator's
            cross-attention: its foreground on the image (argmax > 0, or > 0.5 per channel for sigmoid outputs),
            united with its uncertain pixels (``identity_uncertainty``), dilated by this many pixels; the image is kept
            there and augmented elsewhere. ``None``: the augmenter's own mask. Costs one more segmenter call.
        identity_uncertainty: with ``identity_dilation``, pixels whose normalised predictive entropy exceeds this
            value also join the identity region (``None``: foreground only).
        flip_axes: views x flips: sets of spatial axes (0-based, e.g. ``[[0], [1], [0, 1]]`` in 2D) along which every
            ensemble member is also segmented flipped (and flipped back); ``None``: no flips.

    Example::

        inferer = GenerativeTTAInferer(TTGAAugmenter(generator, prompt=0, num_views=8), activation="softmax")
        evaluator = SupervisedEvaluator(device, val_loader, network, inferer=inferer,
                                        postprocessing=AsDiscreted(keys="pred", argmax=True, to_onehot=2), ...)
    """

    def __init__(
        self,
        augmenter: ViewGenerator,
        inferer: Inferer | None = None,
        num_views: int | None = None,
        include_original: bool = True,
        activation: str | Callable[[torch.Tensor], torch.Tensor] | None = "softmax",
        output: str = "mean",
        binary: bool | None = None,
        normalize_uncertainty: bool = False,
        view_batch_size: int | None = None,
        keep_views: bool = True,
        seed: int | None = None,
        flip_axes: Sequence[Sequence[int]] | None = None,
        identity_dilation: int | None = None,
        identity_uncertainty: float | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(augmenter, ViewGenerator):
            raise TypeError(
                "augmenter must be a view generator such as monai_genaug.methods.ttga.TTGAAugmenter (callable with "
                f"num_views, lambda_i and tau attributes), got {type(augmenter).__name__}."
            )
        if output not in _OUTPUTS:
            raise ValueError(f"output must be one of {_OUTPUTS}, got '{output}'.")
        if isinstance(activation, str) and activation not in ("softmax", "sigmoid"):
            raise ValueError(f"activation must be 'softmax', 'sigmoid', None or a callable, got '{activation}'.")
        if num_views is not None and int(num_views) < 1:
            raise ValueError(f"num_views must be >= 1, got {num_views}.")
        if view_batch_size is not None and int(view_batch_size) < 1:
            raise ValueError(f"view_batch_size must be >= 1, got {view_batch_size}.")
        self.augmenter = augmenter
        self.inferer = inferer if inferer is not None else SimpleInferer()
        self.num_views = num_views
        self.include_original = bool(include_original)
        self.activation = activation
        self.output = output
        self.binary = binary if binary is not None else (True if activation == "sigmoid" else None)
        self.normalize_uncertainty = bool(normalize_uncertainty)
        self.view_batch_size = view_batch_size
        self.keep_views = bool(keep_views)
        self.seed = seed
        self.flip_axes = self._check_flip_axes(flip_axes, augmenter)
        if identity_dilation is not None and int(identity_dilation) < 0:
            raise ValueError(f"identity_dilation is a radius in pixels (>= 0) or None, got {identity_dilation}.")
        if identity_uncertainty is not None and not 0.0 <= float(identity_uncertainty) <= 1.0:
            raise ValueError(f"identity_uncertainty is a normalised entropy in [0, 1], got {identity_uncertainty}.")
        if identity_uncertainty is not None and identity_dilation is None:
            raise ValueError("identity_uncertainty only acts with identity_dilation (set it, e.g. 0).")
        self.identity_dilation = None if identity_dilation is None else int(identity_dilation)
        self.identity_uncertainty = None if identity_uncertainty is None else float(identity_uncertainty)
        self.last_output: dict[str, torch.Tensor] | None = None

    @staticmethod
    def _check_flip_axes(flip_axes: Sequence[Sequence[int]] | None, augmenter: Any) -> list[tuple[int, ...]]:
        if not flip_axes:
            return []
        sd = getattr(getattr(augmenter, "generator", None), "spatial_dims", None)
        out = []
        for axes in flip_axes:
            axes = (int(axes),) if isinstance(axes, int) else tuple(int(a) for a in axes)
            if not axes or len(set(axes)) != len(axes) or min(axes) < 0 or (sd is not None and max(axes) >= sd):
                raise ValueError(
                    f"flip_axes must be a list of non-empty sets of distinct spatial axes in [0, {sd or 'spatial_dims'}"
                    f"), e.g. [[0], [1], [0, 1]] in 2D; got {list(flip_axes)}."
                )
            out.append(axes)
        return out

    def _identity_region(self, image: torch.Tensor, network: Callable, *args: Any, **kwargs: Any) -> torch.Tensor:
        """The segmenter's dilated foreground (and uncertain pixels) on one image (C, *spatial) -> (1, *spatial)."""
        probs = self._activate(self._segment(image[None], network, *args, **kwargs))
        binary = bool(self.binary) if self.binary is not None else probs.shape[1] == 1
        fg = hard_prediction(probs, binary)
        fg = (fg.any(dim=1, keepdim=True) if binary else fg > 0).float()
        if self.identity_uncertainty is not None:
            entropy = uncertainty_maps(probs[:, None], sample_dim=1, channel_dim=2, binary=binary, normalize=True)
            fg = torch.maximum(fg, (entropy["entropy"].reshape(fg.shape) > self.identity_uncertainty).float())
        r = self.identity_dilation or 0
        if r:
            pool = F.max_pool2d if fg.ndim == 4 else F.max_pool3d
            fg = pool(fg, kernel_size=2 * r + 1, stride=1, padding=r)
        return fg[0]

    def _segment_with_flips(self, stack: torch.Tensor, network: Callable, *args: Any, **kwargs: Any) -> torch.Tensor:
        """Probabilities of ``stack`` (K, ...) and of its flips, flipped back: (K * (1 + len(flip_axes)), C, ...)."""
        probs = [self._activate(self._segment(stack, network, *args, **kwargs))]
        for axes in self.flip_axes:
            dims = [a + 2 for a in axes]
            probs.append(self._activate(self._segment(stack.flip(dims), network, *args, **kwargs)).flip(dims))
        return torch.cat(probs, dim=0)

    def _activate(self, logits: torch.Tensor) -> torch.Tensor:
        if self.activation == "softmax":
            if logits.shape[1] == 1:
                raise ValueError("softmax over a single output channel is constant 1; use activation='sigmoid'.")
            return torch.softmax(logits.float(), dim=1)
        if self.activation == "sigmoid":
            return torch.sigmoid(logits.float())
        if callable(self.activation):
            return self.activation(logits).float()
        return logits.float()

    def _segment(self, stack: torch.Tensor, network: Callable, *args: Any, **kwargs: Any) -> torch.Tensor:
        size = self.view_batch_size or stack.shape[0]
        outs = []
        for chunk in stack.split(size, dim=0):
            out = self.inferer(chunk, network, *args, **kwargs)
            if not isinstance(out, torch.Tensor):
                raise TypeError(
                    f"the inner inferer returned {type(out).__name__}; GenerativeTTAInferer needs one tensor of "
                    "logits (B, C, *spatial) per call (disable deep supervision / dict outputs)."
                )
            outs.append(out.as_tensor() if isinstance(out, MetaTensor) else out)
        return torch.cat(outs, dim=0)

    def __call__(self, inputs: torch.Tensor, network: Callable, *args: Any, **kwargs: Any) -> Any:
        """Fuse the segmenter's predictions on the TTGA views of every image of ``inputs`` (B, C, *spatial).

        Args:
            inputs: a batch of images in the augmenter's ``intensity_range``.
            network: the segmenter.
            args: passed to the inner inferer (and the network).
            kwargs: passed to the inner inferer (and the network).
        """
        if not isinstance(inputs, torch.Tensor) or inputs.ndim < 3:
            raise ValueError(
                f"inputs must be a batch (B, C, *spatial) tensor, got "
                f"{tuple(inputs.shape) if isinstance(inputs, torch.Tensor) else type(inputs).__name__}."
            )
        plain = inputs.as_tensor() if isinstance(inputs, MetaTensor) else inputs
        rng = torch.Generator().manual_seed(int(self.seed)) if self.seed is not None else None
        results: dict[str, list[torch.Tensor]] = {}
        for image in plain:
            extra = {}
            if self.identity_dilation is not None:
                extra["identity_region"] = self._identity_region(image, network, *args, **kwargs)
            views = self.augmenter(image, num_views=self.num_views, rng=rng, **extra)
            stack = torch.cat([image[None].to(views), views], dim=0) if self.include_original else views
            probs = self._segment_with_flips(stack, network, *args, **kwargs)
            maps = uncertainty_maps(
                probs, sample_dim=0, channel_dim=1, binary=self.binary, normalize=self.normalize_uncertainty
            )
            maps["pred"] = maps.pop("mean")
            if self.include_original:  # the segmenter alone on the unaugmented image, already computed
                maps["original"] = probs[0]
                binary = bool(self.binary) if self.binary is not None else probs.shape[1] == 1
                k = stack.shape[0]
                diversity = view_diversity(image.to(views), views, probs[1:k], probs[0], binary=binary)
                maps.update({key: torch.tensor(diversity[key]) for key in DIVERSITY_KEYS})
            maps["segmenter_calls"] = torch.tensor(probs.shape[0] + (1 if extra else 0))
            if self.keep_views or self.output == "dict":
                maps["views"] = views
            for k, v in maps.items():
                results.setdefault(k, []).append(v)
        out = {k: torch.stack(v, dim=0) for k, v in results.items()}
        self.last_output = out
        if self.output == "dict":
            return out
        if self.output == "concat":
            extra = [out["entropy"], out["mutual_information"], out["variance"].mean(dim=1, keepdim=True)]
            fused = torch.cat([out["pred"], *extra], dim=1)
        else:
            fused = out["pred"]
        return convert_to_dst_type(fused, inputs, dtype=fused.dtype)[0]
