"""Lumina-mGPT text-to-image on the engine: transformers' Chameleon decoder as an adapter.

The engine drives ``ChameleonModel`` (not the CausalLM forward, which masks image logits) and
reads logits from ``lm_head``. An image is written as ``h`` rows of ``w`` image codes plus an
end-of-line token each, after ``<racm3:break>`` and two size tokens that are teacher-forced; the
unconditional branch runs on that image segment alone, with positions from 0 (the ``separate``
CFG layout: the engine left-pads it into the conditional batch). `rules` are the reference's logits
rules: image codes only inside a row, the end-of-line token forced at each row end. Codes become pixels through our own
Chameleon VQGAN decoder.
"""
from __future__ import annotations

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

#: the reference's text-to-image request; the end-of-turn token follows it
TEMPLATE = "Generate an image of {width}x{height} according to the following prompt:\n{prompt}"
#: token names as upstream looks them up; a reserved token's id is its number + 4, so the end-of-line
#: token <reserved08799> is id 8803 (docs/upstream-facts.md)
BEGIN_IMAGE, END_OF_LINE, END_OF_TURN = "<racm3:break>", "<reserved08799>", "<reserved08706>"
#: VQGAN downsampling: one image code per 16x16 pixels
PATCH = 16
#: size tokens count in units of 32 pixels (``<reserved{8800 + n}>``)
SIZE_UNIT = 32


def size_token(pixels: int) -> str:
    return f"<reserved{8800 + pixels // SIZE_UNIT:05d}>"


def check_resolution(pixels: int) -> None:
    if pixels < SIZE_UNIT or pixels % SIZE_UNIT:
        raise ValueError(f"Resolution {pixels} px is not a positive multiple of {SIZE_UNIT} (Lumina-mGPT's size "
                         "tokens count in 32 px): use 512, 768 or 1024, the checkpoints' own sizes.")


class LuminaImageModel(EndOfLineRows, nn.Module):
    """Adapter over a loaded `ChameleonForConditionalGeneration`, its tokenizer and a VQGAN decoder."""

    def __init__(self, model: nn.Module, tokenizer, decoder: nn.Module | None, resolution: int) -> None:
        super().__init__()
        check_resolution(resolution)
        self.chameleon, self.decoder, self.tokenizer = model, decoder, tokenizer
        self.resolution = resolution
        vocab = tokenizer.get_vocab()
        names = (BEGIN_IMAGE, END_OF_LINE, END_OF_TURN, size_token(resolution))
        missing = [name for name in names if name not in vocab]
        if missing:
            raise ValueError(f"The tokenizer has no {', '.join(missing)} token: this folder's tokenizer is not "
                             "Chameleon's / Lumina-mGPT's.")
        self.boi_id, self.eol_id, self.size_id = (vocab[name] for name in (BEGIN_IMAGE, END_OF_LINE, names[-1]))
        code_of, image_vocab = image_vocabulary(model.model.vocabulary_mapping, model.config.vocab_size, "Chameleon")
        self.register_buffer("code_of", code_of, persistent=False)  # vocabulary id → VQGAN code
        self.register_buffer("image_vocab", image_vocab, persistent=False)

    @property
    def backbone(self) -> nn.Module:
        return self.chameleon.model

    @property
    def config(self):
        return self.backbone.config

    @property
    def head(self) -> nn.Module:
        return self.chameleon.lm_head

    @property
    def grid(self) -> int:
        return self.resolution // PATCH

    grid_h = grid_w = grid  # square images

    @property
    def max_positions(self) -> int:
        """The longest sequence (prompt + image) the language model was configured for; the reference
        inference caps its generation at the same value (``max_length`` of its generation config)."""
        return self.config.max_position_embeddings

    # -- prompts ---------------------------------------------------------------------------------
    def image_start_ids(self) -> list[int]:
        """``<racm3:break>`` and the height and width tokens, teacher-forced before the first row."""
        return [self.boi_id, self.size_id, self.size_id]

    def prompt_ids(self, prompt: str) -> list[int]:
        """BOS + the request + end of turn + the image start, as the reference tokenises it: one
        string, the prompt not stripped (leading or trailing spaces are tokens upstream too)."""
        text = TEMPLATE.format(width=self.resolution, height=self.resolution, prompt=prompt) + END_OF_TURN
        ids = self.tokenizer(text, add_special_tokens=False).input_ids
        return [self.tokenizer.bos_token_id, *ids, *self.image_start_ids()]

    def request(self, prompt: str, negative_prompt: str, batch: int, cfg: float) -> tuple[Conditioning, Guidance, LineLayout]:
        """Conditioning, CFG layout and line layout for ``batch`` images of one prompt. The
        unconditional stream sees the image start only (or the negative prompt's full request)."""
        if not prompt.strip():
            raise ValueError("The prompt is empty: describe the image to generate.")
        ids = self.prompt_ids(prompt)
        uncond = self.prompt_ids(negative_prompt) if negative_prompt.strip() else self.image_start_ids()
        for sequence in (ids, uncond):  # before anything is embedded
            LineLayout(len(sequence), self.grid, self.grid, eol=True).check_positions(self.max_positions)
        return separate_cfg_request(self.backbone.embed_tokens, ids, uncond, batch, cfg, self.grid, self.grid)

    # -- images ----------------------------------------------------------------------------------
    @torch.inference_mode()
    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        """``(batch, n)`` vocabulary ids in raster order, end-of-line tokens included → RGB in [0, 1];
        unfinished rows (a preview) are painted grey."""
        if self.decoder is None:
            raise ValueError("No VQGAN decoder loaded: give the folder with Meta's Chameleon vqgan.ckpt / vqgan.yaml.")
        codes, rows = code_grid(tokens, self.code_of, self.grid, self.grid)
        image = self.decoder(codes.flatten(1), self.grid, self.grid)
        return grey_unfinished(image, rows, self.grid)


