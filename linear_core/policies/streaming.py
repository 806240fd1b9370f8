"""StreamingLLM-style window (Xiao et al., arXiv 2309.17453): sink tokens + the most recent tokens."""
from dataclasses import dataclass

import torch

from ..layout import LineLayout
from .base import EvictionPolicy, LayerView


@dataclass
class StreamingPolicy(EvictionPolicy):
    """Keep the first ``sinks`` image tokens and the newest ``B - sinks``; no scoring, no position shift."""

    sinks: int = 4

    name = "streaming"

    def protected_tokens(self, layout: LineLayout) -> int:
        return self.sinks

    def describe_protected(self, layout: LineLayout) -> str:
        return f"{self.sinks} sink tokens"

    def protected(self, view: LayerView) -> torch.Tensor:
        return view.is_anchor(self.sinks)

    def score(self, view: LayerView) -> torch.Tensor:
        return view.image_index.float()
