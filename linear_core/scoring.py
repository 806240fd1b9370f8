"""Inter-line attention scores without switching the model to eager attention.

A registered attention function (``linear_ar``) runs plain SDPA and, when a `LineQueryBuffer` is
passed through the model call, also copies the post-RoPE queries of the line being generated into
it. At the line boundary `line_attention` recomputes ``softmax(q·Kᵀ·scale)`` for those queries
over every cached key in fp32, causal inside the line. Because nothing is evicted while a line is
generated, these are exactly the probabilities the model used.
"""
from __future__ import annotations

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from .cache import Devices, per_layer
from .padding import real_keys

ATTENTION_NAME = "linear_ar"
CAPTURE_KWARG = "linear_ar_queries"


class LineQueryBuffer:
    """Preallocated post-RoPE queries of the last ``window`` tokens of the current line, per layer
    (each on its layer's device).

    A static decode step writes at ``static_slots`` (device indices it computes from its line
    counter; queries before the window go to one scratch slot after it), so capture needs no host
    branch; the eager path slices with the host counter ``line_pos``."""

    def __init__(self, num_layers: int, rows: int, q_heads: int, head_dim: int, line_tokens: int,
                 window: int, dtype: torch.dtype, device: Devices) -> None:
        self.window = min(window, line_tokens)
        self.line_tokens = line_tokens
        self.slots = [torch.zeros(rows, q_heads, self.window + 1, head_dim, dtype=dtype, device=layer_device)
                      for layer_device in per_layer(device, num_layers)]
        self.queries = [slots[:, :, :self.window] for slots in self.slots]
        self.scaling = [1.0] * num_layers
        self.line_pos = 0  # tokens of the current line fed so far (advanced by the engine)
        self.static_slots: torch.Tensor | None = None

    def static_slots_for(self, line_pos: torch.Tensor, q: int) -> torch.Tensor:
        """Buffer slots of the ``q`` queries from device line position ``line_pos`` (scratch for
        those before the window)."""
        slots = line_pos + torch.arange(q, device=line_pos.device) - (self.line_tokens - self.window)
        return torch.where(slots >= 0, slots, self.window)

    def capture(self, layer_idx: int, query: torch.Tensor, scaling: float) -> None:
        self.scaling[layer_idx] = scaling
        if self.static_slots is not None:
            self.slots[layer_idx].index_copy_(2, self.static_slots, query)
            return
        q = query.shape[-2]
        first_kept = self.line_tokens - self.window  # line slots before this are not needed
        start, end = self.line_pos, self.line_pos + q
        lo = max(start, first_kept)
        if lo < end:
            self.queries[layer_idx][:, :, lo - first_kept:end - first_kept] = query[:, :, lo - start:]

    def advance(self, q: int) -> None:
        self.line_pos += q

    def reset(self) -> None:
        self.line_pos = 0

    @property
    def allocated_bytes(self) -> int:
        return sum(q.numel() * q.element_size() for q in self.slots)


def _linear_ar_attention(module, query, key, value, attention_mask, **kwargs):
    buffer: LineQueryBuffer | None = kwargs.pop(CAPTURE_KWARG, None)
    if buffer is not None:
        buffer.capture(module.layer_idx, query, kwargs.get("scaling") or module.scaling)
    return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)


def register_attention() -> str:
    """Register the capturing attention (idempotent) and return its name for `set_attn_implementation`."""
    AttentionInterface.register(ATTENTION_NAME, _linear_ar_attention)
    AttentionMaskInterface.register(ATTENTION_NAME, sdpa_mask)
    return ATTENTION_NAME


def line_attention(buffer: LineQueryBuffer, layer_idx: int, keys: torch.Tensor,
                   pads: torch.Tensor | None = None) -> torch.Tensor:
    """Attention probabilities of the buffered line queries over ``keys``.

    ``keys`` is the layer's cache ``(rows, kv_heads, L, d)`` whose last ``line_tokens`` entries are
    the line that just ended; ``pads`` hides each row's left-pad slots (see `padding`). Returns
    fp32 ``(rows, kv_heads, group, window, L)``: queries grouped by the KV head they read (GQA),
    causal inside the line.
    """
    queries = buffer.queries[layer_idx]
    rows, q_heads, window, dim = queries.shape
    kv_heads, length = keys.shape[1], keys.shape[2]
    group = q_heads // kv_heads
    q = queries.reshape(rows, kv_heads, group * window, dim).float()
    logits = torch.matmul(q, keys.float().transpose(-1, -2)).mul_(buffer.scaling[layer_idx])
    logits = logits.view(rows, kv_heads, group, window, length)
    # Query t of the window sits at line slot (W' - window + t); key slot L - W' + p is visible iff p <= that.
    line_tokens = buffer.line_tokens
    query_slot = torch.arange(line_tokens - window, line_tokens, device=keys.device)
    key_slot = torch.arange(length, device=keys.device) - (length - line_tokens)
    future = key_slot[None, :] > query_slot[:, None]
    logits.masked_fill_(future, float("-inf"))
    if pads is not None:
        logits.masked_fill_(~real_keys(pads, length, keys.device)[:, None, None, None, :], float("-inf"))
    return logits.softmax(dim=-1)
