"""H2O-style heavy hitters (Zhang et al., arXiv 2306.14048): cumulative attention + a recent window."""
from dataclasses import dataclass

import torch

from ..layout import LineLayout
from .base import EvictionPolicy, LayerView


@dataclass
class HeavyHitterPolicy(EvictionPolicy):
    """Score = attention a key received from every query since it was written (summed per line at
    each boundary, which equals the per-step sum since nothing is evicted inside a line). Keeps the
    last ``recent_lines`` lines + the top of the rest. Rows (cond/uncond) stay separate, unlike the
    original code that sums over the batch. ``normalize`` divides by the number of queries that
    could see the key, removing the bias toward old tokens."""

    recent_lines: int = 2
    normalize: bool = False

    name = "h2o"
    query_window = 1 << 30
    accumulates = True

    def protected_tokens(self, layout: LineLayout) -> int:
        return self.recent_lines * layout.line_tokens

    def describe_protected(self, layout: LineLayout) -> str:
        return f"{self.recent_lines} recent lines x {layout.line_tokens}"

    def observe(self, view: LayerView) -> None:
        view.slot_scores += view.attention().mean(dim=2).sum(dim=2)

    def protected(self, view: LayerView) -> torch.Tensor:
        return view.in_recent_lines(self.recent_lines)

    def score(self, view: LayerView) -> torch.Tensor:
        if not self.normalize:
            return view.slot_scores
        seen_by = (view.images_written - view.image_index).clamp(min=1)
        return view.slot_scores / seen_by
