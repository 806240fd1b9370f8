"""`DecodeSession`: the cache of one request and the forwards that fill it.

It prefills the conditioning, feeds image tokens (one at a time, a chunk inside a line, or a
speculative window that is then partly rolled back), compresses at every line boundary, and runs
the static step when one was asked for. `engine.generate` is the sampling loop on top of it;
teacher-forced fidelity (`metrics.py`) drives two sessions in lockstep.
"""
from __future__ import annotations

import inspect
import time
from typing import Sequence

import torch

from .adapter import CacheGeometry, Conditioning, ImageModelAdapter
from .cache import LineARCache
from . import padding
from .compressor import Compressor, Stream
from .devices import check_fits
from .guidance import Guidance
from .layout import LineLayout
from .policies import EvictionPolicy
from .sampling import check_seed, offset_seed
from .scoring import CAPTURE_KWARG, LineQueryBuffer, register_attention
from .settings import CacheSettings
from .static_step import StaticDecoder, resolve_decode


def synchronize(devices: list[torch.device]) -> None:
    """Wait for queued work on every device so that wall-clock timings mean something."""
    for device in devices:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        elif device.type == "mps":
            torch.mps.synchronize()


def cache_keyword(backbone: torch.nn.Module) -> str:
    """transformers 5.24 renamed ``past_key_values`` to ``cache`` (the old name warns until 5.40)."""
    return "cache" if "cache" in inspect.signature(backbone.forward).parameters else "past_key_values"


def build_stream(geometry: CacheGeometry, policy: EvictionPolicy, layout: LineLayout, rows: int, compresses: bool,
                 device: torch.device | str | None = None, pads: torch.Tensor | None = None) -> Stream:
    """The preallocated cache (and query buffer, for policies that score with queries) of ``rows``
    rows, each layer's part on that layer's device unless ``device`` overrides all of them."""
    g, device = geometry, device or geometry.layer_devices
    if not compresses:
        layout = layout.with_budget(1.0)
    cache = LineARCache(layout, rows, g.num_layers, g.kv_heads, g.head_dim, g.dtype, device,
                        slot_scores=compresses and policy.accumulates)
    queries = None
    if compresses and policy.query_window:
        queries = LineQueryBuffer(g.num_layers, rows, g.q_heads, g.head_dim, layout.line_tokens,
                                  policy.query_window, g.dtype, device)
    return Stream(cache, queries, pads)


def planned_cache_bytes(adapter: ImageModelAdapter, layout: LineLayout, settings: CacheSettings, rows: int) -> int:
    """Device bytes the cache of ``rows`` batched rows will hold (keys, values, slot bookkeeping and
    query buffer), computed by building it on the meta device: what a host such as ComfyUI must free
    before the run."""
    layout = layout.with_budget(settings.budget)
    policy = settings.make_policy()
    stream = build_stream(CacheGeometry.of(adapter.backbone, planning=True), policy, layout, rows,
                          policy.evicts and layout.compresses, device="meta")
    return sum(layer_bytes(stream))


def layer_bytes(stream: Stream) -> list[int]:
    """Bytes each layer's share of a stream holds: keys, values, slot bookkeeping and query buffer."""
    queries = stream.queries.slots if stream.queries is not None else [None] * len(stream.cache.layers)
    return [sum(t.numel() * t.element_size() for t in (layer.keys, layer.values, layer.image_index,
                                                         layer.slot_scores, query) if t is not None)
            for layer, query in zip(stream.cache.layers, queries)]


def bytes_by_device(stream: Stream, devices: Sequence[torch.device]) -> dict[torch.device, int]:
    """A (planned) stream's bytes summed over the devices its layers will sit on."""
    total: dict[torch.device, int] = {}
    for device, size in zip(devices, layer_bytes(stream)):
        total[device] = total.get(device, 0) + size
    return total


