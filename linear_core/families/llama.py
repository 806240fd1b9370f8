"""A class-conditional image model on transformers' `LlamaModel`: the plain Llama-backbone family.

Prefix = one class embedding (row ``num_classes`` is the null class used for CFG) followed by
``prompt_tokens`` fixed prompt embeddings; image tokens go through the backbone's embedding table
and a linear head. The engine tests run on it, and the benchmark builds it for the Janus-Pro and
Lumina-mGPT shapes until their families land; real families differ only in their embeddings, rotary
and heads (LlamaGen: `llamagen.py`).
"""
from __future__ import annotations

import torch
from torch import nn
from transformers import LlamaConfig, LlamaModel

from ..adapter import Conditioning
from ..guidance import Guidance


class LlamaImageModel(nn.Module):
    def __init__(self, config: LlamaConfig, num_classes: int = 10, prompt_tokens: int = 0) -> None:
        super().__init__()
        self.config = config
        self.num_classes = num_classes
        self.backbone = LlamaModel(config)
        self.class_embedding = nn.Embedding(num_classes + 1, config.hidden_size)
        self.prompt = nn.Parameter(torch.randn(prompt_tokens, config.hidden_size) * 0.02)
        self.head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)

    @property
    def prefix_len(self) -> int:
        return 1 + self.prompt.shape[0]

    def embed_image_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.backbone.embed_tokens(tokens)

    def image_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.head(hidden)

    def prefix_embeddings(self, labels: torch.Tensor) -> torch.Tensor:
        """``(batch,)`` class ids (``num_classes`` = null) → ``(batch, prefix_len, hidden)``."""
        cls = self.class_embedding(labels.to(self.prompt.device))[:, None]
        prompt = self.prompt[None].expand(labels.shape[0], -1, -1).to(cls.dtype)
        return torch.cat([cls, prompt], dim=1)

    def conditioning(self, labels: torch.Tensor, guidance: Guidance) -> Conditioning:
        """Prefix rows for ``labels`` in the CFG layout of ``guidance``. The ``separate`` layout's
        unconditional branch is the null class token alone (a shorter prefix, as in Lumina-mGPT)."""
        cond = self.prefix_embeddings(labels)
        null = torch.full_like(labels, self.num_classes)
        if guidance.layout == "none":
            return Conditioning(cond)
        if guidance.layout == "separate":
            return Conditioning(cond, uncond_prefix=self.class_embedding(null.to(cond.device))[:, None])
        uncond = self.prefix_embeddings(null)
        if guidance.layout == "halves":
            return Conditioning(torch.cat([cond, uncond], dim=0))
        return Conditioning(torch.stack([cond, uncond], dim=1).flatten(0, 1))
