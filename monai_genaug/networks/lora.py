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
"""LoRA adapters for MONAI diffusion UNets and any network with Linear attention projections.

Low-rank adaptation (Hu et al., "LoRA: Low-Rank Adaptation of Large Language Models",
https://arxiv.org/abs/2106.09685) freezes a layer's weight ``W`` and trains a low-rank update,
so the layer computes ``W x + (alpha / rank) * B A x`` with ``A`` of shape (rank, in) and ``B`` of
shape (out, rank). ``B`` starts at zero, so an adapted network first gives exactly the output of
the base network. TTGA (https://arxiv.org/abs/2406.17608) adapts Stable Diffusion to a medical
domain this way: rank 4, alpha 4, on the q, k, v and output projections of the self- and
cross-attention layers of the UNet; these are the defaults here.

The adapters are injected in place through ``peft.inject_adapter_in_model``: the network keeps its
class (e.g. :class:`monai.networks.nets.DiffusionModelUNet`) and its forward signature
(``unet(x, timesteps, context=...)``), so samplers, inferers and bundles use it unchanged.

Module names in MONAI 1.6 diffusion UNets (``DiffusionModelUNet``, ``SPADEDiffusionModelUNet``,
``ControlNet``), which the default targets match:

- transformer blocks (``with_conditioning=True``): ``...transformer_blocks.N.attn1.{to_q,to_k,to_v,out_proj}``
  (self-attention; ``attn1.qkv`` instead of ``to_q/to_k/to_v`` with ``use_combined_linear=True``) and
  ``...transformer_blocks.N.attn2.{to_q,to_k,to_v,out_proj}`` (cross-attention, ``to_k``/``to_v`` read the
  context);
- spatial attention blocks (``with_conditioning=False``, also in ``AutoencoderKL``):
  ``...attn.{to_q,to_k,to_v,out_proj}`` or ``...attn.qkv``;
- not targeted by default: ``proj_in.conv`` / ``proj_out.conv`` (1x1 convolutions around the
  transformer), ``ff.linear1`` / ``ff.linear2`` (feed-forward) and ``time_emb_proj``. They can be
  added through ``target_modules`` (Linear and Conv1d/2d/3d layers are supported).

Typical use::

    unet = DiffusionModelUNet(...)
    unet.load_state_dict(base_weights)
    apply_lora(unet, rank=4)                       # only the adapters are trainable now
    opt = torch.optim.AdamW(lora_parameters(unet), lr=1e-4)
    ...                                            # train
    save_lora(unet, "lora.pt")                     # adapter weights + LoRA config only
    fresh = DiffusionModelUNet(...); fresh.load_state_dict(base_weights)
    load_lora(fresh, "lora.pt")                    # applies LoRA with the stored config, loads weights
    merge_lora(fresh)                              # plain UNet again, no inference overhead
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from monai.utils import optional_import
from torch import nn

from monai_genaug.utils.checkpoint import (
    CheckpointMismatchError,
    atomic_save,
    load_checkpoint,
    to_json_config,
)

LoraConfig, has_peft = optional_import("peft", name="LoraConfig")
inject_adapter_in_model, _ = optional_import("peft", name="inject_adapter_in_model")
LoraLayer, _ = optional_import("peft.tuners.lora", name="LoraLayer")

__all__ = [
    "DEFAULT_LORA_TARGETS",
    "LORA_TARGET_PRESETS",
    "resolve_lora_targets",
    "apply_lora",
    "has_lora",
    "get_lora_config",
    "lora_parameters",
    "lora_state_dict",
    "count_trainable_parameters",
    "save_lora",
    "load_lora",
    "merge_lora",
    "remove_lora",
    "set_lora_scale",
    "set_lora_enabled",
    "lora_disabled",
]

#: Name suffixes of the attention projections targeted by default: q, k, v (separate or combined
#: ``qkv``) and the output projection of every self- and cross-attention layer (MONAI names; the
#: diffusers name ``to_out.0`` is included so diffusers-style attention modules work too).
DEFAULT_LORA_TARGETS: tuple[str, ...] = ("to_q", "to_k", "to_v", "qkv", "out_proj", "to_out.0")

_PROJ = r"(?:to_q|to_k|to_v|qkv|out_proj|to_out\.0)"

#: Named target sets accepted by ``target_modules``: all attention projections (the default), the
#: self-attention ones only (``attn``/``attn1``) or the cross-attention ones only (``attn2``).
LORA_TARGET_PRESETS: dict[str, str | tuple[str, ...]] = {
    "attention": DEFAULT_LORA_TARGETS,
    "self_attention": rf"(?:.*\.)?(?:attn|attn1)\.{_PROJ}",
    "cross_attention": rf"(?:.*\.)?attn2\.{_PROJ}",
}

_SUPPORTED_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
_RECORD_ATTR = "_monai_genaug_lora_config"


def _require_peft() -> None:
    if not has_peft:
        raise ImportError("monai_genaug.networks.lora needs the 'peft' package: pip install peft")


def _lora_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, layer) of every peft LoRA layer in model."""
    _require_peft()
    return [(n, m) for n, m in model.named_modules() if isinstance(m, LoraLayer)]


