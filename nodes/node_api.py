"""The one place the pack names ComfyUI's node API version.

`comfy_api.v0_0_2`, not `comfy_api.latest`: ``latest`` is the moving target ComfyUI marks unstable,
while a versioned module is what ComfyUI's maintainers advise packs to import, and ``v0_0_2`` exists
from ComfyUI 0.3.75 (the oldest release the pack supports) to the newest upstream sources read (see
docs/comfyui-api.md), re-exporting the same ``io`` and ``ComfyExtension``. A later switch to a newer
version (``v0_0_3`` upstream) is this one line.
"""
from comfy_api.v0_0_2 import ComfyExtension, io

__all__ = ["ComfyExtension", "io"]
