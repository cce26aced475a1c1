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
"""Write converted Stable Diffusion networks as package checkpoints: ``generator.pt`` (a
:class:`~monai_genaug.generative.latent_generator.LatentGenerator`), ``autoencoder.pt`` (the
:mod:`monai_genaug.networks.autoencoder` format), ``unet.pt``, prompt embeddings and a conversion report; what
``python -m monai_genaug.sd_import`` runs. Reading and converting the weights is :mod:`monai_genaug.networks.sd`.
"""

from __future__ import annotations

from collections.abc import Sequence
import json
import os
from pathlib import Path
from typing import Any

from monai.networks.schedulers import DDPMScheduler
import torch

from monai_genaug.utils.io import atomic_write_text
from monai_genaug.generative.latent_generator import LatentGenerator
from monai_genaug.networks.autoencoder import save_autoencoder
from monai_genaug.networks.sd.configs import SDImportError
from monai_genaug.networks.sd.loading import (  # the config conversion shared with reference_generator_config
    _ENDPOINT_KEYS,
    UNET_FORMAT,
    SDModels,
    _generator_config,
    load_stable_diffusion,
)
from monai_genaug.networks.sd.text import encode_prompts, load_prompt_embeddings, save_prompt_embeddings
from monai_genaug.utils.checkpoint import atomic_save, to_json_config

__all__ = [
    "convert_stable_diffusion",
    "save_converted",
]


def save_converted(
    models: SDModels,
    out_dir: str | os.PathLike,
    prompts: Sequence[str] | None = None,
    null_prompt: str = "",
    embeddings: str | os.PathLike | None = None,
    text_encoder_dir: str | os.PathLike | None = None,
    tokenizer_dir: str | os.PathLike | None = None,
    device: str | torch.device = "cpu",
    outputs: Sequence[str] | None = None,
) -> dict[str, Path]:
    """Write converted networks as MONAI checkpoints (atomically) into ``out_dir``; see the module docstring.

    Args:
        models: from :func:`load_stable_diffusion`.
        out_dir: destination folder (created).
        prompts: prompts to encode into ``embeddings.pt`` (needs a text encoder).
        null_prompt: the unconditional prompt (``""`` in Stable Diffusion).
        embeddings: a precomputed embeddings file to check and copy instead of encoding prompts.
        text_encoder_dir: CLIP text encoder folder; ``None`` uses the source's ``text_encoder/``.
        tokenizer_dir: tokenizer folder; ``None`` uses the source's ``tokenizer/``.
        device: where to run the text encoder.
        outputs: which network files to write, among ``"generator"``, ``"autoencoder"``, ``"unet"``; ``None``
            writes all that the converted networks allow (``unet.pt`` duplicates the UNet of ``generator.pt``:
            leave it out to save 3.4 GB for SD).

    Returns:
        ``{"generator" | "autoencoder" | "unet" | "embeddings" | "report": path}`` for the files written.
    """
    wanted = set(outputs) if outputs is not None else {"generator", "autoencoder", "unet"}
    if not wanted <= {"generator", "autoencoder", "unet"}:
        raise ValueError(f"outputs must be among 'generator', 'autoencoder', 'unet', got {sorted(wanted)}.")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    notes = list(models.notes)
    source = {"source": models.source, "source_format": models.source_format, "variant": models.variant}
    if prompts and embeddings is not None:
        raise ValueError(
            "give either prompts (encoded with a text encoder) or a precomputed embeddings file, not both."
        )
    dim = models.unet_config["cross_attention_dim"] if models.unet_config else None
    if embeddings is not None:
        emb = load_prompt_embeddings(embeddings, cross_attention_dim=dim)
        written["embeddings"] = save_prompt_embeddings(
            out / "embeddings.pt", emb["prompt_embeds"], emb["null_embeds"], emb["prompts"], emb["null_prompt"]
        )
    elif prompts:
        enc = text_encoder_dir or models.text_encoder_dir
        if enc is None:
            raise SDImportError(
                f"prompts were given but '{models.source}' has no text_encoder/ folder; pass a text encoder folder "
                "(text_encoder_dir) or precomputed embeddings."
            )
        tok = tokenizer_dir or (models.tokenizer_dir if text_encoder_dir is None else None)
        emb_all = encode_prompts([*prompts, null_prompt], enc, tok, device=device)
        if dim is not None and emb_all.shape[-1] != dim:
            raise SDImportError(
                f"the text encoder '{enc}' gives {emb_all.shape[-1]}-d embeddings but the UNet's context is {dim}-d."
            )
        written["embeddings"] = save_prompt_embeddings(
            out / "embeddings.pt", emb_all[:-1], emb_all[-1:], list(prompts), null_prompt
        )
    if models.autoencoder is not None and "autoencoder" in wanted:
        ae = models.autoencoder_config
        if ae["in_channels"] == ae["out_channels"]:
            cfg = {
                "spatial_dims": ae["spatial_dims"],
                "image_channels": ae["in_channels"],
                "autoencoder": {k: v for k, v in ae.items() if k not in _ENDPOINT_KEYS},
                "scale_factor": models.scale_factor,
                **source,
            }
            save_autoencoder(models.autoencoder, out / "autoencoder.pt", cfg)
            written["autoencoder"] = out / "autoencoder.pt"
        else:
            notes.append(
                f"no autoencoder.pt: the VAE maps {ae['in_channels']} to {ae['out_channels']} channels, which the GMS "
                "autoencoder format (image_channels in and out) cannot describe."
            )
    if models.unet is not None and "unet" in wanted:
        state = {k: v.detach().cpu() for k, v in models.unet.state_dict().items()}
        cfg = {"network": models.unet_config, "scheduler": models.scheduler_config, **source}
        written["unet"] = atomic_save(
            {"format": UNET_FORMAT, "config": to_json_config(cfg), "state_dict": state}, out / "unet.pt"
        )
    gen_cfg, why = _generator_config(models) if "generator" in wanted else (None, "")
    if gen_cfg is not None:
        sched = {k: v for k, v in gen_cfg["scheduler"].items() if k != "type"}
        generator = LatentGenerator(
            unet=models.unet,
            scheduler=DDPMScheduler(**sched),
            autoencoder=models.autoencoder,
            concat_channels=gen_cfg["conditioning"]["concat_channels"],
            scale_factor=models.scale_factor,
            config=gen_cfg,
        )
        generator.save(str(out / "generator.pt"), extra=source)
        written["generator"] = out / "generator.pt"
    elif why:
        notes.append(why)
    report = {
        "format": "monai_genaug.SDConversion",
        **source,
        "files": {k: v.name for k, v in written.items()},
        "autoencoder": models.autoencoder_config,
        "unet": models.unet_config,
        "scheduler": models.scheduler_config,
        "scale_factor": models.scale_factor,
        "notes": notes,
    }
    written["report"] = atomic_write_text(out / "conversion.json", json.dumps(to_json_config(report), indent=2))
    return written


