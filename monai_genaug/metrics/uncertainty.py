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
"""Pixel-wise uncertainty from a stack of probability maps, and how well it predicts segmentation errors.

A stack of ``S`` probability maps (test-time augmentation views, MC dropout samples, ensemble members) gives:

- the **mean probability** ``p = mean_s p_s`` (the fused prediction);
- the **predictive entropy** ``H[p]`` (total uncertainty);
- the **expected entropy** ``mean_s H[p_s]`` (aleatoric part);
- the **mutual information** ``H[p] - mean_s H[p_s]`` (epistemic part, zero when all members agree; Gal,
  "Uncertainty in Deep Learning", 2016, and Smith & Gal, arXiv:1803.08533);
- the **variance** of the probabilities across the stack.

Two kinds of channel layouts are handled: *categorical* maps (softmax over ``C >= 2`` channels, entropy
``-sum_c p_c log p_c``) and *binary* maps (sigmoid, every channel an independent Bernoulli variable, entropy
``-p log p - (1 - p) log(1 - p)`` summed over the channels). By default ``C == 1`` is binary and ``C >= 2`` is
categorical. Entropies are in nats; ``normalize=True`` divides by their maximum (``log C``, or ``C log 2`` for
binary maps) so they lie in [0, 1].

Error estimation (TTGA, Ma et al., arXiv:2406.17608) scores an uncertainty map as a detector of the pixels where
the prediction is wrong: ROC AUC (computed in torch, ties get average ranks) and Dice of the thresholded map
against the error map.
"""

from __future__ import annotations

import math

import torch
from monai.metrics import compute_roc_auc

__all__ = [
    "mean_probability",
    "predictive_entropy",
    "expected_entropy",
    "mutual_information",
    "predictive_variance",
    "uncertainty_maps",
    "roc_auc",
    "error_map",
    "error_estimation_auc",
    "error_estimation_dice",
]

_EPS = 1e-12


def _check_probs(probs: torch.Tensor, sample_dim: int, channel_dim: int) -> tuple[torch.Tensor, int, int]:
    if not isinstance(probs, torch.Tensor):
        raise TypeError(f"probs must be a torch.Tensor stack of probabilities, got {type(probs).__name__}.")
    if probs.ndim < 2:
        raise ValueError(
            f"probs must have a sample axis and a channel axis, e.g. (S, C, H, W), got shape {tuple(probs.shape)}."
        )
    sample_dim = sample_dim % probs.ndim
    channel_dim = channel_dim % probs.ndim
    if sample_dim == channel_dim:
        raise ValueError(f"sample_dim and channel_dim must differ, both are {sample_dim}.")
    p = probs.float()
    if torch.isnan(p).any():
        raise ValueError("probs contain NaN values.")
    if p.numel() and (p.min() < -1e-4 or p.max() > 1 + 1e-4):
        raise ValueError(
            f"probs must lie in [0, 1] (got [{float(p.min()):.4g}, {float(p.max()):.4g}]); apply softmax or sigmoid "
            "to the network outputs first."
        )
    return p.clamp(0.0, 1.0), sample_dim, channel_dim


def _is_binary(probs: torch.Tensor, channel_dim: int, binary: bool | None) -> bool:
    return probs.shape[channel_dim] == 1 if binary is None else bool(binary)


def _entropy(p: torch.Tensor, channel_dim: int, binary: bool) -> torch.Tensor:
    """Entropy (nats) of probability maps along ``channel_dim`` (kept with size 1)."""
    if binary:
        h = -(p * torch.log(p.clamp_min(_EPS)) + (1 - p) * torch.log((1 - p).clamp_min(_EPS)))
    else:
        h = -(p * torch.log(p.clamp_min(_EPS)))
    return h.sum(dim=channel_dim, keepdim=True)


def _max_entropy(num_channels: int, binary: bool) -> float:
    return num_channels * math.log(2.0) if binary else math.log(max(num_channels, 2))


def mean_probability(probs: torch.Tensor, sample_dim: int = 0) -> torch.Tensor:
    """Mean of the probability stack over ``sample_dim`` (the fused prediction)."""
    if not isinstance(probs, torch.Tensor):
        raise TypeError(f"probs must be a torch.Tensor, got {type(probs).__name__}.")
    return probs.float().mean(dim=sample_dim)


