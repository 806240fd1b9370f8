"""The full cache: nothing is evicted (the reference every other policy is measured against)."""
from dataclasses import dataclass

from .base import EvictionPolicy


@dataclass
class FullPolicy(EvictionPolicy):
    """Keeps every token; with it the engine is bit-for-bit a plain decode."""

    name = "full"
    evicts = False
