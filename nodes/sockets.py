"""The custom wire types of the pack (prefixed, so they never connect to another pack's sockets)."""
from .node_api import io

ModelSocket = io.Custom("LINEAR_AR_MODEL")
CacheSocket = io.Custom("LINEAR_AR_CACHE")
RunSocket = io.Custom("LINEAR_AR_RUN")
CATEGORY = "LineAR"
