"""LineAR Cache Settings: policy, budget and the LineAR knobs → cache wire."""
from __future__ import annotations

from .node_api import io

from ..linear_core.compressor import CFG_MODES, HEAD_SHARING
from ..linear_core.layout import Budget
from ..linear_core.policies import POLICIES
from ..linear_core.settings import CacheSettings
from . import checks
from .sockets import CATEGORY, CacheSocket

DEFAULTS = CacheSettings()


class LineARCacheSettings(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LineAR_CacheSettings",
            display_name="LineAR Cache Settings",
            category=CATEGORY,
            description="How much KV cache the sampler keeps. 'linear' is LineAR (prefix + anchors + recent "
                        "lines + the middle tokens the last line attended to most); the others are there to compare.",
            inputs=[
                io.Combo.Input("policy", options=list(POLICIES), default=DEFAULTS.policy,
                               tooltip="linear = LineAR; full = no compression; streaming = StreamingLLM (sinks + "
                                       "recent); h2o = heavy hitters; rkv = R-KV; random = random middle tokens."),
                io.String.Input("budget", default=str(DEFAULTS.budget),
                                tooltip="Image tokens kept: a share of the image ('1/6', '0.25') or whole lines "
                                        "('4 lines'). Ignored by 'full'."),
                io.Int.Input("anchors", default=DEFAULTS.anchors, min=0, max=4096,
                             tooltip="First image tokens always kept (linear, random)."),
                io.Int.Input("recent_lines", default=DEFAULTS.recent_lines, min=0, max=256,
                             tooltip="Most recent token lines always kept (linear, random, h2o)."),
                io.Int.Input("sinks", default=DEFAULTS.sinks, min=0, max=4096,
                             tooltip="Attention-sink tokens kept by 'streaming'."),
                io.Combo.Input("cfg_mode", options=list(CFG_MODES),
                               default=DEFAULTS.cfg_mode,
                               tooltip="With CFG: each row picks its own tokens, or both rows keep what the "
                                       "conditional row (or the sum of both) scores highest."),
                io.Combo.Input("head_sharing", options=list(HEAD_SHARING), default=DEFAULTS.head_sharing,
                               tooltip="Each KV head keeps its own tokens, or all heads keep the same ones."),
                io.Boolean.Input("keep_line_ends", default=DEFAULTS.keep_line_ends, optional=True,
                                 tooltip="Lumina-mGPT: never evict the end-of-line token that closes each row "
                                         "(linear, random); off = they are scored like every other token."),
            ],
            outputs=[CacheSocket.Output(display_name="cache")],
        )

    @classmethod
    def validate_inputs(cls, policy: str, budget: str, cfg_mode: str, head_sharing: str) -> bool | str:
        """Every choice and the budget, when the prompt is queued (the budget by a strict grammar,
        so no text can keep the server busy)."""
        error = checks.first_error(checks.choice("policy", policy, list(POLICIES)),
                                   checks.choice("cfg_mode", cfg_mode, CFG_MODES),
                                   checks.choice("head_sharing", head_sharing, HEAD_SHARING))
        if error is not True or budget is None:  # None: the budget comes over a link, read at run time
            return error
        try:
            Budget.parse(budget)
        except ValueError as error:
            return str(error)
        return True

    @classmethod
    def execute(cls, policy: str, budget: str, anchors: int, recent_lines: int, sinks: int, cfg_mode: str,
                head_sharing: str, keep_line_ends: bool = DEFAULTS.keep_line_ends) -> io.NodeOutput:
        return io.NodeOutput(CacheSettings(policy, budget, anchors, recent_lines, sinks, head_sharing, cfg_mode,
                                           keep_line_ends))
