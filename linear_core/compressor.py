"""Line-boundary compression: runs a policy on every layer of the cache of one request.

The cache holds every row of the request (cond and uncond rows batched; see `padding` for
prefixes of different lengths). Per layer the scores may be shared across KV heads or across each
cond/uncond pair, then each row keeps its top-B slots.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from .cache import LineARCache
from .policies import EvictionPolicy, LayerView
from .scoring import LineQueryBuffer, line_attention

HeadSharing = Literal["per_head", "shared"]
CfgMode = Literal["independent", "shared_cond", "shared_sum"]
HEAD_SHARING: tuple[HeadSharing, ...] = ("per_head", "shared")
CFG_MODES: tuple[CfgMode, ...] = ("independent", "shared_cond", "shared_sum")


def check_choices(head_sharing: str, cfg_mode: str) -> None:
    """Refuse a head sharing or CFG mode this module does not implement, naming the choices."""
    if head_sharing not in HEAD_SHARING:
        raise ValueError(f"head_sharing must be one of {', '.join(HEAD_SHARING)}, not {head_sharing!r}.")
    if cfg_mode not in CFG_MODES:
        raise ValueError(f"cfg_mode must be one of {', '.join(CFG_MODES)}, not {cfg_mode!r}.")


@dataclass
class Stream:
    """One cache and the query buffer that feeds its scores."""

    cache: LineARCache
    queries: LineQueryBuffer | None
    #: left-pad count of every row (rows whose prefix is shorter), None when all prefixes are equal
    pads: torch.Tensor | None = None


@dataclass
class Compressor:
    policy: EvictionPolicy
    head_sharing: HeadSharing = "per_head"
    cfg_mode: CfgMode = "independent"
    #: row pairs (cond, uncond) over the cache's rows; None without CFG
    cfg_pairs: tuple[torch.Tensor, torch.Tensor] | None = None
    #: the random policy's draws: one generator, or one per cache row
    generator: torch.Generator | list[torch.Generator] | None = None

    def __post_init__(self) -> None:
        check_choices(self.head_sharing, self.cfg_mode)

    def boundary(self, stream: Stream) -> int:
        """Observe and, past the budget, evict on every layer. Returns the slots evicted per row and head."""
        cache = stream.cache
        cache.index_written()
        budget = cache.layout.budget_tokens
        evicted = 0
        for layer_idx, layer in enumerate(cache.layers):
            view = self._view(stream, layer_idx)
            self.policy.observe(view)
            visual = view.image_index.shape[-1]
            if not self.policy.evicts or visual <= budget:
                continue
            ranking = self._share(self.policy.ranking(view))
            layer.keep(ranking.topk(budget, dim=-1, sorted=False).indices.sort(dim=-1).values)
            evicted = visual - budget
        if stream.queries is not None:
            stream.queries.reset()
        return evicted

    def _view(self, stream: Stream, layer_idx: int) -> LayerView:
        layer = stream.cache.layers[layer_idx]
        attention_fn = None
        if stream.queries is not None:
            def attention_fn(layer=layer, queries=stream.queries):
                probs = line_attention(queries, layer_idx, layer.keys[:, :, :layer.length], stream.pads)
                return probs[..., layer.prefix_len:]
        visual = layer.visual_length
        return LayerView(
            layer_idx=layer_idx,
            layout=stream.cache.layout,
            image_index=layer.image_index[:, :, :visual],
            visual_keys=layer.visual_keys(),
            images_written=stream.cache.image_written,
            slot_scores=None if layer.slot_scores is None else layer.slot_scores[:, :, :visual],
            attention_fn=attention_fn,
            generator=self.generator,
        )

    def _share(self, ranking: torch.Tensor) -> torch.Tensor:
        if self.head_sharing == "shared":
            ranking = ranking.mean(dim=1, keepdim=True).expand_as(ranking)
        if self.cfg_mode != "independent" and self.cfg_pairs is not None:
            cond, uncond = (idx.to(ranking.device) for idx in self.cfg_pairs)
            ranking = ranking.clone()
            if self.cfg_mode == "shared_sum":
                ranking[cond] = ranking[cond] + ranking[uncond]
            ranking[uncond] = ranking[cond]
        return ranking
