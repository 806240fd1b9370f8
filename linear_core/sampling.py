"""Token sampling: temperature, top-k, top-p, and a seeded draw (multinomial or coupled Gumbel-max).

Every draw is ``pick(filtered logits, Exp(1) noise)``: the noise comes from `SeededNoise` and the
pick is a pure function of it. ``argmax(p / E)`` is exactly what ``torch.multinomial(p, 1,
generator)`` computes (it draws the same ``E`` from the generator), so the eager loop samples what
``multinomial`` would, and a captured decode step, which cannot run a generator inside its graph,
gets its noise drawn just before each replay and picks exactly the same token.
"""
from __future__ import annotations

import math
import operator
from dataclasses import dataclass
from typing import Literal, Sequence

import torch

Draw = Literal["multinomial", "gumbel"]
#: torch generators take 64-bit seeds (ComfyUI's seed widget goes up to the same bound)
MAX_SEED = 2**64 - 1


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
        for name in ("temperature", "top_p"):
            if not math.isfinite(getattr(self, name)):
                raise ValueError(f"{name} must be a finite number, got {getattr(self, name)}.")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0 (0 = greedy), got {self.temperature}.")
        if not (0.0 < self.top_p <= 1.0):
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}.")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0 = off), got {self.top_k}.")
        if self.draw not in ("multinomial", "gumbel"):
            raise ValueError(f"draw must be 'multinomial' or 'gumbel', got {self.draw!r}.")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


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


def pick(logits: torch.Tensor, config: SamplingConfig, noise: torch.Tensor | None) -> torch.Tensor:
    """Tokens for ``(..., vocab)`` logits given ``Exp(1)`` noise of the same shape (None when greedy):
    no generator and no host sync, so it can run inside a captured graph."""
    logits = logits.float()
    if config.greedy:
        return logits.argmax(dim=-1)
    logits = filter_logits(logits / max(config.temperature, 1e-5), config.top_k, config.top_p)
    if config.draw == "gumbel":
        return (logits - noise.log()).argmax(dim=-1)
    return (logits.softmax(dim=-1) / noise).argmax(dim=-1)


class SeededNoise:
    """The ``Exp(1)`` noise of a request's draws. One seed: one generator for all rows (what
    ``torch.multinomial`` with that generator would use). One seed per image: a generator per row,
    so an image's draws do not depend on the other images of its batch."""

    def __init__(self, seed: int | Sequence[int], rows: int, device: torch.device | str) -> None:
        seeds = [seed] if isinstance(seed, int) else list(seed)
        if not isinstance(seed, int) and len(seeds) != rows:
            raise ValueError(f"Give one seed, or one seed per image: {len(seeds)} seeds for {rows} images.")
        self.per_row = not isinstance(seed, int)
        self.generators = [make_generator(s, device) for s in seeds]

    def fill(self, out: torch.Tensor) -> torch.Tensor:
        """Fill ``out`` ``(rows, ..., vocab)`` with fresh noise, in place (a captured step's input)."""
        if not self.per_row:
            return out.exponential_(1.0, generator=self.generators[0])
        for row, generator in zip(out, self.generators):
            row.exponential_(1.0, generator=generator)
        return out

    def draw(self, shape: torch.Size, device: torch.device) -> torch.Tensor:
        return self.fill(torch.empty(shape, dtype=torch.float32, device=device))


def sample(logits: torch.Tensor, config: SamplingConfig, noise: SeededNoise | None) -> torch.Tensor:
    """Draw one token per row of ``(batch, vocab)`` logits."""
    drawn = None if config.greedy else noise.draw(logits.shape, logits.device)
    return pick(logits, config, drawn)


def make_generator(seed: int, device: torch.device | str) -> torch.Generator:
    """A generator on ``device`` (CUDA/MPS generators avoid a host sync per draw)."""
    device = torch.device(device)
    try:
        generator = torch.Generator(device=device)
    except RuntimeError:
        generator = torch.Generator()
    return generator.manual_seed(check_seed(seed))


def offset_seed(seed: int, offset: int) -> int:
    """``seed + offset`` wrapped into the seed range: how a run derives the seeds of its other draws
    (an image of a sampling run, the eviction draws, the speculative noise) from the one it is given."""
    return (seed + offset) % (MAX_SEED + 1)


def check_seed(seed: int | Sequence[int]) -> int:
    """A seed (or each of several) as an int in torch's 64-bit range; returns the first."""
    seeds = list(seed) if isinstance(seed, (list, tuple)) else [seed]
    checked = []
    for value in seeds:
        try:
            checked.append(operator.index(value))  # ints, numpy and 0-d integer tensors; no floats
        except TypeError:
            raise ValueError(f"seed {value!r} is not a whole number.") from None
        if not 0 <= checked[-1] <= MAX_SEED:
            raise ValueError(f"seed {value} is out of range: give a whole number from 0 to 2^64 - 1 ({MAX_SEED}).")
    return checked[0] if checked else 0
