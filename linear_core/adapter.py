"""What the engine needs from a model family: a transformers decoder stack plus image in/out.

A family module (LlamaGen, Janus-Pro, Lumina-mGPT, the demo) wraps its model in an object with
this shape; the engine owns the cache, positions, CFG, sampling and compression.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch
from torch import nn


@runtime_checkable
class ImageModelAdapter(Protocol):
    #: decoder stack called as ``backbone(inputs_embeds=, position_ids=, past_key_values=, use_cache=)``
    backbone: nn.Module

    def embed_image_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """``(rows, q)`` image token ids → ``(rows, q, hidden)`` input embeddings."""

    def image_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """``(rows, q, hidden)`` last hidden states → ``(rows, q, vocab)`` next-token logits."""

    # Optional: ``max_positions`` (int), the longest sequence a fixed position table covers; the
    # engine then refuses longer layouts up front instead of indexing out of range on the device.


@dataclass(frozen=True)
class CacheGeometry:
    """Shapes of the KV cache a backbone writes."""

    num_layers: int
    q_heads: int
    kv_heads: int
    head_dim: int
    dtype: torch.dtype
    device: torch.device

    @classmethod
    def of(cls, backbone: nn.Module) -> "CacheGeometry":
        config = backbone.config
        q_heads = config.num_attention_heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // q_heads
        devices = {p.device for p in backbone.parameters()}
        if len(devices) > 1:
            found = ", ".join(sorted(str(d) for d in devices))
            raise ValueError(f"The decoder layers are spread over {found}; the LineAR cache needs them on one device "
                             "(load the model on a single GPU, or on the CPU).")
        param = next(backbone.parameters())
        return cls(
            num_layers=config.num_hidden_layers,
            q_heads=q_heads,
            kv_heads=getattr(config, "num_key_value_heads", None) or q_heads,
            head_dim=head_dim,
            dtype=param.dtype,
            device=param.device,
        )


@dataclass
class Conditioning:
    """The prefix of a request as input embeddings, already in the CFG row layout.

    ``prefix``: ``(rows, L_p, hidden)`` for the batched cache (cond and uncond rows for the
    ``halves`` / ``interleaved`` layouts). ``uncond_prefix``: ``(batch, L_u, hidden)`` for the
    ``separate`` layout, whose unconditional rows have a cache and positions of their own.
    """

    prefix: torch.Tensor
    uncond_prefix: torch.Tensor | None = None
