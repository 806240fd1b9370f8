"""Tiny LlamaGen checkpoints in upstream's formats, and an independent upstream forward.

The state dicts are written key by key from upstream's naming (not through our converter), so
loading them exercises the real loader; `reference_logits` recomputes upstream's math (fused
wqkv, interleaved complex 2-D RoPE with zeroed condition rows, RMSNorm, SwiGLU) in float64.
"""
from __future__ import annotations

import math

import torch

from linear_core.decoders.vq16 import VQ16Decoder
from linear_core.families.llamagen import ffn_size


def upstream_state(dim: int = 64, heads: int = 4, layers: int = 2, vocab: int = 64, classes: int = 10,
                   seed: int = 0, device: str = "cpu") -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ffn = ffn_size(dim)

    def rand(*shape, std=1.0):
        return (torch.randn(*shape, generator=g) * std).to(device)

    state = {"tok_embeddings.weight": rand(vocab, dim), "cls_embedding.embedding_table.weight": rand(classes + 1, dim),
             "norm.weight": 1 + rand(dim, std=0.1), "output.weight": rand(vocab, dim, std=dim ** -0.5)}
    for i in range(layers):
        p = f"layers.{i}."
        # large q/k weights give peaked, position-dependent attention (so RoPE and eviction matter)
        qk = rand(2 * dim, dim, std=3 * dim ** -0.5)
        state[p + "attention.wqkv.weight"] = torch.cat([qk, rand(dim, dim, std=dim ** -0.5)])
        state[p + "attention.wo.weight"] = rand(dim, dim, std=dim ** -0.5)
        state[p + "feed_forward.w1.weight"] = rand(ffn, dim, std=dim ** -0.5)
        state[p + "feed_forward.w3.weight"] = rand(ffn, dim, std=dim ** -0.5)
        state[p + "feed_forward.w2.weight"] = rand(dim, ffn, std=ffn ** -0.5)
        state[p + "attention_norm.weight"] = 1 + rand(dim, std=0.1)
        state[p + "ffn_norm.weight"] = 1 + rand(dim, std=0.1)
    return state


def meta_state(layers: int, heads: int, dim: int, vocab: int = 16384, classes: int = 1000) -> dict[str, torch.Tensor]:
    """Shapes only (no memory): the state dict of a full-size upstream GPT."""
    ffn = ffn_size(dim)
    meta = lambda *shape: torch.empty(*shape, device="meta")  # noqa: E731
    state = {"tok_embeddings.weight": meta(vocab, dim), "cls_embedding.embedding_table.weight": meta(classes + 1, dim),
             "norm.weight": meta(dim), "output.weight": meta(vocab, dim)}
    for i in range(layers):
        p = f"layers.{i}."
        state.update({p + "attention.wqkv.weight": meta(3 * dim, dim), p + "attention.wo.weight": meta(dim, dim),
                      p + "feed_forward.w1.weight": meta(ffn, dim), p + "feed_forward.w3.weight": meta(ffn, dim),
                      p + "feed_forward.w2.weight": meta(dim, ffn), p + "attention_norm.weight": meta(dim),
                      p + "ffn_norm.weight": meta(dim)})
    return state


def tiny_vq_state(codebook: int = 64, seed: int = 0) -> dict[str, torch.Tensor]:
    """A small VQ-16-layout decoder (two levels: one ×2 upsampling), with the encoder keys and
    ``codebook_used`` buffer an upstream file also carries (the loader must skip them)."""
    torch.manual_seed(seed)
    decoder = VQ16Decoder(codebook_size=codebook, codebook_dim=8, z_channels=32, widths=(64, 32), res_blocks=2)
    state = decoder.state_dict()
    state["encoder.conv_in.weight"] = torch.randn(32, 3, 3, 3)
    state["quant_conv.weight"] = torch.randn(8, 32, 1, 1)
    state["quantize.codebook_used"] = torch.zeros(65536)
    return state


