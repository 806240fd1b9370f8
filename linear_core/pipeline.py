"""Ready-to-run generators: a model, its image decoder, class names and sampling defaults.

`ImagePipeline` is what every family shares (weights, memory needs, the run report); a
`ClassConditionalPipeline` goes labels → conditioning → engine → decoded images (LlamaGen and the
demo; text models are in `text_pipeline`). `loading.load_pipeline` builds either from what a user
names.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
from torch import nn

from .engine import Callbacks, GenerationStats, generate
from .session import planned_cache_bytes
from .families.llamagen import LlamaGenModel
from .labels import resolve_label
from .quantize import weight_bytes
from .layout import LineLayout
from .sampling import SamplingConfig
from .settings import CacheSettings
from .speculative import Speculation

#: the PNG text chunk that carries a run's stats (policy, budget, KV bytes, saving, speed, seed)
RUN_CHUNK = "linear_ar"


@dataclass(frozen=True)
class SamplingDefaults:
    """What the upstream sample scripts use; a request may override each."""

    cfg: float = 4.0
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0

    def sampling(self, temperature: float | None = None, top_k: int | None = None, top_p: float | None = None,
                 draw: str = "multinomial") -> SamplingConfig:
        pick = lambda given, default: default if given is None else given  # noqa: E731
        return SamplingConfig(pick(temperature, self.temperature), pick(top_k, self.top_k), pick(top_p, self.top_p), draw)


#: LlamaGen's sample_c2i.py defaults
LLAMAGEN_DEFAULTS = SamplingDefaults(cfg=4.0, temperature=1.0, top_k=2000, top_p=1.0)


@dataclass
class ImageBatch:
    images: torch.Tensor  # (batch, 3, H, W) in [0, 1], on the CPU
    tokens: torch.Tensor  # (batch, N)
    labels: list[int]
    stats: GenerationStats
    decode_s: float
    settings: dict = field(default_factory=dict)
    layout: LineLayout | None = None  # the run's geometry, budget included (for cache maps)

    @property
    def seconds(self) -> float:
        """Prefill + decode + image decoding."""
        return self.stats.total_s + self.decode_s

    def describe(self) -> str:
        """The run in three lines, for a terminal or a ComfyUI text display."""
        return describe_summary(self.summary())

    def png_text(self) -> dict[str, str]:
        """The run's summary as a PNG text chunk, so a shared image says how it was made."""
        return {RUN_CHUNK: json.dumps(self.summary())}

    def summary(self) -> dict:
        stats = self.stats
        return {
            "labels": self.labels, **self.settings, "policy": stats.policy, "budget_tokens": stats.budget_tokens,
            "image_tokens": stats.image_tokens, "batch": stats.batch,
            "peak_kv_bytes": stats.kv_allocated_bytes, "full_kv_bytes": stats.full_kv_bytes,
            "kv_saving": stats.kv_saving, "query_buffer_bytes": stats.query_buffer_bytes,
            "tokens_per_s": stats.tokens_per_s, "seconds": self.seconds, "prefill_s": stats.prefill_s,
            "decode_s": stats.decode_s, "compression_s": stats.compression_s, "image_decode_s": self.decode_s,
            "decode": stats.decode, "decode_step": stats.decode_step, "decode_note": stats.decode_note,
            "forwards": stats.forwards, "compile_s": stats.compile_s, "step_ms": stats.step_ms,
            "speculative_window": stats.speculative_window, "accepted_per_forward": stats.accepted_per_forward,
        }


def describe_summary(summary: dict) -> str:
    mib = 2 ** 20
    return "\n".join([
        f"{summary['model']} on {summary['device']}, policy {summary['policy']}: {summary['budget_tokens']} of "
        f"{summary['image_tokens']} image tokens cached",
        f"KV cache {summary['peak_kv_bytes'] / mib:.2f} MiB vs {summary['full_kv_bytes'] / mib:.2f} MiB full "
        f"({summary['kv_saving'] * 100:.1f}% saved)",
        f"{summary['tokens_per_s']:.1f} tokens/s, {summary['seconds']:.2f} s (decode {summary['decode_s']:.2f} s, "
        f"compression {summary['compression_s']:.2f} s, image {summary['image_decode_s']:.2f} s)",
        describe_decode(summary),
    ])


def describe_decode(summary: dict) -> str:
    """Which step ran, what it cost apart from decoding, and why a static request ran eagerly."""
    step = summary.get("decode_step", "eager")
    line = f"decode {summary.get('decode', 'eager')}" + (f" ({step})" if step != "eager" else "")
    line += f", {summary.get('step_ms', 0.0):.2f} ms/step"
    if summary.get("speculative_window"):
        line += (f", speculative window {summary['speculative_window']}: {summary['forwards']} forwards, "
                 f"{summary['accepted_per_forward']:.2f} tokens each")
    if summary.get("compile_s"):
        line += f", compile/capture {summary['compile_s']:.1f} s (not in the decode time)"
    return line + (f"; {summary['decode_note']}" if summary.get("decode_note") else "")


