"""Reading weight files safely: ``.safetensors`` and pickled ``.pt``/``.pth``/``.bin`` state dicts.

Pickles are opened with ``torch.load(weights_only=True)`` (tensors and plain containers only, no
code runs) and memory-mapped where torch can, so a multi-GB checkpoint is not copied into RAM before
it is converted.
"""
from __future__ import annotations

import json
import pickle
import re
from pathlib import Path

import torch

#: wrappers upstream training scripts put around the state dict (DDP, DeepSpeed, Lightning)
STATE_DICT_KEYS = ("model", "module", "state_dict")
PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")
#: a Hugging Face folder's weights: an index of shards, or one file
INDEX_FILES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
#: any one of these in a model folder means a tokenizer ships with it
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


def read_state_dict(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """``(state dict, metadata)`` of one weight file; metadata is the safetensors header's
    ``__metadata__`` (empty for pickles). Raises ``ValueError`` naming the file on any problem."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"Checkpoint {str(path)!r} does not exist or is not a file.")
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as handle:
                metadata = handle.metadata() or {}
                return {key: handle.get_tensor(key) for key in handle.keys()}, metadata
        except Exception as error:  # safetensors raises its own error types
            raise ValueError(f"{path.name} is not a readable safetensors file: {error}") from error
    if path.suffix not in PICKLE_SUFFIXES:
        raise ValueError(f"{path.name}: unsupported weight file type {path.suffix!r}; "
                         f"use .safetensors or one of {', '.join(PICKLE_SUFFIXES)}.")
    try:
        data = _load_weights_only(path)
    except pickle.UnpicklingError as error:
        raise ValueError(refused_pickle(path.name, str(error))) from None
    except ValueError:
        raise
    except Exception as error:  # torch raises RuntimeError and others for a damaged archive
        raise ValueError(f"{path.name} is not a readable PyTorch checkpoint (damaged or incomplete: "
                         f"{type(error).__name__}); download it again from its source.") from None
    return unwrap_state_dict(data, path.name), {}


#: what torch's weights-only unpickler names when it refuses a pickled global
_REFUSED_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")


def refused_pickle(name: str, error: str) -> str:
    """Why a pickle was refused and what to do, without torch's advice to load it unsafely."""
    found = _REFUSED_GLOBAL.search(error)
    what = (f"pickles {found.group(1)}, code that would run on loading" if found else
            "is damaged or pickles objects other than tensors")
    return (f"{name} {what}: refused, nothing in it ran. Convert the checkpoint to .safetensors (on a machine "
            "you trust it on), or get the file again from its original source.")


def read_json_object(path: Path) -> dict:
    """A JSON file of settings (``config.json``, a shard index) as a dict; a damaged file or one that
    is not a JSON object is refused with its folder and file named (never a raw JSON or attribute error)."""
    where = f"{path.parent.name}/{path.name}"
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{where} is not readable JSON ({error}): restore it from the model's release.") from None
    if not isinstance(config, dict):
        kind = {list: "an array", type(None): "null", str: "a string", bool: "a boolean"}.get(type(config), "a number")
        raise ValueError(f"{where} holds {kind}, not a JSON object of settings: restore it from the model's release.")
    return config


def read_folder_config(folder: Path, family: str, model_types: tuple[str, ...]) -> dict:
    """A model folder's ``config.json``, refused with the fix when it is not one of ``model_types``."""
    path = folder / "config.json"
    if not path.is_file():
        raise ValueError(f"{folder.name} has no config.json: give a {family} model folder.")
    config = read_json_object(path)
    if config.get("model_type") not in model_types:
        expected = " or ".join(repr(t) for t in model_types)
        raise ValueError(f"{folder.name} is not a {family} folder (config.json model_type "
                         f"{config.get('model_type')!r}; expected {expected}).")
    return config


def load_folder_tokenizer(folder: Path):
    """The tokenizer shipped in a model folder (never downloaded)."""
    from transformers import AutoTokenizer

    if not any((folder / name).is_file() for name in TOKENIZER_FILES):
        raise ValueError(f"{folder.name} has no usable tokenizer: none of {', '.join(TOKENIZER_FILES)} is in the "
                         "folder; copy the tokenizer files of the same release beside config.json.")
    try:
        return AutoTokenizer.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError, TypeError, ImportError) as error:  # 4.x: a config naming absent vocab files
        raise ValueError(f"{folder.name} has no usable tokenizer (tokenizer.json / tokenizer_config.json from the "
                         f"same release must sit beside the weights): {error}") from None


