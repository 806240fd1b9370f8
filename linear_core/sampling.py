"""Token sampling: temperature, top-k, top-p, and a seeded draw (multinomial or coupled Gumbel-max)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

Draw = Literal["multinomial", "gumbel"]


@dataclass(frozen=True)
class SamplingConfig:
    """``draw='gumbel'`` samples ``argmax(log p + g)`` with noise from the run's generator: the same
    distribution as multinomial, but two runs with the same seed draw the *same* noise at every step,
    so their tokens agree wherever their distributions are close (coupled-noise fidelity)."""

    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    draw: Draw = "multinomial"

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0 (0 = greedy), got {self.temperature}.")
        if not (0.0 < self.top_p <= 1.0):
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}.")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0 = off), got {self.top_k}.")
        if self.draw not in ("multinomial", "gumbel"):
            raise ValueError(f"draw must be 'multinomial' or 'gumbel', got {self.draw!r}.")


def filter_logits(logits: torch.Tensor, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """Set logits outside the top-k / nucleus to -inf (last dimension)."""
    if 0 < top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        drop_sorted = cumulative - sorted_logits.softmax(dim=-1) > top_p  # keep the token that crosses p
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def sample(logits: torch.Tensor, config: SamplingConfig, generator: torch.Generator | None) -> torch.Tensor:
    """Draw one token per row of ``(batch, vocab)`` logits."""
    logits = logits.float()
    if config.temperature == 0:
        return logits.argmax(dim=-1)
    logits = filter_logits(logits / max(config.temperature, 1e-5), config.top_k, config.top_p)
    if config.draw == "gumbel":
        noise = torch.empty_like(logits).exponential_(1.0, generator=generator).log_().neg_()
        return (logits + noise).argmax(dim=-1)
    probs = logits.softmax(dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def make_generator(seed: int, device: torch.device | str) -> torch.Generator:
    """A generator on ``device`` (CUDA/MPS generators avoid a host sync per draw)."""
    device = torch.device(device)
    try:
        generator = torch.Generator(device=device)
    except RuntimeError:
        generator = torch.Generator()
    return generator.manual_seed(int(seed))
