"""ComfyUI-LineAR entry point.

Guarded: outside ComfyUI (no `comfy_api`) this package imports cleanly and registers nothing, so
`linear_core` stays usable as a plain library and in tests.
"""
try:
    import comfy_api.v0_0_2  # noqa: F401  (the node API version the pack uses: nodes/node_api.py)
except ImportError:
    __all__: list[str] = []
else:
    from .nodes import comfy_entrypoint

    WEB_DIRECTORY = "./web"
    __all__ = ["comfy_entrypoint", "WEB_DIRECTORY"]
