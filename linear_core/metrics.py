"""Fidelity of a compressed cache to the full cache of the same model, condition and seed.

* `teacher_forced`: both caches read the same tokens (fed one line per forward, which equals
  token-by-token decoding since nothing is evicted inside a line); per image token
  KL(p_full ‖ p_compressed) of the CFG-combined distributions and top-1 agreement, per line.
* `coupled_agreement`: both runs sample freely with the same Gumbel noise at every step; the share
  of identical tokens and the first line where they diverge.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from .adapter import Conditioning, ImageModelAdapter
from .engine import generate
from .session import DecodeSession
from .guidance import Guidance
from .layout import LineLayout
from .rules import TokenRules
from .sampling import SamplingConfig
from .settings import CacheSettings

FULL = CacheSettings(policy="full")


@dataclass
class TeacherForcedReport:
    kl: torch.Tensor  # (batch, N) KL(full ‖ compressed) in nats per image token
    top1: torch.Tensor  # (batch, N) bool: same argmax
    line_tokens: int

    @property
    def kl_mean(self) -> float:
        return self.kl.mean().item()

    @property
    def top1_agreement(self) -> float:
        return self.top1.float().mean().item()

    def per_line(self) -> dict[str, list[float]]:
        lines = lambda t: t.float().view(t.shape[0], -1, self.line_tokens).mean(dim=(0, 2)).tolist()  # noqa: E731
        return {"kl": lines(self.kl), "top1": lines(self.top1)}


def _compare(full: torch.Tensor, comp: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    log_p, log_q = full.float().log_softmax(-1), comp.float().log_softmax(-1)
    kl = (log_p.exp() * (log_p - log_q)).nan_to_num(0.0).sum(-1)  # masked (-inf) entries carry no mass
    return kl, full.argmax(-1) == comp.argmax(-1)


def _apply_rules(rules: TokenRules | None, layout: LineLayout) -> Callable[[torch.Tensor, int], torch.Tensor]:
    """``(batch, q, vocab)`` logits of image tokens ``first…first+q-1`` with the rules applied."""
    if rules is None:
        return lambda logits, first: logits
    ends = lambda first, q: torch.tensor([layout.is_line_end(i) for i in range(first, first + q)])  # noqa: E731
    return lambda logits, first: rules.apply(logits, ends(first, logits.shape[1]).to(logits.device))


@torch.inference_mode()
def teacher_forced(adapter: ImageModelAdapter, conditioning: Conditioning, layout: LineLayout,
                   tokens: torch.Tensor, settings: CacheSettings, guidance: Guidance = Guidance(1.0, "none"),
                   rules: TokenRules | None = None, decode: str = "eager", compile: str = "auto",
                   reference: ImageModelAdapter | None = None) -> TeacherForcedReport:
    """Compare ``settings`` with the full cache on ``tokens`` ``(batch, N)``; with ``rules`` (a
    family's logits rules) the distributions compared are the ones sampling would draw from;
    ``reference``: the full cache runs on this model instead (e.g. the unquantized weights)."""
    rule = _apply_rules(rules, layout)
    layout.check_sequence(conditioning.prefix.shape[1], tokens.shape[1])
    full = DecodeSession(reference or adapter, conditioning, layout, FULL, guidance, decode=decode, compile=compile)
    comp = DecodeSession(adapter, conditioning, layout, settings, guidance, decode=decode, compile=compile)
    n, width = layout.image_tokens, layout.line_tokens
    tokens = tokens.to(full.geometry.device)
    kls, agree = [], []
    try:
        kl, same = _compare(*(rule(s.prefill()[:, None], 0) for s in (full, comp)))
        kls.append(kl), agree.append(same)
        for start in range(0, n - 1, width):
            chunk = tokens[:, start:min(start + width, n - 1)]
            kl, same = _compare(*(rule(s.feed(chunk), start + 1) for s in (full, comp)))
            kls.append(kl), agree.append(same)
    finally:
        full.close(), comp.close()
    return TeacherForcedReport(torch.cat(kls, 1).cpu(), torch.cat(agree, 1).cpu(), width)


@dataclass
class CoupledReport:
    agreement: float  # share of identical tokens
    first_divergence_line: list[int | None]  # per image; None = identical throughout
    full_tokens: torch.Tensor
    tokens: torch.Tensor


def coupled_agreement(adapter: ImageModelAdapter, conditioning: Conditioning, layout: LineLayout,
                      settings: CacheSettings, guidance: Guidance = Guidance(1.0, "none"),
                      sampling: SamplingConfig = SamplingConfig(), seed: int = 0,
                      reference: torch.Tensor | None = None, rules: TokenRules | None = None,
                      decode: str = "auto", compile: str = "auto") -> CoupledReport:
    """Free-running agreement of ``settings`` with the full cache under shared Gumbel noise.
    ``reference``: the full cache's tokens from an earlier call with the same arguments (reused
    when several policies are compared)."""
    coupled = SamplingConfig(sampling.temperature, sampling.top_k, sampling.top_p, draw="gumbel")
    run = lambda settings: generate(adapter, conditioning, layout, settings, guidance, coupled, seed,  # noqa: E731
                                    rules=rules, decode=decode, compile=compile).tokens.cpu()
    ref = reference.cpu() if reference is not None else run(FULL)
    out = run(settings)
    differs = ref != out
    first = []
    for row in differs:
        hits = row.nonzero()
        first.append(None if hits.numel() == 0 else layout.line_of(int(hits[0])))
    return CoupledReport(1.0 - differs.float().mean().item(), first, ref, out)
