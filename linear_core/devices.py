"""Device and dtype choice, asked of torch (ComfyUI passes its own device in)."""
from __future__ import annotations

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
