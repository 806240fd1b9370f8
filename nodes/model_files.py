"""The ``models/linear_ar`` folder: registration with ComfyUI, what the loader lists, and loading a
pipeline under ComfyUI's memory management."""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path

import comfy.model_management as mm
import folder_paths
import torch
from comfy.model_patcher import ModelPatcher

from ..linear_core.demo import DEMO_NAME
from ..linear_core.checkpoints import read_json_object
from ..linear_core.devices import DTYPES
from ..linear_core.memory_plan import plan, target_of
from ..linear_core.pipeline import ImagePipeline
from ..linear_core.loading import load_pipeline
from ..linear_core.quantize import MODES, weight_bytes
from ..linear_core.settings import CacheSettings

FOLDER = "linear_ar"
AUTO = "auto"
DTYPE_CHOICES = [AUTO, "fp32", "bf16", "fp16"]
DEVICE_CHOICES = [AUTO, "cpu"]
RESOLUTION_CHOICES = [AUTO, "256", "384", "512", "720", "768", "1024"]
QUANTIZE_CHOICES = list(MODES)


def register_folder() -> None:
    """Add ``models/linear_ar`` for weight files, keeping paths ``extra_model_paths.yaml`` added; the
    folder is created so users see where models go."""
    paths, _ = folder_paths.folder_names_and_paths.get(FOLDER, ([], set()))
    default = os.path.join(folder_paths.models_dir, FOLDER)
    with contextlib.suppress(OSError):  # a read-only models folder must not stop the pack from loading
        os.makedirs(default, exist_ok=True)
    folder_paths.folder_names_and_paths[FOLDER] = ([default, *[p for p in paths if p != default]],
                                                   set(folder_paths.supported_pt_extensions))


def _walk(root: str):
    """``os.walk`` following links, but into each directory once (by device and inode): a link
    loop in the models folder (two links to ``.``) would otherwise be walked forever. ComfyUI's
    own file listing has no such check, so the pack lists its folder itself."""
    seen: set[tuple[int, int]] = set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        try:
            info = os.stat(dirpath)
        except OSError:
            dirnames.clear()
            continue
        if (info.st_dev, info.st_ino) in seen:
            dirnames.clear()
            continue
        seen.add((info.st_dev, info.st_ino))
        yield dirpath, dirnames, filenames


def _model_dirs() -> list[tuple[Path, str]]:
    """Sub-folders holding a ``config.json`` (transformers-style models), as (folder, listed name)."""
    found = []
    for root in folder_paths.get_folder_paths(FOLDER):
        for dirpath, dirnames, filenames in _walk(root):
            if "config.json" in filenames and Path(dirpath) != Path(root):
                found.append((Path(dirpath), Path(dirpath).relative_to(root).as_posix() + "/"))
                dirnames.clear()  # a model folder's own sub-folders are not models
    return found


def _weight_files(model_dirs: list[tuple[Path, str]]) -> list[str]:
    """Weight files outside the model folders ``model_dirs``, relative to the folder root."""
    inside = tuple(name for _, name in model_dirs)
    paths, extensions = folder_paths.folder_names_and_paths[FOLDER]
    found = set()
    for root in paths:
        for dirpath, _, filenames in _walk(root):
            relative = Path(dirpath).relative_to(root)
            found.update((relative / name).as_posix() for name in filenames
                         if os.path.splitext(name)[1].lower() in extensions)
    return sorted(f for f in found if not f.startswith(inside))


def _is_tokenizer(name: str) -> bool:
    return Path(name).name.lower().startswith("vq")


def model_choices() -> list[str]:
    """The built-in demo first, then model folders and GPT weight files."""
    model_dirs = _model_dirs()
    return [DEMO_NAME, *sorted(name for _, name in model_dirs),
            *sorted(f for f in _weight_files(model_dirs) if not _is_tokenizer(f))]


def tokenizer_choices() -> list[str]:
    return [AUTO, *sorted(f for f in _weight_files(_model_dirs()) if _is_tokenizer(f))]


def resolve_model(choice: str) -> str | Path:
    if choice == DEMO_NAME:
        return DEMO_NAME
    for folder, name in _model_dirs():
        if name == choice:
            return folder
    path = folder_paths.get_full_path(FOLDER, choice)
    if path is None:
        raise ValueError(f"Model {choice!r} is not in the {FOLDER} folder (models/{FOLDER}); put the file there and "
                         "press Refresh (R), or pick another model.")
    return Path(path)


