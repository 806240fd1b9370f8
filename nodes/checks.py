"""Checks of widget values when a prompt is queued (``validate_inputs``), for what ComfyUI 0.3.75
lets through: V3 combo values are not compared with their options, and NaN or infinity pass its
min/max checks. A widget named in ``validate_inputs`` also skips those checks, so they are redone here.
Each check returns an error text naming the input, or None. An input fed by a link arrives as None
(its value exists only at run time, where linear_core checks it): it passes."""
from __future__ import annotations

import math
from typing import Sequence


def choice(name: str, value, options: Sequence[str]) -> str | None:
    if value is None or value in options:
        return None
    shown = ", ".join(map(repr, options[:8])) + (f", … ({len(options)} in all)" if len(options) > 8 else "")
    return f"{name} {str(value)[:80]!r} is not one of the choices: pick one of {shown}."


def number(name: str, value, minimum: float, maximum: float) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return f"{name} must be a number, got {str(value)[:40]!r}."
    if not math.isfinite(value):
        return f"{name} must be a finite number, got {value}."
    if not minimum <= value <= maximum:
        return f"{name} {value} is outside {minimum}..{maximum}."
    return None


def first_error(*errors: str | None) -> bool | str:
    """What ``validate_inputs`` returns: True, or the first error text."""
    return next((error for error in errors if error), True)
