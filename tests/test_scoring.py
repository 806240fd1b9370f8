"""Buffered-query scores equal the attention probabilities of an eager-attention run."""
import torch
from transformers import DynamicCache

from linear_core import LineARCache, LineLayout
from linear_core.adapter import CacheGeometry
from linear_core.scoring import CAPTURE_KWARG, LineQueryBuffer, line_attention, register_attention


def test_line_scores_equal_eager_attention(gqa_model):
    model = gqa_model
    layout = LineLayout(model.prefix_len, 4, 5, eol=True)
    prefix = model.prefix_embeddings(torch.tensor([2, 8]))
    line = torch.randint(0, 40, (2, layout.line_tokens), device=prefix.device)
    g = CacheGeometry.of(model.backbone)

    # eager reference, token by token, with attention weights
    model.backbone.set_attn_implementation("eager")
    cache = DynamicCache(config=model.backbone.config)
    model.backbone(inputs_embeds=prefix, past_key_values=cache, use_cache=True)
    eager = [[] for _ in range(g.num_layers)]
    for t in range(layout.line_tokens):
        out = model.backbone(inputs_embeds=model.embed_image_tokens(line[:, t:t + 1]), past_key_values=cache,
                             use_cache=True, output_attentions=True)
        for layer_idx, weights in enumerate(out.attentions):  # (rows, q_heads, 1, L_t)
            eager[layer_idx].append(weights[:, :, 0])

    # our capture, same tokens
    model.backbone.set_attn_implementation(register_attention())
    ours = LineARCache(layout, 2, g.num_layers, g.kv_heads, g.head_dim, g.dtype, g.device)
    buffer = LineQueryBuffer(g.num_layers, 2, g.q_heads, g.head_dim, layout.line_tokens, 1 << 30, g.dtype, g.device)
    model.backbone(inputs_embeds=prefix, past_key_values=ours, use_cache=True)
    for t in range(layout.line_tokens):
        positions = torch.full((2, 1), ours.written, device=prefix.device)
        model.backbone(inputs_embeds=model.embed_image_tokens(line[:, t:t + 1]), position_ids=positions,
                       past_key_values=ours, use_cache=True, **{CAPTURE_KWARG: buffer})
        buffer.advance(1)

    length = layout.prefix_len + layout.line_tokens
    for layer_idx in range(g.num_layers):
        probs = line_attention(buffer, layer_idx, ours.layers[layer_idx].keys[:, :, :length])
        rows, kv_heads, group, window, _ = probs.shape
        expected = torch.zeros(rows, g.q_heads, window, length, device=probs.device)
        for t, weights in enumerate(eager[layer_idx]):
            expected[:, :, t, : weights.shape[-1]] = weights
        got = probs.reshape(rows, kv_heads * group, window, length)
        assert torch.allclose(got, expected, atol=1e-6)
        assert torch.allclose(got.sum(-1), torch.ones((), device=got.device), atol=1e-5)


def test_window_keeps_only_the_last_queries(model):
    g = CacheGeometry.of(model.backbone)
    buffer = LineQueryBuffer(g.num_layers, 1, g.q_heads, g.head_dim, line_tokens=6, window=2, dtype=g.dtype, device=g.device)
    queries = torch.arange(6.0, device=g.device).view(1, 1, 6, 1).expand(1, g.q_heads, 6, g.head_dim)
    buffer.capture(0, queries[:, :, :3], 1.0)
    buffer.advance(3)
    for t in range(3, 6):
        buffer.capture(0, queries[:, :, t:t + 1], 1.0)
        buffer.advance(1)
    assert buffer.queries[0][0, 0, :, 0].tolist() == [4.0, 5.0]
