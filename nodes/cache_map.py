"""LineAR Cache Map: which image tokens the cache still held when the run ended, as an IMAGE."""
from __future__ import annotations

from .node_api import io

from ..linear_core.cachemap import render_cache_map
from ..linear_core.pipeline import ImageBatch
from . import checks
from .sampler import to_comfy_images
from .sockets import CATEGORY, RunSocket

OPACITY_RANGE = (0.0, 1.0)


class LineARCacheMap(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LineAR_CacheMap",
            display_name="LineAR Cache Map",
            category=CATEGORY,
            description="Colours each image token by the share of KV heads that still cached it at the end: "
                        "yellow = kept by every head, violet = evicted. LineAR keeps the first anchor tokens, "
                        "the last lines and scattered middle tokens the last line attended to.",
            inputs=[
                RunSocket.Input("run"),
                io.Int.Input("layer", default=-1, min=-1, max=1023,
                             tooltip="-1 = the mean over all layers; otherwise one layer (0 = first)."),
                io.Float.Input("opacity", default=0.65, min=OPACITY_RANGE[0], max=OPACITY_RANGE[1], step=0.05, round=0.01,
                               tooltip="How strongly the map covers the generated image (1 = map only)."),
            ],
            outputs=[io.Image.Output(display_name="map")],
        )

    @classmethod
    def validate_inputs(cls, opacity: float) -> bool | str:
        """NaN passes ComfyUI's own range check."""
        return checks.first_error(checks.number("opacity", opacity, *OPACITY_RANGE))

    @classmethod
    def execute(cls, run: ImageBatch, layer: int, opacity: float) -> io.NodeOutput:
        if run.stats.kept_map is None or run.layout is None:
            raise ValueError("This run recorded no cache map.")
        maps = render_cache_map(run.stats.kept_map, run.layout, None if layer < 0 else layer, run.images, opacity)
        return io.NodeOutput(to_comfy_images(maps))
