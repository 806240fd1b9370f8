"""A family's logits rules as data: which tokens may follow inside a row, which token ends a row.

Lumina-mGPT and Emu3 only allow image codes inside a row and force their end-of-line token at each
row end. Written as tensors (an allowed-token mask and a forced row) instead of a Python function of
the raster index, the rules are applied with one `torch.where` on a device flag, so a decode step
captured in a CUDA graph applies them without a host branch, exactly as the eager loop does.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class TokenRules:
    """``allowed``: ``(vocab,)`` bool, the tokens a row may hold (None: any). ``line_end_token``: the
    token forced at every row end (None: rows end without one)."""

    allowed: torch.Tensor | None = None
    line_end_token: int | None = None

    def to(self, device: torch.device | str) -> "TokenRules":
        """The same rules with their mask on ``device`` (moved once per request, not per step)."""
        allowed = None if self.allowed is None else self.allowed.to(device)
        return TokenRules(allowed, self.line_end_token)

    def apply(self, logits: torch.Tensor, at_line_end: torch.Tensor | bool) -> torch.Tensor:
        """Logits ``(..., vocab)`` with the rules applied; ``at_line_end`` (a bool, or a bool tensor
        of shape ``logits.shape[:-1]``) marks the positions that close a row."""
        if self.allowed is not None:
            logits = logits.masked_fill(~self.allowed.to(logits.device), float("-inf"))
        if self.line_end_token is None:
            return logits
        forced = torch.full_like(logits[(0,) * (logits.dim() - 1)], float("-inf"))
        forced[self.line_end_token] = 0.0
        flag = torch.as_tensor(at_line_end, device=logits.device)
        return torch.where(flag[..., None], forced, logits)
