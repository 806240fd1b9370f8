"""Ready-to-run generators: a model, its image decoder, class names and sampling defaults.

`load_pipeline` turns what a user names — the built-in ``demo-digits``, a LlamaGen ``c2i_*.pt`` /
``.safetensors`` plus its VQ file — into a `ClassConditionalPipeline`; the CLI and the ComfyUI
nodes only call that. Its `generate` goes labels → conditioning → engine → decoded images.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Callable, Sequence

import torch
from torch import nn

from .adapter import execution_device
from .checkpoints import describe_folder_config, read_json_object
from .demo import DEMO_DIR, DEMO_NAME, DigitsPalette
from .devices import default_device, parse_dtype
from .decoders.vq16 import load_vq16
from .engine import Callbacks, GenerationStats, generate
from .session import planned_cache_bytes
from .families.llamagen import LlamaGenModel, load_llamagen
from .labels import imagenet_classes, resolve_label
from .quantize import check_device_supports, check_mode, quantize_linears, weight_bytes
from .layout import LineLayout
from .sampling import SamplingConfig
from .settings import CacheSettings
from .speculative import Speculation

BUILTIN_MODELS = {DEMO_NAME: DEMO_DIR}
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
            from .text_pipeline import TextToImagePipeline

            return TextToImagePipeline(path.name, "janus-pro", load_janus(path, dtype, device, device_map,
                                                                          offload_folder))
        if config.get("model_type") == "chameleon":
            from .families.lumina import PATCH, load_lumina
            from .text_pipeline import LUMINA_DEFAULTS, LUMINA_OMNI_DEFAULTS, TextToImagePipeline

            model = load_lumina(path, vq, resolution or (grid and grid * PATCH), dtype, device, device_map,
                                offload_folder)
            defaults = LUMINA_OMNI_DEFAULTS if "omni" in path.name.lower() else LUMINA_DEFAULTS
            return TextToImagePipeline(path.name, "lumina-mgpt", model, defaults)
        if config.get("model_type") in ("emu3", "Emu3"):
            from .families.emu3 import PATCH, load_emu3
            from .text_pipeline import EMU3_DEFAULTS, TextToImagePipeline

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

