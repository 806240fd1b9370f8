"""Side-by-side throughput and memory of policies on one model, in one process, against the roofline.

Every (policy, budget, decode) combination runs on the same weights and the same conditioning,
``repeats`` times interleaved, and medians are reported with the step time the memory traffic and
FLOPs allow on this device (`roofline`). The model is a random-weight real shape (`archs`), or the
built-in trained ``demo-digits``.
"""
from __future__ import annotations

import statistics
from dataclasses import replace

import torch

from .archs import get_arch
from .demo import DEMO_NAME
from .devices import DTYPES, default_device, peak_bytes, reset_peak
from .engine import generate
from .guidance import Guidance
from .quantize import quantize_linears, weight_bytes
from .roofline import device_peaks, roofline
from .sampling import SamplingConfig
from .settings import CacheSettings
from .speculative import Speculation

#: a decode spec → (decode, compile) for `generate`
DECODES = {"auto": ("auto", "auto"), "static": ("static", "auto"), "eager": ("eager", "off"),
           "compiled": ("static", "on")}


def _model(arch: str, layers: int | None, grid: int | None, dtype: str, device: str, seed: int, cfg: float | None):
    """Model, layout, guidance scale and CFG layout, and sampling of the benchmark."""
    if arch == DEMO_NAME:
        from .loading import load_pipeline

        pipeline = load_pipeline(DEMO_NAME, dtype=dtype, device=device)
        model = pipeline.model
        scale = pipeline.defaults.cfg if cfg is None else cfg
        return model, pipeline.layout, model.guidance(scale), pipeline.defaults.sampling()
    shape = get_arch(arch)
    if layers is not None and not 1 <= layers <= shape.layers:
        raise ValueError(f"--layers {layers} is outside 1..{shape.layers}, the depth of {arch}.")
    if grid is not None:
        shape = replace(shape, grid=grid)
    model = shape.build(layers=layers, dtype=DTYPES[dtype], device=device, seed=seed)
    return model, shape.layout(), Guidance(4.0 if cfg is None else cfg, shape.cfg_layout), SamplingConfig(top_k=shape.top_k)


def run_bench(arch: str = "llamagen-b", policies: tuple[str, ...] = ("full", "linear"), budget: str = "1/6",
              batch: int = 1, layers: int | None = None, grid: int | None = None, device: str | None = None,
              dtype: str = "fp32", repeats: int = 1, cfg: float | None = None, seed: int = 0, warmup: bool = True,
              base: CacheSettings = CacheSettings(), decodes: tuple[str, ...] = ("auto",),
              peak_bandwidth: float | None = None, peak_tflops: float | None = None,
              speculative: Speculation | None = None, quantize: tuple[str, ...] = ("none",)) -> dict:
    """Run every policy ``repeats`` times, interleaved, on the same model; report medians.

    ``budget`` may list several budgets (``"1/4,1/6"``): each evicting policy then runs at each,
    reported as ``policy@budget``; several ``decodes`` (`DECODES`) add ``/decode`` to the names;
    ``speculative`` runs every plan a second time with it, as ``name+jacobi``; several ``quantize``
    modes run every plan on each (the same random weights quantized), as ``name/int8``."""
    device = device or default_device()
    # quantized modes are built in CPU RAM and reach the device layer by layer, already small
    build_on = lambda mode: "cpu" if mode != "none" else device  # noqa: E731
    model, layout, guidance, sampling = _model(arch, layers, grid, dtype, build_on(quantize[0]), seed, cfg)
    budgets = [b.strip() for b in str(budget).split(",") if b.strip()]
    unknown = [d for d in decodes if d not in DECODES]
    if unknown or not decodes:
        raise ValueError(f"Unknown decode {', '.join(unknown)}; choose from {', '.join(DECODES)}.")
    plans = []
    for policy in policies:
        for b in (budgets[:1] if policy == "full" else budgets):
            settings = replace(base, policy=policy, budget=b)
            settings.make_policy().validate(layout.with_budget(settings.budget))  # fail before any work
            key = policy if len(budgets) == 1 or policy == "full" else f"{policy}@{b}"
            plans += [(key if len(decodes) == 1 else f"{key}/{d}", settings, d, None) for d in decodes]
    if speculative is not None:
        plans += [(f"{key}+jacobi", settings, d, speculative) for key, settings, d, _ in plans]
    depth = model.config.num_hidden_layers
    results: dict[str, dict] = {}
    for mode in quantize:
        if mode != quantize[0]:  # a fresh copy of the same random weights for each mode
            model = _model(arch, layers, grid, dtype, build_on(mode), seed, cfg)[0]
        quantize_linears(model.backbone, mode, device)
        model.to(device)
        suffix = f"/{mode}" if len(quantize) > 1 else ""
        runs = _run_plans(model, layout, guidance, sampling, plans, batch, repeats, device, seed, warmup, base)
        rows = model.conditioning(torch.zeros(1, dtype=torch.long, device=device), guidance).batched()[0].shape[0]
        peaks = device_peaks(torch.device(device), DTYPES[dtype], peak_bandwidth, peak_tflops)
        for key, entries in runs.items():
            results[key + suffix] = {**_summary(entries, model, rows * batch, peaks), "quantize": mode,
                                     "weight_bytes": weight_bytes(model)}
        del model
    first = next(iter(results.values()))["tokens_per_s"]
    for entry in results.values():
        entry["speedup_vs_first"] = entry["tokens_per_s"] / first
    return {
        "arch": arch,
        "layout": {"prefix_len": layout.prefix_len, "grid_h": layout.grid_h, "grid_w": layout.grid_w,
                   "line_tokens": layout.line_tokens, "budget_tokens": layout.with_budget(budgets[0]).budget_tokens,
                   "budgets": budgets, "image_tokens": layout.image_tokens, "batch": batch,
                   "cfg_layout": guidance.layout, "layers": depth, "device": device,
                   "dtype": dtype, "repeats": repeats, "quantize": list(quantize),
                   "device_name": torch.cuda.get_device_name() if device.startswith("cuda") else device},
        "peaks": {"bandwidth": peaks.bandwidth, "flops": peaks.flops, "source": peaks.source},
        "results": results,
    }


