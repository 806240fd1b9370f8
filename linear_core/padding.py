"""Prefixes of different lengths in one batch: left padding, per-row positions, masks.

The ``separate`` CFG layout gives the unconditional rows a prefix of their own (Lumina-mGPT's
image start alone, or a negative prompt). Running them as their own request costs a second forward
per token; instead both prefixes are left-padded to one length and run together. A pad slot is
hidden from every real query (its key gets exactly zero weight), each row's positions count from
its own first real token, and a pad query sees only itself (so its hidden state stays finite): the
real rows compute what they would alone.
"""
from __future__ import annotations

import torch


def left_pad(prefixes: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Stack ``(rows_i, L_i, hidden)`` prefixes as one ``(Σ rows_i, max L_i, hidden)`` batch, each
    left-padded with zero embeddings; also the pad count of every row (None if none was needed)."""
    length = max(p.shape[1] for p in prefixes)
    if all(p.shape[1] == length for p in prefixes):
        return torch.cat(prefixes, dim=0), None
    padded = [torch.nn.functional.pad(p, (0, 0, length - p.shape[1], 0)) for p in prefixes]
    pads = torch.cat([torch.full((p.shape[0],), length - p.shape[1], dtype=torch.long) for p in prefixes])
    return torch.cat(padded, dim=0), pads.to(prefixes[0].device)


def positions(pads: torch.Tensor, start: int, q: int) -> torch.Tensor:
    """``(rows, q)`` positions of logical slots ``start … start + q − 1``, counted from each row's
    first real token (pad slots get 0; nothing real attends to them)."""
    slots = torch.arange(start, start + q, device=pads.device)
    return (slots[None, :] - pads[:, None]).clamp_(min=0)


def attention_mask(pads: torch.Tensor, length: int, q: int) -> torch.Tensor:
    """``(rows, 1, q, length + q)`` boolean SDPA mask (True = attend) for ``q`` new tokens after
    ``length`` physical cache slots: causal, pad slots hidden, a pad query sees itself. Pads sit at
    the start of the prefix, which is never compacted, so physical and logical slots agree there."""
    keys = torch.arange(length + q, device=pads.device)
    queries = torch.arange(length, length + q, device=pads.device)
    causal = keys[None, :] <= queries[:, None]
    itself = keys[None, :] == queries[:, None]
    real = real_keys(pads, length + q, pads.device)[:, None, :]
    return (causal[None] & (real | itself[None]))[:, None]


def real_keys(pads: torch.Tensor, length: int, device: torch.device) -> torch.Tensor:
    """``(rows, length)``: which of the first ``length`` physical slots hold real tokens."""
    return torch.arange(length, device=device)[None, :] >= pads.to(device)[:, None]
