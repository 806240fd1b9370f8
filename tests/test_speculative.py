"""Speculative Jacobi decoding: the acceptance rule, rollback exactness, the law of the tokens on
the trained demo model, the logits rules, callbacks and interrupts."""
from __future__ import annotations

import random

import pytest
import torch
from scipy.stats import chi2, chi2_contingency

from conftest import DEVICE, tiny_model
from linear_core import CacheSettings, Callbacks, DecodeSession, GenerationInterrupted, Guidance, LineLayout, generate
from linear_core.loading import load_pipeline
from linear_core.speculative import Speculation, draw, verify
from test_exactness import feed_and_record

ALPHA = 1e-3


def chi_square(counts: torch.Tensor, law: torch.Tensor) -> float:
    """Goodness-of-fit p-value of ``counts`` against ``law`` (cells with an expected count < 5 pooled)."""
    expected = law * counts.sum()
    big = expected >= 5
    observed = torch.cat([counts[big], counts[~big].sum(0, keepdim=True)]).double()
    expected = torch.cat([expected[big], expected[~big].sum(0, keepdim=True)]).double()
    keep = expected > 0
    stat = ((observed[keep] - expected[keep]) ** 2 / expected[keep]).sum().item()
    return chi2.sf(stat, int(keep.sum()) - 1)


def test_verified_tokens_have_the_target_law_and_wrong_rules_are_caught():
    """Drafts drawn from q, verified against p: the outcome (draft or residual sample) is distributed
    as p. Accepting every draft, or resampling from p instead of the residual, fails the same test."""
    generator = torch.Generator().manual_seed(0)
    n = 40_000
    p = torch.tensor([0.50, 0.25, 0.12, 0.08, 0.05, 0.0]).expand(n, -1)
    q = torch.tensor([0.10, 0.10, 0.40, 0.10, 0.10, 0.20]).expand(n, -1)
    drafts = draw(q, generator)
    outcome, passed = verify(p, drafts, q, generator)
    counts = torch.bincount(outcome, minlength=6)
    assert chi_square(counts, p[0]) > ALPHA and counts[5] == 0  # no token outside p's support
    assert 0.3 < passed.float().mean() < 0.7  # the rule rejected a fair share: the residual mattered

    always = torch.bincount(drafts, minlength=6)
    from_p = torch.where(passed, drafts, draw(p, generator))
    for wrong in (always, torch.bincount(from_p, minlength=6)):
        assert chi_square(wrong, p[0]) < 1e-12


