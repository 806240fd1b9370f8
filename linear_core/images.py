"""Image tensors to files: a grid of a batch, written as PNG."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch


def grey_unfinished(image: torch.Tensor, lines: int, grid_h: int) -> torch.Tensor:
    """Paint the rows below the first ``lines`` of ``grid_h`` token lines grey (in place): a
    preview decodes placeholder tokens there."""
    if lines < grid_h:
        image[:, :, lines * image.shape[-2] // grid_h:] = 0.5
    return image


def make_grid(images: torch.Tensor, columns: int | None = None, padding: int = 2) -> torch.Tensor:
    """``(batch, 3, H, W)`` in [0, 1] → one ``(3, H', W')`` image, row-major, black gaps."""
    batch, channels, height, width = images.shape
    columns = columns or math.ceil(math.sqrt(batch))
    rows = math.ceil(batch / columns)
    grid = images.new_zeros(channels, rows * (height + padding) + padding, columns * (width + padding) + padding)
    for i, image in enumerate(images):
        top, left = padding + (i // columns) * (height + padding), padding + (i % columns) * (width + padding)
        grid[:, top:top + height, left:left + width] = image
    return grid


def to_pil(image: torch.Tensor):
    """``(3, H, W)`` in [0, 1] → a PIL RGB image."""
    from PIL import Image

    array = (image.detach().float().cpu().clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    return Image.fromarray(array)


def save_png(images: torch.Tensor, path: str | Path) -> Path:
    """Write a batch (as a grid when more than one) to ``path``; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    to_pil(images[0] if images.shape[0] == 1 else make_grid(images)).save(path)
    return path
