"""The decode loop's contract with a UI: progress, preview, cancel, stats, every CFG layout."""
import pytest
import torch

from linear_core import Callbacks, CacheSettings, GenerationInterrupted, Guidance, LineLayout, SamplingConfig, generate
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
    assert all(cache.layers == [] for cache in sessions[0].caches)
    assert all(stream.queries is None for stream in sessions[0].streams)


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
