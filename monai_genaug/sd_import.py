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
"""Convert local Stable Diffusion 1.x / 2.x weights into MONAI checkpoints (nothing is downloaded).

Usage::

    python -m monai_genaug.sd_import --source /models/stable-diffusion-v1-5 --out models/sd15_monai \\
        --prompt "an endoscopic image of a polyp"
    python -m monai_genaug.sd_import --source v2-1_512-ema-pruned.safetensors --out models/sd21_monai \\
        --embeddings prompts_sd21.safetensors
    python -m monai_genaug.sd_import --source /models/stable-diffusion-2-1-base --components vae --out models/sd2_vae

``--source`` is a diffusers pipeline folder, a diffusers component folder (e.g. a stand-alone VAE) or a single-file
ldm checkpoint. The output folder holds ``generator.pt`` (a
:class:`~monai_genaug.generative.latent_generator.LatentGenerator` for TTGA), ``autoencoder.pt`` (the VAE in
the GMS checkpoint format), ``unet.pt``, ``embeddings.pt`` (prompt / null CLIP embeddings, when ``--prompt`` or
``--embeddings`` is given) and ``conversion.json``. See ``docs/sd_weights.md``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from monai_genaug.utils.options import add_runtime_arguments, apply_runtime_arguments

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    """The command-line parser of ``python -m monai_genaug.sd_import``."""
    p = argparse.ArgumentParser(
        prog="python -m monai_genaug.sd_import",
        description="Convert local Stable Diffusion 1.x/2.x weights (diffusers folder or single-file checkpoint) "
        "into MONAI AutoencoderKL / DiffusionModelUNet checkpoints and a LatentGenerator.",
    )
    p.add_argument("--source", required=True, help="diffusers pipeline/component folder or .ckpt/.safetensors file")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--components", nargs="+", choices=("vae", "unet"), default=None, help="convert only these")
    p.add_argument(
        "--outputs",
        nargs="+",
        choices=("generator", "autoencoder", "unet"),
        default=None,
        help="network files to write (default: all; unet.pt duplicates the UNet inside generator.pt)",
    )
    p.add_argument("--prompt", action="append", default=None, help="prompt to encode into embeddings.pt (repeatable)")
    p.add_argument("--null_prompt", default="", help="unconditional prompt (default: the empty string)")
    p.add_argument("--embeddings", default=None, help="precomputed prompt_embeds/null_embeds file (.pt/.safetensors)")
    p.add_argument("--text_encoder", default=None, help="CLIP text encoder folder (default: <source>/text_encoder)")
    p.add_argument("--tokenizer", default=None, help="CLIP tokenizer folder (default: <source>/tokenizer)")
    p.add_argument("--prediction_type", choices=("epsilon", "v_prediction", "sample"), default=None)
    p.add_argument("--attention_heads", type=int, nargs="+", default=None, help="single file: heads per level (SD1: 8)")
    p.add_argument("--head_channels", type=int, default=None, help="single file: channels per head (SD2: 64)")
    p.add_argument("--original_config", default=None, help="single file: the ldm YAML (e.g. v2-inference-v.yaml)")
    p.add_argument("--upcast_attention", action="store_true", help="single file: float32 attention scores (SD2.1-v)")
    p.add_argument("--norm_num_groups", type=int, default=32, help="single file: GroupNorm groups (SD: 32)")
    p.add_argument("--use_ema", action="store_true", help="single file: convert the UNet's EMA weights")
    p.add_argument("--flash_attention", action="store_true", help="use PyTorch SDPA (no attention maps for TTGA)")
    p.add_argument("--device", default="cpu", help="device of the text encoder")
    add_runtime_arguments(p)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run the conversion; print the written files as JSON. Returns the exit status (0 ok, 2 bad input)."""
    args = build_parser().parse_args(argv)
    apply_runtime_arguments(args, args.device)
    from monai_genaug.networks.sd.configs import SDImportError
    from monai_genaug.networks.sd.loading import convert_stable_diffusion

    heads = args.attention_heads
    if heads is not None and len(heads) == 1:
        heads = heads[0]
    try:
        written = convert_stable_diffusion(
            args.source,
            args.out,
            prompts=args.prompt,
            null_prompt=args.null_prompt,
            embeddings=args.embeddings,
            text_encoder_dir=args.text_encoder,
            tokenizer_dir=args.tokenizer,
            device=args.device,
            outputs=args.outputs,
            components=args.components,
            attention_heads=heads,
            head_channels=args.head_channels,
            original_config=args.original_config,
            prediction_type=args.prediction_type,
            upcast_attention=args.upcast_attention or None,
            use_ema=args.use_ema,
            norm_num_groups=args.norm_num_groups,
            use_flash_attention=args.flash_attention,
        )
    except (SDImportError, FileNotFoundError, ValueError, ImportError) as e:
        print(f"sd_import: error: {e}", file=sys.stderr)
        return 2
    print(json.dumps({k: str(v) for k, v in written.items()}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
