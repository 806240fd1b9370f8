"""Eviction policies, one small class per file; `make_policy` builds one by name."""
from __future__ import annotations

from dataclasses import fields

from .base import EvictionPolicy, LayerView
from .full import FullPolicy
from .h2o import HeavyHitterPolicy
from .linear import LinePolicy
from .random import RandomPolicy
from .rkv import RedundancyPolicy
from .streaming import StreamingPolicy

POLICIES: dict[str, type[EvictionPolicy]] = {
    cls.name: cls for cls in (FullPolicy, LinePolicy, StreamingPolicy, HeavyHitterPolicy, RedundancyPolicy, RandomPolicy)
}


def policy_class(name: str) -> type[EvictionPolicy]:
    """The policy called ``name``, or a ValueError that lists the names."""
    try:
        return POLICIES[name]
    except (KeyError, TypeError):
        raise ValueError(f"Unknown policy {name!r}; choose one of: {', '.join(POLICIES)}.") from None


def make_policy(name: str, **options) -> EvictionPolicy:
    """Build policy ``name``; options it does not take (e.g. ``anchors`` for ``h2o``) are ignored,
    so one set of cache settings can drive every policy side by side."""
    cls = policy_class(name)
    accepted = {f.name for f in fields(cls)}
    return cls(**{k: v for k, v in options.items() if k in accepted and v is not None})


__all__ = ["EvictionPolicy", "LayerView", "POLICIES", "make_policy", "policy_class"]