class DecodeSession:
    """The cache of one request (``batch`` images, CFG rows batched) and the forwards that fill it."""

    def __init__(self, adapter: ImageModelAdapter, conditioning: Conditioning, layout: LineLayout,
                 settings: CacheSettings, guidance: Guidance = Guidance(1.0, "none"),
                 seed: int | Sequence[int] = 0, decode: str = "eager", compile: str = "auto") -> None:
        """``decode``: ``eager`` (a transformers forward per step), ``static`` (the static step of
        `static_step`, captured or compiled where it can be) or ``auto`` (static where it runs);
        ``compile``: ``auto``, ``on`` or ``off`` (inductor for the static step)."""
        self.adapter, self.settings = adapter, settings
        self.layout = layout.with_budget(settings.budget)
        self.geometry = CacheGeometry.of(adapter.backbone)
        rows, prefix_len = conditioning.prefix.shape[:2]
        self.layout.check_sequence(prefix_len)
        self.layout.check_positions(getattr(adapter, "max_positions", None))  # families with a position limit say so
        self.batch = rows // guidance.batched_rows
        if self.batch * guidance.batched_rows != rows:
            raise ValueError(f"{rows} prefix rows do not split into CFG pairs for layout '{guidance.layout}'.")
        if (guidance.layout == "separate") != (conditioning.uncond_prefix is not None):
            raise ValueError("The 'separate' CFG layout needs uncond_prefix, and only it takes one.")
        self.policy = settings.make_policy()
        self.policy.validate(self.layout)
        adapter.backbone.set_attn_implementation(register_attention())
        self.cache_keyword = cache_keyword(adapter.backbone)

        # A separate unconditional prefix joins the batch, left-padded (see `padding`): [cond; uncond].
        self.guidance = Guidance(guidance.scale, "halves") if guidance.layout == "separate" else guidance
        self.prefix, pads = conditioning.batched()
        self.layout = self.layout.with_prefix(self.prefix.shape[1])
        compresses = self.policy.evicts and self.layout.compresses
        planned = build_stream(self.geometry, self.policy, self.layout, self.prefix.shape[0], compresses, device="meta")
        for device, needed in bytes_by_device(planned, self.geometry.layer_devices).items():
            check_fits(needed, device, f"The KV cache of {self.batch} image{'s' if self.batch > 1 else ''} "
                       f"({self.prefix.shape[0]} rows, {self.layout.capacity} slots)",
                       "lower the batch size, the budget or the image size")
        self.stream = build_stream(self.geometry, self.policy, self.layout, self.prefix.shape[0], compresses, pads=pads)
        self.compressor = Compressor(
            self.policy, settings.head_sharing, settings.cfg_mode, self.guidance.row_pairs(self.batch),
            generator=self._compression_generators(seed),
        )
        self.compression_s = 0.0
        self.compressions = 0
        self.step_impl, self.decode_note = resolve_decode(decode, compile, self.geometry, adapter.backbone)
        self.static: StaticDecoder | None = None  # built at prefill when the step is static
        self.slots_read = 0  # cache slots (per row and layer) the decode forwards' attention read

    def _compression_generators(self, seed: int | Sequence[int]) -> torch.Generator | list[torch.Generator]:
        """The random policy's generator: one for the request, or with one seed per image one per
        cache row, seeded by that row's image, so its draws do not depend on the batch."""
        if isinstance(seed, int):
            return torch.Generator().manual_seed(offset_seed(check_seed(seed), 1))
        seeds = list(seed)
        check_seed(seeds)
        if len(seeds) != self.batch:
            raise ValueError(f"Give one seed, or one seed per image: {len(seeds)} seeds for {self.batch} images.")
        image_of_row = self.guidance.expand_tokens(torch.arange(self.batch)[:, None])[:, 0]
        return [torch.Generator().manual_seed(offset_seed(int(seeds[image]), 1)) for image in image_of_row.tolist()]

    # -- forwards --------------------------------------------------------------------------
    def _forward(self, embeds: torch.Tensor, last_only: bool = False) -> torch.Tensor:
        stream, cache = self.stream, self.stream.cache
        rows, q = embeds.shape[:2]
        extra = {CAPTURE_KWARG: stream.queries} if stream.queries is not None and cache.written >= cache.layout.prefix_len else {}
        if stream.pads is None:
            positions = torch.arange(cache.written, cache.written + q, device=embeds.device).expand(rows, q)
        else:
            positions = padding.positions(stream.pads, cache.written, q)
            extra["attention_mask"] = padding.attention_mask(stream.pads, cache.layers[0].length, q)
        extra[self.cache_keyword] = cache
        out = self.adapter.backbone(inputs_embeds=embeds, position_ids=positions, use_cache=True, **extra)
        if CAPTURE_KWARG in extra:
            stream.queries.advance(q)
        hidden = out.last_hidden_state
        return self.adapter.image_logits(hidden[:, -1:] if last_only else hidden)

    @torch.inference_mode()
    def prefill(self) -> torch.Tensor:
        """Run the prefix; returns CFG-combined logits ``(batch, vocab)`` for image token 0."""
        if self.stream.cache.written:
            raise RuntimeError("prefill() was already called on this session.")
        logits = self.guidance.combine(self._forward(self.prefix, last_only=True)[:, -1])
        if self.step_impl != "eager":
            self.static = StaticDecoder(self, logits.shape[-1], self.step_impl)
        return logits

    @torch.inference_mode()
    def feed(self, tokens: torch.Tensor) -> torch.Tensor:
        """Feed the next image tokens ``(batch, q)`` (never across a line end); returns CFG-combined
        logits ``(batch, q, vocab)``. Compresses when the chunk completes a line."""
        start, line_end = self._check_chunk(tokens.shape[1])
        tokens = tokens.to(self.geometry.device)
        if self.static is not None:
            logits = self.static.feed(tokens)
        else:
            logits = self._feed_eager(tokens)
        if start + tokens.shape[1] == line_end:
            self._boundary()
        return logits

    @torch.inference_mode()
    def feed_window(self, tokens: torch.Tensor) -> torch.Tensor:
        """Feed a speculative window ``(batch, q)`` inside the current line and return its
        CFG-combined logits; nothing is compressed until `keep_window` says how much of it stays."""
        self._check_chunk(tokens.shape[1])
        tokens = tokens.to(self.geometry.device)
        return self.static.feed(tokens) if self.static is not None else self._feed_eager(tokens)

    def window_size(self, room: int, window: int) -> int:
        """Inputs of the next speculative window when ``room`` (≤ ``window``) fit before the line end:
        all of them eagerly; on the static step the full window or the largest power of two that
        fits, so that a request captures (or compiles) a handful of window shapes, not ``window``."""
        if self.static is None or room == window:
            return room
        return 1 << (room.bit_length() - 1)

    @torch.inference_mode()
    def keep_window(self, fed: int, keep: int) -> None:
        """Keep the first ``keep`` of the ``fed`` tokens of the last window: the rest is rolled back
        (only counters move; the cache is then exactly as if they had never been fed), and the
        line is compressed if the kept tokens complete it."""
        if fed > keep:
            self.stream.cache.rollback(fed - keep)
            if self.stream.queries is not None:
                self.stream.queries.line_pos -= fed - keep
            if self.static is not None:
                self.static.rollback(fed - keep)
        if keep and self.stream.cache.image_written % self.layout.line_tokens == 0:
            self._boundary()

    def _check_chunk(self, q: int) -> tuple[int, int]:
        start = self.stream.cache.image_written
        line_end = (start // self.layout.line_tokens + 1) * self.layout.line_tokens
        if start + q > min(line_end, self.layout.image_tokens):
            raise ValueError(f"Chunk of {q} tokens from image token {start} crosses the line end at {line_end}.")
        return start, line_end

    def _feed_eager(self, tokens: torch.Tensor) -> torch.Tensor:
        embeds = self.adapter.embed_image_tokens(self.guidance.expand_tokens(tokens))
        logits = self.guidance.combine(self._forward(embeds))
        self.slots_read += self.stream.cache.layers[0].length
        return logits

    @torch.inference_mode()
    def sample_next(self) -> None:
        """Static decoding: feed the last drawn token and draw the next one into ``static.tokens``,
        in one replayed step; compresses when the token fed completes a line."""
        self.static.sample_next()
        if self.stream.cache.image_written % self.layout.line_tokens == 0:
            self._boundary()

    def advance(self, q: int) -> None:
        """Host counters after a static step wrote ``q`` tokens."""
        self.stream.cache.advance(q)
        if self.stream.queries is not None:
            self.stream.queries.advance(q)

    def _boundary(self) -> None:
        devices = self.geometry.devices
        synchronize(devices)
        t0 = time.perf_counter()
        if self.compressor.boundary(self.stream):
            self.compressions += 1
        if self.static is not None:
            self.static.after_boundary()
        synchronize(devices)
        self.compression_s += time.perf_counter() - t0

    # -- accounting ------------------------------------------------------------------------
    @property
    def cache(self) -> LineARCache:
        return self.stream.cache

    @property
    def kv_allocated_bytes(self) -> int:
        return self.cache.allocated_bytes

    @property
    def full_kv_bytes(self) -> int:
        return self.cache.full_bytes()

    @property
    def query_buffer_bytes(self) -> int:
        return self.stream.queries.allocated_bytes if self.stream.queries is not None else 0

    def kept_map(self) -> torch.Tensor:
        """``(layers, batch, N)``: share of KV heads of each conditional row that hold each image token."""
        cache = self.cache
        cond_rows = self.guidance.row_pairs(self.batch)[0] if self.guidance.batched_rows == 2 else torch.arange(self.batch)
        maps = torch.zeros(len(cache.layers), self.batch, self.layout.image_tokens)
        for layer_idx in range(len(cache.layers)):
            held = cache.kept_image_indices(layer_idx)
            held = held[cond_rows.to(held.device)].cpu().flatten(1)
            maps[layer_idx].scatter_add_(1, held, torch.ones(held.shape))
        maps /= cache.layers[0].keys.shape[1]
        return maps.half()

    def close(self) -> None:
        if self.static is not None:
            self.static.close()
            self.static = None
        self.stream.cache.release()
        self.stream.queries = None

