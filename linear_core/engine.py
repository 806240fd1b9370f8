"""The decode engine: prefill, one token per step, CFG, sampling, compression at line boundaries.

`DecodeSession` owns the cache of one request and advances it (`prefill`, `feed`); `generate`
is the sampling loop on top of it, with the callbacks ComfyUI needs (progress, preview, cancel)
and the statistics every benchmark reports. Teacher-forced fidelity (`metrics.py`) drives two
sessions in lockstep.
"""
from __future__ import annotations

import inspect
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch

from .adapter import CacheGeometry, Conditioning, ImageModelAdapter
from .cache import LineARCache
from . import padding
from .compressor import Compressor, Stream
from .devices import check_fits
from .guidance import Guidance
from .layout import LineLayout
from .policies import EvictionPolicy
from .rules import TokenRules
from .sampling import MAX_SEED, SamplingConfig, SeededNoise, check_seed, sample
from .scoring import CAPTURE_KWARG, LineQueryBuffer, register_attention
from .settings import CacheSettings
from .static_step import StaticDecoder, resolve_decode


class GenerationInterrupted(RuntimeError):
    """Raised when the interrupt callback asks to stop; the caches are already freed."""


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
            generator=torch.Generator().manual_seed((check_seed(seed) + 1) % (MAX_SEED + 1)),
        )
        self.compression_s = 0.0
        self.compressions = 0
        self.step_impl, self.decode_note = resolve_decode(decode, compile, self.geometry, adapter.backbone)
        self.static: StaticDecoder | None = None  # built at prefill when the step is static
        self.slots_read = 0  # cache slots (per row and layer) the decode forwards' attention read

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
        start = self.stream.cache.image_written
        tokens = tokens.to(self.geometry.device)
        q = tokens.shape[1]
        line_end = (start // self.layout.line_tokens + 1) * self.layout.line_tokens
        if start + q > min(line_end, self.layout.image_tokens):
            raise ValueError(f"Chunk of {q} tokens from image token {start} crosses the line end at {line_end}.")
        if self.static is not None:
            logits = self.static.feed(tokens)
        else:
            logits = self.guidance.combine(self._forward(self.adapter.embed_image_tokens(self.guidance.expand_tokens(tokens))))
            self.slots_read += self.stream.cache.layers[0].length
        if start + q == line_end:
            self._boundary()
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


@dataclass
class GenerationStats:
    policy: str
    budget_tokens: int
    image_tokens: int
    batch: int
    kv_allocated_bytes: int
    full_kv_bytes: int
    query_buffer_bytes: int
    prefill_s: float
    decode_s: float
    compression_s: float
    compressions: int
    decode: str = "eager"  # the step that ran: eager, or static (cuda-graph, compiled, plain)
    decode_step: str = "eager"
    decode_note: str | None = None  # why a static request ran eagerly
    forwards: int = 0  # model forwards of the decode (the prefill not counted)
    compile_s: float = 0.0  # capture / compile time, not part of decode_s
    kv_slots_read: int = 0  # cache slots per row and layer that the decode's attention read
    vocab: int = 0
    line_seconds: list[float] = field(default_factory=list)
    kept_map: torch.Tensor | None = None

    @property
    def total_s(self) -> float:
        return self.prefill_s + self.decode_s

    @property
    def tokens_per_s(self) -> float:
        """Image tokens generated per second over the whole request (all images of the batch)."""
        return self.batch * self.image_tokens / max(self.total_s, 1e-9)

    @property
    def step_ms(self) -> float:
        return 1e3 * self.decode_s / max(self.forwards, 1)

    @property
    def kv_saving(self) -> float:
        return 1.0 - self.kv_allocated_bytes / max(self.full_kv_bytes, 1)

    def as_dict(self) -> dict:
        out = {k: v for k, v in self.__dict__.items() if k not in ("kept_map",)}
        out.update(total_s=self.total_s, tokens_per_s=self.tokens_per_s, kv_saving=self.kv_saving, step_ms=self.step_ms)
        return out


@dataclass
class GenerationResult:
    tokens: torch.Tensor  # (batch, N) image token ids, end-of-line tokens included
    stats: GenerationStats


@dataclass
class Callbacks:
    """Hooks for a UI: progress per token, cancellation, and a preview of the tokens so far."""

    on_token: Callable[[int, int], None] | None = None  # (image index, line index)
    should_stop: Callable[[], bool] | None = None
    on_preview: Callable[[torch.Tensor, int], None] | None = None  # (tokens so far, finished line)
    preview_every_lines: int = 4


def generate(adapter: ImageModelAdapter, conditioning: Conditioning, layout: LineLayout,
             settings: CacheSettings = CacheSettings(), guidance: Guidance = Guidance(1.0, "none"),
             sampling: SamplingConfig = SamplingConfig(), seed: int | Sequence[int] = 0,
             rules: TokenRules | None = None, callbacks: Callbacks = Callbacks(), decode: str = "auto",
             compile: str = "auto") -> GenerationResult:
    """Sample the ``N`` image tokens of every image of the request.

    ``seed``: one for the request, or one per image (an image's draws then do not depend on its
    batch). ``rules`` (a family's forced end-of-line token and image vocabulary) rewrite the
    CFG-combined logits before each draw. ``decode`` / ``compile``: see `DecodeSession`. The caches
    (and captured graphs) are freed when this returns or raises.
    """
    session = DecodeSession(adapter, conditioning, layout, settings, guidance, seed, decode, compile)
    devices, lay = session.geometry.devices, session.layout
    line_seconds: list[float] = []
    try:
        synchronize(devices)
        t0 = time.perf_counter()
        logits = session.prefill()
        synchronize(devices)
        prefill_s = time.perf_counter() - t0
        noise = SeededNoise(seed, session.batch, logits.device)  # the head's device: draws happen where logits are
        rules = rules.to(logits.device) if rules is not None else None
        first = sample(rules.apply(logits, lay.is_line_end(0)) if rules is not None else logits, sampling, noise)
        static = session.static
        if static is not None:
            tokens = static.start(first, sampling, rules, noise)
        else:
            tokens = torch.zeros(session.batch, lay.image_tokens, dtype=torch.long, device=logits.device)
            tokens[:, 0] = first
        line_start = t_decode = time.perf_counter()
        for i in range(lay.image_tokens):
            if i and static is None:
                tokens[:, i] = sample(rules.apply(logits, lay.is_line_end(i)) if rules is not None else logits,
                                      sampling, noise)
            line = lay.line_of(i)
            if callbacks.on_token is not None:
                callbacks.on_token(i, line)
            if callbacks.should_stop is not None and callbacks.should_stop():
                raise GenerationInterrupted(f"Generation stopped at image token {i} (line {line}).")
            if i + 1 < lay.image_tokens and static is not None:
                session.sample_next()
            elif i + 1 < lay.image_tokens:
                logits = session.feed(tokens[:, i:i + 1])[:, -1]
            if lay.is_line_end(i):
                synchronize(devices)
                now = time.perf_counter()
                line_seconds.append(now - line_start)
                line_start = now
                if callbacks.on_preview is not None and (line + 1) % max(1, callbacks.preview_every_lines) == 0:
                    callbacks.on_preview(tokens[:, : i + 1], line)
        synchronize(devices)
        compile_s = static.timing.compile_s if static is not None else 0.0
        decode_s = time.perf_counter() - t_decode - compile_s
        stats = GenerationStats(
            policy=settings.policy, budget_tokens=lay.budget_tokens, image_tokens=lay.image_tokens,
            batch=session.batch, kv_allocated_bytes=session.kv_allocated_bytes,
            full_kv_bytes=session.full_kv_bytes, query_buffer_bytes=session.query_buffer_bytes,
            prefill_s=prefill_s, decode_s=decode_s, compression_s=session.compression_s,
            compressions=session.compressions, decode="eager" if static is None else "static",
            decode_step=session.step_impl, decode_note=session.decode_note, forwards=lay.image_tokens - 1,
            compile_s=compile_s, kv_slots_read=session.slots_read, vocab=logits.shape[-1],
            line_seconds=line_seconds, kept_map=session.kept_map(),
        )
        return GenerationResult(tokens.clone() if static is not None else tokens, stats)
    finally:
        session.close()
