"""Random middle tokens: the control every attention-guided policy must beat at equal budget."""
from dataclasses import dataclass

import torch

from .base import AnchorsAndLinesPolicy, LayerView


@dataclass
class RandomPolicy(AnchorsAndLinesPolicy):
    """LineAR's protected regions (anchors + recent lines); middle slots drawn uniformly from the
    run's seeded generator."""

    name = "random"

    def score(self, view: LayerView) -> torch.Tensor:
        draws = torch.rand(view.image_index.shape, generator=view.generator, device=view.generator.device)
        return draws.to(view.image_index.device)
