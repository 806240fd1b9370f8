"""Emu3-Gen text-to-image on the engine: transformers' `Emu3ForConditionalGeneration` as an adapter.

The engine drives ``model.model.text_model`` (a Llama-style decoder with grouped-query attention
and 1-D RoPE) with its own cache and reads logits from ``lm_head``. The request is the reference's:
the processor's ``BOS + prompt + <|image start|>{H}*{W}<|image token|>`` (H, W in codes of 8 px),
then ``H`` rows of ``W`` image codes, each closed by the end-of-line token ``<|extra_200|>``, and
the image closed by end of frame, end of image and end of text (`closing_ids`, forced, so never
sampled). CFG runs the negative prompt, in the same template, as its own stream (the ``separate``
layout). Codes become pixels through transformers' own `Emu3VQVAE` decoder (its encoder is dropped).
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from torch import nn

from ..adapter import Conditioning, execution_device
from ..checkpoints import load_folder_tokenizer, read_folder_config
from ..guidance import Guidance
from ..images import grey_unfinished
from ..layout import LineLayout
from .line_ends import EndOfLineRows, code_grid, image_vocabulary, separate_cfg_request
from .meta_load import assign_weights, empty_model, read_weights, weights_device

#: BAAI's image_generation.py (and transformers' Emu3 docs): the negative prompt of its CFG
NEGATIVE_PROMPT = ("lowres, bad anatomy, bad hands, text, error, missing fingers, extra digit, fewer digits, "
                   "cropped, worst quality, low quality, normal quality, jpeg artifacts, signature, watermark, "
                   "username, blurry.")
END_OF_LINE = "<|extra_200|>"
#: VQ-VAE downsampling: one image code per 8x8 pixels (the processor's ``downsample_ratio``)
PATCH = 8
#: the processor's default ``image_area`` 518400 = 720²: 90 rows of 90 codes
DEFAULT_RESOLUTION = 720
#: checkpoint key names of the -hf uploads → the module tree of transformers 5
KEY_RENAMES = ((re.compile(r"^text_model\.model\."), "model.text_model."),
               (re.compile(r"^text_model\.lm_head\."), "lm_head."), (re.compile(r"^vqmodel\."), "model.vqmodel."))
#: VQ-VAE parts text-to-image never runs (image → codes)
ENCODER_PREFIXES = ("model.vqmodel.encoder.", "model.vqmodel.quant_conv.")


def check_resolution(pixels: int) -> None:
    if pixels < PATCH or pixels % PATCH:
        raise ValueError(f"Resolution {pixels} px is not a positive multiple of {PATCH} (Emu3's VQ-VAE codes 8x8 "
                         f"pixels): use {DEFAULT_RESOLUTION}, the reference's size, or another multiple of 8.")


class Emu3ImageModel(EndOfLineRows, nn.Module):
    """Adapter over a loaded `Emu3ForConditionalGeneration` and its `Emu3Processor`."""

    def __init__(self, model: nn.Module, processor, resolution: int = DEFAULT_RESOLUTION) -> None:
        super().__init__()
        check_resolution(resolution)
        self.emu3, self.processor, self.tokenizer = model, processor, processor.tokenizer
        self.resolution = resolution
        self.grid_h, self.grid_w = processor.calculate_generate_size("1:1", resolution * resolution,
                                                                     processor.downsample_ratio)
        tokenizer = self.tokenizer
        if END_OF_LINE not in tokenizer.get_vocab():
            raise ValueError(f"The tokenizer has no {END_OF_LINE} (end-of-line) token: this folder's tokenizer is "
                             "not Emu3's.")
        self.eol_id = tokenizer.convert_tokens_to_ids(END_OF_LINE)
        self.closing_ids = (tokenizer.eof_token_id, tokenizer.eoi_token_id, tokenizer.eos_token_id)
        code_of, image_vocab = image_vocabulary(model.model.vocabulary_mapping, self.vocab, "Emu3")
        self.register_buffer("code_of", code_of, persistent=False)  # vocabulary id → VQ-VAE code
        self.register_buffer("image_vocab", image_vocab, persistent=False)
        image = processor.image_processor
        self.register_buffer("pixel_mean", torch.tensor(image.image_mean).view(3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(image.image_std).view(3, 1, 1), persistent=False)

    @property
    def backbone(self) -> nn.Module:
        return self.emu3.model.text_model

    @property
    def config(self):
        return self.backbone.config

    @property
    def head(self) -> nn.Module:
        return self.emu3.lm_head

    # -- prompts ---------------------------------------------------------------------------------
    def prompt_ids(self, prompt: str) -> list[int]:
        """BOS + the text + ``<|image start|>{H}*{W}<|image token|>``, as the processor writes it."""
        inputs = self.processor(text=[prompt.strip()], return_for_image_generation=True, ratio="1:1",
                                image_area=self.resolution * self.resolution)
        return list(inputs["input_ids"][0])

    def request(self, prompt: str, negative_prompt: str, batch: int, cfg: float) -> tuple[Conditioning, Guidance, LineLayout]:
        """Conditioning, CFG layout and line layout of ``batch`` images of one prompt; the
        unconditional stream is the negative prompt in the same template (Emu3's own by default)."""
        if not prompt.strip():
            raise ValueError("The prompt is empty: describe the image to generate.")
        uncond = self.prompt_ids(negative_prompt.strip() or NEGATIVE_PROMPT)
        return separate_cfg_request(self.backbone.embed_tokens, self.prompt_ids(prompt), uncond, batch, cfg,
                                    self.grid_h, self.grid_w)

    # -- images ----------------------------------------------------------------------------------
    @torch.inference_mode()
    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        """``(batch, n)`` vocabulary ids in raster order, end-of-line tokens included (the closing
        tokens may follow) → RGB in [0, 1], un-normalised as the processor's ``postprocess`` does;
        unfinished rows (a preview) are painted grey."""
        vq = self.emu3.model.vqmodel
        codes, rows = code_grid(tokens, self.code_of, self.grid_h, self.grid_w)
        pixels = vq.decode(codes.to(execution_device(vq))).float()
        image = (pixels * self.pixel_std.to(pixels.device) + self.pixel_mean.to(pixels.device)).clamp(0, 1)
        return grey_unfinished(image, rows, self.grid_h)


def resolution_from_name(name: str) -> int | None:
    """``Emu3-Gen-512`` → 512: a size in the folder name (the release folder has none: 720)."""
    sizes = [int(n) for n in re.findall(r"\d+", name) if int(n) >= 8 * PATCH and int(n) % PATCH == 0]
    return sizes[-1] if sizes else None


def _checkpoint_key(key: str, tensor: torch.Tensor) -> tuple[str, torch.Tensor] | None:
    for pattern, new in KEY_RENAMES:
        key = pattern.sub(new, key)
    return None if key.startswith(ENCODER_PREFIXES) else (key, tensor)


def load_emu3_model(folder: Path, dtype: torch.dtype, device: torch.device | str, device_map: str | dict | None,
                    offload_folder: str | Path | None) -> nn.Module:
    """Build Emu3 on the meta device without the VQ encoder and assign the checkpoint's tensors
    (either key layout: the -hf uploads' ``text_model.model.*`` or the module tree's)."""
    from transformers import Emu3Config, Emu3ForConditionalGeneration

    config = Emu3Config.from_pretrained(folder, local_files_only=True)
    model = empty_model(lambda: Emu3ForConditionalGeneration(config))
    model.model.vqmodel.encoder = model.model.vqmodel.quant_conv = None
    target = weights_device(device, device_map)
    state = read_weights(folder, dtype, target, _checkpoint_key)
    return assign_weights(model, state, f"{folder.name} does not match the Emu3 architecture of its config.json",
                          target, device_map, offload_folder)


def load_processor(folder: Path):
    """The folder's `Emu3Processor` (tokenizer with Emu3's special tokens + image processor)."""
    from transformers import AutoProcessor

    load_folder_tokenizer(folder)  # a missing tokenizer is named as such
    needs = (f"{folder.name} has no usable Emu3 processor: processor_config.json (or preprocessor_config.json) and a "
             "tokenizer with Emu3's image tokens, from the same release, must sit beside the weights")
    if not any((folder / name).is_file() for name in ("processor_config.json", "preprocessor_config.json")):
        raise ValueError(needs + ".")
    try:
        processor = AutoProcessor.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError, AttributeError) as error:
        raise ValueError(f"{needs} ({str(error).split('. ')[0]}).") from None
    if not hasattr(processor, "calculate_generate_size"):
        raise ValueError(f"{folder.name}'s processor is a {type(processor).__name__}, not Emu3's.")
    return processor


