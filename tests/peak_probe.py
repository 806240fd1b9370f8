"""Run in a fresh process by `test_memory_plan`: one bench-shape request, its measured peak next to
the planner's prediction, as JSON. On the CPU the peak is the resident set's high-water mark above
the baseline of a warmed-up process; glibc is told to map every large block on its own
(``MALLOC_MMAP_THRESHOLD_``, set by the caller), so freed weights leave the resident set at once."""
from __future__ import annotations

import gc
import json
import sys
from dataclasses import replace

import torch

from linear_core import CacheSettings, Guidance, LineLayout
from linear_core.archs import get_arch
from linear_core.devices import peak_bytes, reset_peak
from linear_core.engine import generate
from linear_core.memory_plan import plan, target_of_arch
from linear_core.quantize import quantize_linears
from linear_core.sampling import SamplingConfig


def resident() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * 4096


def run(arch: str, layers: int, grid: int, mode: str, policy: str, budget: str, device: str) -> dict:
    device_ = torch.device(device)
    shape = get_arch(arch)
    settings = CacheSettings(policy, budget)
    guidance = Guidance(4.0, shape.cfg_layout)
    tiny = get_arch("llamagen-b").build(layers=1, dtype=torch.bfloat16, device=device)  # loads kernels and libraries
    generate(tiny, tiny.conditioning(torch.zeros(1, dtype=torch.long, device=device), guidance),
             LineLayout(1, 2, 4), CacheSettings("full"), guidance, SamplingConfig())
    del tiny
    gc.collect()
    base = resident() if device_.type == "cpu" else torch.cuda.memory_allocated(device_)
    model = shape.build(layers=layers, dtype=torch.bfloat16, device=device)
    quantize_linears(model.backbone, mode, device)
    gc.collect()
    reset_peak(device_)
    layout = replace(shape, grid=grid).layout()
    conditioning = model.conditioning(torch.zeros(1, dtype=torch.long, device=device), guidance)
    generate(model, conditioning, layout, settings, guidance, SamplingConfig(top_k=shape.top_k), seed=0, decode="eager")
    measured = peak_bytes(device_) - base
    predicted = plan(target_of_arch(arch, layers, torch.bfloat16, 4.0, grid), 1 << 50, 1, settings, mode,
                     device).peak_bytes
    return {"measured": measured, "predicted": predicted}


if __name__ == "__main__":
    print(json.dumps(run(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5], sys.argv[6],
                         sys.argv[7])))
