"""User-facing cache settings: one object that the CLI, the benchmark and the ComfyUI node fill in."""
from __future__ import annotations

from dataclasses import dataclass

from .compressor import CfgMode, HeadSharing, check_choices
from .layout import Budget
from .policies import EvictionPolicy, make_policy, policy_class


@dataclass(frozen=True)
class CacheSettings:
    """Policy and budget of a run. ``anchors`` and ``recent_lines`` apply to the policies that take
    them (``linear``, ``random``; ``recent_lines`` also ``h2o``); ``sinks`` to ``streaming``;
    ``keep_line_ends`` (``linear``, ``random``) never evicts end-of-line tokens (Lumina-mGPT).

    The defaults were chosen on the trained demo model and re-measured when it moved to 24×24
    (``fidelity`` command, README): 8 anchors beat 0 and 4 at 1/4 and 1/6 (a whole first line is
    better still where the budget has room for it); 2 recent lines are best or within 3% of 1 and
    3; per-head selection beats one shared by the heads; independent CFG rows (the paper's rule)
    are within 2% of sharing the selection."""

    policy: str = "linear"
    budget: Budget | str | float = "1/6"
    anchors: int = 8
    recent_lines: int = 2
    sinks: int = 4
    head_sharing: HeadSharing = "per_head"
    cfg_mode: CfgMode = "independent"
    keep_line_ends: bool = False

    def __post_init__(self) -> None:
        policy_class(self.policy)  # refuses an unknown name now, not when the run starts
        check_choices(self.head_sharing, self.cfg_mode)
        object.__setattr__(self, "budget", Budget.parse(self.budget) if self.policy != "full" else Budget(ratio=1.0))
        for name in ("anchors", "recent_lines", "sinks"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}.")

    def make_policy(self) -> EvictionPolicy:
        return make_policy(self.policy, anchors=self.anchors, recent_lines=self.recent_lines, sinks=self.sinks,
                           keep_line_ends=self.keep_line_ends)
