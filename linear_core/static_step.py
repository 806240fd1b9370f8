"""The static decode step: one token (or a few) with fixed shapes, replayed with no Python per operator.

Eager decoding is host-bound on a GPU: every step dispatches a few hundred operators per layer from
Python. Here the step is a function of device state only: the cache writes at a slot held on the
device (`StaticCursor`), attention reads a fixed width of the preallocated buffers under a validity
mask built from that slot, positions and the line-query slots come from device counters, and the
same graph combines CFG, applies the family's `TokenRules` and samples from noise drawn just before
it runs. So it can be captured once as a CUDA graph (`torch.cuda.CUDAGraph`, replayed per token) or
compiled by inductor (CPU). Eviction stays outside, at line boundaries: it compacts the buffers in
place, so every captured pointer stays valid, and the engine then moves the slot counter.

`full` attends over its whole capacity, half of it empty on average; on CUDA it gets a few graphs of
narrower widths (buckets, switched at line boundaries) so its memory traffic stays close to eager's.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from .cache import StaticCursor
from .rules import TokenRules
from .sampling import SamplingConfig, SeededNoise, pick
from .scoring import CAPTURE_KWARG

#: most graphs a `full` request gets on CUDA (one per capacity bucket)
MAX_BUCKETS = 8
#: step implementations: the eager forward, and the static step run plainly, compiled by inductor,
#: captured as a CUDA graph, or compiled and then captured
STEP_IMPLS = ("eager", "plain", "compiled", "cuda-graph", "compiled+cuda-graph")


def static_unsupported(geometry, backbone: torch.nn.Module) -> str | None:
    """Why the static step cannot run this model (None when it can)."""
    if len(geometry.devices) > 1:
        return f"the model is spread over {len(geometry.devices)} devices by a device_map"
    if any(getattr(m, "_hf_hook", None) is not None for m in backbone.modules()):
        return "accelerate hooks move weights in Python on every forward (offloaded layers)"
    if geometry.device.type not in ("cuda", "cpu"):
        return f"{geometry.device.type} has no graph capture"
    return None


def resolve_decode(decode: str, compile: str, geometry, backbone: torch.nn.Module) -> tuple[str, str | None]:
    """The step implementation for a request, and the reason when a static request runs eagerly.

    ``auto`` is static wherever it runs. On CUDA the step is captured as a CUDA graph (``compile=on``
    compiles it with inductor first); on CPU it is compiled only with ``compile=on``: inductor's
    tens of seconds of compiling pay off only over many requests in one process (a server, the
    benchmark), not in a one-shot command."""
    if decode not in ("auto", "static", "eager"):
        raise ValueError(f"decode must be 'auto', 'static' or 'eager', not {decode!r}.")
    if compile not in ("auto", "on", "off"):
        raise ValueError(f"compile must be 'auto', 'on' or 'off', not {compile!r}.")
    if decode == "eager":
        return "eager", None
    reason = static_unsupported(geometry, backbone)
    if reason is not None:
        return "eager", f"eager decode: {reason}"
    compiled = compile == "on"
    if geometry.device.type == "cuda":
        return ("compiled+cuda-graph" if compiled else "cuda-graph"), None
    return ("compiled" if compiled else "plain"), None


def bucket_count(session) -> int:
    """Graphs worth capturing for one request: 1 unless reading the whole capacity every step costs
    a noticeable share of the step's traffic (then up to `MAX_BUCKETS` widths, so that the first
    lines, and a `full` cache all through, read little more than what they hold)."""
    cache, lay = session.stream.cache, session.layout
    weights = sum(p.numel() * p.element_size() for p in session.adapter.backbone.parameters())
    if cache.allocated_bytes < 0.1 * weights:
        return 1
    return max(1, min(MAX_BUCKETS, -(-(lay.capacity - lay.prefix_len) // lay.line_tokens)))


def bucket_widths(prefix_len: int, capacity: int, line_tokens: int, buckets: int) -> list[int]:
    """Attention widths from narrow to the full capacity, each ending on a line (plus the prefix)."""
    lines = -(-(capacity - prefix_len) // line_tokens)
    steps = sorted({max(1, round(lines * (b + 1) / buckets)) for b in range(buckets)})
    return [min(capacity, prefix_len + s * line_tokens) for s in steps]


@dataclass
class StepTiming:
    """What the static step cost besides decoding: capture / compile, paid before the first replay."""

    compile_s: float = 0.0
    graphs: int = 0


class StaticDecoder:
    """Static steps over one `DecodeSession`'s cache (built by it after the prefill): ``feed``
    (teacher forcing or a speculative window, q tokens; ``rollback`` takes a window's tail back)
    and ``sample_next`` (feed the last token, draw the next one into the
    token buffer). ``impl`` is one of `STEP_IMPLS` but ``eager``."""

    def __init__(self, session, vocab: int, impl: str) -> None:
        self.session, self.impl = session, impl
        cache, lay = session.stream.cache, session.layout
        device = self.device = session.geometry.device
        capacity = cache.layers[0].capacity
        buckets = bucket_count(session) if impl.endswith("cuda-graph") else 1
        self.widths = bucket_widths(lay.prefix_len, capacity, lay.line_tokens, buckets)
        self.cursor = StaticCursor(device, self.widths[-1])
        self.position = torch.zeros(1, dtype=torch.long, device=device)  # logical position of the next token
        self.line_pos = torch.zeros(1, dtype=torch.long, device=device)  # tokens of the current line fed
        self.index = torch.zeros(1, dtype=torch.long, device=device)  # raster index of the next token fed
        self.offsets = torch.arange(lay.line_tokens, device=device)
        self.slot_ids = torch.arange(capacity, device=device)
        pads = session.stream.pads
        rows = session.prefix.shape[0]
        self.pads = pads.to(device) if pads is not None else torch.zeros(rows, dtype=torch.long, device=device)
        self.real = self.slot_ids[None, :] >= self.pads[:, None]  # (rows, capacity): not a left-pad slot
        self.line_end = torch.tensor([lay.is_line_end(i) for i in range(lay.image_tokens + 1)], device=device)
        batch = session.batch
        self.tokens = torch.zeros(batch, lay.image_tokens, dtype=torch.long, device=device)
        self.inputs = torch.zeros(batch, lay.line_tokens, dtype=torch.long, device=device)
        self.noise = torch.ones(batch, vocab, dtype=torch.float32, device=device)
        self.vocab = vocab
        self.logits: dict[int, torch.Tensor] = {}
        self.sampling, self.rules, self.noise_source = SamplingConfig(), None, None
        self.timing = StepTiming()
        self._graphs: dict[tuple, torch.cuda.CUDAGraph] = {}
        self._warm: set[tuple] = set()
        self._pool = None
        self._compiled = None
        if "compiled" in impl:  # on CPU the C++ wrapper calls the kernels: 2-3x less host time per step
            options = {"cpp_wrapper": True} if device.type == "cpu" else None
            self._compiled = torch.compile(self._step, fullgraph=True, dynamic=False, options=options)
        cache.attach(self.cursor)
        self.position.fill_(cache.written)
        self.after_boundary()

    # -- the step ---------------------------------------------------------------------------------
    def _step(self, q: int, sample: bool) -> None:
        """Everything one forward does, from device state only (no host sync, no host-int branch)."""
        s = self.session
        cursor, offsets = self.cursor, self.offsets[:q]
        cursor.write = cursor.slot + offsets
        queries = s.stream.queries
        extra = {s.cache_keyword: s.stream.cache}
        if queries is not None:
            queries.static_slots = queries.static_slots_for(self.line_pos, q)
            extra[CAPTURE_KWARG] = queries
        width = cursor.width
        positions = ((self.position + offsets)[None, :] - self.pads[:, None]).clamp(min=0)
        visible = self.slot_ids[None, :width] <= cursor.write[:, None]  # (q, width): written and causal
        extra["attention_mask"] = (visible[None] & self.real[:, None, :width])[:, None]
        embeds = s.adapter.embed_image_tokens(s.guidance.expand_tokens(self.inputs[:, :q]))
        hidden = s.adapter.backbone(inputs_embeds=embeds, position_ids=positions, use_cache=True, **extra)
        logits = s.guidance.combine(s.adapter.image_logits(hidden.last_hidden_state))
        self.logits[q].copy_(logits)
        if sample:
            self._sample(logits[:, -1], self.index + q)
        cursor.slot.add_(q)
        self.position.add_(q)
        self.line_pos.add_(q)
        self.index.add_(q)

    def _sample(self, logits: torch.Tensor, index: torch.Tensor) -> None:
        """Draw the token at raster ``index`` into the token buffer and the next step's input."""
        if self.rules is not None:
            logits = self.rules.apply(logits, self.line_end[index])
        token = pick(logits, self.sampling, None if self.sampling.greedy else self.noise)
        self.inputs[:, :1].copy_(token[:, None])
        self.tokens.index_copy_(1, index, token[:, None])

    # -- running it -------------------------------------------------------------------------------
    @torch.inference_mode()
    def start(self, first_token: torch.Tensor, sampling: SamplingConfig, rules: TokenRules | None,
              noise: SeededNoise) -> torch.Tensor:
        """Set the draw of the request and its first token (the engine drew it from the prefill's
        logits); returns the token buffer that `sample_next` fills."""
        self.sampling, self.noise_source = sampling, noise
        self.rules = rules.to(self.device) if rules is not None else None
        self.tokens[:, 0] = first_token
        self.inputs[:, 0] = first_token
        return self.tokens

    def sample_next(self) -> None:
        """Feed the last drawn token; draw the next one (into `tokens`, at raster index + 1)."""
        if not self.sampling.greedy:
            self.noise_source.fill(self.noise)
        self._run(1, True)

    def feed(self, tokens: torch.Tensor) -> torch.Tensor:
        """Feed ``tokens`` ``(batch, q)``; returns the CFG-combined logits ``(batch, q, vocab)``."""
        q = tokens.shape[1]
        self.inputs[:, :q].copy_(tokens)
        self._run(q, False)
        return self.logits[q].clone()

    def rollback(self, q: int) -> None:
        """Move the device counters back over the last ``q`` tokens fed (a speculative window's
        rejected tail; the cache and the host counters are rolled back by the session)."""
        for counter in (self.cursor.slot, self.position, self.line_pos, self.index):
            counter.sub_(q)

    def _run(self, q: int, sample: bool) -> None:
        if q not in self.logits:
            self.logits[q] = torch.zeros(self.session.batch, q, self.vocab, device=self.device)
        key = (q, sample, self.cursor.width)
        if key not in self._warm:  # the first call of a shape compiles it, or warms it up for capture
            self._warm.add(key)
            graphs, t0 = compiled_graphs(), time.perf_counter()
            (self._compiled or self._step)(q, sample)
            if compiled_graphs() != graphs:  # it compiled (not a cached graph)
                synchronize_device(self.device)
                self.timing.compile_s += time.perf_counter() - t0
        elif self.impl.endswith("cuda-graph"):
            graph = self._graphs.get(key) or self._capture(key)
            graph.replay()
        elif self._compiled is not None:
            # The first call of this shape ran every guard; evaluating them all again (hundreds, over
            # the model's config and the cache's objects) costs more than the compiled step on a small
            # model, so later calls only run the guards that tell the cached graphs apart.
            with torch.compiler.set_stance(skip_guard_eval_unsafe=True):
                self._compiled(q, sample)
        else:
            self._step(q, sample)
        self.session.advance(q)
        self.session.slots_read += self.cursor.width

    def _capture(self, key: tuple) -> torch.cuda.CUDAGraph:
        """Record one step (capture runs nothing: the replay that follows performs it)."""
        t0 = time.perf_counter()
        torch.cuda.synchronize(self.device)
        graph = torch.cuda.CUDAGraph()
        self._pool = self._pool or torch.cuda.graph_pool_handle()
        with torch.cuda.graph(graph, pool=self._pool):
            (self._compiled or self._step)(*key[:2])
        self._graphs[key] = graph
        self.timing.compile_s += time.perf_counter() - t0
        self.timing.graphs += 1
        return graph

    # -- line boundaries --------------------------------------------------------------------------
    def after_boundary(self) -> None:
        """After an eviction (or the prefill): write at the cache's length, start a new line, and
        read the narrowest width that holds the coming line."""
        length = self.session.stream.cache.layers[0].length
        self.cursor.slot.fill_(length)
        self.line_pos.zero_()
        need = length + self.session.layout.line_tokens
        self.cursor.width = next((w for w in self.widths if w >= need), self.widths[-1])

    def close(self) -> None:
        """Drop the graphs and the device buffers; the cache goes back to eager writes."""
        self._graphs.clear()
        self._pool = self._compiled = None
        cache = self.session.stream.cache
        if cache.layers:
            cache.attach(None)
        if self.session.stream.queries is not None:
            self.session.stream.queries.static_slots = None
        self.logits.clear()
        self.tokens = self.inputs = self.noise = None


def compiled_graphs() -> int:
    """Graphs dynamo has compiled in this process (imported late: ``torch._dynamo`` is slow to import)."""
    from torch._dynamo.utils import counters

    return counters["stats"]["unique_graphs"]


def synchronize_device(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
