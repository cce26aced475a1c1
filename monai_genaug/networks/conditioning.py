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
"""Learned conditions for diffusion UNets: prompt tokens with a learned null token.

Text prompts need a text encoder (CLIP) that cannot ship with a MONAI package. :class:`PromptEmbedding` is the
MONAI-native stand-in: each prompt id owns ``num_tokens`` learned tokens of width ``embed_dim`` that feed the UNet's
cross-attention exactly as CLIP token embeddings do, and a separate learned null prompt plays the role of the empty
string for classifier-free guidance (Ho & Salimans, "Classifier-Free Diffusion Guidance", arXiv:2207.12598).
Pre-computed embeddings (e.g. from CLIP, or TTGA's optimised identity embedding) bypass it as a raw ``context``.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["NULL_PROMPT", "PromptEmbedding"]

#: prompt id that selects the learned null prompt (the "empty string" of classifier-free guidance)
NULL_PROMPT = -1


class PromptEmbedding(nn.Module):
    """Learned prompt tokens for cross-attention conditioning, with a learned null prompt.

    Args:
        num_prompts: number of distinct prompts (e.g. one per domain, class or task).
        embed_dim: token width, equal to the UNet's ``cross_attention_dim``.
        num_tokens: tokens per prompt (sequence length of the context). Use at least 2 so that TTGA's max over
            tokens of the cross-attention maps is meaningful.
        init_std: standard deviation of the initial token values.

    Example::

        emb = PromptEmbedding(num_prompts=2, embed_dim=32)
        context = emb(torch.tensor([0, 1, NULL_PROMPT]))  # (3, num_tokens, 32)
    """

    def __init__(self, num_prompts: int, embed_dim: int, num_tokens: int = 4, init_std: float = 0.02) -> None:
        super().__init__()
        if num_prompts < 1 or embed_dim < 1 or num_tokens < 1:
            raise ValueError(
                f"PromptEmbedding needs num_prompts, embed_dim and num_tokens >= 1, got {num_prompts}, {embed_dim}, "
                f"{num_tokens}."
            )
        self.num_prompts = num_prompts
        self.embed_dim = embed_dim
        self.num_tokens = num_tokens
        self.tokens = nn.Parameter(torch.randn(num_prompts, num_tokens, embed_dim) * init_std)
        self.null_tokens = nn.Parameter(torch.randn(1, num_tokens, embed_dim) * init_std)

    def forward(self, prompt_ids: torch.Tensor) -> torch.Tensor:
        """Map prompt ids of shape (B,) (``NULL_PROMPT`` for the null prompt) to a context (B, num_tokens, embed_dim)."""
        prompt_ids = torch.as_tensor(prompt_ids, device=self.tokens.device).long().reshape(-1)
        bad = (prompt_ids >= self.num_prompts) | (prompt_ids < NULL_PROMPT)
        if bad.any():
            raise ValueError(
                f"prompt ids must be in [0, {self.num_prompts - 1}] or {NULL_PROMPT} (null prompt), got "
                f"{sorted(set(prompt_ids[bad].tolist()))}; build the embedding with a larger num_prompts."
            )
        is_null = (prompt_ids == NULL_PROMPT).view(-1, 1, 1)
        tokens = self.tokens[prompt_ids.clamp(min=0)]
        return torch.where(is_null, self.null_tokens.expand_as(tokens), tokens)

    def null_context(self, batch_size: int) -> torch.Tensor:
        """The null prompt's context repeated ``batch_size`` times."""
        return self.null_tokens.expand(batch_size, -1, -1)