def _rms(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


def reference_logits(state: dict[str, torch.Tensor], heads: int, grid: int, labels: torch.Tensor,
                     tokens: torch.Tensor, zero_condition_rotary: bool = True, cond_tokens: int = 1) -> torch.Tensor:
    """Upstream's full causal forward on ``[class token × cond_tokens; tokens]`` → logits
    ``(batch, cond_tokens + q, vocab)``. ``zero_condition_rotary=False`` rotates the class token as
    grid cell (0, 0) instead (a wrong variant, to show the tests can tell)."""
    s = {k: v.double().cpu() for k, v in state.items()}
    dim = s["tok_embeddings.weight"].shape[1]
    hd = dim // heads
    condition = s["cls_embedding.embedding_table.weight"][labels][:, None].expand(-1, cond_tokens, -1)
    x = torch.cat([condition, s["tok_embeddings.weight"][tokens]], 1)
    batch, length = x.shape[:2]
    theta = 10000.0 ** (-4.0 * torch.arange(hd // 4, dtype=torch.float64) / hd)
    index = (torch.arange(length) - cond_tokens).clamp(min=0)  # raster index of the token at each position
    angles = torch.cat([(index // grid)[:, None] * theta, (index % grid)[:, None] * theta], 1)
    rotation = torch.polar(torch.ones_like(angles), angles)
    if zero_condition_rotary:
        rotation[:cond_tokens] = 0  # the condition tokens' rotary rows are zero
    rope = lambda t: torch.view_as_real(  # noqa: E731
        torch.view_as_complex(t.reshape(batch, length, heads, hd // 2, 2).contiguous()) * rotation[None, :, None]
    ).flatten(3)
    causal = torch.full((length, length), -math.inf, dtype=torch.float64).triu(1)
    for i in range(1 + max(int(k.split(".")[1]) for k in s if k.startswith("layers."))):
        p = f"layers.{i}."
        q, k, v = (_rms(x, s[p + "attention_norm.weight"]) @ s[p + "attention.wqkv.weight"].T).split(dim, -1)
        q, k = rope(q.view(batch, length, heads, hd)), rope(k.view(batch, length, heads, hd))
        v = v.view(batch, length, heads, hd)
        weights = (torch.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(hd) + causal).softmax(-1)
        x = x + torch.einsum("bhqk,bkhd->bqhd", weights, v).reshape(batch, length, dim) @ s[p + "attention.wo.weight"].T
        h = _rms(x, s[p + "ffn_norm.weight"])
        x = x + (torch.nn.functional.silu(h @ s[p + "feed_forward.w1.weight"].T) * (h @ s[p + "feed_forward.w3.weight"].T)) \
            @ s[p + "feed_forward.w2.weight"].T
    return _rms(x, s["norm.weight"]) @ s["output.weight"].T


def reference_generate(state: dict[str, torch.Tensor], heads: int, grid: int, labels: torch.Tensor, cfg: float,
                       temperature: float, top_k: int, top_p: float, generator: torch.Generator) -> torch.Tensor:
    """Upstream's class-to-image sampling (autoregressive/models/generate.py), written from its
    semantics: with ``cfg`` > 1 the batch is ``[labels; null]`` where the null class is
    ``num_classes`` (the embedding table's last row); logits ``uncond + (cond − uncond)·cfg``;
    divided by ``max(temperature, 1e-5)``; top-k, then the nucleus that keeps the token crossing
    ``top_p``; one multinomial draw per image. Recomputes the whole sequence each step."""
    null = state["cls_embedding.embedding_table.weight"].shape[0] - 1
    rows = torch.cat([labels, torch.full_like(labels, null)]) if cfg > 1.0 else labels
    tokens = torch.zeros(len(rows), 0, dtype=torch.long)
    for _ in range(grid * grid):
        logits = reference_logits(state, heads, grid, rows, tokens)[:, -1]
        if cfg > 1.0:
            cond, uncond = logits.chunk(2)
            logits = uncond + (cond - uncond) * cfg
        logits = logits.float() / max(temperature, 1e-5)
        if top_k > 0:
            logits[logits < logits.topk(min(top_k, logits.shape[-1]))[0][:, -1:]] = -math.inf
        if top_p < 1.0:
            ordered, order = logits.sort(descending=True)
            above = ordered.softmax(-1).cumsum(-1) > top_p
            above = torch.cat([torch.zeros_like(above[:, :1]), above[:, :-1]], 1)  # the crossing token stays
            logits[above.scatter(1, order, above)] = -math.inf
        drawn = torch.multinomial(logits.softmax(-1).to(generator.device), 1, generator=generator).cpu()
        tokens = torch.cat([tokens, drawn.repeat(2, 1) if cfg > 1.0 else drawn], 1)
    return tokens[:len(labels)]