def _adapter_names(model: nn.Module) -> list[str]:
    names: set[str] = set()
    for _, layer in _lora_layers(model):
        names.update(layer.r.keys())
    return sorted(names)


def has_lora(model: nn.Module) -> bool:
    """Whether model holds injected LoRA layers."""
    return len(_lora_layers(model)) > 0


def _normalise_targets(target_modules: str | Sequence[str] | None) -> str | list[str]:
    """Return the JSON form of a target specification (regex string, preset name or suffix list)."""
    if target_modules is None:
        return list(DEFAULT_LORA_TARGETS)
    if isinstance(target_modules, str):
        if not target_modules:
            raise ValueError("target_modules is an empty string; pass a preset name, a regex or a list of suffixes.")
        return target_modules
    if isinstance(target_modules, Sequence) and all(isinstance(t, str) and t for t in target_modules):
        if len(target_modules) == 0:
            raise ValueError("target_modules is an empty list; pass at least one module name suffix.")
        return list(target_modules)
    raise TypeError(
        f"target_modules must be None, a preset name {sorted(LORA_TARGET_PRESETS)}, a regex string or a list of "
        f"non-empty module name suffixes, got {target_modules!r}."
    )


def _matches(name: str, spec: str | list[str]) -> bool:
    if isinstance(spec, str):
        spec = LORA_TARGET_PRESETS.get(spec, spec)  # type: ignore[assignment]
    if isinstance(spec, str):
        return re.fullmatch(spec, name) is not None
    return any(name == t or name.endswith("." + t) for t in spec)


