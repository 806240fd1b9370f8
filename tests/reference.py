"""Reference computations the engine is checked against (independent of the engine's code paths)."""
from __future__ import annotations

import torch
from transformers import AttentionInterface, DynamicCache

from linear_core.adapter import Conditioning
from linear_core.guidance import Guidance
from linear_core.layout import LineLayout

MASKED = "masked_reference"


def _masked_attention(module, query, key, value, attention_mask, scaling=None, reference_masks=None, **kwargs):
    """Eager attention with a per-layer additive mask ``(rows, q_heads, L, L)``."""
    groups = query.shape[1] // key.shape[1]
    key, value = key.repeat_interleave(groups, 1), value.repeat_interleave(groups, 1)
    scores = query @ key.transpose(-1, -2) * scaling + reference_masks[module.layer_idx]
    out = scores.softmax(-1) @ value
    return out.transpose(1, 2).contiguous(), None


AttentionInterface.register(MASKED, _masked_attention)


def eviction_lines(history: list[torch.Tensor], layout: LineLayout) -> torch.Tensor:
    """From the kept raster indices after each boundary (``history[b]``: ``(rows, kv_heads, k)``
    after the boundary of line ``b``), the line after whose boundary each image token was evicted
    (a large number if it never was). Shape ``(rows, kv_heads, N)``."""
    rows, heads = history[0].shape[:2]
    never = 10**6
    evicted_at = torch.full((rows, heads, layout.image_tokens), never, dtype=torch.long)
    for line, kept in enumerate(history):
        written = (line + 1) * layout.line_tokens
        present = torch.zeros(rows, heads, layout.image_tokens, dtype=torch.bool)
        present.scatter_(2, kept.cpu(), True)
        gone = ~present
        gone[:, :, written:] = False
        evicted_at = torch.where(gone & (evicted_at == never), torch.full_like(evicted_at, line), evicted_at)
    return evicted_at


def visibility_masks(evicted_at: torch.Tensor, layout: LineLayout, q_heads: int, length: int) -> torch.Tensor:
    """Additive mask ``(rows, q_heads, L, L)`` for a full forward of prefix + image tokens: causal,
    and image key k invisible to queries of lines after the boundary that evicted it."""
    rows, kv_heads, n = evicted_at.shape
    p = layout.prefix_len
    pos = torch.arange(length, device=evicted_at.device)
    visible = pos[None, :] <= pos[:, None]
    visible = visible.expand(rows, kv_heads, length, length).clone()
    query_line = ((pos - p).clamp(min=0) // layout.line_tokens)  # prefix queries see no image keys anyway
    image_keys = slice(p, p + min(n, length - p))
    key_evicted = evicted_at[:, :, : length - p]  # (rows, heads, keys)
    visible[:, :, :, image_keys] &= query_line[None, None, :, None] <= key_evicted[:, :, None, :]
    visible = visible.repeat_interleave(q_heads // kv_heads, dim=1)
    return torch.zeros(visible.shape, device=visible.device).masked_fill(~visible, float("-inf"))


def masked_logits(model, prefix: torch.Tensor, tokens_rows: torch.Tensor, layout: LineLayout,
                  evicted_per_layer: list[torch.Tensor]) -> torch.Tensor:
    """Logits predicting image tokens 0..len(tokens) from one full forward with eviction masks."""
    embeds = torch.cat([prefix, model.embed_image_tokens(tokens_rows)], dim=1)
    length = embeds.shape[1]
    lay = layout.with_prefix(prefix.shape[1])
    masks = [visibility_masks(e.to(embeds.device), lay, model.config.num_attention_heads, length)
             for e in evicted_per_layer]
    previous = model.backbone.config._attn_implementation
    model.backbone.set_attn_implementation(MASKED)
    try:
        positions = torch.arange(length, device=embeds.device)[None].expand(embeds.shape[0], -1)
        hidden = model.backbone(inputs_embeds=embeds, position_ids=positions, reference_masks=masks).last_hidden_state
    finally:
        model.backbone.set_attn_implementation(previous)
    return model.image_logits(hidden[:, prefix.shape[1] - 1:])


def plain_decode(model, conditioning: Conditioning, guidance: Guidance, steps: int, seed: int,
                 top_k: int = 0) -> torch.Tensor:
    """A textbook decode with transformers' DynamicCache and SDPA: CFG halves, top-k, multinomial."""
    model.backbone.set_attn_implementation("sdpa")
    generator = torch.Generator(device=conditioning.prefix.device).manual_seed(seed)
    cache = DynamicCache(config=model.backbone.config)
    out = model.backbone(inputs_embeds=conditioning.prefix, past_key_values=cache, use_cache=True)
    logits = model.image_logits(out.last_hidden_state[:, -1])
    tokens = []
    for step in range(steps):
        cond, uncond = logits.chunk(2)
        mixed = (uncond + (cond - uncond) * guidance.scale).float()
        if top_k:
            kth = mixed.topk(top_k, dim=-1).values[:, -1:]
            mixed = mixed.masked_fill(mixed < kth, float("-inf"))
        token = torch.multinomial(mixed.softmax(-1), 1, generator=generator)
        tokens.append(token)
        if step + 1 < steps:
            out = model.backbone(inputs_embeds=model.embed_image_tokens(torch.cat([token, token])),
                                 past_key_values=cache, use_cache=True)
            logits = model.image_logits(out.last_hidden_state[:, -1])
    return torch.cat(tokens, dim=1)
