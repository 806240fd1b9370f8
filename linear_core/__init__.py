"""LineAR engine: line-aware KV-cache compression for autoregressive image models.

Pure PyTorch + transformers (no ComfyUI imports): geometry (`LineLayout`), the preallocated
`LineARCache`, eviction policies, the decode engine and fidelity metrics.
"""
from .library_logs import quiet_known_noise

quiet_known_noise()  # before anything imports transformers

from .adapter import CacheGeometry, Conditioning, ImageModelAdapter
from .cache import LineARCache
from .engine import Callbacks, GenerationInterrupted, GenerationResult, GenerationStats, generate
from .session import DecodeSession
from .guidance import Guidance
from .layout import Budget, LineLayout
from .policies import POLICIES, make_policy
from .sampling import SamplingConfig
from .settings import CacheSettings

__all__ = [
    "Budget", "CacheGeometry", "CacheSettings", "Callbacks", "Conditioning", "DecodeSession",
    "GenerationInterrupted", "GenerationResult", "GenerationStats", "Guidance", "ImageModelAdapter",
    "LineARCache", "LineLayout", "POLICIES", "SamplingConfig", "generate", "make_policy",
]
