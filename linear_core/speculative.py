"""Speculative Jacobi decoding on the LineAR cache: several tokens per forward, the same distribution.

Each forward feeds a window ``[x, d_1 … d_{k-1}]``: ``x`` is the newest committed token, the ``d``
are drafts, each with the law ``q`` it was drawn from. Output ``j`` is the model's distribution
``p_j`` for the position after input ``j``. Left to right, draft ``d`` passes with probability
``min(1, p(d) / q(d))``; at the first failure the residual ``norm(max(0, p − q))`` is sampled, which
makes every committed token distributed exactly as plain sampling would draw it (the speculative
sampling rule; Speculative Jacobi Decoding, Teng et al. 2024). Positions after the failure keep
their outcome as the next draft with law ``p_j`` (the adaptive continuation of SJD-PAC, Kang et
al. 2026: a passed draft or a residual sample is distributed as ``p_j``); new positions get a draft
drawn uniformly from the allowed tokens, and forced end-of-line positions get the forced token
(law one-hot, so it always passes).

With LineAR a window never crosses a line end, and the rejected tail is rolled back (counters only,
`DecodeSession.keep_window`), so the cache, the line queries that score it and the eviction schedule
are exactly those of plain decoding. A batch commits the shortest accepted run of its images: each
image's cut is decided by the others' draws only, so every image keeps its law.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from .layout import LineLayout
from .rules import TokenRules
from .sampling import SamplingConfig, filter_logits


@dataclass(frozen=True)
class Speculation:
    """``window``: inputs per forward, the committed token plus ``window − 1`` drafts."""

    window: int = 16

    def __post_init__(self) -> None:
        if not 2 <= self.window <= 256:
            raise ValueError(f"The speculative window must be 2…256 tokens (one committed + drafts), got {self.window}.")


def distribution(logits: torch.Tensor, sampling: SamplingConfig, rules: TokenRules | None,
                 at_line_end: torch.Tensor) -> torch.Tensor:
    """The law plain sampling draws from: rules, temperature, top-k, top-p, softmax (greedy: the
    argmax as a one-hot). ``logits`` ``(batch, q, vocab)``, ``at_line_end`` ``(q,)`` bool."""
    logits = logits.float()
    if rules is not None:
        logits = rules.apply(logits, at_line_end.expand(logits.shape[:-1]))
    if sampling.greedy:
        return torch.nn.functional.one_hot(logits.argmax(-1), logits.shape[-1]).float()
    return filter_logits(logits / max(sampling.temperature, 1e-5), sampling.top_k, sampling.top_p).softmax(-1)


def draw(probs: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One token per distribution of ``(..., vocab)``."""
    flat = probs.reshape(-1, probs.shape[-1]).to(generator.device)
    return torch.multinomial(flat, 1, generator=generator).to(probs.device).view(probs.shape[:-1])