#: bytes of fp32 logits work per batched row and vocabulary entry (logits, CFG mix, top-k sort, softmax)
LOGIT_WORK_BYTES = 4 * 4


class ImagePipeline:
    """What every pipeline shares: decoding a batch image by image, previews, and one module over
    all weights. Subclasses provide ``decode``, ``layout`` and ``weights``."""

    decode: Callable[[torch.Tensor], torch.Tensor]
    #: the weight-only quantization its decoder was loaded with (`quantize.MODES`)
    quantize = "none"

    @property
    def layout(self) -> LineLayout:
        raise NotImplementedError

    def weight_facts(self) -> dict:
        """What a run report says of the weights: the quantization and the bytes on devices."""
        return {"quantize": self.quantize, "weight_bytes": weight_bytes(self.weights())}

    def weights(self) -> nn.Module:
        """Every weight of the pipeline in one module, for hosts that move models between devices."""
        raise NotImplementedError

    def decode_images(self, tokens: torch.Tensor) -> torch.Tensor:
        """One image at a time, so a large batch never holds every decoder activation at once."""
        return torch.cat([self.decode(row[None]).float().cpu() for row in tokens])

    def preview(self, tokens: torch.Tensor) -> torch.Tensor:
        """The first image's finished lines decoded, the rest grey: ``(3, H, W)`` in [0, 1]."""
        layout = self.layout
        lines = tokens.shape[1] // layout.line_tokens
        top = self.decode(tokens[:1, :lines * layout.line_tokens]).float().cpu()[0]
        scale = top.shape[-1] // layout.grid_w
        image = torch.full((3, layout.grid_h * scale, top.shape[-1]), 0.5)
        image[:, :top.shape[1]] = top
        return image


@dataclass
class ClassConditionalPipeline(ImagePipeline):
    name: str
    family: str  # "demo-digits" | "llamagen"
    model: LlamaGenModel
    #: ``(batch, lines·W)`` tokens of the first ``lines`` lines → ``(batch, 3, lines·f, W·f)`` in [0, 1]
    decode: Callable[[torch.Tensor], torch.Tensor]
    class_names: tuple[str, ...]
    defaults: SamplingDefaults
    decoder: nn.Module | None = None  # the weights behind ``decode``, if it has any

    def weights(self) -> nn.ModuleDict:
        return nn.ModuleDict({"gpt": self.model, **({"decoder": self.decoder} if self.decoder is not None else {})})

    @property
    def layout(self) -> LineLayout:
        return self.model.spec.layout()

    @property
    def device(self) -> torch.device:
        return self.model.head.weight.device

    def label(self, value: str | int) -> int:
        return resolve_label(value, self.class_names)

    def memory_required(self, batch: int, settings: CacheSettings = CacheSettings(), cfg: float | None = None) -> int:
        """Device bytes a request needs besides the weights: its cache (exact) plus the per-step
        logits work (estimate); what a host must free before the run."""
        rows = batch * self.model.guidance(self.defaults.cfg if cfg is None else cfg).batched_rows
        return planned_cache_bytes(self.model, self.layout, settings, rows) + rows * self.model.spec.vocab * LOGIT_WORK_BYTES

    def generate(self, labels: Sequence[str | int], settings: CacheSettings = CacheSettings(), cfg: float | None = None,
                 sampling: SamplingConfig | None = None, seed: int | Sequence[int] = 0,
                 callbacks: Callbacks = Callbacks(), decode: str = "auto", compile: str = "auto",
                 speculative: Speculation | None = None) -> ImageBatch:
        """One image per entry of ``labels`` (ids or names), decoded to RGB. ``seed``: one for the
        request, or one per image; ``decode`` / ``compile``: see `engine.DecodeSession`."""
        ids = [self.label(value) for value in labels]
        if not ids:
            raise ValueError("Give at least one class label.")
        cfg = self.defaults.cfg if cfg is None else cfg
        sampling = sampling or self.defaults.sampling()
        guidance = self.model.guidance(cfg)
        conditioning = self.model.conditioning(torch.tensor(ids, device=self.device), guidance)
        result = generate(self.model, conditioning, self.layout, settings, guidance, sampling, seed, callbacks=callbacks,
                          decode=decode, compile=compile, speculative=speculative)
        t0 = time.perf_counter()
        images = self.decode_images(result.tokens)  # the copy to the CPU waits for the device
        used = {"model": self.name, "family": self.family, "cfg": cfg, "temperature": sampling.temperature,
                "top_k": sampling.top_k, "top_p": sampling.top_p, "seed": seed, "device": str(self.device),
                **self.weight_facts()}
        return ImageBatch(images, result.tokens.cpu(), ids, result.stats, time.perf_counter() - t0, used,
                          self.layout.with_budget(settings.budget))
