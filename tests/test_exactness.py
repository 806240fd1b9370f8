"""The engine against reference computations: a plain DynamicCache decode, and a full-cache
forward whose evicted keys are masked out."""
from __future__ import annotations

import pytest
import torch

from linear_core import CacheSettings, DecodeSession, Guidance, LineLayout, SamplingConfig, generate
from linear_core.families.llamagen import load_llamagen
from llamagen_files import upstream_state
from reference import eviction_lines, masked_logits, plain_decode
from conftest import DEVICE, tiny_model


def feed_and_record(session: DecodeSession, tokens: torch.Tensor, chunk: int):
    """Teacher-force ``tokens`` in chunks (never across a line end); return the CFG-combined logits
    for every image token and, per layer, the kept indices of every row after each line boundary."""
    lay = session.layout
    history = [[] for _ in session.cache.layers]
    logits = [session.prefill()[:, None]]
    start = 0
    while start < lay.image_tokens - 1:
        line_end = (start // lay.line_tokens + 1) * lay.line_tokens
        stop = min(start + chunk, line_end, lay.image_tokens - 1)
        logits.append(session.feed(tokens[:, start:stop]))
        if stop == line_end:
            for layer_idx in range(len(session.cache.layers)):
                history[layer_idx].append(session.cache.kept_image_indices(layer_idx).clone())
        start = stop
    return torch.cat(logits, dim=1), history


def assert_line_ends_never_evicted(model, conditioning, guidance, layout) -> None:
    """Random tokens fed under ``keep_line_ends``: after every boundary each (row, head) still
    holds every end-of-line token written so far, while evictions happened."""
    settings = CacheSettings("linear", budget="3 lines", anchors=2, recent_lines=1, keep_line_ends=True)
    session = DecodeSession(model, conditioning, layout, settings, guidance)
    tokens = torch.randint(0, model.vocab, (conditioning.prefix.shape[0], layout.image_tokens - 1),
                           generator=torch.Generator().manual_seed(4))
    try:
        feed_and_record(session, tokens.to(conditioning.prefix.device), 1)
        assert session.compressions > 0
        ends = {i for i in range(tokens.shape[1]) if layout.is_line_end(i)}
        for layer in range(len(session.cache.layers)):
            assert all(ends <= set(kept) for kept in session.cache.kept_image_indices(layer).flatten(0, 1).tolist())
    finally:
        session.close()


def reference_logits(model, conditioning, guidance, layout, tokens, history):
    """Each prefix as its own request (a ``separate`` unconditional prefix with its own positions),
    with the keys the session evicted from its rows masked out."""
    if conditioning.uncond_prefix is None:
        parts = [(conditioning.prefix, guidance.expand_tokens(tokens[:, :-1]), history)]
    else:  # the session batched [cond; uncond] rows
        batch = conditioning.prefix.shape[0]
        parts = [(conditioning.prefix, tokens[:, :-1], [[kept[:batch] for kept in h] for h in history]),
                 (conditioning.uncond_prefix, tokens[:, :-1], [[kept[batch:] for kept in h] for h in history])]
    per_stream = []
    for prefix, rows_tokens, kept in parts:
        lay = layout.with_prefix(prefix.shape[1])
        per_stream.append(masked_logits(model, prefix, rows_tokens, lay, [eviction_lines(h, lay) for h in kept]))
    return guidance.combine(torch.cat(per_stream))

def assert_evictions_matter(model, conditioning, layout, guidance, tokens, chunk, expected) -> None:
    """The full cache's logits differ clearly from the masked reference (so the masks were tested)."""
    full = DecodeSession(model, conditioning, layout, CacheSettings("full"), guidance)
    try:
        full_logits, _ = feed_and_record(full, tokens, chunk)
    finally:
        full.close()
    assert (full_logits - expected).abs().max().item() > 1e-3


def assert_matches_masked_reference(model, conditioning, layout, settings, guidance, tokens, chunk,
                                    decode: str = "static") -> None:
    """A family's logits under eviction equal the masked full forward, to fp32 precision relative to
    the logit scale (random weights give logits up to ~10), and eviction visibly changed them. The
    static step is what runs by default, so it is the one checked (`test_static_step` holds the
    eager path to it at every step)."""
    session = DecodeSession(model, conditioning, layout, settings, guidance, seed=1, decode=decode)
    try:
        got, history = feed_and_record(session, tokens, chunk)
    finally:
        session.close()
    expected = reference_logits(model, conditioning, guidance, session.layout, tokens, history)
    assert (got - expected).abs().max().item() <= 1e-5 * expected.abs().max().item()
    assert_evictions_matter(model, conditioning, layout, guidance, tokens, chunk, expected)


CASES = [
    # policy, eol, kv_heads, cfg layout, chunk, head sharing, cfg mode
    ("linear", False, 4, "halves", 1, "per_head", "independent"),
    ("linear", True, 4, "interleaved", 1, "per_head", "independent"),
    ("linear", False, 2, "halves", 3, "per_head", "independent"),
    ("linear", True, 2, "interleaved", 9, "shared", "shared_sum"),
    ("linear", False, 4, "separate", 1, "per_head", "shared_cond"),
    ("h2o", True, 2, "halves", 1, "per_head", "independent"),
    ("rkv", False, 4, "interleaved", 4, "per_head", "independent"),
    ("streaming", True, 4, "halves", 1, "per_head", "independent"),
    ("random", False, 2, "separate", 5, "per_head", "independent"),
]


@pytest.mark.parametrize("decode", ["eager", "static"])
@pytest.mark.parametrize("policy,eol,kv_heads,cfg_layout,chunk,sharing,cfg_mode", CASES)
def test_logits_equal_masked_full_forward(tmp_path, policy, eol, kv_heads, cfg_layout, chunk, sharing, cfg_mode,
                                          decode):
    model = tiny_model(tmp_path, kv_heads=kv_heads)
    layout = LineLayout(prefix_len=model.prefix_len, grid_h=8, grid_w=8, eol=eol)
    settings = CacheSettings(policy, budget="3 lines", anchors=2, recent_lines=1, head_sharing=sharing, cfg_mode=cfg_mode)
    guidance = Guidance(2.0, cfg_layout)
    labels = torch.tensor([3, 7])
    conditioning = model.conditioning(labels, guidance)
    tokens = torch.randint(0, model.config.vocab_size, (2, layout.image_tokens),
                           generator=torch.Generator().manual_seed(1)).to(conditioning.prefix.device)

    session = DecodeSession(model, conditioning, layout, settings, guidance, seed=5, decode=decode)
    assert session.step_impl != "eager" if decode == "static" else session.step_impl == "eager"
    try:
        got, history = feed_and_record(session, tokens, chunk)
    finally:
        session.close()
    assert session.compressions >= layout.grid_h - 4  # evictions really happened
    expected = reference_logits(model, conditioning, guidance, session.layout, tokens, history)

    assert got.shape == expected.shape
    assert (got - expected).abs().max().item() <= 1e-5
    assert_evictions_matter(model, conditioning, layout, guidance, tokens, chunk, expected)


@pytest.mark.parametrize("decode", ["eager", "static"])
@pytest.mark.parametrize("policy,budget", [("full", "1/6"), ("linear", "1"), ("linear", "12 lines")])
def test_no_eviction_is_a_plain_decode(model, policy, budget, decode):
    layout = LineLayout(prefix_len=model.prefix_len, grid_h=6, grid_w=6)
    guidance = Guidance(3.0, "halves")
    conditioning = model.conditioning(torch.tensor([1, 4, 9]), guidance)
    result = generate(model, conditioning, layout, CacheSettings(policy, budget), guidance,
                      SamplingConfig(top_k=20), seed=11, decode=decode)
    assert result.stats.decode == ("eager" if decode == "eager" else "static")
    expected = plain_decode(model, conditioning, guidance, layout.image_tokens, seed=11, top_k=20)
    assert torch.equal(result.tokens, expected)
    assert result.stats.compressions == 0


@pytest.mark.parametrize("policy,chunk", [("linear", 1), ("h2o", 3), ("streaming", 8)])
def test_llamagen_logits_equal_masked_full_forward(tmp_path, policy, chunk):
    """The same check on the LlamaGen family (2-D RoPE, class-token prefix), loaded from an upstream file."""
    path = tmp_path / "c2i_T_256.pt"
    torch.save({"model": upstream_state(layers=2)}, path)
    model = load_llamagen(path, grid=8, heads=4, device=DEVICE)
    layout = model.spec.layout()
    settings = CacheSettings(policy, budget="3 lines", anchors=2, recent_lines=1)
    guidance = model.guidance(3.0)
    conditioning = model.conditioning(torch.tensor([2, 9], device=DEVICE), guidance)
    tokens = torch.randint(0, 64, (2, 64), generator=torch.Generator().manual_seed(2)).to(DEVICE)
    assert_matches_masked_reference(model, conditioning, layout, settings, guidance, tokens, chunk)

