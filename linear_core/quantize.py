"""Weight-only int8 / int4 of a decoder's linear layers at load time, with torchao.

Why torchao: it is PyTorch's own quantization library (no dependency besides torch, so it never
swaps the torch a host such as ComfyUI runs), its tensors are plain tensor subclasses that
``torch.compile(fullgraph=True)`` traces, so the static decode step keeps working, and it packs
true 4-bit weights for CUDA's tinygemm kernel. The README records the measurements behind the
choice. Only the decoder stack's linear layers are quantized: the token embedding, the image head
and the VQ decoder keep the checkpoint's dtype (together a few percent of a 7B model's bytes).

Layouts per device: int8 is one int8 per weight plus one scale per output row everywhere; int4 is
two weights per byte (tinygemm, groups of `GROUP` along the input) on CUDA, and on the CPU, where
torchao 0.18 has no packed int4 kernel, the same 4-bit values one per int8 byte (no byte saving
over int8, the same rounding as 4 bits). Other devices get a clear error for int4.
"""
from __future__ import annotations

import torch
from torch import nn

MODES = ("none", "int8", "int4")
#: int4 groups: consecutive input weights that share one scale and zero point
GROUP = 128
INSTALL = "pip install torchao"


def check_mode(mode: str) -> str:
    if mode not in MODES:
        raise ValueError(f"Unknown quantize {mode!r}: use one of {', '.join(MODES)}.")
    return mode


def _torchao():
    try:
        import torchao.quantization as ao
    except ImportError:
        raise ValueError(f"Quantized weights need torchao: {INSTALL} (it needs no other package).") from None
    except Exception as error:  # a torchao built for another torch can fail at import in any way
        raise ValueError(f"torchao failed to import with torch {torch.__version__} ({error}): install the "
                         "torchao release made for this torch (see torchao's compatibility table), or use "
                         "quantize none.") from None
    return ao


def check_device_supports(mode: str, device: torch.device | str, dtype: torch.dtype = torch.bfloat16) -> None:
    """Refuse a mode the device has no kernel for, or torchao missing, before any weight is read."""
    if check_mode(mode) != "none":
        _torchao()
    device = torch.device(device)
    if mode == "int4" and device.type not in ("cpu", "cuda"):
        raise ValueError(f"int4 weights run on CUDA and the CPU only (torchao has no {device.type} kernel): "
                         "use quantize int8 or none.")
    if mode == "int4" and device.type == "cuda" and torch.cuda.get_device_capability(device)[0] < 8:
        raise ValueError("int4 weights need a CUDA GPU of compute capability 8.0 or newer (Ampere+): "
                         "use quantize int8.")
    if mode == "int4" and device.type == "cuda" and dtype != torch.bfloat16:
        raise ValueError("int4 weights on CUDA need a bf16 model (the tinygemm kernel): use dtype bf16.")


def int4_group(in_features: int) -> int | None:
    """The int4 group size for a layer this wide (None: too narrow or odd, the layer stays as it is)."""
    for group in (GROUP, 64, 32):
        if in_features % group == 0:
            return group
    return None


def quantizable(module: nn.Module, mode: str, device_type: str) -> bool:
    """Whether ``module`` is a linear layer that ``mode`` quantizes on that device type."""
    if not isinstance(module, nn.Linear) or module.weight.device.type == "meta":
        return False  # offloaded (meta) layers keep the checkpoint dtype
    return _takes(module.in_features, mode)


def _takes(in_features: int, mode: str) -> bool:
    return mode == "int8" or (mode == "int4" and int4_group(in_features) is not None)


def _config(mode: str, device_type: str, group: int):
    ao = _torchao()
    if mode == "int8":
        return ao.Int8WeightOnlyConfig()
    if device_type == "cuda":
        return ao.Int4WeightOnlyConfig(group_size=group, int4_packing_format="tile_packed_to_4d")
    from torchao.quantization.granularity import PerGroup

    return ao.IntxWeightOnlyConfig(weight_dtype=torch.int4, granularity=PerGroup(group))


@torch.no_grad()
def quantize_linears(decoder: nn.Module, mode: str, device: torch.device | str, move: bool = True) -> int:
    """Quantize ``decoder``'s linear layers in place for ``device`` (with ``move`` each is moved
    there first, so a model read into CPU RAM reaches the GPU already small; without, each is
    quantized where it sits); returns how many were quantized."""
    if check_mode(mode) == "none":
        return 0
    device = torch.device(device)
    dtype = next((m.weight.dtype for m in decoder.modules() if isinstance(m, nn.Linear)), torch.bfloat16)
    check_device_supports(mode, device, dtype)
    ao = _torchao()
    count = 0
    for group in sorted({int4_group(m.in_features) or 0 for m in decoder.modules() if isinstance(m, nn.Linear)}):
        def chosen(module: nn.Module, name: str, group: int = group) -> bool:
            width = int4_group(module.in_features) if isinstance(module, nn.Linear) else None
            return quantizable(module, mode, device.type) and (mode == "int8" or width == group)

        picked = sum(chosen(m, "") for m in decoder.modules())
        if picked:
            ao.quantize_(decoder, _config(mode, device.type, group), filter_fn=chosen, device=device if move else None)
            count += picked
        if mode == "int8":
            break
    return count


def tensor_bytes(tensor: torch.Tensor) -> int:
    """Bytes a tensor holds, a quantized one counted by its inner data (codes, scales, zero points)."""
    if hasattr(tensor, "__tensor_flatten__"):
        names, _ = tensor.__tensor_flatten__()
        return sum(tensor_bytes(getattr(tensor, name)) for name in names)
    return tensor.numel() * tensor.element_size()


def weight_bytes(module: nn.Module) -> int:
    """Bytes the weights (parameters and buffers) of ``module`` hold on devices, not counting
    what an accelerate offload keeps off them (meta tensors)."""
    seen: set[int] = set()
    total = 0
    for tensor in [*module.parameters(), *module.buffers()]:
        if id(tensor) in seen or tensor.device.type == "meta":
            continue
        seen.add(id(tensor))
        total += tensor_bytes(tensor)
    return total


def linear_bytes(in_features: int, out_features: int, bias: bool, mode: str, device_type: str,
                 dtype: torch.dtype) -> int:
    """Bytes one linear layer will hold after ``mode`` on that device type, without building it
    (the memory planner's arithmetic; a test checks it against real quantized layers)."""
    item = torch.empty((), dtype=dtype).element_size()
    extra = out_features * item if bias else 0
    if not _takes(in_features, mode):
        return in_features * out_features * item + extra
    if mode == "int8":  # codes, an fp32 scale and an int8 zero point per row
        return in_features * out_features + out_features * (4 + 1) + extra
    groups = in_features // int4_group(in_features)
    if device_type == "cuda":  # tinygemm pads to 1024 inputs and 8 outputs; two codes a byte, bf16 scale + zero
        padded_in, padded_out = -(-in_features // 1024) * 1024, -(-out_features // 8) * 8
        groups = padded_in // int4_group(in_features)
        return padded_in * padded_out // 2 + padded_out * groups * 2 * 2 + extra
    return in_features * out_features + out_features * groups * (item + 1) + extra  # int8-stored codes
