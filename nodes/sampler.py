"""LineAR Class Sampler: model + cache settings + class label → images, stats and the run."""
from __future__ import annotations

import comfy.model_management as mm
import comfy.utils
import numpy as np
import torch
from comfy_api.latest import io
from PIL import Image
from server import PromptServer

from ..linear_core.engine import Callbacks
from ..linear_core.labels import class_choices, label_from_choice
from ..linear_core.pipeline import ClassConditionalPipeline, ImageBatch
from ..linear_core.sampling import SamplingConfig
from ..linear_core.settings import CacheSettings
from .model_files import LoadedModel
from .sockets import CATEGORY, CacheSocket, ModelSocket, RunSocket

PROGRESS_EVENT = "linear_ar.progress"  # one per finished token line: {node, line, lines}
STATS_EVENT = "linear_ar.stats"  # once per run: {node, **ImageBatch.summary()}
PREVIEWS_PER_IMAGE = 8


def _send(event: str, data: dict) -> None:
    server = PromptServer.instance
    server.send_sync(event, data, server.client_id)


def to_pil(image: torch.Tensor) -> Image.Image:
    """``(3, H, W)`` in [0, 1] → PIL RGB."""
    return Image.fromarray((image.clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))


class ComfyProgress:
    """Engine callbacks → ComfyUI: the progress bar per token (each update is also where ComfyUI
    raises on Cancel), a partial preview every few lines, and a line counter for the web extension."""

    def __init__(self, pipeline: ClassConditionalPipeline, node_id: str | None) -> None:
        self.pipeline, self.node_id = pipeline, node_id
        layout = pipeline.layout
        self.total, self.lines = layout.image_tokens, layout.grid_h
        self.is_line_end = layout.is_line_end
        self.bar = comfy.utils.ProgressBar(self.total, node_id=node_id)

    def on_token(self, index: int, line: int) -> None:
        self.bar.update_absolute(index + 1, self.total)
        if self.is_line_end(index):
            _send(PROGRESS_EVENT, {"node": self.node_id, "line": line + 1, "lines": self.lines})

    def on_preview(self, tokens: torch.Tensor, line: int) -> None:
        image = to_pil(self.pipeline.preview(tokens))
        self.bar.update_absolute(tokens.shape[1], self.total, ("JPEG", image, 512))

    def callbacks(self) -> Callbacks:
        every = max(1, self.lines // PREVIEWS_PER_IMAGE)
        return Callbacks(on_token=self.on_token, on_preview=self.on_preview, preview_every_lines=every)


def to_comfy_images(images: torch.Tensor) -> torch.Tensor:
    """``(batch, 3, H, W)`` → ComfyUI's IMAGE ``(batch, H, W, 3)`` float32 on the CPU."""
    return images.permute(0, 2, 3, 1).contiguous().float().cpu()


class LineARClassSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LineAR_ClassSampler",
            display_name="LineAR Class Sampler",
            category=CATEGORY,
            description="Generates images of one class token by token with a compressed KV cache. Shows progress "
                        "and a partial preview; Cancel stops at the next token and frees the cache.",
            inputs=[
                ModelSocket.Input("model"),
                CacheSocket.Input("cache", optional=True,
                                  tooltip="Cache settings; unconnected = LineAR with its defaults (1/6 budget)."),
                io.Combo.Input("class_label", options=class_choices(), default="digit 7",
                               tooltip="'digit N' for the demo model, an ImageNet class for LlamaGen (type to search)."),
                io.Int.Input("batch_size", default=1, min=1, max=256, tooltip="Images drawn in one batched run."),
                io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=True),
                io.Float.Input("cfg", default=4.0, min=1.0, max=30.0, step=0.1, round=0.01,
                               tooltip="Classifier-free guidance; 1 = off (half the cache). LlamaGen uses 4, the demo 2."),
                io.Float.Input("temperature", default=1.0, min=0.0, max=5.0, step=0.05, round=0.01,
                               tooltip="0 = greedy."),
                io.Int.Input("top_k", default=2000, min=0, max=1 << 20, tooltip="0 = off."),
                io.Float.Input("top_p", default=1.0, min=0.01, max=1.0, step=0.01, round=0.01, tooltip="1 = off."),
            ],
            outputs=[
                io.Image.Output(display_name="images"),
                io.String.Output(display_name="stats", tooltip="KV memory, saving and speed of the run, as text."),
                RunSocket.Output(display_name="run", tooltip="The run, for LineAR Cache Map."),
            ],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def execute(cls, model: LoadedModel, class_label: str, batch_size: int, seed: int, cfg: float,
                temperature: float, top_k: int, top_p: float, cache: CacheSettings | None = None) -> io.NodeOutput:
        pipeline, settings = model.pipeline, cache or CacheSettings()
        label = label_from_choice(class_label, pipeline.class_names, pipeline.name)
        sampling = SamplingConfig(temperature, top_k, top_p)
        node_id = cls.hidden.unique_id if cls.hidden is not None else None  # None when called outside a graph
        try:
            model.load_for(batch_size, settings, cfg)
            progress = ComfyProgress(pipeline, node_id)
            batch: ImageBatch = pipeline.generate([label] * batch_size, settings, cfg, sampling, seed,
                                                  progress.callbacks())
        finally:
            mm.soft_empty_cache()
        _send(STATS_EVENT, {"node": node_id, **batch.summary()})
        return io.NodeOutput(to_comfy_images(batch.images), batch.describe(), batch)
