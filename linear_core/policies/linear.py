"""LineAR (Qin et al., arXiv 2512.04857): anchors + recent lines + the middle tokens the last line attended to."""
from dataclasses import dataclass

import torch

from ..layout import LineLayout
from .base import EvictionPolicy, LayerView, mean_line_attention


@dataclass
class LinePolicy(EvictionPolicy):
    """Keep the first ``anchors`` image tokens and the last ``recent_lines`` complete lines; fill the
    rest of the budget with the middle-region tokens that received the most attention from the
    queries of the line that just ended (mean over its queries, per KV head)."""

    anchors: int = 4
    recent_lines: int = 2

    name = "linear"
    query_window = 1 << 30  # the whole line

    def protected_tokens(self, layout: LineLayout) -> int:
        return self.anchors + self.recent_lines * layout.line_tokens

    def describe_protected(self, layout: LineLayout) -> str:
        return f"{self.anchors} anchors + {self.recent_lines} recent lines x {layout.line_tokens}"

    def protected(self, view: LayerView) -> torch.Tensor:
        return view.is_anchor(self.anchors) | view.in_recent_lines(self.recent_lines)

    def score(self, view: LayerView) -> torch.Tensor:
        return mean_line_attention(view)
