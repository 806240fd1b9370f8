"""Pictures of what the cache kept: one coloured cell per image token, over the image if given.

`GenerationStats.kept_map` holds, per layer and image, the share of KV heads that still cache each
image token at the end of a run; this turns it into RGB images a user can look at next to the
generated ones (the ComfyUI "Cache Map" node, and tests).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .layout import LineLayout

#: evicted (0) → partly kept → kept by every head (1): dark violet, teal, yellow (viridis-like ends)
_STOPS = torch.tensor([[0.27, 0.00, 0.33], [0.13, 0.57, 0.55], [0.99, 0.91, 0.14]])


def colourise(share: torch.Tensor) -> torch.Tensor:
    """``(...)`` values in [0, 1] → ``(..., 3)`` RGB by linear interpolation between the stops."""
    x = share.float().clamp(0, 1) * (len(_STOPS) - 1)
    low = x.floor().long().clamp(max=len(_STOPS) - 2)
    t = (x - low).unsqueeze(-1)
    return _STOPS[low] * (1 - t) + _STOPS[low + 1] * t


def kept_grid(kept_map: torch.Tensor, layout: LineLayout, layer: int | None = None) -> torch.Tensor:
    """``(layers, batch, N)`` → ``(batch, grid_h, grid_w)`` share kept, one layer or the mean of all
    (``layer=None``); end-of-line entries are dropped so the grid lines up with the image."""
    layers = kept_map.shape[0]
    if layer is not None and not -layers <= layer < layers:
        raise ValueError(f"Layer {layer} does not exist: the model has layers 0 to {layers - 1} (or use all layers).")
    share = kept_map.float().mean(0) if layer is None else kept_map[layer].float()
    return share.view(share.shape[0], layout.grid_h, layout.line_tokens)[..., :layout.grid_w]


def render_cache_map(kept_map: torch.Tensor, layout: LineLayout, layer: int | None = None,
                     images: torch.Tensor | None = None, opacity: float = 0.6, cell: int = 16) -> torch.Tensor:
    """RGB ``(batch, 3, H, W)`` in [0, 1]: the kept share of each token as a colour cell, blended over
    ``images`` (``(batch, 3, H, W)``, whose size then sets the cell size) with ``opacity``."""
    if not 0.0 <= opacity <= 1.0:
        raise ValueError(f"opacity must be within [0, 1], got {opacity}.")
    colours = colourise(kept_grid(kept_map, layout, layer)).permute(0, 3, 1, 2)  # (batch, 3, h, w)
    if images is None:
        return F.interpolate(colours, scale_factor=cell, mode="nearest")
    if images.shape[0] != colours.shape[0]:
        raise ValueError(f"{images.shape[0]} images for a cache map of {colours.shape[0]}: pass the run's own images.")
    colours = F.interpolate(colours, size=images.shape[-2:], mode="nearest")
    return images.float().cpu() * (1 - opacity) + colours * opacity
