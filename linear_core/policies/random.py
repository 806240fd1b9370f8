"""Random middle tokens: the control every attention-guided policy must beat at equal budget."""
from dataclasses import dataclass

import torch

from .base import AnchorsAndLinesPolicy, LayerView


@dataclass
class RandomPolicy(AnchorsAndLinesPolicy):
    """LineAR's protected regions (anchors + recent lines); middle slots drawn uniformly from the
    run's seeded generator (or each row's own, for per-image seeds)."""

    name = "random"

    def score(self, view: LayerView) -> torch.Tensor:
        shape, generator = view.image_index.shape, view.generator
        if isinstance(generator, list):
            draws = torch.stack([torch.rand(shape[1:], generator=g, device=g.device) for g in generator])
        else:
            draws = torch.rand(shape, generator=generator, device=generator.device)
        return draws.to(view.image_index.device)
