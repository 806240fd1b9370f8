"""R-KV-style (Cai et al., arXiv 2505.24133): attention importance minus key redundancy."""
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..layout import LineLayout
from .base import EvictionPolicy, LayerView


@dataclass
class RedundancyPolicy(EvictionPolicy):
    """score = λ·maxpool_k(mean attention of the last ``window`` queries) − (1−λ)·redundancy, where
    redundancy is a key's mean cosine similarity to the other candidates (softmax-normalised; in a
    pair above ``threshold`` the more recent key is not penalised). The last ``window`` tokens are
    always kept. Defaults follow the R-KV code (λ = 0.07, window 8, kernel 7)."""

    lam: float = 0.07
    window: int = 8
    kernel: int = 7
    threshold: float = 0.5

    name = "rkv"
    query_window = 8

    def protected_tokens(self, layout: LineLayout) -> int:
        return self.window

    def describe_protected(self, layout: LineLayout) -> str:
        return f"the last {self.window} tokens"

    def protected(self, view: LayerView) -> torch.Tensor:
        return view.in_recent_tokens(self.window)

    def score(self, view: LayerView) -> torch.Tensor:
        attn = view.attention()[:, :, :, -self.window:].mean(dim=(2, 3))
        rows, heads, slots = attn.shape
        pooled = F.max_pool1d(attn.view(rows * heads, 1, slots), self.kernel, stride=1, padding=self.kernel // 2)
        importance = pooled.view(rows, heads, slots)

        keys = F.normalize(view.visual_keys.float(), dim=-1)
        sim = keys @ keys.transpose(-1, -2)  # (rows, heads, V, V)
        sim.diagonal(dim1=-2, dim2=-1).zero_()
        # In a highly similar pair the newer key (larger raster index) is exempt from the penalty.
        newer = view.image_index.unsqueeze(-1) > view.image_index.unsqueeze(-2)
        sim = sim.masked_fill(newer & (sim > self.threshold), 0.0)
        redundancy = (sim.sum(-1) / max(slots - 1, 1)).softmax(dim=-1)
        return self.lam * importance - (1.0 - self.lam) * redundancy
