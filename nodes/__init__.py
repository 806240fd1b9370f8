"""ComfyUI node definitions (thin wrappers over `linear_core`).

The nodes land with the node-pack issue; until then the pack registers an extension with no
nodes, so ComfyUI loads it cleanly.
"""
from __future__ import annotations


async def comfy_entrypoint():
    from comfy_api.latest import ComfyExtension

    class LineARExtension(ComfyExtension):
        async def get_node_list(self):
            return []

    return LineARExtension()
