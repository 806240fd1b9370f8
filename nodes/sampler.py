"""LineAR samplers (class label or text prompt) → images, stats and the run; shared progress plumbing."""
from __future__ import annotations

import comfy.model_management as mm
import comfy.utils
import torch
from .node_api import io
from server import PromptServer

from ..linear_core.engine import Callbacks
from ..linear_core.images import to_pil
from ..linear_core.labels import class_choices, label_from_choice
from ..linear_core.pipeline import RUN_CHUNK, ClassConditionalPipeline, ImageBatch, ImagePipeline
from ..linear_core.sampling import MAX_SEED, SamplingConfig
from ..linear_core.settings import CacheSettings
from ..linear_core.speculative import Speculation
from ..linear_core.text_pipeline import TextToImagePipeline
from . import checks
from .model_files import LoadedModel
from .sockets import CATEGORY, CacheSocket, ModelSocket, RunSocket

PROGRESS_EVENT = "linear_ar.progress"  # one per finished token line: {node, line, lines}
STATS_EVENT = "linear_ar.stats"  # once per run: {node, **ImageBatch.summary()}
PREVIEWS_PER_IMAGE = 8
PROGRESS_UPDATES = 100  # progress-bar updates per image, about (plus the first, the last and previews)


def _send(event: str, data: dict) -> None:
    server = PromptServer.instance
    server.send_sync(event, data, server.client_id)