def verify(p: torch.Tensor, drafts: torch.Tensor, q: torch.Tensor,
           generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """The speculative sampling rule at every position: ``(outcome, passed)``. ``outcome`` is the
    draft where it passed, else a sample of the residual; its law is ``p`` whatever ``q`` is, as
    long as each draft was drawn from its ``q``."""
    index = drafts.unsqueeze(-1)
    ratio = p.gather(-1, index).squeeze(-1) / q.gather(-1, index).squeeze(-1)
    passed = torch.rand(drafts.shape, generator=generator, device=generator.device).to(p.device) < ratio
    residual = (p - q).clamp_min(0)
    mass = residual.sum(-1, keepdim=True)
    residual = torch.where(mass > 0, residual / mass.clamp_min(1e-30), p)  # p == q: rejection never happens
    return torch.where(passed, drafts, draw(residual, generator)), passed


#: weight of the token above in a new draft's law (the rest is uniform over the allowed tokens)
ABOVE_WEIGHT = 0.95


class JacobiDrafts:
    """Drafts for the positions after the newest committed token, and the law of each."""

    def __init__(self, layout: LineLayout, batch: int, vocab: int, rules: TokenRules | None,
                 device: torch.device, generator: torch.Generator) -> None:
        self.layout, self.rules, self.generator = layout, rules, generator
        allowed = rules.allowed if rules is not None and rules.allowed is not None else torch.ones(vocab, dtype=torch.bool)
        self.uniform = allowed.to(device).float() / allowed.sum()
        self.forced = None
        if rules is not None and rules.line_end_token is not None:
            self.forced = torch.zeros_like(self.uniform)
            self.forced[rules.line_end_token] = 1.0
        self.drafts = torch.zeros(batch, 0, dtype=torch.long, device=device)
        self.laws = torch.zeros(batch, 0, vocab, device=device)

    def first(self, count: int, base: int, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Drafts and laws for positions ``base + 1 … base + count``, new ones drawn as needed from
        ``tokens`` (the committed raster) as the spatial prior."""
        while self.drafts.shape[1] < count:
            position = base + 1 + self.drafts.shape[1]
            law = self.prior(position, tokens)
            self.drafts = torch.cat([self.drafts, draw(law, self.generator)[:, None]], 1)
            self.laws = torch.cat([self.laws, law[:, None]], 1)
        return self.drafts[:, :count], self.laws[:, :count]

    def prior(self, position: int, tokens: torch.Tensor) -> torch.Tensor:
        """The law of a new draft ``(batch, vocab)``: the forced token at a forced row end; else
        mostly the committed token one line above (images repeat vertically), mixed with the
        uniform law over the allowed tokens, so that any token can be drafted."""
        batch = tokens.shape[0]
        if self.forced is not None and self.layout.is_line_end(position):
            return self.forced.expand(batch, -1)
        if position < self.layout.line_tokens:
            return self.uniform.expand(batch, -1)
        above = torch.nn.functional.one_hot(tokens[:, position - self.layout.line_tokens], self.uniform.shape[0])
        return ABOVE_WEIGHT * above.float() + (1 - ABOVE_WEIGHT) * self.uniform

    def advance(self, committed: int, outcome: torch.Tensor, p: torch.Tensor) -> None:
        """After a forward that verified ``outcome.shape[1]`` positions and committed the first
        ``committed``: the later outcomes become drafts with law ``p``; unverified drafts stay."""
        verified = outcome.shape[1]
        self.drafts = torch.cat([outcome[:, committed:], self.drafts[:, verified:]], 1)
        self.laws = torch.cat([p[:, committed:], self.laws[:, verified:]], 1)


@torch.inference_mode()
def jacobi_decode(session, tokens: torch.Tensor, vocab: int, sampling: SamplingConfig, rules: TokenRules | None,
                  speculation: Speculation, generator: torch.Generator,
                  on_commit: Callable[[int], None]) -> int:
    """Fill ``tokens`` ``(batch, N)`` from position 1 (position 0 is committed) with speculative
    windows over a prefilled `DecodeSession` (eager or static); ``on_commit(i)`` runs for every committed
    position in order. Returns the number of forwards."""
    layout = session.layout
    n, line = layout.image_tokens, layout.line_tokens
    drafts = JacobiDrafts(layout, tokens.shape[0], vocab, rules, tokens.device, generator)
    ends = torch.tensor([layout.is_line_end(i) for i in range(n + 1)], device=tokens.device)
    committed, forwards = 1, 0
    while committed < n:
        last = committed - 1  # the newest committed token, fed first
        room = min(last + speculation.window - 1, (last // line + 1) * line - 1, n - 2) - last + 1
        count = session.window_size(room, speculation.window)
        guesses, laws = drafts.first(count, last, tokens)
        logits = session.feed_window(torch.cat([tokens[:, last:last + 1], guesses[:, :count - 1]], 1))
        forwards += 1
        p = distribution(logits, sampling, rules, ends[last + 1:last + 1 + count])
        outcome, passed = verify(p, guesses, laws, generator)
        failed = torch.cat([~passed, torch.ones_like(passed[:, :1])], 1).float().argmax(1)
        keep = int(torch.clamp(failed + 1, max=count).min())
        tokens[:, last + 1:last + 1 + keep] = outcome[:, :keep]
        session.keep_window(count, keep)
        drafts.advance(keep, outcome, p)
        for position in range(last + 1, last + 1 + keep):
            on_commit(position)
        committed += keep
    return forwards
