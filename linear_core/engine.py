"""The sampling loop: prefill, draw, feed, compress at line boundaries, report.

`generate` samples every image token of a request on a `DecodeSession` (one token per step, or
speculative windows, `speculative`), with the callbacks a UI needs (progress, preview, cancel) and
the statistics every benchmark reports.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch

from .adapter import Conditioning, ImageModelAdapter
from .guidance import Guidance
from .layout import LineLayout
from .rules import TokenRules
from .sampling import SamplingConfig, SeededNoise, check_seed, make_generator, offset_seed, sample
from .session import DecodeSession, synchronize
from .settings import CacheSettings
from .speculative import Speculation, jacobi_decode


class GenerationInterrupted(RuntimeError):
    """Raised when the interrupt callback asks to stop; the caches are already freed."""


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
    speculative_window: int = 0  # inputs per forward of speculative decoding (0: one token per step)
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
    def accepted_per_forward(self) -> float:
        """Image tokens committed per decode forward (1 without speculation; the first token comes
        from the prefill)."""
        return (self.image_tokens - 1) / max(self.forwards, 1)

    @property
    def kv_saving(self) -> float:
        return 1.0 - self.kv_allocated_bytes / max(self.full_kv_bytes, 1)

    def as_dict(self) -> dict:
        out = {k: v for k, v in self.__dict__.items() if k not in ("kept_map",)}
        out.update(total_s=self.total_s, tokens_per_s=self.tokens_per_s, kv_saving=self.kv_saving, step_ms=self.step_ms,
                   accepted_per_forward=self.accepted_per_forward)
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
             compile: str = "auto", speculative: Speculation | None = None) -> GenerationResult:
    """Sample the ``N`` image tokens of every image of the request.

    ``seed``: one for the request, or one per image (an image's draws then do not depend on its
    batch; with ``speculative`` the first seed drives the whole request). ``rules`` (a family's
    forced end-of-line token and image vocabulary) rewrite the CFG-combined logits before each
    draw. ``decode`` / ``compile``: see `DecodeSession`. ``speculative``: verify a window of drafts
    per forward (`speculative`; same distribution, fewer forwards), on the eager or the static step. The caches
    (and captured graphs) are freed when this returns or raises.
    """
    if speculative is not None and sampling.draw != "multinomial":
        raise ValueError("Speculative decoding draws its own noise: use multinomial draws with it.")
    session = DecodeSession(adapter, conditioning, layout, settings, guidance, seed, decode, compile)
    devices, lay = session.geometry.devices, session.layout
    line_seconds: list[float] = []
    line_start = time.perf_counter()

    def started(i: int) -> None:
        """Progress and cancel, before token ``i`` is fed."""
        if callbacks.on_token is not None:
            callbacks.on_token(i, lay.line_of(i))
        if callbacks.should_stop is not None and callbacks.should_stop():
            raise GenerationInterrupted(f"Generation stopped at image token {i} (line {lay.line_of(i)}).")

    def finished(i: int) -> None:
        """Line timing and previews, after token ``i`` was fed."""
        nonlocal line_start
        if lay.is_line_end(i):
            synchronize(devices)
            now = time.perf_counter()
            line_seconds.append(now - line_start)
            line_start = now
            line = lay.line_of(i)
            if callbacks.on_preview is not None and (line + 1) % max(1, callbacks.preview_every_lines) == 0:
                callbacks.on_preview(tokens[:, : i + 1], line)

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
        forwards = lay.image_tokens - 1
        if speculative is not None:
            started(0)
            finished(0)
            generator = make_generator(offset_seed(check_seed(seed), 2), logits.device)
            forwards = jacobi_decode(session, tokens, logits.shape[-1], sampling, rules, speculative, generator,
                                     lambda i: (started(i), finished(i)))
        for i in range(lay.image_tokens if speculative is None else 0):
            if i and static is None:
                tokens[:, i] = sample(rules.apply(logits, lay.is_line_end(i)) if rules is not None else logits,
                                      sampling, noise)
            started(i)
            if i + 1 < lay.image_tokens and static is not None:
                session.sample_next()
            elif i + 1 < lay.image_tokens:
                logits = session.feed(tokens[:, i:i + 1])[:, -1]
            finished(i)
        synchronize(devices)
        compile_s = static.timing.compile_s if static is not None else 0.0
        decode_s = time.perf_counter() - t_decode - compile_s
        stats = GenerationStats(
            policy=settings.policy, budget_tokens=lay.budget_tokens, image_tokens=lay.image_tokens,
            batch=session.batch, kv_allocated_bytes=session.kv_allocated_bytes,
            full_kv_bytes=session.full_kv_bytes, query_buffer_bytes=session.query_buffer_bytes,
            prefill_s=prefill_s, decode_s=decode_s, compression_s=session.compression_s,
            compressions=session.compressions, decode="eager" if static is None else "static",
            decode_step=session.step_impl, decode_note=session.decode_note, forwards=forwards,
            speculative_window=speculative.window if speculative is not None else 0,
            compile_s=compile_s, kv_slots_read=session.slots_read, vocab=logits.shape[-1],
            line_seconds=line_seconds, kept_map=session.kept_map(),
        )
        return GenerationResult(tokens.clone() if static is not None else tokens, stats)
    finally:
        session.close()