class ComfyProgress:
    """Engine callbacks → ComfyUI: Cancel checked before every token, the progress bar about once per
    percent of the image, a partial preview every few lines, and a line counter for the web extension.

    Cancel is checked here, not left to the progress bar: newer ComfyUI throttles the bar's hook (where
    0.3.75 also checks for Cancel) to one update per 0.1 s and 0.5 %, which alone would stop a run
    tens of tokens late. The bar is thinned for the same reason the hook is: one websocket message per
    token is waste at 4,000 tokens.
    """

    def __init__(self, pipeline: ImagePipeline, node_id: str | None) -> None:
        self.pipeline, self.node_id = pipeline, node_id
        layout = pipeline.layout
        self.total, self.lines = layout.image_tokens, layout.grid_h
        self.is_line_end = layout.is_line_end
        self.bar = comfy.utils.ProgressBar(self.total, node_id=node_id)
        self.step = -(-self.total // PROGRESS_UPDATES)  # ceil
        self.shown = 0  # tokens the bar last showed

    def should_stop(self) -> bool:
        """Raises ComfyUI's own interrupt exception, so the prompt ends as interrupted, not failed."""
        mm.throw_exception_if_processing_interrupted()
        return False

    def on_token(self, index: int, line: int) -> None:
        done = index + 1
        if done == 1 or done == self.total or done - self.shown >= self.step:
            self.shown = done
            self.bar.update_absolute(done, self.total)
        if self.is_line_end(index):
            _send(PROGRESS_EVENT, {"node": self.node_id, "line": line + 1, "lines": self.lines})

    def on_preview(self, tokens: torch.Tensor, line: int) -> None:
        image = to_pil(self.pipeline.preview(tokens))
        self.shown = tokens.shape[1]
        self.bar.update_absolute(self.shown, self.total, ("JPEG", image, 512))

    def callbacks(self) -> Callbacks:
        every = max(1, self.lines // PREVIEWS_PER_IMAGE)
        return Callbacks(on_token=self.on_token, should_stop=self.should_stop, on_preview=self.on_preview,
                         preview_every_lines=every)


def to_comfy_images(images: torch.Tensor) -> torch.Tensor:
    """``(batch, 3, H, W)`` → ComfyUI's IMAGE ``(batch, H, W, 3)`` float32 on the CPU."""
    return images.permute(0, 2, 3, 1).contiguous().float().cpu()


#: (min, max) of the float widgets; `validate_sampling` checks them again, NaN and infinity included
FLOAT_RANGES = {"cfg": (1.0, 30.0), "temperature": (0.0, 5.0), "top_p": (0.01, 1.0)}


def sampling_inputs(cfg: float, top_k: int) -> list:
    """Batch, seed and sampling widgets, in the order every sampler shows them."""
    ranges = {name: {"min": low, "max": high} for name, (low, high) in FLOAT_RANGES.items()}
    return [
        io.Int.Input("batch_size", default=1, min=1, max=256, tooltip="Images drawn in one batched run."),
        io.Int.Input("seed", default=0, min=0, max=MAX_SEED, control_after_generate=True),
        io.Float.Input("cfg", default=cfg, **ranges["cfg"], step=0.1, round=0.01,
                       tooltip="Classifier-free guidance; 1 = off (half the cache)."),
        io.Float.Input("temperature", default=1.0, **ranges["temperature"], step=0.05, round=0.01,
                       tooltip="0 = greedy."),
        io.Int.Input("top_k", default=top_k, min=0, max=1 << 20, tooltip="0 = off."),
        io.Float.Input("top_p", default=1.0, **ranges["top_p"], step=0.01, round=0.01, tooltip="1 = off."),
    ]


SPECULATIVE_MODES = ["off", "jacobi"]


def speculative_inputs() -> list:
    """Optional widgets (so prompts and workflows saved without them still run): speculative Jacobi
    decoding and its window."""
    return [
        io.Combo.Input("speculative", options=SPECULATIVE_MODES, default="off", optional=True,
                       tooltip="jacobi: verify a window of drafted tokens per forward. Same image distribution, "
                               "about 2-3x fewer forwards; faster where a forward is cheap for its tokens (GPUs)."),
        io.Int.Input("window", default=16, min=2, max=256, optional=True,
                     tooltip="Tokens per speculative forward: the newest token plus window - 1 drafts."),
    ]


def speculation(speculative: str, window: int) -> Speculation | None:
    return Speculation(window) if speculative == "jacobi" else None


def validate_sampling(cfg: float, temperature: float, top_p: float, speculative: str = "off") -> bool | str:
    values = {"cfg": cfg, "temperature": temperature, "top_p": top_p}
    return checks.first_error(*(checks.number(name, values[name], *FLOAT_RANGES[name]) for name in FLOAT_RANGES),
                              checks.choice("speculative", speculative, SPECULATIVE_MODES))


OUTPUTS = [
    io.Image.Output(display_name="images"),
    io.String.Output(display_name="stats", tooltip="KV memory, saving and speed of the run, as text."),
    RunSocket.Output(display_name="run", tooltip="The run, for LineAR Cache Map."),
]


def run_sampler(node: type[io.ComfyNode], model: LoadedModel, cache: CacheSettings | None, batch_size: int,
                cfg: float, generate, memory_kwargs: dict | None = None) -> io.NodeOutput:
    """Make room and load the weights, run ``generate(settings, callbacks)`` with ComfyUI progress,
    free what is left whatever happens, then report the stats to the web extension."""
    settings = cache or CacheSettings()
    node_id = node.hidden.unique_id if node.hidden is not None else None  # None when called outside a graph
    try:
        model.load_for(batch_size, settings, cfg, **(memory_kwargs or {}))
        batch: ImageBatch = generate(settings, ComfyProgress(model.pipeline, node_id).callbacks())
    finally:
        mm.soft_empty_cache()
    _send(STATS_EVENT, {"node": node_id, **batch.summary()})
    record_in_png(node, node_id, batch)
    return io.NodeOutput(to_comfy_images(batch.images), batch.describe(), batch)


def record_in_png(node: type[io.ComfyNode], node_id: str | None, batch: ImageBatch) -> None:
    """Add the run's summary to the prompt's ``extra_pnginfo``, the dict ComfyUI's SaveImage writes
    as PNG text chunks next to ``prompt`` and ``workflow`` (ComfyUI's docs name this use of the
    hidden input): the saved images then say how they were made. One ``linear_ar`` chunk maps each
    sampler's node id to its run."""
    extra = node.hidden.extra_pnginfo if node.hidden is not None else None
    if isinstance(extra, dict):
        runs = extra.setdefault(RUN_CHUNK, {})
        if isinstance(runs, dict):
            runs[str(node_id)] = batch.summary()


def expect(model: LoadedModel, kind: type, other_node: str) -> None:
    if not isinstance(model.pipeline, kind):
        raise ValueError(f"{model.pipeline.name} does not fit this sampler: use {other_node} for it.")


class LineARClassSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LineAR_ClassSampler",
            display_name="LineAR Class Sampler",
            category=CATEGORY,
            description="Generates images of one class token by token with a compressed KV cache (demo-digits, "
                        "LlamaGen). Shows progress and a partial preview; Cancel stops at the next token and frees "
                        "the cache.",
            inputs=[
                ModelSocket.Input("model"),
                CacheSocket.Input("cache", optional=True,
                                  tooltip="Cache settings; unconnected = LineAR with its defaults (1/6 budget)."),
                io.Combo.Input("class_label", options=class_choices(), default="digit 7",
                               tooltip="'digit N' for the demo model, an ImageNet class for LlamaGen (type to search)."),
                *sampling_inputs(cfg=4.0, top_k=2000),
                *speculative_inputs(),
            ],
            outputs=OUTPUTS,
            hidden=[io.Hidden.unique_id, io.Hidden.extra_pnginfo],
        )

    @classmethod
    def validate_inputs(cls, class_label: str, cfg: float, temperature: float, top_p: float,
                        speculative: str = "off") -> bool | str:
        return checks.first_error(checks.choice("class_label", class_label, class_choices()),
                                  validate_sampling(cfg, temperature, top_p, speculative))

    @classmethod
    def execute(cls, model: LoadedModel, class_label: str, batch_size: int, seed: int, cfg: float,
                temperature: float, top_k: int, top_p: float, cache: CacheSettings | None = None,
                speculative: str = "off", window: int = 16) -> io.NodeOutput:
        expect(model, ClassConditionalPipeline, "LineAR Text Sampler")
        pipeline = model.pipeline
        label = label_from_choice(class_label, pipeline.class_names, pipeline.name)
        sampling, spec = SamplingConfig(temperature, top_k, top_p), speculation(speculative, window)
        return run_sampler(cls, model, cache, batch_size, cfg, lambda settings, callbacks: pipeline.generate(
            [label] * batch_size, settings, cfg, sampling, seed, callbacks, speculative=spec))


class LineARTextSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LineAR_TextSampler",
            display_name="LineAR Text Sampler",
            category=CATEGORY,
            description="Generates images from a prompt token by token with a compressed KV cache (Janus-Pro, "
                        "Lumina-mGPT, Emu3-Gen). "
                        "Shows progress and a partial preview; Cancel stops at the next token and frees the cache.",
            inputs=[
                ModelSocket.Input("model"),
                CacheSocket.Input("cache", optional=True,
                                  tooltip="Cache settings; unconnected = LineAR with its defaults (1/6 budget)."),
                io.String.Input("prompt", multiline=True, default="a red fox in the snow, studio photograph",
                                tooltip="What to draw."),
                io.String.Input("negative_prompt", multiline=True, default="",
                                tooltip="Optional: what the unconditional branch of CFG says (empty = the "
                                        "model's own: Janus's padded prompt, Lumina's image start, Emu3's "
                                        "negative prompt)."),
                *sampling_inputs(cfg=5.0, top_k=0),
                *speculative_inputs(),
            ],
            outputs=OUTPUTS,
            hidden=[io.Hidden.unique_id, io.Hidden.extra_pnginfo],
        )

    @classmethod
    def validate_inputs(cls, cfg: float, temperature: float, top_p: float, speculative: str = "off") -> bool | str:
        return validate_sampling(cfg, temperature, top_p, speculative)

    @classmethod
    def execute(cls, model: LoadedModel, prompt: str, negative_prompt: str, batch_size: int, seed: int, cfg: float,
                temperature: float, top_k: int, top_p: float, cache: CacheSettings | None = None,
                speculative: str = "off", window: int = 16) -> io.NodeOutput:
        expect(model, TextToImagePipeline, "LineAR Class Sampler")
        pipeline = model.pipeline
        sampling, spec = SamplingConfig(temperature, top_k, top_p), speculation(speculative, window)
        return run_sampler(cls, model, cache, batch_size, cfg, lambda settings, callbacks: pipeline.generate(
            prompt, negative_prompt, batch_size, settings, cfg, sampling, seed, callbacks, speculative=spec),
            {"prompt": prompt, "negative_prompt": negative_prompt})