def predictive_entropy(
    probs: torch.Tensor,
    sample_dim: int = 0,
    channel_dim: int = 1,
    binary: bool | None = None,
    normalize: bool = False,
) -> torch.Tensor:
    """Entropy of the mean probability, ``H[mean_s p_s]`` (total predictive uncertainty).

    Args:
        probs: stacked probabilities, e.g. (S, C, *spatial) or (S, B, C, *spatial).
        sample_dim: the stack axis (removed in the output).
        channel_dim: the class axis of ``probs`` (kept with size 1 in the output).
        binary: ``True`` for sigmoid maps (per-channel Bernoulli, summed), ``False`` for softmax maps, ``None`` picks
            binary when there is one channel.
        normalize: divide by the maximum entropy so the result lies in [0, 1].
    """
    p, sample_dim, channel_dim = _check_probs(probs, sample_dim, channel_dim)
    is_bin = _is_binary(p, channel_dim, binary)
    h = _entropy(p.mean(dim=sample_dim, keepdim=True), channel_dim, is_bin)
    if normalize:
        h = h / _max_entropy(p.shape[channel_dim], is_bin)
    return h.squeeze(sample_dim)


def expected_entropy(
    probs: torch.Tensor,
    sample_dim: int = 0,
    channel_dim: int = 1,
    binary: bool | None = None,
    normalize: bool = False,
) -> torch.Tensor:
    """Mean entropy of the members, ``mean_s H[p_s]`` (aleatoric part); arguments as :func:`predictive_entropy`."""
    p, sample_dim, channel_dim = _check_probs(probs, sample_dim, channel_dim)
    is_bin = _is_binary(p, channel_dim, binary)
    h = _entropy(p, channel_dim, is_bin).mean(dim=sample_dim, keepdim=True)
    if normalize:
        h = h / _max_entropy(p.shape[channel_dim], is_bin)
    return h.squeeze(sample_dim)


def mutual_information(
    probs: torch.Tensor,
    sample_dim: int = 0,
    channel_dim: int = 1,
    binary: bool | None = None,
    normalize: bool = False,
) -> torch.Tensor:
    """Mutual information ``H[mean_s p_s] - mean_s H[p_s]`` (epistemic part, >= 0, zero when all members agree).

    Arguments as :func:`predictive_entropy`; ``normalize`` divides by the same maximum entropy.
    """
    total = predictive_entropy(probs, sample_dim, channel_dim, binary, normalize)
    aleatoric = expected_entropy(probs, sample_dim, channel_dim, binary, normalize)
    return (total - aleatoric).clamp_min(0.0)


def predictive_variance(
    probs: torch.Tensor, sample_dim: int = 0, channel_dim: int = 1, reduce_channels: bool = False
) -> torch.Tensor:
    """Variance of the probabilities across the stack (population variance, ``unbiased=False``).

    Args:
        probs: stacked probabilities, e.g. (S, C, *spatial).
        sample_dim: the stack axis (removed in the output).
        channel_dim: the class axis.
        reduce_channels: average the per-channel variances into one channel.
    """
    p, sample_dim, channel_dim = _check_probs(probs, sample_dim, channel_dim)
    var = p.var(dim=sample_dim, unbiased=False, keepdim=True)
    if reduce_channels:
        var = var.mean(dim=channel_dim, keepdim=True)
    return var.squeeze(sample_dim)


def uncertainty_maps(
    probs: torch.Tensor,
    sample_dim: int = 0,
    channel_dim: int = 1,
    binary: bool | None = None,
    normalize: bool = False,
) -> dict[str, torch.Tensor]:
    """All maps at once: ``mean``, ``entropy``, ``expected_entropy``, ``mutual_information`` and ``variance``.

    ``variance`` keeps one channel per class; the entropy maps have one channel. Arguments as
    :func:`predictive_entropy`.
    """
    p, sample_dim, channel_dim = _check_probs(probs, sample_dim, channel_dim)
    is_bin = _is_binary(p, channel_dim, binary)
    scale = _max_entropy(p.shape[channel_dim], is_bin) if normalize else 1.0
    mean = p.mean(dim=sample_dim, keepdim=True)
    total = _entropy(mean, channel_dim, is_bin) / scale
    aleatoric = _entropy(p, channel_dim, is_bin).mean(dim=sample_dim, keepdim=True) / scale
    return {
        "mean": mean.squeeze(sample_dim),
        "entropy": total.squeeze(sample_dim),
        "expected_entropy": aleatoric.squeeze(sample_dim),
        "mutual_information": (total - aleatoric).clamp_min(0.0).squeeze(sample_dim),
        "variance": p.var(dim=sample_dim, unbiased=False, keepdim=True).squeeze(sample_dim),
    }


