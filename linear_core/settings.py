"""User-facing cache settings: one object that the CLI, the benchmark and the ComfyUI node fill in."""
from __future__ import annotations

from dataclasses import dataclass

from .compressor import CfgMode, HeadSharing
from .layout import Budget
from .policies import EvictionPolicy, make_policy


@dataclass(frozen=True)
class CacheSettings:
    """Policy and budget of a run. ``anchors`` and ``recent_lines`` apply to the policies that take
    them (``linear``, ``random``; ``recent_lines`` also ``h2o``); ``sinks`` to ``streaming``.

    The defaults are the best measured on a trained model (``scripts/ablate_defaults.py``, README):
    4 anchors and 2 recent lines beat 0/1 anchors and 1 line; per-head selection beat a shared one;
    sharing the selection across CFG rows changed fidelity by under 4%, either way."""

    policy: str = "linear"
    budget: Budget | str | float = "1/6"
    anchors: int = 4
    recent_lines: int = 2
    sinks: int = 4
    head_sharing: HeadSharing = "per_head"
    cfg_mode: CfgMode = "independent"

    def __post_init__(self) -> None:
        object.__setattr__(self, "budget", Budget.parse(self.budget) if self.policy != "full" else Budget(ratio=1.0))
        for name in ("anchors", "recent_lines", "sinks"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}.")

    def make_policy(self) -> EvictionPolicy:
        return make_policy(self.policy, anchors=self.anchors, recent_lines=self.recent_lines, sinks=self.sinks)
