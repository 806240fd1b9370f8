"""Device and dtype choice, asked of torch (ComfyUI passes its own device in)."""
from __future__ import annotations

import ctypes
import gc
import sys

import torch

DTYPES = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16,
          "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16}


def default_device() -> str:
    """The best device torch sees: CUDA, then Apple MPS, then CPU."""
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def check_device(name: str | torch.device) -> torch.device:
    """The device ``name`` names, refused unless torch can compute on it here (``cuda`` without CUDA,
    ``cuda:7`` on a one-GPU machine, a typo)."""
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise ValueError(f"Unknown device {str(name)!r}: use cpu, cuda, cuda:N or mps.") from None
    if device.type == "cpu" or device.type == "meta":
        return device
    backend = getattr(torch, device.type, None)
    if device.type == "mps":
        available, count = bool(torch.backends.mps.is_available()), 1
    else:
        available = backend is not None and hasattr(backend, "is_available") and bool(backend.is_available())
        count = backend.device_count() if available and hasattr(backend, "device_count") else 1
    if not available:
        raise ValueError(f"Device {str(name)!r} is not available on this machine (torch sees no {device.type}); "
                         f"use {default_device()}.")
    if device.index is not None and device.index >= count:
        raise ValueError(f"Device {str(name)!r} does not exist: this machine has {count} {device.type} device"
                         f"{'s' if count != 1 else ''} (0..{count - 1}).")
    return device


def free_bytes(device: torch.device | str) -> int | None:
    """Memory a new allocation on ``device`` can take now, where torch or the OS says it: free
    device memory on CUDA plus what torch's caching allocator holds unused (it hands that out first),
    the recommended budget left on MPS, available RAM on the CPU (Linux); None where it cannot be told."""
    device = torch.device(device)
    if device.type == "cuda":
        cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return torch.cuda.mem_get_info(device)[0] + cached
    if device.type == "mps":
        return torch.mps.recommended_max_memory() - torch.mps.current_allocated_memory()
    if device.type == "cpu":
        try:
            with open("/proc/meminfo") as meminfo:
                for line in meminfo:
                    if line.startswith("MemAvailable:"):
                        return int(line.split()[1]) * 1024
        except OSError:
            return None
    return None


def check_fits(needed: int, device: torch.device | str, what: str, fix: str) -> None:
    """Refuse to allocate ``needed`` bytes for ``what`` on a device with less free memory, before
    anything is allocated; ``fix`` says what to lower."""
    free = free_bytes(device)
    if free is not None and needed > free:
        gib = 2 ** 30
        raise ValueError(f"{what} needs {needed / gib:.2f} GiB but {device} has {free / gib:.2f} GiB free: {fix}.")


def reset_peak(device: torch.device) -> None:
    """Start a new peak-memory window: the CUDA allocator's peak, or the process's resident-set high
    water mark on Linux (other hosts: the CPU peak then spans the whole process)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    elif device.type == "cpu":
        _release_freed_memory()
        try:
            with open("/proc/self/clear_refs", "w") as refs:
                refs.write("5")
        except OSError:
            pass


def _release_freed_memory() -> None:
    """Give memory already freed back to the OS: glibc keeps freed blocks in the resident set, so
    without this a CPU peak window would start from everything an earlier run (a model since
    deleted, say) once held."""
    gc.collect()
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):  # musl and other libcs: no malloc_trim
            pass


def peak_bytes(device: torch.device) -> int | None:
    """The peak since `reset_peak`: bytes the CUDA allocator handed out, or the process's resident
    set (everything the process holds, Python and libraries included) on the CPU; None elsewhere."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device)
    if device.type == "cpu":
        try:
            with open("/proc/self/status") as status:
                for line in status:
                    if line.startswith("VmHWM:"):
                        return int(line.split()[1]) * 1024
        except OSError:
            return None
    return None


def parse_dtype(name: str | torch.dtype) -> torch.dtype:
    if isinstance(name, torch.dtype):
        return name
    try:
        return DTYPES[name]
    except KeyError:
        raise ValueError(f"Unknown dtype {name!r}; use one of {', '.join(DTYPES)}.") from None


def name_offload_devices(model: torch.nn.Module) -> None:
    """Give accelerate's disk-offload readers their device as a string.

    accelerate 1.15 hands ``safetensors.safe_open`` the main device as a ``torch.device``, which
    safetensors 0.8 rejects ("device device(type='cpu') is invalid") at the first forward of a
    layer whose weights stayed on disk; the same device as a string is accepted.
    """
    for module in model.modules():
        weights = getattr(getattr(module, "_hf_hook", None), "weights_map", None)
        reader = getattr(weights, "dataset", weights)  # a PrefixedDataset wraps the loader
        if isinstance(getattr(reader, "device", None), torch.device):
            reader.device = str(reader.device)


def dispatch(model: torch.nn.Module, device_map: str | dict, offload_folder: str | None = None) -> torch.nn.Module:
    """Place a model built in CPU RAM with accelerate: ``"auto"`` (or any string) fills the visible
    devices in order, a dict is used as given. Decoder layers are never split, so each layer's
    cache can sit beside its attention."""
    from accelerate import dispatch_model, infer_auto_device_map

    placement = device_map if isinstance(device_map, dict) else infer_auto_device_map(
        model, no_split_module_classes=model._no_split_modules)
    model = dispatch_model(model, placement, offload_dir=offload_folder)
    name_offload_devices(model)
    return model
