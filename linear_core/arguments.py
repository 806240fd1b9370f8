"""Argument types of the command line: each reads one value or refuses it with a sentence that says
what to give (argparse prefixes the flag's name and exits with status 2), before any model loads."""
from __future__ import annotations

import argparse
import math

from .layout import MAX_GRID, Budget
from .sampling import MAX_SEED


def _integer(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None


def positive_int(text: str) -> int:
    value = _integer(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def non_negative_int(text: str) -> int:
    value = _integer(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def grid_side(text: str) -> int:
    value = positive_int(text)
    if value > MAX_GRID:
        raise argparse.ArgumentTypeError(f"{value} tokens a side is too large: at most {MAX_GRID}")
    return value


def resolution(text: str) -> int:
    value = positive_int(text)
    if value % 16 or value > MAX_GRID * 16:
        raise argparse.ArgumentTypeError(f"{value} px is not a multiple of 16 from 16 to {MAX_GRID * 16} "
                                         "(one token is 16 px)")
    return value


def seed(text: str) -> int:
    value = _integer(text)
    if not 0 <= value <= MAX_SEED:
        raise argparse.ArgumentTypeError(f"{value} is out of range: give a whole number from 0 to 2^64 - 1")
    return value


def finite_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return value


def positive_float(text: str) -> float:
    value = finite_float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be above 0, got {text!r}")
    return value


def budget(text: str) -> str:
    """One budget, read by `Budget.parse`; the text is kept as given."""
    try:
        Budget.parse(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return text


def budgets(text: str) -> str:
    """One budget or several, comma-separated (``'1/4,1/6'``); the text is kept as given."""
    parts = [part.strip() for part in text.split(",") if part.strip()]
    if not parts:
        raise argparse.ArgumentTypeError("is empty: give a ratio such as '1/6', '4 lines' or 'full'")
    for part in parts:
        budget(part)
    return text


#: memory size units: binary (GiB) and decimal (GB) as written on data sheets
UNITS = {"b": 1, "kib": 2 ** 10, "mib": 2 ** 20, "gib": 2 ** 30, "tib": 2 ** 40,
         "kb": 10 ** 3, "mb": 10 ** 6, "gb": 10 ** 9, "tb": 10 ** 12}


def memory_size(text: str) -> int:
    """``8GiB``, ``7.5 GB``, ``512MiB`` or plain bytes → bytes."""
    cleaned = text.strip().lower().replace(" ", "")
    number = cleaned.rstrip("abcdefghijklmnopqrstuvwxyz")
    unit = cleaned[len(number):] or "b"
    try:
        value = float(number)
    except ValueError:
        value = math.nan
    if unit not in UNITS or not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a memory size: give a number and a unit such as '8GiB', "
                                         "'7.5GB' or '512MiB'")
    return int(value * UNITS[unit])


def quantize_modes(text: str) -> tuple[str, ...]:
    """One quantize mode or several, comma-separated (``'none,int8,int4'``)."""
    from .quantize import MODES

    names = tuple(part.strip() for part in text.split(",") if part.strip())
    unknown = [n for n in names if n not in MODES]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown quantize {', '.join(unknown) or text!r}; choose from "
                                         f"{', '.join(MODES)}")
    return names


class Parser(argparse.ArgumentParser):
    """An argument parser whose errors are the CLI's one ``error:`` line (status 2), not a usage dump."""

    def error(self, message: str):
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def grid_of(args: argparse.Namespace) -> int | None:
    """The token grid the model options name: ``--grid``, else ``--resolution`` at 16 pixels a token
    (the families that differ read ``--resolution`` themselves)."""
    return args.grid or (args.resolution // 16 if args.resolution else None)
