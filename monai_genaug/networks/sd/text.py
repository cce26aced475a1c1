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
"""Text conditioning for converted Stable Diffusion UNets: CLIP prompt embeddings, computed or precomputed.

Stable Diffusion's UNet cross-attends to the last hidden state of its CLIP text encoder, ``(B, 77, D)`` with
``D = 768`` (SD 1.x, OpenAI CLIP ViT-L/14) or ``D = 1024`` (SD 2.x, OpenCLIP ViT-H/14, penultimate layer, which the
diffusers folder stores as a 23-layer ``CLIPTextModel``). TTGA feeds such tensors as a raw ``context`` condition:
``LatentGenerator(x_t, t, {"context": emb})``; the empty prompt gives the null (unconditional) context.

Two ways in, both offline:

* :func:`encode_prompts` runs a local text encoder folder through ``transformers`` (extra ``sd``);
* :func:`load_prompt_embeddings` reads a precomputed file (``.pt`` or ``.safetensors``) holding ``prompt_embeds``
  ``(N, L, D)`` and ``null_embeds`` ``(1, L, D)``, written by :func:`save_prompt_embeddings` (e.g. on a machine
  that has the text encoder), so that a run needs neither ``transformers`` nor the encoder weights.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from monai.utils import optional_import

from monai_genaug.utils.io import atomic_write_bytes
from monai_genaug.networks.sd.configs import SDImportError
from monai_genaug.utils.checkpoint import atomic_save, load_checkpoint

__all__ = [
    "EMBEDDINGS_FORMAT",
    "encode_prompts",
    "save_prompt_embeddings",
    "load_prompt_embeddings",
]

EMBEDDINGS_FORMAT = "monai_genaug.PromptEmbeddings"


def _tokenizer_dir(text_encoder_dir: Path, tokenizer_dir: str | os.PathLike | None) -> Path:
    if tokenizer_dir is not None:
        return Path(tokenizer_dir)
    sibling = text_encoder_dir.parent / "tokenizer"  # diffusers pipeline layout
    return sibling if sibling.is_dir() else text_encoder_dir


@torch.no_grad()
def encode_prompts(
    prompts: str | Sequence[str],
    text_encoder_dir: str | os.PathLike,
    tokenizer_dir: str | os.PathLike | None = None,
    device: str | torch.device = "cpu",
    batch_size: int = 8,
) -> torch.Tensor:
    """CLIP token embeddings ``(B, L, D)`` of ``prompts`` from a local text encoder, as Stable Diffusion computes them.

    Prompts are padded / truncated to the tokenizer's ``model_max_length`` (77) and encoded to the text encoder's
    last hidden state, as diffusers' ``StableDiffusionPipeline`` does (no clip skip). Nothing is downloaded.

    Args:
        prompts: one prompt or a list (``""`` is the null prompt of classifier-free guidance).
        text_encoder_dir: a ``CLIPTextModel`` folder (``config.json`` + weights), e.g. ``<sd>/text_encoder``.
        tokenizer_dir: the CLIP tokenizer folder; ``None`` uses the sibling ``tokenizer`` folder of a diffusers
            pipeline, else ``text_encoder_dir``.
        device: where to run the encoder.
        batch_size: prompts per forward pass.

    Returns:
        float32 tensor ``(len(prompts), 77, D)`` on the CPU.
    """
    transformers, has_transformers = optional_import("transformers")  # imported here: it is slow and optional
    if not has_transformers:
        raise ImportError(
            "encode_prompts needs the 'transformers' package (pip install 'monai-genaug[sd]'); alternatively pass "
            "precomputed embeddings (load_prompt_embeddings)."
        )
    if isinstance(prompts, str):
        prompts = [prompts]
    prompts = list(prompts)
    if not prompts or not all(isinstance(p, str) for p in prompts):
        raise ValueError(f"prompts must be a non-empty list of strings, got {prompts!r}.")
    enc_dir = Path(text_encoder_dir)
    tok_dir = _tokenizer_dir(enc_dir, tokenizer_dir)
    for folder, what, needed in (
        (enc_dir, "text encoder", "config.json + model.safetensors"),
        (tok_dir, "tokenizer", "vocab.json + merges.txt"),
    ):
        if not folder.is_dir():
            raise FileNotFoundError(f"{what} folder '{folder}' does not exist; expected a local folder with {needed}.")
    try:
        tokenizer = transformers.CLIPTokenizer.from_pretrained(str(tok_dir), local_files_only=True)
        encoder = transformers.CLIPTextModel.from_pretrained(str(enc_dir), local_files_only=True)
    except (OSError, ValueError) as e:
        raise SDImportError(
            f"cannot load a CLIP text encoder from '{enc_dir}' / tokenizer from '{tok_dir}' ({e}); expected a "
            "diffusers text_encoder folder (config.json + model.safetensors) and tokenizer folder (vocab.json, "
            "merges.txt)."
        ) from e
    encoder = encoder.to(device=device, dtype=torch.float32).eval()
    out = []
    for i in range(0, len(prompts), max(1, int(batch_size))):
        tokens = tokenizer(
            prompts[i : i + batch_size],
            padding="max_length",
            max_length=tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        )
        hidden = encoder(tokens.input_ids.to(device)).last_hidden_state
        out.append(hidden.float().cpu())
    return torch.cat(out, dim=0)


def _as_3d(x: Any, name: str, path: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor) or x.ndim not in (2, 3) or not x.is_floating_point():
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise SDImportError(f"'{path}': {name} must be a float tensor (L, D) or (N, L, D), got {shape}.")
    return (x[None] if x.ndim == 2 else x).float()


def save_prompt_embeddings(
    path: str | os.PathLike,
    prompt_embeds: torch.Tensor,
    null_embeds: torch.Tensor,
    prompts: Sequence[str] | None = None,
    null_prompt: str = "",
) -> Path:
    """Write prompt / null embeddings atomically to ``.pt`` (torch) or ``.safetensors``.

    Args:
        path: destination; the suffix picks the format.
        prompt_embeds: ``(N, L, D)`` or ``(L, D)``.
        null_embeds: ``(1, L, D)`` or ``(L, D)``, the unconditional context.
        prompts: the N prompt strings (kept for reference).
        null_prompt: the prompt of ``null_embeds`` (``""`` in Stable Diffusion).
    """
    path = Path(path)
    prompt_embeds = _as_3d(prompt_embeds, "prompt_embeds", str(path)).contiguous()
    null_embeds = _as_3d(null_embeds, "null_embeds", str(path)).contiguous()
    if null_embeds.shape[0] != 1 or null_embeds.shape[1:] != prompt_embeds.shape[1:]:
        raise ValueError(
            f"null_embeds {tuple(null_embeds.shape)} must be (1, L, D) with the (L, D) of prompt_embeds "
            f"{tuple(prompt_embeds.shape)}."
        )
    prompts = list(prompts) if prompts is not None else []
    if prompts and len(prompts) != prompt_embeds.shape[0]:
        raise ValueError(f"{len(prompts)} prompts for {prompt_embeds.shape[0]} prompt embeddings.")
    if path.suffix == ".safetensors":
        from safetensors.torch import save

        meta = {"format": EMBEDDINGS_FORMAT, "prompts": json.dumps(prompts), "null_prompt": null_prompt}
        tensors = {"prompt_embeds": prompt_embeds, "null_embeds": null_embeds}
        return atomic_write_bytes(path, save(tensors, metadata=meta))
    return atomic_save(
        {
            "format": EMBEDDINGS_FORMAT,
            "prompt_embeds": prompt_embeds,
            "null_embeds": null_embeds,
            "prompts": prompts,
            "null_prompt": null_prompt,
        },
        path,
    )


def load_prompt_embeddings(path: str | os.PathLike, cross_attention_dim: int | None = None) -> dict[str, Any]:
    """Read precomputed prompt / null embeddings (``.pt`` or ``.safetensors``).

    Args:
        path: a file with ``prompt_embeds`` ``(N, L, D)`` / ``(L, D)`` and ``null_embeds`` ``(1, L, D)`` / ``(L, D)``.
        cross_attention_dim: when given, ``D`` must equal it (the UNet's context size).

    Returns:
        ``{"prompt_embeds": (N, L, D), "null_embeds": (1, L, D), "prompts": [...], "null_prompt": str}``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"embeddings file '{path}' does not exist.")
    meta: dict[str, str] = {}
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                data: dict[str, Any] = {k: f.get_tensor(k) for k in f.keys()}
                meta = f.metadata() or {}
        except Exception as e:
            raise SDImportError(f"'{path}' is not a readable safetensors file ({type(e).__name__}: {e}).") from e
    else:
        data = load_checkpoint(path)
        if not isinstance(data, dict):
            raise SDImportError(
                f"'{path}' holds a {type(data).__name__}; expected a dict with prompt_embeds and null_embeds."
            )
    missing = [k for k in ("prompt_embeds", "null_embeds") if k not in data]
    if missing:
        raise SDImportError(
            f"'{path}' lacks {missing}; expected keys 'prompt_embeds' (N, L, D) and 'null_embeds' (1, L, D), found "
            f"{sorted(data)}. Write it with save_prompt_embeddings()."
        )
    prompt = _as_3d(data["prompt_embeds"], "prompt_embeds", str(path))
    null = _as_3d(data["null_embeds"], "null_embeds", str(path))
    if null.shape[0] != 1 or null.shape[1:] != prompt.shape[1:]:
        raise SDImportError(
            f"'{path}': null_embeds {tuple(null.shape)} must be (1, L, D) matching prompt_embeds {tuple(prompt.shape)}."
        )
    if cross_attention_dim is not None and prompt.shape[-1] != int(cross_attention_dim):
        raise SDImportError(
            f"'{path}': embeddings have width {prompt.shape[-1]} but the UNet's cross_attention_dim is "
            f"{cross_attention_dim}; encode the prompts with this model's text encoder."
        )
    prompts = data.get("prompts", json.loads(meta["prompts"]) if "prompts" in meta else [])
    null_prompt = data.get("null_prompt", meta.get("null_prompt", ""))
    return {"prompt_embeds": prompt, "null_embeds": null, "prompts": list(prompts), "null_prompt": str(null_prompt)}
