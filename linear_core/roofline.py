"""What a decode step could cost on this device: bytes it must move and FLOPs it must do, over peaks.

A step reads every weight it multiplies once (for all rows of the batch), the cache slots its
attention reads, and writes fp32 logits; it does ``2·P`` FLOPs per row in the weight products and
``4·heads·head_dim`` per row and cached slot in attention. The roofline time is the larger of
bytes / bandwidth and FLOPs / peak; a benchmark reports its measured step time against it.

Peaks come from a small table of common GPUs (vendor figures: dense, no 2:4 sparsity), from the
caller, or, for a CPU or an unknown GPU, from a one-second measurement of a large copy and a large
matrix product on the device.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch import nn

#: GPU name fragment → (memory bandwidth in B/s, dense bf16/fp16 tensor TFLOP/s, dense fp32 TFLOP/s)
GPU_PEAKS: dict[str, tuple[float, float, float]] = {
    "H200": (4.8e12, 989e12, 67e12),
    "H100": (3.35e12, 989e12, 67e12),  # SXM
    "A100": (2.039e12, 312e12, 19.5e12),  # 80 GB SXM
    "L40S": (0.864e12, 362e12, 91.6e12),
    "RTX 4090": (1.008e12, 165e12, 82.6e12),  # fp32 accumulate
    "RTX 3090": (0.936e12, 71e12, 35.6e12),
    "L4": (0.300e12, 121e12, 30.3e12),
    "T4": (0.320e12, 65e12, 8.1e12),
}


@dataclass(frozen=True)
class Peaks:
    bandwidth: float  # bytes/s
    flops: float  # FLOP/s for the run's dtype
    source: str  # "table: H200", "given", "measured"


def device_peaks(device: torch.device, dtype: torch.dtype, bandwidth: float | None = None,
                 tflops: float | None = None) -> Peaks:
    """Peaks for ``device``: the caller's (``bandwidth`` in B/s, ``tflops``), the table's, or measured."""
    if bandwidth and tflops:
        return Peaks(bandwidth, tflops * 1e12, "given")
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for fragment, (bw, half, single) in GPU_PEAKS.items():
            if fragment in name:
                flops = single if dtype == torch.float32 else half
                return Peaks(bandwidth or bw, (tflops * 1e12) if tflops else flops, f"table: {fragment}")
    measured = measure_peaks(device, dtype)
    return Peaks(bandwidth or measured.bandwidth, (tflops * 1e12) if tflops else measured.flops, measured.source)


def measure_peaks(device: torch.device, dtype: torch.dtype) -> Peaks:
    """Achieved bandwidth of a 256 MiB copy and FLOP/s of a 2048² product: a practical ceiling."""
    src = torch.empty(64 * 2 ** 20, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    a = torch.randn(2048, 2048, dtype=dtype, device=device)

    def best(fn, repeats: int = 5) -> float:
        fn()
        times = []
        for _ in range(repeats):
            sync(device)
            t0 = time.perf_counter()
            fn()
            sync(device)
            times.append(time.perf_counter() - t0)
        return min(times)

    copy_s = best(lambda: dst.copy_(src))
    matmul_s = best(lambda: a @ a)
    return Peaks(2 * src.numel() * 4 / copy_s, 2 * 2048 ** 3 / matmul_s, "measured")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def step_weight_bytes(adapter) -> int:
    """Bytes of the weights one step multiplies: the decoder layers and norm, and the modules the
    image head runs (found by running it once under a forward hook); embedding tables are only
    looked up, a few rows a step, and are not counted."""
    used: set[nn.Module] = set()
    hook = torch.nn.modules.module.register_module_forward_hook(lambda module, args, out: used.add(module))
    try:
        hidden = adapter.backbone.config.hidden_size
        with torch.inference_mode():
            param = next(adapter.backbone.parameters())
            adapter.image_logits(torch.zeros(1, 1, hidden, dtype=param.dtype, device=param.device))
    finally:
        hook.remove()
    modules = [m for m in adapter.backbone.modules() if not isinstance(m, nn.Embedding)] + list(used)
    params = {id(p): p for m in modules for p in m.parameters(recurse=False)}
    return sum(p.numel() * p.element_size() for p in params.values())


def roofline(stats: dict, adapter, rows: int, peaks: Peaks) -> dict:
    """``roofline_step_ms`` and ``roofline_fraction`` of one run (``stats``: its `GenerationStats`
    as a dict), with the bytes and FLOPs per step behind them."""
    geometry_dtype = next(adapter.backbone.parameters()).element_size()
    config = adapter.backbone.config
    layers = config.num_hidden_layers
    q_heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or q_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // q_heads
    forwards = max(stats["forwards"], 1)
    slots = stats["kv_slots_read"] / forwards  # per step and row
    weights = step_weight_bytes(adapter)
    vocab_bytes = 4 * rows * stats.get("vocab", 0)
    kv_bytes = slots * rows * layers * 2 * kv_heads * head_dim * geometry_dtype
    bytes_per_step = weights + kv_bytes + vocab_bytes
    params = weights / geometry_dtype
    flops = 2 * params * rows + 4 * rows * q_heads * head_dim * slots * layers
    ms = 1e3 * max(bytes_per_step / peaks.bandwidth, flops / peaks.flops)
    return {"roofline_step_ms": ms, "roofline_fraction": ms / max(stats["step_ms"], 1e-12),
            "step_bytes": bytes_per_step, "step_weight_bytes": weights, "step_kv_bytes": kv_bytes,
            "step_flops": flops, "peak_bandwidth": peaks.bandwidth, "peak_flops": peaks.flops,
            "peaks_from": peaks.source}
