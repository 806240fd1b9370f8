"""The built-in demo model ``demo-digits``: grey-level "tokenizer" and the digit-accuracy metric.

The demo is a LlamaGen-architecture GPT trained on scikit-learn's 8x8 digits upscaled to a token
grid (``scripts/train_demo.py``); its tokens are grey levels, so decoding is exact and needs no VQ.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

DEMO_NAME = "demo-digits"
DEMO_DIR = Path(__file__).resolve().parent / "assets" / DEMO_NAME


class DigitsPalette:
    """Token ``t`` ↔ grey ``t / (levels − 1)`` on a ``grid × grid`` raster (white digit on black)."""

    def __init__(self, grid: int, levels: int, scale: int = 8) -> None:
        self.grid, self.levels, self.scale = grid, levels, scale

    def grey(self, tokens: torch.Tensor) -> torch.Tensor:
        """``(batch, rows·grid)`` → ``(batch, 1, rows, grid)`` in [0, 1] (``rows`` < grid for a partial image)."""
        return (tokens.float() / (self.levels - 1)).clamp(0, 1).view(tokens.shape[0], 1, -1, self.grid)

    def __call__(self, tokens: torch.Tensor) -> torch.Tensor:
        """``(batch, rows·grid)`` → RGB ``(batch, 3, rows·scale, grid·scale)`` in [0, 1] (nearest
        upscaling, so every token stays one visible square)."""
        grey = self.grey(tokens)
        if self.scale > 1:
            grey = F.interpolate(grey, scale_factor=self.scale, mode="nearest")
        return grey.expand(-1, 3, -1, -1).contiguous()

    def to_digits8(self, tokens: torch.Tensor) -> torch.Tensor:
        """Back to the 8x8 digits resolution, flattened ``(batch, 64)``, for the class-mean metric."""
        return F.adaptive_avg_pool2d(self.grey(tokens.cpu()), 8).flatten(1)


def nearest_mean_accuracy(images8: torch.Tensor, labels: torch.Tensor, means: torch.Tensor) -> float:
    """Share of ``(n, 64)`` images whose nearest class mean (Euclidean) is their label's."""
    distances = torch.cdist(images8.float(), means.float())
    return (distances.argmin(dim=1) == labels.cpu()).float().mean().item()


def training_split(count: int, seed: int, held_out: int = 197) -> tuple[torch.Tensor, torch.Tensor]:
    """``(held-out indices, training indices)`` of the ``count`` digits: the seeded split
    ``scripts/train_demo.py`` trains on and the accuracy scripts take class means from."""
    order = torch.randperm(count, generator=torch.Generator().manual_seed(seed))
    return order[:held_out], order[held_out:]


def class_means(images8: torch.Tensor, labels: torch.Tensor, classes: int = 10) -> torch.Tensor:
    """``(classes, 64)`` mean 8x8 image of each class, for `nearest_mean_accuracy`."""
    return torch.stack([images8[labels == c].mean(0) for c in range(classes)])
