"""The one place the pack names ComfyUI's node API version.

`comfy_api.v0_0_2`, not `comfy_api.latest`: ``latest`` is the moving target ComfyUI marks unstable,
while a versioned module is what ComfyUI's maintainers advise packs to import. ``v0_0_2`` is in the
releases the pack supports (0.3.64 per the platform notes; 0.3.75, where the tests exercise it) and
in the newest upstream sources read (see docs/comfyui-api.md), re-exporting the same ``io`` and
``ComfyExtension``. Moving to a newer version (``v0_0_3`` upstream) is this one line.
"""
from comfy_api.v0_0_2 import ComfyExtension, io

__all__ = ["ComfyExtension", "io"]
