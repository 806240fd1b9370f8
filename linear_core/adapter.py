"""What the engine needs from a model family: a transformers decoder stack plus image in/out.

A family module (LlamaGen, Janus-Pro, Lumina-mGPT, the demo) wraps its model in an object with
this shape; the engine owns the cache, positions, CFG, sampling and compression.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch
from torch import nn

from .padding import left_pad


@runtime_checkable
class ImageModelAdapter(Protocol):
    #: decoder stack called as ``backbone(inputs_embeds=, position_ids=, cache=, use_cache=)``
    #: (``past_key_values=`` before transformers 5.24)
    backbone: nn.Module

    def embed_image_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """``(rows, q)`` image token ids → ``(rows, q, hidden)`` input embeddings."""

    def image_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """``(rows, q, hidden)`` last hidden states → ``(rows, q, vocab)`` next-token logits."""

    # Optional: ``max_positions`` (int), the longest sequence a fixed position table covers; the
    # engine then refuses longer layouts up front instead of indexing out of range on the device.


def execution_device(module: nn.Module, allow_meta: bool = False) -> torch.device:
    """Where ``module`` computes. With an accelerate ``device_map`` an offloaded module keeps its
    weights on the meta device (in CPU RAM or on disk behind the scenes) and a hook, on it or on
    its children, names the device they are brought to for each forward; otherwise the weights'
    own device is the answer."""
    for part in module.modules():  # the module itself first
        hook = getattr(part, "_hf_hook", None)
        for step in getattr(hook, "hooks", (hook,)):  # a SequentialHook holds several
            device = getattr(step, "execution_device", None)
            if device is not None:
                return torch.device(device)
    param = next(module.parameters(), None)
    if param is None:
        raise ValueError(f"{type(module).__name__} has no weights to tell its device.")
    if param.device.type == "meta" and not allow_meta:
        raise ValueError(f"{type(module).__name__} has weights on the meta device and no accelerate hook that loads "
                         "them: the checkpoint was not fully loaded (load it with a device or a complete device_map).")
    return param.device


@dataclass(frozen=True)
class CacheGeometry:
    """Shapes of the KV cache a backbone writes, and where each layer's share of it lives.

    ``layer_devices[i]`` is decoder layer i's execution device: a model spread over several GPUs
    (or partly offloaded) by an accelerate ``device_map`` keeps each layer's cache beside it.
    ``device`` is where the inputs go (the token embedding's device).
    """

    num_layers: int
    q_heads: int
    kv_heads: int
    head_dim: int
    dtype: torch.dtype
    device: torch.device
    layer_devices: tuple[torch.device, ...]

    @classmethod
    def of(cls, backbone: nn.Module, planning: bool = False) -> "CacheGeometry":
        """``planning``: only the shapes are wanted (a model still on the meta device is fine)."""
        config = backbone.config
        q_heads = config.num_attention_heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // q_heads
        layers = list(backbone.layers)
        return cls(
            num_layers=len(layers),
            q_heads=q_heads,
            kv_heads=getattr(config, "num_key_value_heads", None) or q_heads,
            head_dim=head_dim,
            dtype=next(backbone.parameters()).dtype,
            device=execution_device(backbone.embed_tokens, planning),
            layer_devices=tuple(execution_device(layer, planning) for layer in layers),
        )

    @property
    def devices(self) -> list[torch.device]:
        """Every device the decoder computes on (to wait for all of them when timing)."""
        return list(dict.fromkeys((self.device, *self.layer_devices)))


@dataclass
class Conditioning:
    """The prefix of a request as input embeddings, already in the CFG row layout.

    ``prefix``: ``(rows, L_p, hidden)`` for the batched cache (cond and uncond rows for the
    ``halves`` / ``interleaved`` layouts). ``uncond_prefix``: ``(batch, L_u, hidden)`` for the
    ``separate`` layout, whose unconditional rows have a prefix and positions of their own.
    """

    prefix: torch.Tensor
    uncond_prefix: torch.Tensor | None = None

    def batched(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Every row in one batch (``[prefix; uncond_prefix]``, left-padded to one length) and each
        row's pad count, None when no row needed padding (see `padding`)."""
        return left_pad([p for p in (self.prefix, self.uncond_prefix) if p is not None])
