"""Random middle tokens: the control every attention-guided policy must beat at equal budget."""
from dataclasses import dataclass

import torch

from ..layout import LineLayout
from .base import EvictionPolicy, LayerView


@dataclass
class RandomPolicy(EvictionPolicy):
    """Same protected regions as LineAR (anchors + recent lines); middle slots drawn uniformly from
    the run's seeded generator."""

    anchors: int = 4
    recent_lines: int = 2

    name = "random"

    def protected_tokens(self, layout: LineLayout) -> int:
        return self.anchors + self.recent_lines * layout.line_tokens

    def describe_protected(self, layout: LineLayout) -> str:
        return f"{self.anchors} anchors + {self.recent_lines} recent lines x {layout.line_tokens}"

    def protected(self, view: LayerView) -> torch.Tensor:
        return view.is_anchor(self.anchors) | view.in_recent_lines(self.recent_lines)

    def score(self, view: LayerView) -> torch.Tensor:
        draws = torch.rand(view.image_index.shape, generator=view.generator, device=view.generator.device)
        return draws.to(view.image_index.device)
