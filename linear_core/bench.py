"""Side-by-side throughput and memory of policies on one random-weight model, in one process."""
from __future__ import annotations

import statistics
from dataclasses import replace

import torch

from .archs import get_arch
from .devices import DTYPES, default_device
from .engine import generate, synchronize
from .guidance import Guidance
from .sampling import SamplingConfig
from .settings import CacheSettings

def run_bench(arch: str = "llamagen-b", policies: tuple[str, ...] = ("full", "linear"), budget: str = "1/6",
              batch: int = 1, layers: int | None = None, grid: int | None = None, device: str | None = None,
              dtype: str = "fp32", repeats: int = 1, cfg: float = 4.0, seed: int = 0, warmup: bool = True,
              base: CacheSettings = CacheSettings()) -> dict:
    """Run every policy ``repeats`` times, interleaved, on the same model; report medians.

    ``budget`` may list several budgets (``"1/4,1/6"``): each evicting policy then runs at each,
    reported as ``policy@budget``."""
    shape = get_arch(arch)
    if grid is not None:
        shape = replace(shape, grid=grid)
    budgets = [b.strip() for b in str(budget).split(",") if b.strip()]
    runs: dict[str, list] = {}
    plans = []
    for policy in policies:
        for b in (budgets[:1] if policy == "full" else budgets):
            settings = replace(base, policy=policy, budget=b)
            settings.make_policy().validate(shape.layout(settings.budget))  # fail before any work
            key = policy if len(budgets) == 1 or policy == "full" else f"{policy}@{b}"
            plans.append((key, settings))
            runs[key] = []
    device = device or default_device()
    model = shape.build(layers=layers, dtype=DTYPES[dtype], device=device, seed=seed)
    layout = shape.layout(budgets[0])
    guidance = Guidance(cfg, shape.cfg_layout)
    labels = torch.arange(batch, device=device) % 1000
    conditioning = model.conditioning(labels, guidance)
    sampling = SamplingConfig(top_k=shape.top_k)
    if warmup:
        # two lines with the full cache: warms kernels and allocator without a budget that must fit
        generate(model, conditioning, replace(layout, grid_h=2), replace(base, policy="full"), guidance, sampling, seed)
    for _ in range(repeats):
        for key, settings in plans:
            if device.startswith("cuda"):
                synchronize([torch.device(device)])
                torch.cuda.reset_peak_memory_stats()
            stats = generate(model, conditioning, layout, settings, guidance, sampling, seed).stats
            entry = stats.as_dict()
            entry.pop("line_seconds")
            if device.startswith("cuda"):
                entry["peak_device_bytes"] = torch.cuda.max_memory_allocated()
            runs[key].append(entry)
    results = {}
    for policy, entries in runs.items():
        best = dict(entries[0])
        for key in ("tokens_per_s", "decode_s", "compression_s", "prefill_s", "total_s"):
            best[key] = statistics.median(e[key] for e in entries)
        results[policy] = {
            "tokens_per_s": best["tokens_per_s"], "peak_kv_bytes": best["kv_allocated_bytes"],
            "full_kv_bytes": best["full_kv_bytes"], "compression_s": best["compression_s"],
            "decode_s": best["decode_s"], **{k: v for k, v in best.items() if k not in (
                "tokens_per_s", "kv_allocated_bytes", "full_kv_bytes", "compression_s", "decode_s", "policy")},
        }
    reference = results[plans[0][0]]["tokens_per_s"]
    for entry in results.values():
        entry["speedup_vs_first"] = entry["tokens_per_s"] / reference
    return {
        "arch": arch,
        "layout": {"prefix_len": layout.prefix_len, "grid_h": layout.grid_h, "grid_w": layout.grid_w,
                   "line_tokens": layout.line_tokens, "budget_tokens": layout.budget_tokens, "budgets": budgets,
                   "image_tokens": layout.image_tokens, "batch": batch, "cfg_layout": shape.cfg_layout,
                   "layers": model.config.num_hidden_layers, "device": device, "dtype": dtype,
                   "device_name": torch.cuda.get_device_name() if device.startswith("cuda") else device,
                   "repeats": repeats},
        "results": results,
    }


def format_table(report: dict) -> str:
    lay = report["layout"]
    lines = [f"{report['arch']} ({lay['layers']} layers) on {lay['device_name']} {lay['dtype']}, batch {lay['batch']}, "
             f"grid {lay['grid_h']}x{lay['grid_w']} (W'={lay['line_tokens']}), prefix {lay['prefix_len']}, "
             f"N={lay['image_tokens']}",
             f"{'policy':<14} {'B':>5} {'tok/s':>9} {'speedup':>8} {'KV MiB':>9} {'full MiB':>9} {'saving':>7} "
             f"{'decode s':>9} {'compr s':>8} {'compr %':>8}"]
    for name, r in report["results"].items():
        lines.append(
            f"{name:<14} {r['budget_tokens']:>5} {r['tokens_per_s']:>9.1f} {r['speedup_vs_first']:>7.2f}x {r['peak_kv_bytes'] / 2**20:>9.1f} "
            f"{r['full_kv_bytes'] / 2**20:>9.1f} {r['kv_saving'] * 100:>6.1f}% {r['decode_s']:>9.2f} "
            f"{r['compression_s']:>8.3f} {100 * r['compression_s'] / max(r['decode_s'], 1e-9):>7.2f}%")
    return "\n".join(lines)