def load_emu3(folder: str | Path, resolution: int | None = None, dtype: torch.dtype = torch.bfloat16,
              device: torch.device | str = "cpu", device_map: str | dict | None = None,
              offload_folder: str | Path | None = None) -> Emu3ImageModel:
    """An Emu3-Gen folder in the transformers-native layout (``BAAI/Emu3-Gen-hf``: config,
    safetensors single or sharded, tokenizer and processor). ``resolution`` (pixels, square)
    defaults to a size in the folder name, else the reference's 720."""
    folder = Path(folder)
    path = folder / "config.json"
    if path.is_file() and json.loads(path.read_text()).get("model_type") == "Emu3":
        raise ValueError(f"{folder.name} is BAAI's original Emu3 release (remote code); give the "
                         "transformers-native folder, BAAI/Emu3-Gen-hf.")
    read_folder_config(folder, "Emu3-Gen", ("emu3",))
    if "chat" in folder.name.lower():
        raise ValueError(f"{folder.name} is Emu3-Chat, which writes text about images; text-to-image needs "
                         "Emu3-Gen (BAAI/Emu3-Gen-hf).")
    resolution = resolution or resolution_from_name(folder.name) or DEFAULT_RESOLUTION
    check_resolution(resolution)  # before the big load
    processor = load_processor(folder)
    model = load_emu3_model(folder, dtype, device, device_map, offload_folder)
    return Emu3ImageModel(model, processor, resolution).eval()
