"""Text-to-image pipelines (Janus-Pro, Lumina-mGPT, Emu3): prompt → conditioning → engine → decoded images.

A text-to-image family adapter provides ``request(prompt, negative_prompt, batch, cfg)``,
``decode(tokens)``, ``raster`` (its line layout without prefix), ``vocab`` and, where the
reference restricts or forces tokens, ``rules`` (a `TokenRules`) and ``closing_ids`` (the tokens
the reference forces after the raster; they end the returned tokens).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn

from .adapter import execution_device
from .engine import Callbacks, generate
from .session import planned_cache_bytes
from .layout import LineLayout
from .pipeline import LOGIT_WORK_BYTES, ImageBatch, ImagePipeline, SamplingDefaults
from .sampling import SamplingConfig
from .settings import CacheSettings
from .speculative import Speculation

#: DeepSeek's Janus-Pro generation script: cfg 5, temperature 1, no top-k / top-p
JANUS_DEFAULTS = SamplingDefaults(cfg=5.0, temperature=1.0, top_k=0, top_p=1.0)
#: Lumina-mGPT's image generation: cfg 4 (its README examples), temperature 1, image top-k 2000;
#: the Omni checkpoint's demo samples with cfg 1 and top-k 200
LUMINA_DEFAULTS = SamplingDefaults(cfg=4.0, temperature=1.0, top_k=2000, top_p=1.0)
LUMINA_OMNI_DEFAULTS = SamplingDefaults(cfg=1.0, temperature=1.0, top_k=200, top_p=1.0)
#: BAAI's Emu3 image_generation.py: classifier_free_guidance 3.0, do_sample with top_k 2048
EMU3_DEFAULTS = SamplingDefaults(cfg=3.0, temperature=1.0, top_k=2048, top_p=1.0)


@dataclass
class TextToImagePipeline(ImagePipeline):
    name: str
    family: str  # "janus-pro", "lumina-mgpt", "emu3-gen"
    model: nn.Module  # a text-to-image family adapter (see the module docstring)
    defaults: SamplingDefaults = JANUS_DEFAULTS

    def __post_init__(self) -> None:
        self.decode = self.model.decode

    def weights(self) -> nn.Module:
        # wrapped: hosts may set attributes such as ``device`` that transformers models make read-only
        return nn.ModuleDict({"model": self.model})

    @property
    def layout(self) -> LineLayout:
        """The image raster (the prefix length depends on the prompt; see `generate`)."""
        return self.model.raster

    @property
    def device(self) -> torch.device:
        return execution_device(self.model.backbone.embed_tokens)

    def memory_required(self, batch: int, settings: CacheSettings = CacheSettings(), cfg: float | None = None,
                        prompt: str = "", negative_prompt: str = "") -> int:
        """Device bytes a request needs besides the weights: its caches (exact for this prompt) plus the
        per-step logits work (estimate)."""
        cfg = self.defaults.cfg if cfg is None else cfg
        conditioning, _, layout = self.model.request(prompt or "an image", negative_prompt, batch, cfg)
        rows, prefix_len = conditioning.batched()[0].shape[:2]
        total = planned_cache_bytes(self.model, layout.with_prefix(prefix_len), settings, rows)
        return total + batch * 2 * self.model.vocab * LOGIT_WORK_BYTES

    def generate(self, prompt: str, negative_prompt: str = "", batch: int = 1, settings: CacheSettings = CacheSettings(),
                 cfg: float | None = None, sampling: SamplingConfig | None = None, seed: int | Sequence[int] = 0,
                 callbacks: Callbacks = Callbacks(), decode: str = "auto", compile: str = "auto",
                 speculative: Speculation | None = None) -> ImageBatch:
        """``batch`` images of one prompt, decoded to RGB; ``seed``: one for the request, or one per image."""
        if batch < 1:
            raise ValueError(f"batch must be at least 1, got {batch}.")
        cfg = self.defaults.cfg if cfg is None else cfg
        sampling = sampling or self.defaults.sampling()
        with torch.inference_mode():
            conditioning, guidance, layout = self.model.request(prompt, negative_prompt, batch, cfg)
        result = generate(self.model, conditioning, layout, settings, guidance, sampling, seed,
                          rules=getattr(self.model, "rules", None), callbacks=callbacks, decode=decode,
                          compile=compile, speculative=speculative)
        tokens = self.closed(result.tokens)
        t0 = time.perf_counter()
        images = self.decode_images(tokens)
        used = {"model": self.name, "family": self.family, "prompt": prompt, "negative_prompt": negative_prompt,
                "cfg": cfg, "temperature": sampling.temperature, "top_k": sampling.top_k, "top_p": sampling.top_p,
                "seed": seed, "device": str(self.device), **self.weight_facts()}
        return ImageBatch(images, tokens.cpu(), [], result.stats, time.perf_counter() - t0, used,
                          layout.with_budget(settings.budget))

    def closed(self, tokens: torch.Tensor) -> torch.Tensor:
        """The raster followed by the family's closing tokens (end of frame / image for Emu3)."""
        closing = getattr(self.model, "closing_ids", ())
        if not closing:
            return tokens
        return torch.cat([tokens, tokens.new_tensor(closing).expand(tokens.shape[0], -1)], dim=1)
