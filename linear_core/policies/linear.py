"""LineAR (Qin et al., arXiv 2512.04857): anchors + recent lines + the middle tokens the last line attended to."""
from dataclasses import dataclass

import torch

from .base import AnchorsAndLinesPolicy, LayerView, mean_line_attention


@dataclass
class LinePolicy(AnchorsAndLinesPolicy):
    """Keep the first ``anchors`` image tokens and the last ``recent_lines`` complete lines; fill the
    rest of the budget with the middle-region tokens that received the most attention from the
    queries of the line that just ended (mean over its queries, per KV head)."""

    name = "linear"
    query_window = 1 << 30  # the whole line

    def score(self, view: LayerView) -> torch.Tensor:
        return mean_line_attention(view)