def resolve_lora_targets(model: nn.Module, target_modules: str | Sequence[str] | None = None) -> list[str]:
    """Return the names of the modules of model that LoRA adapters would be injected into.

    Only ``nn.Linear`` and ``nn.Conv1d/2d/3d`` modules are kept (e.g. the ``nn.Identity`` that MONAI
    puts at ``to_q`` when ``use_combined_linear=True`` is skipped). The ``out_proj`` of a
    ``torch.nn.MultiheadAttention`` is skipped with a warning: that module reads the weight directly,
    so an adapter there would have no effect.

    Args:
        model: the network to inspect.
        target_modules: ``None`` for :data:`DEFAULT_LORA_TARGETS`; a preset name from
            :data:`LORA_TARGET_PRESETS` (``"attention"``, ``"self_attention"``, ``"cross_attention"``); any
            other string is a regular expression that must match a whole module name (peft's rule);
            a list of strings matches module names equal to or ending in ``"." + suffix``.

    Raises:
        ValueError: when nothing matches; the message lists Linear/Conv module names that exist.
    """
    spec = _normalise_targets(target_modules)
    if isinstance(spec, str) and spec not in LORA_TARGET_PRESETS:
        try:
            re.compile(spec)
        except re.error as e:
            raise ValueError(f"target_modules {spec!r} is not a valid regular expression: {e}.") from e
    mha_children = {
        id(m.out_proj) for m in model.modules() if isinstance(m, nn.MultiheadAttention) and hasattr(m, "out_proj")
    }
    found, skipped_mha, wrong_type = [], [], []
    for name, module in model.named_modules():
        if not name or not _matches(name, spec):
            continue
        if id(module) in mha_children:
            skipped_mha.append(name)
        elif isinstance(module, _SUPPORTED_LAYERS):
            found.append(name)
        elif not isinstance(module, nn.Identity):
            wrong_type.append(f"{name} ({type(module).__name__})")
    if skipped_mha:
        warnings.warn(
            f"LoRA skips {skipped_mha}: torch.nn.MultiheadAttention reads out_proj.weight directly, so an adapter "
            "there would have no effect.",
            stacklevel=2,
        )
    if not found:
        linear = [n for n, m in model.named_modules() if n and isinstance(m, nn.Linear)]
        convs = [n for n, m in model.named_modules() if n and isinstance(m, _SUPPORTED_LAYERS[1:])]
        candidates = linear + convs
        shown = ", ".join(candidates[:12]) + (f" ... ({len(candidates)} in all)" if len(candidates) > 12 else "")
        extra = f" Matched modules of unsupported type: {', '.join(wrong_type[:6])}." if wrong_type else ""
        raise ValueError(
            f"target_modules={spec!r} matches no nn.Linear / nn.Conv module of {type(model).__name__}.{extra} "
            f"Linear/Conv modules present: {shown or 'none'}. Pass a preset name {sorted(LORA_TARGET_PRESETS)}, a "
            "regex matching whole module names, or a list of name suffixes such as ['to_q', 'to_v']."
        )
    return found


def apply_lora(
    model: nn.Module,
    rank: int = 4,
    alpha: float | None = None,
    dropout: float = 0.0,
    target_modules: str | Sequence[str] | None = None,
    adapter_name: str = "default",
    generator: torch.Generator | None = None,
) -> nn.Module:
    """Inject LoRA adapters into model in place and freeze every other parameter.

    The network keeps its class and forward signature. ``B`` is zero at initialisation, so the output
    is unchanged until the adapters are trained; ``A`` is drawn as peft does (Kaiming uniform,
    ``a=sqrt(5)``), from generator when one is given. One adapter per network: merge or remove it
    before applying another.

    Args:
        model: the network, e.g. a ``DiffusionModelUNet`` or ``SPADEDiffusionModelUNet`` (any 2D/3D).
        rank: rank r of the update (TTGA / diffusers default 4).
        alpha: scaling numerator; the update is multiplied by ``alpha / rank``. Defaults to rank.
        dropout: dropout probability on the adapter input during training.
        target_modules: which layers to adapt, see :func:`resolve_lora_targets`; default: q, k, v and
            out projections of all self- and cross-attention layers.
        adapter_name: peft adapter name (it does not appear in :func:`lora_state_dict` keys).
        generator: random generator for the initial ``A`` matrices (reproducible initialisation).

    Returns:
        model, with adapters injected.

    Raises:
        ValueError: bad rank/alpha/dropout, no matching module, or model already has LoRA adapters.
    """
    _require_peft()
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise ValueError(f"rank must be a positive integer, got {rank!r}.")
    alpha = rank if alpha is None else alpha
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not math.isfinite(alpha) or alpha <= 0:
        raise ValueError(f"alpha must be a positive number (or None for alpha = rank), got {alpha!r}.")
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout!r}.")
    if not isinstance(adapter_name, str) or not adapter_name or "." in adapter_name:
        raise ValueError(f"adapter_name must be a non-empty string without '.', got {adapter_name!r}.")
    existing = _adapter_names(model)
    if existing:
        raise ValueError(
            f"{type(model).__name__} already has LoRA adapter(s) {existing}; call merge_lora(model) (keep the "
            "adaptation) or remove_lora(model) (drop it) before applying a new one."
        )
    spec = _normalise_targets(target_modules)
    names = resolve_lora_targets(model, spec)
    config = LoraConfig(
        r=rank,
        lora_alpha=alpha,
        lora_dropout=float(dropout),
        target_modules="(?:" + "|".join(re.escape(n) for n in names) + ")",
        bias="none",
        init_lora_weights=True,
    )
    inject_adapter_in_model(config, model, adapter_name=adapter_name)
    if generator is not None:
        with torch.no_grad():
            for _, layer in _lora_layers(model):
                weight = layer.lora_A[adapter_name].weight
                new = torch.empty(weight.shape, dtype=torch.float32)
                nn.init.kaiming_uniform_(new, a=math.sqrt(5), generator=generator)
                weight.copy_(new)
    adapter_ids = {id(p) for p in lora_parameters(model)}
    for p in model.parameters():
        p.requires_grad_(id(p) in adapter_ids)
    object.__setattr__(
        model, _RECORD_ATTR, {"rank": rank, "alpha": alpha, "dropout": float(dropout), "target_modules": spec}
    )
    return model