def roc_auc(scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Area under the ROC curve of ``scores`` for binary ``labels`` (ties count one half), by MONAI's
    ``monai.metrics.compute_roc_auc``, with this package's input checks and NaN (no warning) for one-class labels.

    Args:
        scores: any shape; higher means "more likely positive".
        labels: same number of elements, bool or {0, 1}.

    Returns:
        a 0-dim float tensor; NaN when ``labels`` are all positive or all negative (AUC undefined).
    """
    s = torch.as_tensor(scores).detach().reshape(-1).double()
    y = torch.as_tensor(labels, device=s.device).detach().reshape(-1)
    if s.numel() != y.numel():
        raise ValueError(f"scores and labels must have the same number of elements, got {s.numel()} and {y.numel()}.")
    if torch.isnan(s).any():
        raise ValueError("scores contain NaN values.")
    y = y.bool() if y.dtype == torch.bool else y != 0
    n_pos = int(y.sum())
    n_neg = y.numel() - n_pos
    if n_pos == 0 or n_neg == 0:
        return torch.tensor(float("nan"), dtype=torch.float64)
    return torch.tensor(compute_roc_auc(s.cpu(), y.long().cpu()), dtype=torch.float64)


def error_map(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Boolean map of the wrong pixels of a discrete ``prediction`` (label map or thresholded mask)."""
    prediction, target = torch.as_tensor(prediction), torch.as_tensor(target, device=torch.as_tensor(prediction).device)
    if prediction.shape != target.shape:
        raise ValueError(
            f"prediction {tuple(prediction.shape)} and target {tuple(target.shape)} must have the same shape; pass "
            "discrete label maps (argmax / threshold the probabilities first)."
        )
    return prediction.long() != target.long()


def _per_item(fn, uncertainty: torch.Tensor, errors: torch.Tensor, batch_dim: int | None) -> torch.Tensor:
    if uncertainty.numel() != errors.numel():
        raise ValueError(
            f"the uncertainty map has {uncertainty.numel()} elements but the prediction has {errors.numel()}; give "
            "one uncertainty value per predicted pixel (e.g. entropy (B, 1, H, W) with labels (B, 1, H, W))."
        )
    uncertainty = uncertainty.reshape(errors.shape)
    if batch_dim is None:
        return fn(uncertainty, errors)
    return torch.stack([fn(u, e) for u, e in zip(uncertainty.unbind(batch_dim), errors.unbind(batch_dim))])


def error_estimation_auc(
    uncertainty: torch.Tensor, prediction: torch.Tensor, target: torch.Tensor, batch_dim: int | None = None
) -> torch.Tensor:
    """ROC AUC of ``uncertainty`` as a detector of the wrong pixels of ``prediction`` against ``target``.

    Args:
        uncertainty: one value per pixel (e.g. the predictive entropy), same number of elements as ``prediction``.
        prediction: discrete predicted labels.
        target: ground-truth labels, same shape as ``prediction``.
        batch_dim: compute one AUC per item along this axis (returns a (B,) tensor); ``None`` pools all pixels.

    Returns:
        AUC in [0, 1]; NaN when the prediction is entirely right (or entirely wrong).
    """
    errors = error_map(prediction, target)
    unc = torch.as_tensor(uncertainty).to(errors.device)
    return _per_item(roc_auc, unc, errors, batch_dim)


def error_estimation_dice(
    uncertainty: torch.Tensor,
    prediction: torch.Tensor,
    target: torch.Tensor,
    threshold: float = 0.5,
    batch_dim: int | None = None,
) -> torch.Tensor:
    """Dice between the thresholded uncertainty map (``uncertainty > threshold``) and the error map.

    Use a normalised uncertainty (``normalize=True``) so that one threshold fits all images. Both maps empty gives 1.

    Args:
        uncertainty: one value per pixel, same number of elements as ``prediction``.
        prediction: discrete predicted labels.
        target: ground-truth labels, same shape as ``prediction``.
        threshold: pixels with uncertainty above it are flagged as likely errors.
        batch_dim: one Dice per item along this axis; ``None`` pools all pixels.
    """
    errors = error_map(prediction, target)
    unc = torch.as_tensor(uncertainty).to(errors.device)

    def dice(u: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        flagged = u > threshold
        denom = flagged.sum() + e.sum()
        if denom == 0:
            return torch.tensor(1.0, dtype=torch.float64)
        return (2.0 * (flagged & e).sum() / denom).double()

    return _per_item(dice, unc, errors, batch_dim)
