"""What every eviction policy shares: the per-layer view at a line boundary, protection, top-B selection.

A policy says only which visual slots it protects and how it scores the others (kvpress-style);
`EvictionPolicy.select` turns that into exactly ``B`` kept slots per (row, KV head).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch

from ..layout import LineLayout


@dataclass
class LayerView:
    """One layer of one line boundary, as a policy sees it (visual slots only)."""

    layer_idx: int
    layout: LineLayout
    image_index: torch.Tensor  # (rows, kv_heads, V) raster index per visual slot
    visual_keys: torch.Tensor  # (rows, kv_heads, V, d)
    images_written: int  # image tokens whose KV is cached so far (the boundary)
    slot_scores: torch.Tensor | None  # (rows, kv_heads, V) accumulator, when the policy asked for one
    attention_fn: object = None  # () -> (rows, kv_heads, group, window, V) probabilities, computed lazily
    #: the run's generator, or one per row (per-image seeds: a row's draws then ignore its batch)
    generator: torch.Generator | list[torch.Generator] | None = None
    _attention: torch.Tensor | None = field(default=None, repr=False)

    def attention(self) -> torch.Tensor:
        """Line queries' softmax attention on the visual slots (softmax taken over the whole cache)."""
        if self._attention is None:
            if self.attention_fn is None:
                raise RuntimeError("This policy reads attention but declared query_window = 0.")
            self._attention = self.attention_fn()
        return self._attention

    def in_recent_lines(self, lines: int) -> torch.Tensor:
        """Slots holding one of the last ``lines`` complete lines."""
        first = (self.images_written // self.layout.line_tokens - lines) * self.layout.line_tokens
        return self.image_index >= first

    def in_recent_tokens(self, tokens: int) -> torch.Tensor:
        return self.image_index >= self.images_written - tokens

    def is_anchor(self, anchors: int) -> torch.Tensor:
        return self.image_index < anchors

    def is_line_end(self) -> torch.Tensor:
        """Slots holding an end-of-line token (none when the layout has no such tokens)."""
        if not self.layout.eol:
            return torch.zeros_like(self.image_index, dtype=torch.bool)
        return (self.image_index >= 0) & ((self.image_index + 1) % self.layout.line_tokens == 0)


@dataclass
class EvictionPolicy:
    """Base of all policies. Subclasses are dataclasses whose fields are the method's parameters."""

    name: ClassVar[str] = ""
    #: how many of the last queries of each line the policy reads (0: it never reads attention)
    query_window: ClassVar[int] = 0
    #: whether the cache should keep a per-slot fp32 accumulator for this policy
    accumulates: ClassVar[bool] = False
    #: whether the policy evicts at all
    evicts: ClassVar[bool] = True

    def protected_tokens(self, layout: LineLayout) -> int:
        """Image tokens the policy always keeps; must fit in the budget."""
        return 0

    def validate(self, layout: LineLayout) -> None:
        need = self.protected_tokens(layout)
        if self.evicts and layout.compresses and need > layout.budget_tokens:
            raise ValueError(
                f"Budget {layout.budget} = {layout.budget_tokens} image tokens is smaller than what the "
                f"'{self.name}' policy always keeps ({need} tokens: {self.describe_protected(layout)}); "
                "raise the budget or lower the anchors / recent lines."
            )

    def describe_protected(self, layout: LineLayout) -> str:
        return "nothing"

    def observe(self, view: LayerView) -> None:
        """Called at every line boundary, before any eviction (accumulating policies update here)."""

    def protected(self, view: LayerView) -> torch.Tensor:
        """Bool mask of slots never evicted at this boundary (broadcastable to the slots)."""
        return torch.zeros_like(view.image_index, dtype=torch.bool)

    def score(self, view: LayerView) -> torch.Tensor:
        """Higher = keep. ``(rows, kv_heads, V)``."""
        raise NotImplementedError

    def ranking(self, view: LayerView) -> torch.Tensor:
        """Scores with protected slots forced to the top."""
        scores = self.score(view).float()
        return scores.masked_fill(self.protected(view), float("inf"))


def mean_line_attention(view: LayerView) -> torch.Tensor:
    """Mean attention each visual slot received from the line's queries, averaged over the GQA group."""
    return view.attention().mean(dim=(2, 3))


@dataclass
class AnchorsAndLinesPolicy(EvictionPolicy):
    """Protects LineAR's regions: the first ``anchors`` image tokens and the last ``recent_lines``
    complete lines, and with ``keep_line_ends`` every end-of-line token (layouts that have them).
    Subclasses choose the middle tokens by their ``score``."""

    anchors: int = 4
    recent_lines: int = 2
    keep_line_ends: bool = False

    def _kept_line_ends(self, layout: LineLayout) -> int:
        """End-of-line tokens of the older lines, at most (the recent lines hold their own)."""
        return max(0, layout.grid_h - self.recent_lines) if self.keep_line_ends and layout.eol else 0

    def protected_tokens(self, layout: LineLayout) -> int:
        return self.anchors + self.recent_lines * layout.line_tokens + self._kept_line_ends(layout)

    def describe_protected(self, layout: LineLayout) -> str:
        ends = self._kept_line_ends(layout)
        return (f"{self.anchors} anchors + {self.recent_lines} recent lines x {layout.line_tokens}"
                + (f" + {ends} older end-of-line tokens" if ends else ""))

    def protected(self, view: LayerView) -> torch.Tensor:
        kept = view.is_anchor(self.anchors) | view.in_recent_lines(self.recent_lines)
        return kept | view.is_line_end() if self.keep_line_ends else kept
