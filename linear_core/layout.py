"""Line geometry of one generation: prefix, raster grid, end-of-line tokens and the cache budget.

Everything the cache and the policies need to know about *where* a token sits lives here, so that
the rest of the engine never does raster arithmetic of its own.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from fractions import Fraction


#: the largest grid side accepted (2048 px at 16 px a token): beyond it the position tables and the
#: cache of even one image outgrow any device, and no model of these families is trained so large
MAX_GRID = 128
#: the longest budget text read; longer ones are refused before they are parsed
MAX_BUDGET_CHARS = 32
#: ``0.25``, ``.25``, ``1/6``, ``4 lines`` (``l``, ``line``): plain ASCII digits, no exponent (a sign
#: is read, so that a negative budget is told it is outside (0, 1])
BUDGET_GRAMMAR = re.compile(r"(?P<ratio>[-+]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+|[0-9]+/(?P<denominator>[0-9]+)))"
                            r"|(?P<lines>[0-9]+)\s*(?:l|line|lines)")


@dataclass(frozen=True)
class Budget:
    """How many image tokens the cache may keep: a ratio of the image tokens, or whole lines.

    Exactly one of ``ratio`` and ``lines`` is set. ``Budget.parse`` reads the forms users type:
    ``"1/6"``, ``"0.25"``, ``"full"``, ``"4 lines"``.
    """

    ratio: float | None = None
    lines: int | None = None

    def __post_init__(self) -> None:
        if (self.ratio is None) == (self.lines is None):
            raise ValueError("Budget needs exactly one of ratio= or lines=.")
        if self.ratio is not None and not (0.0 < self.ratio <= 1.0):
            raise ValueError(
                f"Budget ratio {self.ratio:g} is outside (0, 1]: give the share of image tokens to keep, "
                "e.g. 1/6 or 0.25 (1 keeps the full cache)."
            )
        if self.lines is not None and self.lines < 1:
            raise ValueError(f"Budget of {self.lines} lines is too small: keep at least 1 line.")

    @classmethod
    def parse(cls, value: "str | float | int | Budget") -> "Budget":
        """Read a budget by a strict grammar (a decimal, a fraction of two integers, ``N lines`` or
        ``full``) of at most `MAX_BUDGET_CHARS` characters, before any arithmetic: an exponent such as
        ``1e10000000`` would make `Fraction` build a ten-million-digit integer."""
        if isinstance(value, Budget):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if not math.isfinite(value):
                raise ValueError(f"Budget {value!r} is not a finite number: give a share such as 0.25.")
            return cls(ratio=float(value))
        text = str(value).strip().lower()
        if len(text) > MAX_BUDGET_CHARS:
            raise ValueError(f"Budget {text[:MAX_BUDGET_CHARS]!r}... is longer than {MAX_BUDGET_CHARS} characters: "
                             "write a ratio such as '1/6' or '0.25', a number of lines such as '4 lines', or 'full'.")
        if text == "full":
            return cls(ratio=1.0)
        match = BUDGET_GRAMMAR.fullmatch(text)
        if match is None:
            raise ValueError(
                f"Cannot read budget {value!r}: write a ratio such as '1/6' or '0.25', "
                "a number of lines such as '4 lines', or 'full'."
            )
        if match.group("lines"):
            return cls(lines=int(match.group("lines")))
        if match.group("denominator") and int(match.group("denominator")) == 0:
            raise ValueError(f"Budget {value!r} divides by zero: write a ratio such as '1/6'.")
        return cls(ratio=float(Fraction(match.group("ratio"))))

    def tokens(self, image_tokens: int, line_tokens: int) -> int:
        """Budget B in cached image tokens (end-of-line tokens included), capped at the image size."""
        if self.lines is not None:
            return min(image_tokens, self.lines * line_tokens)
        return min(image_tokens, max(1, math.floor(self.ratio * image_tokens + 1e-9)))

    def __str__(self) -> str:
        if self.lines is not None:
            return f"{self.lines} lines"
        frac = Fraction(self.ratio).limit_denominator(64)
        return f"{frac.numerator}/{frac.denominator}" if abs(float(frac) - self.ratio) < 1e-9 else f"{self.ratio:g}"


def check_grid(*sides: int) -> None:
    """Refuse a token grid with a side outside 1..`MAX_GRID`."""
    if any(side < 1 for side in sides):
        raise ValueError(f"Grid {'x'.join(map(str, sides))} is empty: both sides must be >= 1 token.")
    if any(side > MAX_GRID for side in sides):
        raise ValueError(f"Grid {'x'.join(map(str, sides))} is too large: a side may have at most {MAX_GRID} tokens "
                         f"({MAX_GRID * 16} px at 16 px a token).")


@dataclass(frozen=True)
class LineLayout:
    """A raster of ``grid_h`` lines of ``grid_w`` image tokens after ``prefix_len`` conditioning tokens.

    With ``eol=True`` each line ends with an end-of-line token that is cached too (Lumina-mGPT), so a
    line holds ``line_tokens = grid_w + 1`` cache entries. Image token ``i`` (raster index, EOL
    included) has absolute position ``prefix_len + i``.
    """

    prefix_len: int
    grid_h: int
    grid_w: int
    eol: bool = False
    budget: Budget = Budget(ratio=1.0)

    def __post_init__(self) -> None:
        if self.prefix_len < 0:
            raise ValueError(f"prefix_len must be >= 0, got {self.prefix_len}.")
        check_grid(self.grid_h, self.grid_w)
        object.__setattr__(self, "budget", Budget.parse(self.budget))

    @property
    def line_tokens(self) -> int:
        """W': cache entries per line."""
        return self.grid_w + (1 if self.eol else 0)

    @property
    def image_tokens(self) -> int:
        """N: cache entries of the whole image, end-of-line tokens included."""
        return self.grid_h * self.line_tokens

    @property
    def budget_tokens(self) -> int:
        """B: image entries kept after each compression (the prefix is kept on top)."""
        return self.budget.tokens(self.image_tokens, self.line_tokens)

    @property
    def compresses(self) -> bool:
        return self.budget_tokens < self.image_tokens

    @property
    def capacity(self) -> int:
        """Physical slots per (layer, row, head): prefix + B + one line of growth, at most the full sequence."""
        return self.prefix_len + min(self.image_tokens, self.budget_tokens + self.line_tokens)

    @property
    def full_length(self) -> int:
        return self.prefix_len + self.image_tokens

    def line_of(self, image_index: int) -> int:
        return image_index // self.line_tokens

    def position_of(self, image_index: int) -> int:
        return self.prefix_len + image_index

    def is_line_end(self, image_index: int) -> bool:
        """True when ``image_index`` is the last cached token of its line (a compression boundary)."""
        return (image_index + 1) % self.line_tokens == 0

    def with_budget(self, budget: "str | float | int | Budget") -> "LineLayout":
        return LineLayout(self.prefix_len, self.grid_h, self.grid_w, self.eol, Budget.parse(budget))

    def with_prefix(self, prefix_len: int) -> "LineLayout":
        return LineLayout(prefix_len, self.grid_h, self.grid_w, self.eol, self.budget)

    def check_positions(self, limit: int | None) -> None:
        """Refuse a request longer than the ``limit`` positions a model covers (None: no limit),
        naming the limit and what to shorten: the prompt, or the grid."""
        if limit is None or self.full_length <= limit:
            return
        needs = (f"This request needs {self.full_length} positions ({self.prefix_len} prefix tokens + "
                 f"{self.image_tokens} image tokens) but the model covers {limit}")
        if self.image_tokens < limit:
            raise ValueError(f"{needs}: shorten the prompt to at most {limit - self.image_tokens} tokens.")
        raise ValueError(f"{needs}: a {self.grid_h}x{self.grid_w} grid does not fit it; use the model's own grid.")

    def check_sequence(self, prefix_len: int, image_tokens: int | None = None) -> None:
        """Raise a ValueError that names the mismatch when a sequence does not fit this layout."""
        if prefix_len != self.prefix_len:
            raise ValueError(
                f"The conditioning has {prefix_len} tokens but the layout says prefix_len={self.prefix_len}; "
                "build the layout from the actual prompt length."
            )
        if image_tokens is not None and image_tokens > self.image_tokens:
            raise ValueError(
                f"{image_tokens} image tokens do not fit a {self.grid_h}x{self.grid_w} grid "
                f"({self.image_tokens} tokens{' with end-of-line tokens' if self.eol else ''}); "
                "check the resolution or the grid size."
            )