def convert_stable_diffusion(
    source: str | os.PathLike,
    out_dir: str | os.PathLike,
    prompts: Sequence[str] | None = None,
    null_prompt: str = "",
    embeddings: str | os.PathLike | None = None,
    text_encoder_dir: str | os.PathLike | None = None,
    tokenizer_dir: str | os.PathLike | None = None,
    device: str | torch.device = "cpu",
    outputs: Sequence[str] | None = None,
    **load_kwargs: Any,
) -> dict[str, Path]:
    """:func:`load_stable_diffusion` then :func:`save_converted` (what ``python -m monai_genaug.sd_import`` runs).

    Args:
        source: see :func:`load_stable_diffusion`.
        out_dir: see :func:`save_converted`.
        prompts: see :func:`save_converted`.
        null_prompt: see :func:`save_converted`.
        embeddings: see :func:`save_converted`.
        text_encoder_dir: see :func:`save_converted`.
        tokenizer_dir: see :func:`save_converted`.
        device: see :func:`save_converted`.
        outputs: see :func:`save_converted`.
        load_kwargs: keyword arguments of :func:`load_stable_diffusion`.
    """
    if prompts and text_encoder_dir is None and embeddings is None and Path(source).is_file():
        raise SDImportError(
            f"prompts were given but the single file '{source}' holds no usable text encoder (no tokenizer); pass "
            "text_encoder_dir or precomputed embeddings."
        )
    models = load_stable_diffusion(source, **load_kwargs)
    return save_converted(
        models,
        out_dir,
        prompts=prompts,
        null_prompt=null_prompt,
        embeddings=embeddings,
        text_encoder_dir=text_encoder_dir,
        tokenizer_dir=tokenizer_dir,
        device=device,
        outputs=outputs,
    )
