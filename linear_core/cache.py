"""`LineARCache`: a transformers `Cache` whose buffers are preallocated and compacted in place.

Per layer the keys and values live in ``(rows, kv_heads, capacity, head_dim)`` buffers with
``capacity = prefix + B + W'`` (see `LineLayout.capacity`), so the memory of a run is fixed when
the cache is built. Slots ``[0, prefix)`` hold the conditioning and are never touched again; the
visual slots after them hold image tokens in temporal order. Eviction gathers the kept visual
slots to the front of the visual region; keys stay post-RoPE and positions stay absolute, so the
cache reports its *logical* length (tokens ever written) to transformers, not its physical one.

In static mode (a `StaticCursor` attached, see `static_step`) ``update`` writes at a slot held on the
device and returns a fixed-width view of the buffers, so a decode step has the same shapes every
time and can be replayed from a CUDA graph; the host counters are then advanced by the engine.
"""
from __future__ import annotations

from typing import Sequence

import torch
from transformers.cache_utils import Cache, CacheLayerMixin

from .layout import LineLayout


class StaticCursor:
    """Where a cache in static mode writes, held on the device: ``slot`` is the physical slot of the
    next token (``write`` the slots of the tokens of the current step), ``width`` how many slots
    attention reads (the capacity, or a narrower bucket of it)."""

    def __init__(self, device: torch.device, width: int) -> None:
        self.slot = torch.zeros(1, dtype=torch.long, device=device)
        self.write = self.slot
        self.width = width


class LineARLayer(CacheLayerMixin):
    """One layer's preallocated K/V buffers plus the raster index of every visual slot."""

    is_compileable = False
    is_sliding = False

    def __init__(
        self,
        rows: int,
        kv_heads: int,
        head_dim: int,
        prefix_len: int,
        capacity: int,
        dtype: torch.dtype,
        device: torch.device,
        slot_scores: bool = False,
        value_dim: int | None = None,
    ) -> None:
        super().__init__()
        shape = (rows, kv_heads, capacity)
        self.keys = torch.zeros(*shape, head_dim, dtype=dtype, device=device)
        self.values = torch.zeros(*shape, value_dim or head_dim, dtype=dtype, device=device)
        visual = capacity - prefix_len
        # Raster index of the image token in each visual slot (-1 = empty); differs per row and head
        # once a policy has evicted different tokens.
        self.image_index = torch.full((rows, kv_heads, visual), -1, dtype=torch.long, device=device)
        # Optional per-slot accumulator that travels with its slot (e.g. H2O's cumulative attention).
        self.slot_scores = torch.zeros(rows, kv_heads, visual, dtype=torch.float32, device=device) if slot_scores else None
        self.prefix_len = prefix_len
        self.capacity = capacity
        self.length = 0  # physical slots in use
        self.written = 0  # logical length: tokens ever written
        self.dtype, self.device = dtype, device
        self.is_initialized = True
        self.cursor: StaticCursor | None = None
        self.unindexed = 0  # tokens written in static mode whose raster index is not recorded yet

    # -- transformers Cache layer API ---------------------------------------------------------
    # It changed between 4.56 and 5.x: `lazy_initialization` gained ``value_states``,
    # `get_mask_sizes` takes the query length instead of ``cache_position``, and
    # `get_max_cache_shape` became `get_max_length`. Both forms are accepted here.
    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor | None = None) -> None:
        """Buffers are allocated up front; nothing to do."""

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if self.cursor is not None:
            return self._write_static(key_states, value_states)
        q = key_states.shape[-2]
        end = self.length + q
        if end > self.capacity:
            raise RuntimeError(
                f"LineARCache layer is full ({self.capacity} slots, {self.length} used, {q} more asked): "
                "the decode loop must compress at every line boundary before feeding the next line."
            )
        self.keys[:, :, self.length:end].copy_(key_states)
        self.values[:, :, self.length:end].copy_(value_states)
        first_image = max(self.written, self.prefix_len)
        if self.written + q > self.prefix_len:
            start = max(self.length, self.prefix_len) - self.prefix_len
            count = self.written + q - first_image
            self.image_index[:, :, start:start + count] = torch.arange(
                first_image - self.prefix_len, first_image - self.prefix_len + count, device=self.device
            )
        self.length, self.written = end, self.written + q
        return self.keys[:, :, :end], self.values[:, :, :end]

    def _write_static(self, key_states: torch.Tensor, value_states: torch.Tensor):
        """Write at the device slots of the cursor; no host counter is read or changed."""
        self.keys.index_copy_(2, self.cursor.write, key_states)
        self.values.index_copy_(2, self.cursor.write, value_states)
        width = self.cursor.width
        return self.keys[:, :, :width], self.values[:, :, :width]

    def advance(self, q: int) -> None:
        """Host bookkeeping of ``q`` image tokens a static step wrote (their raster indices are
        recorded by `index_written`, once per line)."""
        self.length, self.written, self.unindexed = self.length + q, self.written + q, self.unindexed + q

    def index_written(self) -> None:
        """Record the raster index of the image tokens static steps wrote since the last call: they
        fill the slots before ``length`` in order, as the eager `update` would have recorded them."""
        if self.unindexed:
            count, end = self.unindexed, self.length - self.prefix_len
            first_image = self.written - self.prefix_len - count
            self.image_index[:, :, end - count:end] = torch.arange(first_image, first_image + count, device=self.device)
            self.unindexed = 0

    def rollback(self, q: int) -> None:
        """Forget the last ``q`` tokens written (a speculative window's rejected tail), eagerly or
        by static steps: only the counters and the raster index move back; the stale slots are
        overwritten by the next write."""
        if q > self.length - self.prefix_len or 0 < self.unindexed < q:
            raise RuntimeError(f"Cannot roll back {q} tokens: only writes since the last boundary can be.")
        self.length, self.written = self.length - q, self.written - q
        if self.unindexed:  # static writes: their raster index is not recorded yet
            self.unindexed -= q
            return
        end = self.length - self.prefix_len
        self.image_index[:, :, end:end + q] = -1

    def get_seq_length(self) -> int:
        return self.written

    def get_mask_sizes(self, query: int | torch.Tensor) -> tuple[int, int]:
        """``query``: the query length (5.x) or the queries' ``cache_position`` (4.x)."""
        query_length = query if isinstance(query, int) else query.shape[0]
        # Physical keys after this update, and the shift that maps physical slot j to a logical
        # position that is causal-comparable with the queries' logical positions.
        return self.length + query_length, self.written - self.length

    def get_max_length(self) -> int:
        return self.capacity

    get_max_cache_shape = get_max_length  # its 4.x name

    def reset(self) -> None:
        self.length = self.written = self.unindexed = 0
        self.image_index.fill_(-1)
        if self.slot_scores is not None:
            self.slot_scores.zero_()

    # -- LineAR ----------------------------------------------------------------------------
    @property
    def visual_length(self) -> int:
        return max(0, self.length - self.prefix_len)

    def visual_keys(self) -> torch.Tensor:
        return self.keys[:, :, self.prefix_len:self.length]

    def keep(self, keep: torch.Tensor) -> None:
        """Keep the visual slots ``keep`` (``(rows, kv_heads, k)``, ascending) and compact them in place."""
        rows, heads, k = keep.shape
        p, v = self.prefix_len, self.visual_length
        # Row-gather on a flat (rows·heads·capacity, d) view: whole head_dim rows are copied, which
        # is several times faster than an element-wise gather with an expanded index.
        base = (torch.arange(rows * heads, device=keep.device) * self.capacity + p).view(rows, heads, 1)
        source = (base + keep).flatten()
        for buf in (self.keys, self.values):
            kept = buf.view(-1, buf.shape[-1]).index_select(0, source)
            buf[:, :, p:p + k].copy_(kept.view(rows, heads, k, -1))
        self.image_index[:, :, :k] = self.image_index[:, :, :v].gather(2, keep)
        self.image_index[:, :, k:] = -1
        if self.slot_scores is not None:
            self.slot_scores[:, :, :k] = self.slot_scores[:, :, :v].gather(2, keep)
            self.slot_scores[:, :, k:] = 0
        self.length = p + k

    @property
    def allocated_bytes(self) -> int:
        return self.keys.numel() * self.keys.element_size() + self.values.numel() * self.values.element_size()


