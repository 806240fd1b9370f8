"""Janus-Pro text-to-image on the engine: transformers' `JanusForConditionalGeneration` as an adapter.

The engine drives ``model.model.language_model`` (a `LlamaModel`) with its own cache; image tokens
enter through ``generation_embeddings`` + ``generation_aligner`` and leave through
``generation_head``, as DeepSeek's generation loop does (``gen_embed`` → ``gen_aligner``,
``gen_head``), so the ``full`` policy reproduces its prompt, logits and tokens for the same seed
(tests/test_janus_parity.py; transformers' ``generate(generation_mode="image")`` too, except that
it pads the unconditional prompt by id, not by position). Both checkpoint layouts load:
transformers-native folders directly, DeepSeek's original release folders through
`families.janus_convert` (no ``trust_remote_code``, no ``janus`` package).
"""
from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn

from ..adapter import Conditioning, execution_device
from ..checkpoints import check_folder_weights, load_folder_tokenizer, read_folder_config
from ..devices import name_offload_devices
from ..guidance import Guidance
from ..images import grey_unfinished
from ..layout import LineLayout

#: the chat turn the reference wraps a prompt in (Janus-Pro; Janus-1.3B uses plain role names)
PRO_TEMPLATE = "<|User|>: {prompt}\n\n<|Assistant|>:"
V1_TEMPLATE = "User: {prompt}\n\nAssistant:"
BOI_TOKEN = "<begin_of_image>"
PAD_TOKEN = "<｜▁pad▁｜>"


class JanusImageModel(nn.Module):
    """Adapter over a loaded `JanusForConditionalGeneration` and its tokenizer."""

    def __init__(self, model: nn.Module, tokenizer=None, template: str = PRO_TEMPLATE,
                 special_ids: tuple[int, int, int] | None = None) -> None:
        """``special_ids`` (BOS, pad, ``<begin_of_image>``) stand in for a tokenizer when prompts
        arrive as ids (benchmarks); otherwise they are read from ``tokenizer``."""
        super().__init__()
        self.janus = model
        self.tokenizer, self.template = tokenizer, template
        if special_ids is None:
            vocab = tokenizer.get_vocab()
            missing = [t for t in (BOI_TOKEN, PAD_TOKEN) if t not in vocab]
            if missing:
                raise ValueError(f"The tokenizer has no {', '.join(missing)} token: this folder's tokenizer is not Janus's.")
            special_ids = (tokenizer.bos_token_id, vocab[PAD_TOKEN], vocab[BOI_TOKEN])
        self.bos_id, self.pad_id, self.boi_id = special_ids

    @property
    def backbone(self) -> nn.Module:
        """The Llama decoder stack (a property, so its weights are registered once, under ``janus``)."""
        return self.janus.model.language_model

    @property
    def config(self):
        """The Llama decoder's config (heads, layers: what the engine and the reference read)."""
        return self.backbone.config

    @property
    def image_tokens(self) -> int:
        return self.janus.model.vision_model.config.num_image_tokens

    @property
    def grid(self) -> int:
        side = math.isqrt(self.image_tokens)
        if side * side != self.image_tokens:
            raise ValueError(f"{self.image_tokens} image tokens do not form a square grid.")
        return side

    @property
    def max_positions(self) -> int:
        """The longest sequence (prompt + image) the language model was configured for."""
        return self.config.max_position_embeddings

    @property
    def raster(self) -> LineLayout:
        return LineLayout(0, self.grid, self.grid)

    @property
    def vocab(self) -> int:
        return self.janus.model.generation_head.vision_head.out_features

    def embed_image_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.janus.prepare_embeddings_for_image_generation(tokens)

    def image_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.janus.model.generation_head(hidden).float()

    # -- prompts ---------------------------------------------------------------------------------
    def prompt_ids(self, prompt: str) -> list[int]:
        """BOS + the chat turn + ``<begin_of_image>``, as the reference tokenises it."""
        ids = self.tokenizer(self.template.format(prompt=prompt.strip()), add_special_tokens=False).input_ids
        return [self.bos_id, *ids, self.boi_id]

    def unconditional_ids(self, ids: list[int]) -> list[int]:
        """The reference's unconditional prompt: every position but the first (BOS) and the last
        (``<begin_of_image>``) padded — by position, as DeepSeek's loop does, so a prompt whose text
        holds a special token (``<begin_of_image>`` typed in it) is padded there too."""
        return [ids[0], *[self.pad_id] * (len(ids) - 2), ids[-1]]

    def request(self, prompt: str, negative_prompt: str, batch: int, cfg: float) -> tuple[Conditioning, Guidance, LineLayout]:
        """Conditioning, CFG layout and line layout of ``batch`` images of one prompt. With a negative
        prompt the unconditional rows use it (their own length: the ``separate`` layout); without,
        the padded prompt in ``[cond; uncond]`` halves as transformers does."""
        if not prompt.strip():
            raise ValueError("The prompt is empty: describe the image to generate.")
        negative = self.prompt_ids(negative_prompt) if negative_prompt.strip() else None
        return self.request_ids(self.prompt_ids(prompt), negative, batch, cfg)

    def request_ids(self, ids: list[int], negative: list[int] | None, batch: int,
                    cfg: float) -> tuple[Conditioning, Guidance, LineLayout]:
        """`request` for prompts already tokenised (BOS … ``<begin_of_image>``)."""
        device = execution_device(self.backbone.embed_tokens)
        embed = lambda rows: self.backbone.embed_tokens(torch.tensor(rows, device=device))  # noqa: E731
        layout = LineLayout(len(ids), self.grid, self.grid)
        for sequence in (ids, negative or ()):  # before anything is embedded
            layout.with_prefix(len(sequence)).check_positions(self.max_positions)
        if cfg <= 1.0:
            return Conditioning(embed([ids] * batch)), Guidance(cfg, "none"), layout
        if negative is not None:
            return Conditioning(embed([ids] * batch), embed([negative] * batch)), Guidance(cfg, "separate"), layout
        uncond = self.unconditional_ids(ids)
        return Conditioning(embed([ids] * batch + [uncond] * batch)), Guidance(cfg, "halves"), layout

    # -- images ----------------------------------------------------------------------------------
    @torch.inference_mode()
    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        """``(batch, N)`` → RGB ``(batch, 3, H, W)`` in [0, 1]; a partial raster is completed with
        token 0 and its unfinished lines painted grey (for previews)."""
        lines = tokens.shape[1] // self.grid
        full = tokens.new_zeros(tokens.shape[0], self.image_tokens)
        full[:, :tokens.shape[1]] = tokens
        vq = self.janus.model.vqmodel
        image = ((vq.decode(full.to(execution_device(vq))).float() + 1) / 2).clamp(0, 1)
        return grey_unfinished(image, lines, self.grid)


