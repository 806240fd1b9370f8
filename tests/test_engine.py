"""The decode loop's contract with a UI: progress, preview, cancel, stats, every CFG layout."""
import pytest
import torch

from linear_core import Callbacks, CacheSettings, GenerationInterrupted, Guidance, LineLayout, SamplingConfig, generate
from linear_core import padding
from linear_core.sampling import filter_logits


@pytest.mark.parametrize("cfg_layout", ["none", "halves", "interleaved", "separate"])
def test_callbacks_and_stats(model, cfg_layout):
    layout = LineLayout(model.prefix_len, 6, 5, eol=True)
    guidance = Guidance(2.5, cfg_layout)
    conditioning = model.conditioning(torch.tensor([1, 2]), guidance)
    progress, previews = [], []
    callbacks = Callbacks(on_token=lambda i, line: progress.append((i, line)),
                          on_preview=lambda tokens, line: previews.append((tokens.shape[1], line)),
                          preview_every_lines=2)
    result = generate(model, conditioning, layout, CacheSettings("linear", "3 lines", anchors=2, recent_lines=1),
                      guidance, SamplingConfig(top_k=10, top_p=0.9), seed=3, callbacks=callbacks)
    n = layout.image_tokens
    assert result.tokens.shape == (2, n)
    assert progress == [(i, i // 6) for i in range(n)]
    assert previews == [(12, 1), (24, 3), (36, 5)]
    stats = result.stats
    assert stats.compressions == 6 - 3 - 1  # H - B/W' - 1: lines 3 and 4 (line 5 is never fed back)
    assert len(stats.line_seconds) == 6
    assert stats.kv_allocated_bytes < stats.full_kv_bytes
    assert 0 < stats.compression_s < stats.decode_s
    assert stats.tokens_per_s > 0
    kept = stats.kept_map  # (layers, batch, N): share of heads holding each token at the end
    assert kept.shape == (2, 2, n)
    # B after the last boundary + the 5 fed tokens of the last line
    held_per_row = kept.float().sum(-1)
    assert torch.allclose(held_per_row, torch.full_like(held_per_row, 18.0 + 5))
    assert bool((kept[:, :, :2] == 1).all())  # anchors held by every head


def test_interrupt_raises_and_frees_the_cache(model, monkeypatch):
    import linear_core.engine as engine

    layout = LineLayout(model.prefix_len, 6, 6)
    guidance = Guidance(2.0, "halves")
    conditioning = model.conditioning(torch.tensor([1]), guidance)
    sessions, progress = [], []

    class RecordingSession(engine.DecodeSession):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            sessions.append(self)

    monkeypatch.setattr(engine, "DecodeSession", RecordingSession)
    with pytest.raises(GenerationInterrupted, match="image token 9"):
        generate(model, conditioning, layout, CacheSettings("linear", "1/2", anchors=2, recent_lines=1), guidance,
                 callbacks=Callbacks(should_stop=lambda: len(progress) >= 10,
                                     on_token=lambda i, line: progress.append(i)))
    assert len(sessions) == 1
    assert sessions[0].cache.layers == [] and sessions[0].stream.queries is None


def test_seed_reproducible_and_sensitive(model):
    layout = LineLayout(model.prefix_len, 4, 4)
    guidance = Guidance(2.0, "interleaved")
    conditioning = model.conditioning(torch.tensor([5, 6]), guidance)
    run = lambda seed: generate(model, conditioning, layout, CacheSettings("linear", "2 lines", anchors=1, recent_lines=1),  # noqa: E731
                                guidance, seed=seed).tokens
    assert torch.equal(run(1), run(1))
    assert not torch.equal(run(1), run(2))


def test_top_k_top_p_filters():
    logits = torch.tensor([[4.0, 3.0, 2.0, 1.0, 0.0]])
    assert torch.isinf(filter_logits(logits, top_k=2)).tolist() == [[False, False, True, True, True]]
    # probabilities ≈ .64 .24 .09 .03 .01: top-p 0.8 keeps the first two (the one crossing 0.8 included)
    assert torch.isinf(filter_logits(logits, top_p=0.8)).tolist() == [[False, False, True, True, True]]
    with pytest.raises(ValueError, match="top_p"):
        SamplingConfig(top_p=0.0)


def test_a_separate_unconditional_prefix_joins_the_batch(model):
    """A shorter unconditional prefix is left-padded into the batch: one backbone call per token
    for cond and uncond rows together (the logits equal separate requests: test_exactness)."""
    guidance = Guidance(2.0, "separate")
    conditioning = model.conditioning(torch.tensor([1, 2]), guidance)
    assert conditioning.prefix.shape[1] > conditioning.uncond_prefix.shape[1]
    layout = LineLayout(prefix_len=conditioning.prefix.shape[1], grid_h=4, grid_w=4)
    rows = []
    hook = model.backbone.register_forward_hook(
        lambda module, args, kwargs, out: rows.append(kwargs["inputs_embeds"].shape[0]), with_kwargs=True)
    try:
        generate(model, conditioning, layout, CacheSettings("linear", "2 lines", anchors=1, recent_lines=1), guidance)
    finally:
        hook.remove()
    assert rows == [4] * layout.image_tokens


def test_padding_hides_pad_slots_and_counts_positions_from_the_first_real_token():
    pads = torch.tensor([0, 2])
    prefill = padding.attention_mask(pads, length=0, q=3)[:, 0]
    assert torch.equal(prefill[0], torch.ones(3, 3, dtype=torch.bool).tril())
    assert torch.equal(prefill[1], torch.tensor([[1, 0, 0], [0, 1, 0], [0, 0, 1]], dtype=torch.bool))
    step = padding.attention_mask(pads, length=3, q=1)[:, 0, 0]
    assert step.tolist() == [[True] * 4, [False, False, True, True]]
    assert padding.positions(pads, 0, 3).tolist() == [[0, 1, 2], [0, 0, 0]]
    assert padding.positions(pads, 3, 2).tolist() == [[3, 4], [1, 2]]
    assert padding.left_pad([torch.ones(2, 3, 1), torch.ones(1, 3, 1)])[1] is None
    batch, counts = padding.left_pad([torch.ones(1, 3, 1), 2 * torch.ones(1, 1, 1)])
    assert counts.tolist() == [0, 2] and batch[:, :, 0].tolist() == [[1, 1, 1], [0, 0, 2]]
