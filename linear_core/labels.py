"""Class labels: the 1000 ImageNet names shipped with the pack, and turning user input into ids."""
from __future__ import annotations

import difflib
import re
from functools import lru_cache
from pathlib import Path
from typing import Sequence

IMAGENET_FILE = Path(__file__).resolve().parent / "assets" / "imagenet_classes.txt"


@lru_cache(maxsize=1)
def imagenet_classes() -> tuple[str, ...]:
    """The ImageNet-1k class names in id order (0 = tench, 207 = golden retriever, …)."""
    return tuple(line.strip() for line in IMAGENET_FILE.read_text(encoding="utf-8").splitlines() if line.strip())


def resolve_label(value: str | int, names: Sequence[str]) -> int:
    """A class id from ``207``, ``"207"``, ``"golden retriever"`` or ``"207: golden retriever"``
    (the dropdown form); names match case-insensitively, then as a unique substring."""
    text = str(value).strip()
    head = text.split(":", 1)[0].strip()
    if re.fullmatch(r"-?[0-9]+", head):  # ASCII digits only: str.isdigit() also takes '²', which int() refuses
        index = int(head)
        if not 0 <= index < len(names):
            raise ValueError(f"Class id {index} is out of range: this model has classes 0..{len(names) - 1}.")
        return index
    lowered = [name.lower() for name in names]
    if text.lower() in lowered:
        return lowered.index(text.lower())
    partial = [i for i, name in enumerate(lowered) if text.lower() in name]
    if len(partial) == 1:
        return partial[0]
    if partial:
        options = ", ".join(f"{i}: {names[i]}" for i in partial[:6])
        raise ValueError(f"Class {text!r} is ambiguous; did you mean one of {options}{', …' if len(partial) > 6 else ''}?")
    close = difflib.get_close_matches(text.lower(), lowered, n=4, cutoff=0.6)
    hint = f" Did you mean {', '.join(repr(names[lowered.index(c)]) for c in close)}?" if close else ""
    raise ValueError(f"Unknown class {text!r}: give an id (0..{len(names) - 1}) or a class name.{hint}")


def dropdown_entries(names: Sequence[str]) -> list[str]:
    """``["0: tench", "1: goldfish", …]``: ids stay visible and names stay searchable."""
    return [f"{i}: {name}" for i, name in enumerate(names)]


#: dropdown entries for the built-in digits model; ImageNet entries follow them in `class_choices`
DIGIT_CHOICES = tuple(f"digit {d}" for d in range(10))


def class_choices() -> list[str]:
    """One dropdown for every class-conditional model: the ten digits, then the ImageNet classes."""
    return [*DIGIT_CHOICES, *dropdown_entries(imagenet_classes())]


def label_from_choice(choice: str, names: Sequence[str], model: str) -> int:
    """The class id a dropdown entry means for a model with class ``names``; a clear error when the
    entry belongs to the other kind of model (a digit for an ImageNet model, or the reverse)."""
    if choice in DIGIT_CHOICES:
        if len(names) != 10:
            raise ValueError(f"{model} draws ImageNet classes: pick a class such as '207: golden retriever', not {choice!r}.")
        return int(choice.split()[1])
    if len(names) == 10:
        raise ValueError(f"{model} draws digits: pick one of 'digit 0' … 'digit 9', not {choice!r}.")
    return resolve_label(choice, names)