def speculate_and_record(session: DecodeSession, tokens: torch.Tensor, junk: torch.Tensor, window: int, seed: int):
    """Feed ``tokens`` in windows whose tail is junk (rejected drafts), keeping a random prefix of
    each window; return the logits of every kept input and the kept indices after each boundary."""
    lay, rng = session.layout, random.Random(seed)
    history = [[] for _ in session.cache.layers]
    logits = [session.prefill()[:, None]]
    start = 0
    while start < lay.image_tokens - 1:
        line_end = (start // lay.line_tokens + 1) * lay.line_tokens
        count = min(window, line_end - start, lay.image_tokens - 1 - start)
        keep = rng.randint(1, count)
        window_tokens = torch.cat([tokens[:, start:start + keep], junk[:, start + keep:start + count]], 1)
        out = session.feed_window(window_tokens)
        session.keep_window(count, keep)
        logits.append(out[:, :keep])
        if start + keep == line_end:
            for layer_idx in range(len(session.cache.layers)):
                history[layer_idx].append(session.cache.kept_image_indices(layer_idx).clone())
        start += keep
    return torch.cat(logits, 1), history


@pytest.mark.parametrize("decode", ["eager", "static"])
@pytest.mark.parametrize("policy,budget", [("full", "full"), ("linear", "2 lines"), ("h2o", "2 lines")])
def test_rollback_leaves_the_cache_as_if_the_rejected_tokens_were_never_fed(tmp_path, policy, budget, decode):
    """Against plain one-token eager feeding: windows (eager, or on the static step, whose counters
    live on the device) with a rejected tail give the same logits and evict the same tokens."""
    model = tiny_model(tmp_path, kv_heads=2)
    layout = LineLayout(model.prefix_len, 5, 6)
    guidance = Guidance(2.0, "halves")
    conditioning = model.conditioning(torch.tensor([1, 4], device=DEVICE), guidance)
    settings = CacheSettings(policy, budget, anchors=2, recent_lines=1)
    generator = torch.Generator().manual_seed(3)
    tokens = torch.randint(0, model.config.vocab_size, (2, layout.image_tokens), generator=generator).to(DEVICE)
    junk = torch.randint(0, model.config.vocab_size, (2, layout.image_tokens), generator=generator).to(DEVICE)
    sessions = [DecodeSession(model, conditioning, layout, settings, guidance, decode=mode) for mode in ("eager", decode)]
    try:
        plain, plain_kept = feed_and_record(sessions[0], tokens, 1)
        rolled, rolled_kept = speculate_and_record(sessions[1], tokens, junk, 4, seed=7)
        assert sessions[1].compressions == sessions[0].compressions
        if policy != "full":
            assert sessions[1].compressions > 0
    finally:
        for session in sessions:
            session.close()
    assert torch.allclose(rolled, plain, atol=1e-5, rtol=0)
    for a, b in zip(plain_kept, rolled_kept):
        assert all(torch.equal(x, y) for x, y in zip(a, b))


def test_speculative_tokens_follow_plain_sampling_on_the_demo_model():
    """Per-position token histograms over 200 images, speculative vs plain, LineAR 1/4: a two-sample
    chi-square summed over positions (a narrow window keeps this affordable on a CPU, where a
    forward's cost grows with its tokens)."""
    pipeline = load_pipeline("demo-digits")
    settings, labels = CacheSettings("linear", "1/4"), [i % 10 for i in range(50)]
    plain = torch.cat([pipeline.generate(labels, settings=settings, seed=s).tokens for s in range(4)])
    fast = torch.cat([pipeline.generate(labels, settings=settings, seed=s, speculative=Speculation(4)).tokens
                      for s in range(100, 104)])
    stat = dof = 0
    for position in range(plain.shape[1]):
        levels = torch.unique(torch.cat([plain[:, position], fast[:, position]]))
        table = torch.stack([(plain[:, position, None] == levels).sum(0), (fast[:, position, None] == levels).sum(0)])
        table = table[:, table.sum(0) >= 10]  # rare levels carry no power and break the approximation
        if table.shape[1] > 1:
            result = chi2_contingency(table.numpy(), correction=False)
            stat, dof = stat + result.statistic, dof + result.dof
    assert dof > 200 and chi2.sf(stat, dof) > ALPHA


def test_one_demo_image_needs_at_least_2_5_times_fewer_forwards():
    """Plain decoding takes one forward per image token after the first (575); the README measured
    3.2x fewer over 20 images, and 2.5x leaves room for 4 images' spread."""
    pipeline = load_pipeline("demo-digits")
    runs = [pipeline.generate([label], settings=CacheSettings("linear", "1/4"), seed=label, speculative=Speculation(16))
            for label in range(4)]
    forwards = sum(run.stats.forwards for run in runs) / len(runs)
    plain = pipeline.layout.image_tokens - 1
    assert forwards * 2.5 <= plain and all(run.stats.compressions > 0 for run in runs)


def test_lumina_windows_keep_the_forced_line_ends_and_the_image_vocabulary(tmp_path):
    from lumina_files import RESOLUTION, write_lumina

    pipeline = load_pipeline(write_lumina(tmp_path / f"Lumina-mGPT-tiny-{RESOLUTION}"), dtype="fp32", device=DEVICE)
    settings = CacheSettings("linear", "3 lines", anchors=2, recent_lines=1, keep_line_ends=True)
    runs = [pipeline.generate("a red fox", batch=2, settings=settings, cfg=4.0, seed=3, speculative=Speculation(6))
            for _ in range(2)]
    tokens, model, grid = runs[0].tokens, pipeline.model, RESOLUTION // 16
    assert torch.equal(tokens, runs[1].tokens)  # a fixed seed gives a fixed result
    assert bool((tokens[:, grid::grid + 1] == model.eol_id).all())
    assert bool(model.image_vocab[tokens.view(2, grid, grid + 1)[:, :, :grid]].all())
    stats = runs[0].stats
    assert stats.speculative_window == 6 and stats.forwards < tokens.shape[1] - 1 and stats.compressions > 0


def test_progress_reports_every_committed_token_and_cancel_stops_at_it(tmp_path):
    model = tiny_model(tmp_path)
    layout = LineLayout(model.prefix_len, 6, 6)
    guidance = Guidance(2.0, "halves")
    conditioning = model.conditioning(torch.tensor([2], device=DEVICE), guidance)
    settings = CacheSettings("linear", "2 lines", anchors=2, recent_lines=1)
    seen = []
    result = generate(model, conditioning, layout, settings, guidance, seed=1, speculative=Speculation(4),
                      callbacks=Callbacks(on_token=lambda i, line: seen.append((i, line))))
    assert seen == [(i, i // 6) for i in range(36)]
    assert result.stats.forwards <= 35 and result.stats.accepted_per_forward == 35 / result.stats.forwards
    stop_at = random.Random(5).randrange(1, 36)
    seen.clear()
    with pytest.raises(GenerationInterrupted, match=f"image token {stop_at} "):
        generate(model, conditioning, layout, settings, guidance, seed=1, speculative=Speculation(4),
                 callbacks=Callbacks(on_token=lambda i, line: seen.append(i), should_stop=lambda: seen[-1] == stop_at))
    assert seen[-1] == stop_at


def test_a_window_too_small_or_too_large_is_explained():
    for window in (1, 1000):
        with pytest.raises(ValueError, match="window must be 2"):
            Speculation(window)