#: one device for every layer, or one per layer
Devices = torch.device | str | Sequence[torch.device | str]


def per_layer(device: Devices, num_layers: int) -> list[torch.device]:
    """One device per layer: a single device is repeated; a list (a model spread by a
    ``device_map``) must name every layer."""
    if isinstance(device, (str, torch.device)):
        return [torch.device(device)] * num_layers
    devices = [torch.device(d) for d in device]
    if len(devices) != num_layers:
        raise ValueError(f"{len(devices)} devices given for {num_layers} layers.")
    return devices


class LineARCache(Cache):
    """A `Cache` of `LineARLayer`s laid out for one `LineLayout` and ``rows`` batch rows; each
    layer's buffers sit on that layer's device."""

    def __init__(
        self,
        layout: LineLayout,
        rows: int,
        num_layers: int,
        kv_heads: int,
        head_dim: int,
        dtype: torch.dtype,
        device: Devices,
        slot_scores: bool = False,
        value_dim: int | None = None,
    ) -> None:
        layers = [
            LineARLayer(rows, kv_heads, head_dim, layout.prefix_len, layout.capacity, dtype, layer_device, slot_scores,
                        value_dim)
            for layer_device in per_layer(device, num_layers)
        ]
        super().__init__(layers=layers)
        self.layout = layout
        self.rows = rows

    @property
    def written(self) -> int:
        return self.layers[0].written

    def attach(self, cursor: StaticCursor | None) -> None:
        """Switch every layer to static writes at ``cursor`` (None: back to eager writes)."""
        for layer in self.layers:
            layer.index_written()
            layer.cursor = cursor

    def advance(self, q: int) -> None:
        for layer in self.layers:
            layer.advance(q)

    def index_written(self) -> None:
        for layer in self.layers:
            layer.index_written()

    def rollback(self, q: int) -> None:
        for layer in self.layers:
            layer.rollback(q)

    @property
    def image_written(self) -> int:
        """Image tokens whose KV has been written so far."""
        return max(0, self.written - self.layout.prefix_len)

    @property
    def allocated_bytes(self) -> int:
        return sum(layer.allocated_bytes for layer in self.layers)

    def full_bytes(self) -> int:
        """Bytes a full (uncompressed) cache of the same rows, heads and dtype would need."""
        per_slot = self.allocated_bytes / self.layout.capacity
        return int(per_slot * self.layout.full_length)

    def kept_image_indices(self, layer_idx: int) -> torch.Tensor:
        """``(rows, kv_heads, visual)`` raster indices held by a layer (-1 = empty slot)."""
        layer = self.layers[layer_idx]
        layer.index_written()
        return layer.image_index[:, :, :layer.visual_length]

    def release(self) -> None:
        """Drop the buffers now (an interrupted or finished run must not hold device memory)."""
        for layer in self.layers:
            layer.cursor = None
            layer.keys = layer.values = None
            layer.image_index = layer.slot_scores = None
            layer.is_initialized = False
        self.layers = []
