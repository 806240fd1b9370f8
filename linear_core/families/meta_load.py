"""Transformers models built on the meta device and given a checkpoint's tensors: no second copy.

``from_pretrained`` would also materialise modules that text-to-image never runs (the VQ image
encoders of Chameleon and Emu3). Here a family builds the module tree empty, drops what it never
runs, and assigns the folder's memory-mapped tensors (renamed or reshaped where its layout differs
from the module tree), so a 7-8B model needs its weights in RAM once; a ``device_map`` then places
it with accelerate.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch
from torch import nn

from ..checkpoints import read_folder_weights
from ..devices import dispatch

#: a family's view of one checkpoint tensor: ``(key, tensor)`` to assign, or None to leave it out
Adapt = Callable[[str, torch.Tensor], "tuple[str, torch.Tensor] | None"]


def empty_model(build: Callable[[], nn.Module]) -> nn.Module:
    """``build()`` with every parameter on the meta device (no memory, no initialisation)."""
    from accelerate import init_empty_weights

    with init_empty_weights():
        return build()


def weights_device(device: torch.device | str, device_map: str | dict | None) -> torch.device | str:
    """Where the tensors go first: the device, or CPU RAM for accelerate to place from."""
    return "cpu" if device_map else device


def read_weights(folder: Path, dtype: torch.dtype, device: torch.device | str,
                 adapt: Adapt | None = None) -> dict[str, torch.Tensor]:
    """The folder's tensors (single file or shards) in ``dtype`` on ``device``, through ``adapt``."""
    state = {}
    for key, tensor in read_folder_weights(folder).items():
        kept = adapt(key, tensor) if adapt is not None else (key, tensor)
        if kept is not None:
            state[kept[0]] = kept[1].to(device=device, dtype=dtype)
    return state


def assign_weights(model: nn.Module, state: dict[str, torch.Tensor], mismatch: str, device: torch.device | str,
                   device_map: str | dict | None, offload_folder: str | Path | None) -> nn.Module:
    """Assign ``state`` to the empty ``model`` (every parameter must be covered, nothing left over;
    ``mismatch`` starts the error otherwise), then place it: on ``device``, or by ``device_map``."""
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    if missing or unexpected:
        raise ValueError(f"{mismatch}: missing {missing[:4]}, unexpected {unexpected[:4]}.")
    model.to(device=device).eval()  # the rotary buffers follow the weights
    return dispatch(model, device_map, offload_folder) if device_map else model
