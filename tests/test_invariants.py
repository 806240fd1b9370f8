"""Budget, memory and region invariants of every policy, checked after every line boundary."""
from __future__ import annotations

import pytest
import torch

from linear_core import CacheSettings, DecodeSession, Guidance, LineLayout, POLICIES, generate


def run_lines(session: DecodeSession, tokens: torch.Tensor, check) -> None:
    """Feed a prefilled session token by token, calling ``check(session, line)`` after each boundary."""
    lay = session.layout
    for line_start in range(0, lay.image_tokens - 1, lay.line_tokens):
        for i in range(line_start, min(line_start + lay.line_tokens, lay.image_tokens - 1)):
            session.feed(tokens[:, i:i + 1])
        if (line_start + lay.line_tokens) < lay.image_tokens:
            check(session, line_start // lay.line_tokens)


@pytest.mark.parametrize("policy", [p for p in POLICIES if p != "full"])
@pytest.mark.parametrize("eol", [False, True])
def test_budget_prefix_and_protected_regions(gqa_model, policy, eol):
    model = gqa_model
    layout = LineLayout(model.prefix_len, 9, 6, eol)
    settings = CacheSettings(policy, "1/2", anchors=3, recent_lines=2, sinks=3)
    guidance = Guidance(2.0, "halves")
    session = DecodeSession(model, model.conditioning(torch.tensor([0, 5]), guidance), layout, settings, guidance)
    lay = session.layout
    tokens = torch.randint(0, 40, (2, lay.image_tokens))
    budget, width, p = lay.budget_tokens, lay.line_tokens, lay.prefix_len
    buffers = [(layer.keys.data_ptr(), layer.values.data_ptr()) for layer in session.cache.layers]
    allocated = session.kv_allocated_bytes
    session.prefill()
    prefix = [layer.keys[:, :, :p].clone() for layer in session.cache.layers]
    seen = {"compressed": 0}

    def check(session, line):
        written = (line + 1) * width
        assert session.kv_allocated_bytes == allocated
        for layer_idx, layer in enumerate(session.cache.layers):
            assert (layer.keys.data_ptr(), layer.values.data_ptr()) == buffers[layer_idx]
            assert torch.equal(layer.keys[:, :, :p], prefix[layer_idx])  # prefix never evicted
            held = session.cache.kept_image_indices(layer_idx)
            assert held.shape[-1] == min(written, budget)  # exactly the budget once past it
            assert bool((held.diff(dim=-1) > 0).all())  # temporal order, no duplicates
            if written > budget:
                seen["compressed"] += 1
                if policy in ("linear", "random"):
                    must = list(range(3)) + list(range(written - 2 * width, written))
                elif policy == "streaming":
                    must = list(range(3)) + list(range(written - (budget - 3), written))
                elif policy == "h2o":
                    must = list(range(written - 2 * width, written))
                else:  # rkv keeps its observation window
                    must = list(range(written - 8, written))
                assert all(bool((held == m).any(-1).all()) for m in must), f"{policy} lost a protected token"

    run_lines(session, tokens, check)
    assert seen["compressed"] > 0
    session.close()


def test_allocation_matches_preallocated_capacity(model):
    layout = LineLayout(model.prefix_len, 8, 8, budget="1/4")
    guidance = Guidance(2.0, "halves")
    conditioning = model.conditioning(torch.tensor([1, 2, 3]), guidance)
    full = generate(model, conditioning, layout, CacheSettings("full"), guidance).stats
    linear = generate(model, conditioning, layout, CacheSettings("linear", "1/4", anchors=2, recent_lines=1), guidance).stats
    cfg = model.config
    per_slot = 2 * cfg.num_hidden_layers * 6 * cfg.num_key_value_heads * (cfg.hidden_size // cfg.num_attention_heads) * 4
    p, b, w, n = layout.prefix_len, 16, 8, 64
    assert linear.kv_allocated_bytes == per_slot * (p + b + w)
    assert full.kv_allocated_bytes == full.full_kv_bytes == per_slot * (p + n)
    assert linear.full_kv_bytes == full.kv_allocated_bytes


def test_budget_too_small_is_a_clear_error(model):
    layout = LineLayout(model.prefix_len, 8, 8)
    guidance = Guidance(2.0, "halves")
    conditioning = model.conditioning(torch.tensor([1]), guidance)
    with pytest.raises(ValueError, match=r"smaller than what the 'linear' policy always keeps \(20 tokens"):
        generate(model, conditioning, layout, CacheSettings("linear", "2 lines", anchors=4, recent_lines=2), guidance)
    with pytest.raises(ValueError, match="prefix_len"):
        generate(model, conditioning, LineLayout(model.prefix_len + 1, 8, 8), CacheSettings("linear", "1/2"), guidance)
    with pytest.raises(ValueError, match="Unknown policy"):
        CacheSettings("lru").make_policy()