def load_janus(folder: str | Path, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu",
               device_map: str | dict | None = None, offload_folder: str | Path | None = None) -> JanusImageModel:
    """A Janus-Pro folder (transformers-native or DeepSeek's release) with its tokenizer.
    ``device_map`` (``"auto"`` or a module → device dict) places the weights with accelerate instead
    of ``device``: spread over several GPUs, or partly offloaded to CPU RAM or to ``offload_folder``
    on disk; each decoder layer's cache then lives on the device that layer computes on."""
    from transformers import JanusForConditionalGeneration

    from .janus_convert import load_deepseek_janus

    folder = Path(folder)
    config = read_folder_config(folder, "Janus-Pro", ("janus", "multi_modality"))
    check_folder_weights(folder)
    tokenizer = load_folder_tokenizer(folder)
    if config["model_type"] == "janus":
        placement = {"device_map": device_map, "offload_folder": offload_folder} if device_map else {
            "device_map": {"": str(device)}}
        model = JanusForConditionalGeneration.from_pretrained(folder, dtype=dtype, low_cpu_mem_usage=True,
                                                              local_files_only=True, **placement)
    else:
        model = load_deepseek_janus(folder, config, dtype, device, device_map, tokenizer, offload_folder)
    if device_map:
        name_offload_devices(model)  # from_pretrained dispatched it
    template = V1_TEMPLATE if "1.3b" in folder.name.lower() else PRO_TEMPLATE
    return JanusImageModel(model.eval(), tokenizer, template).eval()