def get_lora_config(model: nn.Module) -> dict[str, Any] | None:
    """Return ``{"rank", "alpha", "dropout", "target_modules"}`` of model's LoRA adapter, or None without one.

    Uses what :func:`apply_lora` recorded; for adapters injected with peft directly it reads peft's config.
    """
    adapters = _adapter_names(model)
    if not adapters:
        return None
    record = getattr(model, _RECORD_ATTR, None)
    if record is not None:
        return dict(record)
    peft_config = getattr(model, "peft_config", {}).get(adapters[0])
    if peft_config is None:
        raise ValueError(f"{type(model).__name__} has LoRA layers but no LoRA config; apply them with apply_lora.")
    targets = peft_config.target_modules
    return {
        "rank": int(peft_config.r),
        "alpha": peft_config.lora_alpha,
        "dropout": float(peft_config.lora_dropout),
        "target_modules": targets if isinstance(targets, str) else sorted(targets),
    }


def _named_lora_parameters(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """(stable key, parameter) of every adapter weight; the key drops the adapter name."""
    out: list[tuple[str, nn.Parameter]] = []
    for layer_name, layer in _lora_layers(model):
        prefix = f"{layer_name}." if layer_name else ""
        for attr in layer.adapter_layer_names:
            container = getattr(layer, attr)
            for adapter in container.keys():
                item = container[adapter]
                if isinstance(item, nn.Parameter):
                    out.append((f"{prefix}{attr}", item))
                else:
                    out.extend((f"{prefix}{attr}.{pn}", p) for pn, p in item.named_parameters())
    return out


def lora_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The adapter parameters of model (what an optimiser should receive after :func:`apply_lora`)."""
    return [p for _, p in _named_lora_parameters(model)]


def count_trainable_parameters(model: nn.Module) -> int:
    """Number of scalar parameters of model with ``requires_grad=True``."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def lora_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Adapter weights only, keyed like ``down_blocks.1....attn1.to_q.lora_A.weight`` (no adapter name).

    The keys are the same for every freshly built network of the same architecture once
    :func:`apply_lora` has run with the same config, so the dict loads with :func:`load_lora`.

    Raises:
        ValueError: model has no LoRA adapter.
    """
    named = _named_lora_parameters(model)
    if not named:
        raise ValueError(f"{type(model).__name__} has no LoRA adapters; call apply_lora(model) first.")
    return {k: p.detach() for k, p in named}


def save_lora(model: nn.Module, path: str | Path, config: Mapping[str, Any] | None = None) -> Path:
    """Write the adapter weights and the LoRA config to one checkpoint file (atomically).

    The file holds ``{"lora": lora_state_dict(model), "lora_config": {"rank", "alpha", "dropout",
    "target_modules"}}`` plus ``"config"`` when config is given.

    Args:
        model: a network with a LoRA adapter.
        path: destination file (its folder is created).
        config: optional JSON-serialisable metadata stored alongside, e.g. the base network's constructor
            arguments or the base weights' file name.

    Returns:
        the written path.
    """
    lora_config = get_lora_config(model)
    if lora_config is None:
        raise ValueError(f"{type(model).__name__} has no LoRA adapters to save; call apply_lora(model) first.")
    checkpoint: dict[str, Any] = {
        "lora": {k: v.cpu().clone() for k, v in lora_state_dict(model).items()},
        "lora_config": to_json_config(lora_config),
    }
    if config is not None:
        checkpoint["config"] = to_json_config(config)
    return atomic_save(checkpoint, path)


def _short(items: list[str]) -> str:
    return (", ".join(items[:10]) + (f" (+{len(items) - 10} more)" if len(items) > 10 else "")) if items else "none"


def load_lora(model: nn.Module, path: str | Path, strict: bool = True, adapter_name: str = "default") -> nn.Module:
    """Load adapter weights written by :func:`save_lora` into model.

    When model has no LoRA adapter yet, :func:`apply_lora` is first called with the stored config.
    The file is read with ``torch.load(weights_only=True)``.

    Args:
        model: the base network (same architecture as the one saved), with or without adapters.
        path: file written by :func:`save_lora`.
        strict: raise when the adapter keys, shapes, rank or alpha differ. With ``strict=False`` the
            matching tensors are loaded and missing/unexpected keys are reported with a warning;
            mis-shaped tensors still raise.
        adapter_name: peft adapter name used when the adapter is created here.

    Returns:
        model, with the loaded adapter.

    Raises:
        FileNotFoundError: path does not exist.
        ValueError: the file is not a LoRA checkpoint, or its config matches nothing in model.
        CheckpointMismatchError: keys, shapes, rank or alpha differ (the message lists them).
    """
    checkpoint = load_checkpoint(path)
    if not isinstance(checkpoint, dict) or "lora" not in checkpoint or "lora_config" not in checkpoint:
        found = sorted(checkpoint) if isinstance(checkpoint, dict) else type(checkpoint).__name__
        raise ValueError(
            f"'{path}' is not a LoRA checkpoint (expected keys 'lora' and 'lora_config', found {found}); "
            "write it with monai_genaug.networks.lora.save_lora."
        )
    stored_cfg = checkpoint["lora_config"]
    missing_cfg = [k for k in ("rank", "alpha", "dropout", "target_modules") if k not in stored_cfg]
    if missing_cfg:
        raise ValueError(f"'{path}': lora_config lacks {missing_cfg}; write the file with save_lora.")
    if not has_lora(model):
        try:
            apply_lora(
                model,
                rank=int(stored_cfg["rank"]),
                alpha=stored_cfg["alpha"],
                dropout=stored_cfg["dropout"],
                target_modules=stored_cfg["target_modules"],
                adapter_name=adapter_name,
            )
        except ValueError as e:
            raise ValueError(f"cannot apply the LoRA config stored in '{path}' to {type(model).__name__}: {e}") from e

    state = checkpoint["lora"]
    own = dict(_named_lora_parameters(model))
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shape = sorted(
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in set(own) & set(state)
        if tuple(own[k].shape) != tuple(state[k].shape)
    )
    config_diff = []
    for _, layer in _lora_layers(model):
        for adapter in layer.r:
            if layer.r[adapter] != stored_cfg["rank"] or not math.isclose(
                float(layer.lora_alpha[adapter]), float(stored_cfg["alpha"])
            ):
                config_diff = [
                    f"file rank={stored_cfg['rank']} alpha={stored_cfg['alpha']} vs model "
                    f"rank={layer.r[adapter]} alpha={layer.lora_alpha[adapter]}"
                ]
                break
        if config_diff:
            break
    message = (
        f"LoRA file '{path}' does not match the adapters of {type(model).__name__}: missing keys: {_short(missing)}; "
        f"unexpected keys: {_short(unexpected)}; shape mismatches: {_short(shape)}; config: {_short(config_diff)}. "
        f"The file was saved with lora_config={stored_cfg}; load it into a network without adapters (it is then "
        "applied with that config) or remove_lora(model) first."
    )
    if shape or (strict and (missing or unexpected or config_diff)):
        raise CheckpointMismatchError(message)
    if missing or unexpected or config_diff:
        warnings.warn(f"strict=False: {message}", stacklevel=2)
    with torch.no_grad():
        for key in set(own) & set(state):
            own[key].copy_(state[key])
    return model


def _unload(model: nn.Module, merge: bool) -> nn.Module:
    layers = _lora_layers(model)
    if not layers:
        raise ValueError(f"{type(model).__name__} has no LoRA adapters to {'merge' if merge else 'remove'}.")
    if merge and any(layer.disable_adapters for _, layer in layers):
        raise ValueError(
            "the LoRA adapters are disabled; enable them with set_lora_enabled(model, True) before merge_lora, "
            "or call remove_lora(model) to drop them."
        )
    for name, layer in layers:
        if merge:
            layer.merge(safe_merge=True)
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, layer.get_base_layer())
    for attr in ("peft_config", _RECORD_ATTR):
        if attr in vars(model):
            delattr(model, attr)
    return model


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold the adapters into the base weights (``W += scale * B @ A``) and remove the LoRA layers.

    The result is the plain network again: same output (at the current :func:`set_lora_scale`),
    no inference overhead and the state dict keys of a network built without LoRA. Parameters keep
    the ``requires_grad`` flags :func:`apply_lora` left (frozen); call ``model.requires_grad_(True)``
    to train the merged network fully.

    Args:
        model: a network with an enabled LoRA adapter.

    Returns:
        model, modified in place.
    """
    return _unload(model, merge=True)


def remove_lora(model: nn.Module) -> nn.Module:
    """Drop the LoRA layers without merging them: model computes the base output again.

    Args:
        model: a network with a LoRA adapter.

    Returns:
        model, modified in place.
    """
    return _unload(model, merge=False)


def set_lora_scale(model: nn.Module, scale: float) -> nn.Module:
    """Multiply every adapter update by scale (``scale * alpha / rank``): 1 restores, 0 gives the base output.

    Args:
        model: a network with a LoRA adapter.
        scale: finite factor.

    Returns:
        model.
    """
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale):
        raise ValueError(f"scale must be a finite number, got {scale!r}.")
    layers = _lora_layers(model)
    if not layers:
        raise ValueError(f"{type(model).__name__} has no LoRA adapters; call apply_lora(model) first.")
    for _, layer in layers:
        for adapter in list(layer.scaling):
            layer.set_scale(adapter, float(scale))
    return model


def set_lora_enabled(model: nn.Module, enabled: bool) -> nn.Module:
    """Switch the adapters on or off (off: base output, adapter weights frozen; on: trainable again).

    Args:
        model: a network with a LoRA adapter.
        enabled: True to use the adapters, False to bypass them.

    Returns:
        model.
    """
    layers = _lora_layers(model)
    if not layers:
        raise ValueError(f"{type(model).__name__} has no LoRA adapters; call apply_lora(model) first.")
    for _, layer in layers:
        layer.enable_adapters(bool(enabled))
    return model


@contextmanager
def lora_disabled(model: nn.Module) -> Iterator[nn.Module]:
    """Context manager running model without its adapters (e.g. to compare base and adapted outputs).

    Args:
        model: a network with a LoRA adapter; the previous enable state is restored on exit.
    """
    layers = _lora_layers(model)
    if not layers:
        raise ValueError(f"{type(model).__name__} has no LoRA adapters; call apply_lora(model) first.")
    previous = [not layer.disable_adapters for _, layer in layers]
    set_lora_enabled(model, False)
    try:
        yield model
    finally:
        for (_, layer), was_enabled in zip(layers, previous):
            layer.enable_adapters(was_enabled)