def check_model_folder(model: str | Path) -> None:
    """A model folder's ``config.json`` must be readable before the prompt is queued."""
    if isinstance(model, Path) and (model / "config.json").is_file():
        read_json_object(model / "config.json")


def relative_to_models(message: str) -> str:
    """An error text with the server's model-folder paths cut to names relative to that folder:
    the text is shown in the browser, which has no business knowing the server's layout."""
    for root in sorted(folder_paths.get_folder_paths(FOLDER), key=len, reverse=True):
        message = message.replace(root.rstrip(os.sep) + os.sep, "").replace(root, f"models/{FOLDER}")
    return message


def resolve_tokenizer(choice: str, model: str | Path) -> Path | None:
    """The VQ file: the chosen one, or with ``auto`` the only ``vq*`` file beside the GPT file (or in
    the folder root)."""
    if choice != AUTO:
        path = folder_paths.get_full_path(FOLDER, choice)
        if path is None:
            raise ValueError(f"VQ tokenizer {choice!r} is not in the {FOLDER} folder; put it there and press "
                             "Refresh (R), or choose 'auto'.")
        return Path(path)
    if not isinstance(model, Path) or model.is_dir():
        return None
    candidates = sorted(p for p in model.parent.iterdir() if p.is_file() and _is_tokenizer(p.name))
    if not candidates:
        candidates = [Path(folder_paths.get_full_path(FOLDER, f)) for f in tokenizer_choices()[1:]]
    if len(candidates) != 1:
        found = ", ".join(p.name for p in candidates) or "none"
        raise ValueError(f"{model.name} needs its VQ tokenizer (vq_ds16_c2i.pt) to decode images; found {found}. "
                         f"Put it beside the GPT file or choose it in 'vq_tokenizer'.")
    return candidates[0]


def pick_dtype(choice: str, device: torch.device) -> torch.dtype:
    if choice != AUTO:
        return DTYPES[choice]
    if mm.should_use_bf16(device):
        return torch.bfloat16
    return torch.float16 if mm.should_use_fp16(device) else torch.float32


@dataclass
class LoadedModel:
    """What flows along a LineAR model wire: the pipeline and the patcher ComfyUI moves it with."""

    pipeline: ImagePipeline
    patcher: ModelPatcher
    choice: str

    def load_for(self, batch: int, settings: CacheSettings, cfg: float, **request) -> None:
        """Put the weights on the compute device, making room for the run's cache first (``request``:
        the prompt of a text model, whose length sets the prefix)."""
        needed = self.pipeline.memory_required(batch, settings, cfg, **request)
        device = self.patcher.load_device
        # refused before other models are unloaded to make room for it
        target = target_of(self.pipeline, cfg, request.get("prompt") or "an image")
        verdict = plan(target, mm.get_total_memory(device), batch, settings, self.pipeline.quantize, str(device))
        if not verdict.fits:  # weights + cache + activations: the planner's clear error, not an OOM halfway
            raise ValueError(verdict.message() + " Lower batch_size or the budget, or pick a quantize in the loader.")
        mm.load_models_gpu([self.patcher], memory_required=needed, force_full_load=True)


def load_model(choice: str, tokenizer: str = AUTO, resolution: str = AUTO, dtype: str = AUTO,
               device: str = AUTO, quantize: str = "none") -> LoadedModel:
    """The pipeline in RAM on ComfyUI's offload device (its decoder quantized for the device it will
    compute on), wrapped in a `ModelPatcher` that knows its true (quantized) size."""
    load_device = torch.device("cpu") if device == "cpu" else mm.get_torch_device()
    offload_device = torch.device("cpu") if device == "cpu" else mm.unet_offload_device()
    try:
        model = resolve_model(choice)
        pixels = None if resolution == AUTO else int(resolution)
        pipeline = load_pipeline(model, resolve_tokenizer(tokenizer, model), pixels and pixels // 16,
                                 pick_dtype(dtype, load_device), offload_device, resolution=pixels, quantize=quantize,
                                 quantize_for=load_device)
    except ValueError as error:
        raise ValueError(relative_to_models(str(error))) from None
    weights = pipeline.weights()  # ComfyUI's own size count would take quantized tensors at their logical dtype
    patcher = ModelPatcher(weights, load_device=load_device, offload_device=offload_device, size=weight_bytes(weights))
    return LoadedModel(pipeline, patcher, choice)