def resolution_from_name(name: str) -> int | None:
    """``Lumina-mGPT-7B-768`` → 768: the last number that is a size (the checkpoints are trained at one
    size each and named after it)."""
    sizes = [int(n) for n in re.findall(r"\d+", name) if int(n) >= 2 * SIZE_UNIT and int(n) % SIZE_UNIT == 0]
    return sizes[-1] if sizes else None


def load_chameleon(folder: Path, config: dict, dtype: torch.dtype, device: torch.device | str,
                   device_map: str | dict | None, offload_folder: str | Path | None) -> nn.Module:
    """Build the Chameleon model on the meta device and assign the checkpoint's tensors to it.

    Lumina-mGPT stores each q/k-norm as one ``(1, head_dim)`` row that every head shares; the
    native model wants ``(heads, head_dim)``, so the row is repeated. The VQ image *encoder* that
    `ChameleonModel` builds is not in the checkpoint and never used for text-to-image: dropped."""
    from transformers import ChameleonConfig, ChameleonForConditionalGeneration

    chameleon_config = ChameleonConfig(**{k: v for k, v in config.items() if k not in ("architectures", "model_type")})
    model = empty_model(lambda: ChameleonForConditionalGeneration(chameleon_config))
    model.model.vqmodel = None

    def per_head(key: str, tensor: torch.Tensor) -> tuple[str, torch.Tensor]:
        if key.endswith(("q_norm.weight", "q_norm.bias", "k_norm.weight", "k_norm.bias")):
            heads = chameleon_config.num_attention_heads if ".q_norm." in key else chameleon_config.num_key_value_heads
            if tensor.shape[0] != heads:
                tensor = tensor.repeat_interleave(heads // tensor.shape[0], dim=0)
        return key, tensor

    target = weights_device(device, device_map)
    state = read_weights(folder, dtype, target, per_head)
    if chameleon_config.tie_word_embeddings and "lm_head.weight" not in state:
        state["lm_head.weight"] = state["model.embed_tokens.weight"]
    return assign_weights(model, state, f"{folder.name} does not match the Chameleon architecture of its config.json",
                          target, device_map, offload_folder)


def load_lumina(folder: str | Path, vqgan: str | Path | None = None, resolution: int | None = None,
                dtype: torch.dtype = torch.bfloat16, device: torch.device | str = "cpu",
                device_map: str | dict | None = None, offload_folder: str | Path | None = None) -> LuminaImageModel:
    """A Lumina-mGPT folder (config, safetensors single or sharded, tokenizer) plus the Chameleon
    VQGAN (``vqgan`` folder or file; default: the ``vqgan`` folder or files inside the model folder).
    ``resolution`` defaults to the size in the folder name."""
    from ..decoders.chameleon_vqgan import load_chameleon_vqgan

    folder = Path(folder)
    config = read_folder_config(folder, "Lumina-mGPT", ("chameleon",))
    resolution = resolution or resolution_from_name(folder.name)
    if resolution is None:
        raise ValueError(f"Cannot tell the resolution of {folder.name}: its config.json says model_type 'chameleon' "
                         "(Lumina-mGPT), whose folders are named after their size (Lumina-mGPT-7B-768). If it is a "
                         "Lumina-mGPT model, give the resolution (512, 768 or 1024) or put the size in the folder "
                         "name; if it should be Janus-Pro, its config.json is the wrong one.")
    tokenizer = load_folder_tokenizer(folder)
    vqgan = vqgan or find_vqgan(folder)  # before the big load: a missing decoder fails fast
    model = load_chameleon(folder, config, dtype, device, device_map, offload_folder)
    decoder = load_chameleon_vqgan(vqgan, device=execution_device(model.model.embed_tokens))
    return LuminaImageModel(model, tokenizer, decoder, resolution).eval()


def find_vqgan(folder: Path) -> Path:
    """Where a user who followed the README put Meta's VQGAN: beside or below the model."""
    for candidate in (folder / "vqgan", folder / "vqgan.ckpt", folder.parent / "chameleon_vqgan",
                      folder.parent / "vqgan"):
        if candidate.exists():
            return candidate
    raise ValueError(f"No Chameleon VQGAN found for {folder.name}: put Meta's tokenizer/vqgan.ckpt and vqgan.yaml "
                     "in a 'vqgan' folder inside the model folder (or beside it, as 'chameleon_vqgan'), or pass "
                     "--vqgan DIR.")