def read_folder_weights(folder: Path) -> dict[str, torch.Tensor]:
    """A Hugging Face-style model folder's weights: ``model.safetensors`` / ``pytorch_model.bin`` or
    their shards listed in an index JSON (all memory-mapped)."""
    check_folder_weights(folder)
    for index_name in INDEX_FILES:
        index = folder / index_name
        if index.is_file():
            state: dict[str, torch.Tensor] = {}
            weight_map = read_json_object(index).get("weight_map")
            if not isinstance(weight_map, dict):
                raise ValueError(f"{folder.name}/{index_name} has no weight_map: restore it from the model's release.")
            for shard in sorted(set(weight_map.values())):
                state.update(read_state_dict(folder / shard)[0])
            return state
    name = next(name for name in WEIGHT_FILES if (folder / name).is_file())
    return read_state_dict(folder / name)[0]


def check_folder_weights(folder: Path) -> None:
    """Refuse a model folder with none of the weight files a release ships, before loading starts."""
    if not any((folder / name).is_file() for name in (*INDEX_FILES, *WEIGHT_FILES)):
        raise ValueError(f"{folder.name} has no weights (model.safetensors, pytorch_model.bin or a sharded index "
                         "JSON): copy them from the same release beside config.json.")


class _Ignored:
    """Stands in for a class a training checkpoint pickled besides its tensors (a trainer callback,
    a config object): built from nothing and dropped; the file's own class never runs."""

    def __init__(self, *args, **kwargs) -> None:
        pass

    def __setstate__(self, state) -> None:
        pass


_NOT_ALLOWED = re.compile(r"GLOBAL ([\w.]+) was not an allowed global")


def _load_weights_only(path: Path):
    """``torch.load(weights_only=True)``, memory-mapped where possible. Classes outside torch's
    allowlist (Lightning checkpoints such as Meta's ``vqgan.ckpt`` carry callbacks and configs) and
    numpy values are replaced by `_Ignored` one by one; any other function stays refused, and
    modules torch blocks outright (``os``, ``subprocess``…) fail as before."""
    stand_ins: list[tuple[type, str]] = []
    for _ in range(64):
        try:
            with torch.serialization.safe_globals(stand_ins):
                try:
                    return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
                except RuntimeError:  # old (non-zip) pickles cannot be memory-mapped
                    return torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as error:
            found = _NOT_ALLOWED.search(str(error))
            name = found.group(1) if found else ""
            if not (name.rsplit(".", 1)[-1][:1].isupper() or name.startswith("numpy.")):
                raise
            stand_ins.append((_Ignored, name))
    raise ValueError(f"{path.name} pickles too many foreign classes besides its tensors.")


def unwrap_state_dict(data, name: str = "checkpoint") -> dict[str, torch.Tensor]:
    """The tensor dict inside an upstream checkpoint (``{"model": …}``, ``{"module": …}``, …)."""
    if isinstance(data, dict):
        for key in STATE_DICT_KEYS:
            inner = data.get(key)
            if isinstance(inner, dict) and any(torch.is_tensor(v) for v in inner.values()):
                return {k: v for k, v in inner.items() if torch.is_tensor(v)}
        tensors = {k: v for k, v in data.items() if torch.is_tensor(v)}
        if tensors:
            return tensors
    raise ValueError(f"{name} holds no state dict (expected tensors, or a dict under one of "
                     f"{', '.join(STATE_DICT_KEYS)}).")


def describe_state_dict(state: dict) -> str:
    """A short guess of what a non-LlamaGen weight file is, for error messages."""
    keys = list(state)
    if "quantize.embedding.weight" in state or any(k.startswith("decoder.conv_in") for k in keys):
        return "a VQ image tokenizer (pass it as the VQ / decoder file, not as the GPT)"
    if any(k.startswith(("language_model.", "model.language_model.", "gen_head.")) for k in keys):
        return "a Janus checkpoint"
    if any(k.startswith(("model.layers.", "lm_head.")) for k in keys):
        return "a Hugging Face causal LM (Chameleon / Lumina-mGPT or Llama)"
    return f"an unknown model ({len(keys)} tensors, e.g. {', '.join(keys[:3])})"


def describe_folder_config(config: dict) -> str:
    """Which family an unsupported model folder's ``config.json`` belongs to, for error messages."""
    kind = str(config.get("family") or config.get("model_type") or "").lower()
    return kind or "an unknown model (no model_type in config.json)"
