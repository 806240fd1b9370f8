"""Classifier-free guidance row layouts: where the cond and uncond rows of a batch live.

* ``none``: no CFG, ``batch`` rows.
* ``halves``: ``[cond × batch; uncond × batch]`` (LlamaGen, transformers' Janus).
* ``interleaved``: cond and uncond alternate (DeepSeek's original Janus loop).
* ``separate``: the unconditional rows have a prefix and positions of their own (Lumina-mGPT's
  image start alone, a negative prompt of another length); the engine left-pads both prefixes
  into one ``[cond; uncond]`` batch (`padding`) and runs it as ``halves``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch

CfgLayout = Literal["none", "halves", "interleaved", "separate"]


@dataclass(frozen=True)
class Guidance:
    scale: float = 1.0
    layout: CfgLayout = "halves"

    def __post_init__(self) -> None:
        if not math.isfinite(self.scale):
            raise ValueError(f"cfg must be a finite number, got {self.scale} (1 = no guidance).")
        if self.layout not in ("none", "halves", "interleaved", "separate"):
            raise ValueError(
                f"CFG layout {self.layout!r} is unknown: use 'none', 'halves', 'interleaved' or 'separate'."
            )

    @property
    def batched_rows(self) -> int:
        """Rows per image in `Conditioning.prefix` (``separate`` keeps its uncond rows apart)."""
        return 2 if self.layout in ("halves", "interleaved") else 1

    def row_pairs(self, batch: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(cond rows, uncond rows) over the stacked rows of all caches of the request."""
        idx = torch.arange(batch)
        if self.layout in ("halves", "separate"):
            return idx, idx + batch
        if self.layout == "interleaved":
            return 2 * idx, 2 * idx + 1
        return None

    def expand_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """Per-image tokens ``(batch, q)`` → rows of the batched cache."""
        if self.layout == "halves":
            return torch.cat([tokens, tokens], dim=0)
        if self.layout == "interleaved":
            return tokens.repeat_interleave(2, dim=0)
        return tokens

    def split(self, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Rows of the batch → (cond, uncond or None)."""
        if self.layout in ("halves", "separate"):
            return logits.chunk(2, dim=0)
        if self.layout == "interleaved":
            return logits[0::2], logits[1::2]
        return logits, None

    def combine(self, logits: torch.Tensor) -> torch.Tensor:
        """``u + (c − u)·scale`` per image; plain cond logits without CFG."""
        cond, uncond = self.split(logits)
        if uncond is None:
            return cond
        return uncond + (cond - uncond) * self.scale
