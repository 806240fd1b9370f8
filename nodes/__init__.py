"""ComfyUI node definitions: thin wrappers that translate between ComfyUI and `linear_core`.

Imported only inside ComfyUI (the pack's root ``__init__`` guards it), so ComfyUI modules are
imported at the top of each node module.
"""
from __future__ import annotations

from .node_api import ComfyExtension, io

from .cache_map import LineARCacheMap
from .cache_settings import LineARCacheSettings
from .loader import LineARModelLoader
from .model_files import register_folder
from .sampler import LineARClassSampler, LineARTextSampler

NODES: list[type[io.ComfyNode]] = [LineARModelLoader, LineARCacheSettings, LineARClassSampler, LineARTextSampler,
                                    LineARCacheMap]

register_folder()


class LineARExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return NODES


async def comfy_entrypoint() -> LineARExtension:
    return LineARExtension()