def _run_plans(model, layout, guidance, sampling, plans, batch: int, repeats: int, device: str, seed: int,
               warmup: bool, base: CacheSettings) -> dict[str, list]:
    """Every plan ``repeats`` times, interleaved, on one model: each run's stats with its peak memory
    (the device's allocator on CUDA, the process's resident set on the CPU)."""
    conditioning = model.conditioning(torch.arange(batch, device=device) % getattr(model, "num_classes", 1000),
                                      guidance)
    if warmup:
        # two lines with the full cache: warms kernels and allocator without a budget that must fit
        generate(model, conditioning, replace(layout, grid_h=2), replace(base, policy="full"), guidance, sampling, seed,
                 decode="eager")
    runs: dict[str, list] = {key: [] for key, *_ in plans}
    for _ in range(repeats):
        for key, settings, decode, speculation in plans:
            reset_peak(torch.device(device))
            stats = generate(model, conditioning, layout, settings, guidance, sampling, seed,
                             decode=DECODES[decode][0], compile=DECODES[decode][1], speculative=speculation).stats
            entry = stats.as_dict()
            entry.pop("line_seconds")
            entry["peak_memory_bytes"] = peak_bytes(torch.device(device))
            if device.startswith("cuda"):
                entry["peak_device_bytes"] = entry["peak_memory_bytes"]
            runs[key].append(entry)
    return runs


def _summary(entries: list[dict], model, rows: int, peaks) -> dict:
    """Medians of the timed fields (compile time kept from the first run, where it was paid)."""
    best = dict(entries[0])
    for key in ("tokens_per_s", "decode_s", "compression_s", "prefill_s", "total_s", "step_ms"):
        best[key] = statistics.median(e[key] for e in entries)
    best["compile_s"] = max(e["compile_s"] for e in entries)
    best.update(roofline(best, model, rows, peaks))
    return {
        "tokens_per_s": best["tokens_per_s"], "peak_kv_bytes": best["kv_allocated_bytes"],
        "full_kv_bytes": best["full_kv_bytes"], "compression_s": best["compression_s"],
        "decode_s": best["decode_s"], "images_per_s": best["batch"] / max(best["total_s"], 1e-9),
        **{k: v for k, v in best.items() if k not in (
            "tokens_per_s", "kv_allocated_bytes", "full_kv_bytes", "compression_s", "decode_s", "policy")},
    }


def format_table(report: dict) -> str:
    lay = report["layout"]
    lines = [f"{report['arch']} ({lay['layers']} layers) on {lay['device_name']} {lay['dtype']}, batch {lay['batch']}, "
             f"grid {lay['grid_h']}x{lay['grid_w']} (W'={lay['line_tokens']}), prefix {lay['prefix_len']}, "
             f"N={lay['image_tokens']}; peaks {report['peaks']['bandwidth'] / 1e9:.0f} GB/s, "
             f"{report['peaks']['flops'] / 1e12:.1f} TFLOP/s ({report['peaks']['source']})",
             f"{'run':<22} {'B':>5} {'tok/s':>9} {'speedup':>8} {'KV MiB':>8} {'saving':>7} {'decode s':>9} "
             f"{'step ms':>8} {'roof ms':>8} {'roof %':>7} {'compile s':>9} {'compr %':>8} {'fwd':>6} {'tok/fwd':>7} "
             f"{'W MiB':>8} {'peak MiB':>9}  step"]
    for name, r in report["results"].items():
        lines.append(
            f"{name:<22} {r['budget_tokens']:>5} {r['tokens_per_s']:>9.1f} {r['speedup_vs_first']:>7.2f}x "
            f"{r['peak_kv_bytes'] / 2**20:>8.1f} {r['kv_saving'] * 100:>6.1f}% {r['decode_s']:>9.2f} "
            f"{r['step_ms']:>8.3f} {r['roofline_step_ms']:>8.3f} {100 * r['roofline_fraction']:>6.1f}% "
            f"{r['compile_s']:>9.1f} {100 * r['compression_s'] / max(r['decode_s'], 1e-9):>7.2f}% "
            f"{r['forwards']:>6} {r['accepted_per_forward']:>7.2f} "
            f"{r['weight_bytes'] / 2**20:>8.1f} {(r['peak_memory_bytes'] or 0) / 2**20:>9.1f}  {r['decode_step']}")
    notes = {r["decode_note"] for r in report["results"].values() if r.get("decode_note")}
    return "\n".join(lines + sorted(notes))
