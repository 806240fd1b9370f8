"""`load_pipeline`: what a user names, turned into a ready-to-run pipeline.

The built-in ``demo-digits``, a demo-format folder or a LlamaGen ``c2i_*.pt`` / ``.safetensors``
file plus its VQ file become a `ClassConditionalPipeline`; a Janus-Pro, Lumina-mGPT or Emu3-Gen
folder becomes a `TextToImagePipeline` (each family's module is imported only when its folder is
loaded). The CLI and the ComfyUI nodes only call this; quantized weights are made here, at load.
"""
from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Callable

import torch

from .adapter import execution_device
from .checkpoints import describe_folder_config, read_json_object
from .decoders.vq16 import load_vq16
from .demo import DEMO_DIR, DEMO_NAME, DigitsPalette
from .devices import default_device, parse_dtype
from .families.llamagen import load_llamagen
from .labels import imagenet_classes
from .pipeline import LLAMAGEN_DEFAULTS, ClassConditionalPipeline, ImagePipeline, SamplingDefaults
from .quantize import check_device_supports, check_mode, quantize_linears
from .text_pipeline import EMU3_DEFAULTS, LUMINA_DEFAULTS, LUMINA_OMNI_DEFAULTS, TextToImagePipeline

BUILTIN_MODELS = {DEMO_NAME: DEMO_DIR}


def _load_demo(folder: Path, config: dict, dtype: torch.dtype, device: str) -> ClassConditionalPipeline:
    model = load_llamagen(folder / "model.safetensors", dtype=dtype, device=device)
    palette = DigitsPalette(config["grid"], config["levels"])
    defaults = SamplingDefaults(**config["defaults"])
    return ClassConditionalPipeline(folder.name, config["family"], model, palette, tuple(config["class_names"]), defaults)


def load_pipeline(model: str | Path = DEMO_NAME, vq: str | Path | None = None, grid: int | None = None,
                  dtype: str | torch.dtype = "fp32", device: str | torch.device | None = None,
                  heads: int | None = None, device_map: str | dict | None = None,
                  offload_folder: str | Path | None = None, resolution: int | None = None,
                  quantize: str = "none", quantize_for: str | torch.device | None = None) -> ImagePipeline:
    """Load a built-in name (``demo-digits``), a demo-format folder, a LlamaGen GPT file + VQ file,
    or a Janus-Pro / Lumina-mGPT / Emu3-Gen folder (→ `TextToImagePipeline`; ``vq`` is then Lumina's
    VQGAN and ``grid`` its size in codes). ``grid`` / ``heads`` are needed only where a name or width
    does not tell them; ``resolution`` (pixels) sizes Lumina and Emu3 images and beats ``grid``;
    ``device_map`` (accelerate, with ``offload_folder`` for weights it puts on disk) applies to the
    text-to-image families. ``quantize`` (``int8`` / ``int4``, `quantize`) makes the decoder's linear
    weights small for ``quantize_for`` (the device it will compute on; default ``device``): the
    checkpoint is read into CPU RAM and each layer reaches the device already quantized."""
    dtype, device = parse_dtype(dtype), str(device or default_device())
    if check_mode(quantize) == "none":
        return _load(model, vq, grid, dtype, device, heads, device_map, offload_folder, resolution)
    target = torch.device(quantize_for or device)
    check_device_supports(quantize, target, dtype)
    pipeline = _load(model, vq, grid, dtype, device if device_map else "cpu", heads, device_map, offload_folder,
                     resolution)
    backbone = pipeline.model.backbone
    if device_map:  # accelerate placed the layers: quantize each where it sits, offloaded ones stay
        quantize_linears(backbone, quantize, execution_device(backbone.embed_tokens), move=False)
    else:
        quantize_linears(backbone, quantize, target)
        pipeline.weights().to(device)
    pipeline.quantize = quantize
    return pipeline


def _load(model: str | Path, vq: str | Path | None, grid: int | None, dtype: torch.dtype, device: str,
          heads: int | None, device_map: str | dict | None, offload_folder: str | Path | None,
          resolution: int | None) -> ImagePipeline:
    path = BUILTIN_MODELS.get(str(model), Path(model))
    if path.is_dir():
        config = read_json_object(path / "config.json") if (path / "config.json").is_file() else {}
        if config.get("family") == DEMO_NAME and (path / "model.safetensors").is_file():
            return _load_demo(path, config, dtype, device)
        if config.get("model_type") in ("janus", "multi_modality"):
            from .families.janus import load_janus

            return TextToImagePipeline(path.name, "janus-pro", load_janus(path, dtype, device, device_map,
                                                                          offload_folder))
        if config.get("model_type") == "chameleon":
            from .families.lumina import PATCH, load_lumina

            model = load_lumina(path, vq, resolution or (grid and grid * PATCH), dtype, device, device_map,
                                offload_folder)
            defaults = LUMINA_OMNI_DEFAULTS if "omni" in path.name.lower() else LUMINA_DEFAULTS
            return TextToImagePipeline(path.name, "lumina-mgpt", model, defaults)
        if config.get("model_type") in ("emu3", "Emu3"):
            from .families.emu3 import PATCH, load_emu3

            model = load_emu3(path, resolution or (grid and grid * PATCH), dtype, device, device_map, offload_folder)
            return TextToImagePipeline(path.name, "emu3-gen", model, EMU3_DEFAULTS)
        found = f"a {describe_folder_config(config)} folder" if config else "a folder without config.json"
        raise ValueError(f"{path.name} is {found}; this version runs {DEMO_NAME!r}, LlamaGen c2i_*.pt / "
                         ".safetensors files, Janus-Pro, Lumina-mGPT and Emu3-Gen folders.")
    if not path.is_file():
        choices = ", ".join(BUILTIN_MODELS)
        raise ValueError(f"Model {str(model)!r} not found: give a checkpoint path or a built-in name ({choices}).")
    gpt = load_llamagen(path, grid=grid, dtype=dtype, device=device, heads=heads)
    if vq is None:
        raise ValueError(f"{path.name} is a LlamaGen GPT: also give its VQ tokenizer (vq_ds16_c2i.pt) to decode images.")
    decoder = load_vq16(vq, dtype=torch.float32, device=device)
    if decoder.codebook_size != gpt.spec.vocab:
        raise ValueError(f"{Path(vq).name} has {decoder.codebook_size} codes but {path.name} predicts "
                         f"{gpt.spec.vocab}: they are not a matching GPT/VQ pair.")
    names = imagenet_classes() if gpt.num_classes == 1000 else tuple(str(i) for i in range(gpt.num_classes))
    spec = gpt.spec
    return ClassConditionalPipeline(path.stem, "llamagen", gpt, partial(_decode_lines, decoder, spec.grid),
                                    names, LLAMAGEN_DEFAULTS, decoder)


def _decode_lines(decoder: Callable, grid_w: int, tokens: torch.Tensor) -> torch.Tensor:
    return decoder(tokens, tokens.shape[1] // grid_w, grid_w)

