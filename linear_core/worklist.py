"""What a sampling run draws: one `WorkItem` per image, each with its own seed and file name.

An item depends only on the run's settings and its index (never on the batch or the process that
draws it), so any split of the list over processes, batches or restarts yields the same images.
"""
from __future__ import annotations

import csv
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from .sampling import offset_seed

#: column / key names accepted for a prompt's id and text in JSON and CSV prompt lists
ID_KEYS = ("id", "prompt_id", "item_id", "image_id", "caption_id")
TEXT_KEYS = ("prompt", "caption", "text")
#: images per class of the LlamaGen / ADM ImageNet protocol (50,000 over 1,000 classes)
PER_CLASS = 50


@dataclass(frozen=True)
class Prompt:
    id: str
    text: str


@dataclass(frozen=True)
class WorkItem:
    index: int
    seed: int
    label: int | None = None  # class id (class-conditional)
    label_name: str | None = None
    prompt: Prompt | None = None  # text-to-image

    @property
    def tag(self) -> str:
        """What the file name says besides the index: the class id or the prompt id."""
        return str(self.label) if self.prompt is None else safe_name(self.prompt.id)

    def file_name(self, width: int) -> str:
        return f"{self.index:0{width}d}_{self.tag}.png"

    def record(self) -> dict:
        """The item's part of a manifest line."""
        out: dict = {"index": self.index, "seed": self.seed}
        if self.prompt is None:
            out.update(label=self.label, class_name=self.label_name)
        else:
            out.update(prompt_id=self.prompt.id, prompt=self.prompt.text)
        return out


def safe_name(text: str) -> str:
    """A prompt id as a file-name part: letters, digits, ``-``, ``_`` and ``.`` kept, the rest ``_``."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", text)[:80] or "_"


def image_seed(seed: int, index: int) -> int:
    """The seed of image ``index`` of a run seeded with ``seed``."""
    return offset_seed(seed, index)


def class_items(classes: Sequence[int], names: Sequence[str], num_images: int | None, seed: int) -> list[WorkItem]:
    """Image ``i`` draws ``classes[i % len(classes)]``: 50,000 over the 1,000 ImageNet classes gives
    50 each, and any prefix of the run stays balanced. Default count: 50 per class."""
    count = PER_CLASS * len(classes) if num_images is None else num_images
    return [WorkItem(i, image_seed(seed, i), classes[i % len(classes)], names[classes[i % len(classes)]])
            for i in range(count)]


def prompt_items(prompts: Sequence[Prompt], per_prompt: int, num_images: int | None, seed: int) -> list[WorkItem]:
    """``per_prompt`` consecutive images per prompt; ``num_images`` keeps the first ones."""
    items = [WorkItem(p * per_prompt + k, image_seed(seed, p * per_prompt + k), prompt=prompt)
             for p, prompt in enumerate(prompts) for k in range(per_prompt)]
    if num_images is not None:
        if num_images > len(items):
            raise ValueError(f"--num-images {num_images} is more than the {len(items)} images of "
                             f"{len(prompts)} prompts x {per_prompt}: raise --images-per-prompt or lower --num-images.")
        items = items[:num_images]
    return items


def parse_classes(text: str, resolve: Callable[[str], int], count: int) -> list[int]:
    """``all`` or comma-separated class ids / names (resolved by the model's class list)."""
    if text.strip().lower() == "all":
        return list(range(count))
    parts = [part.strip() for part in text.split(",") if part.strip()]
    if not parts:
        raise ValueError("--classes is empty: give 'all' or class ids / names separated by commas.")
    return [resolve(part) for part in parts]


def read_prompts(path: str | Path) -> list[Prompt]:
    """A prompt list as evaluation sets ship it: text (one prompt a line, id = line number among the
    prompts), JSON (a list of strings or of objects with an id and a prompt/caption/text, or an
    object id → prompt) or CSV/TSV with a header naming those columns."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"--prompts {str(path)!r} does not exist: give a .txt, .json or .csv file of prompts.")
    text = path.read_text(encoding="utf-8-sig")
    suffix = path.suffix.lower()
    if suffix == ".json":
        prompts = _json_prompts(text, path.name)
    elif suffix in (".csv", ".tsv"):
        prompts = _table_prompts(text, path.name, "\t" if suffix == ".tsv" else ",")
    else:
        prompts = [Prompt(str(i), line) for i, line in enumerate(line.strip() for line in text.splitlines() if line.strip())]
    if not prompts:
        raise ValueError(f"--prompts {path.name} holds no prompts: give one prompt per line (or a JSON/CSV list).")
    seen: set[str] = set()
    for prompt in prompts:
        if not prompt.text.strip():
            raise ValueError(f"{path.name}: prompt {prompt.id!r} is empty.")
        if safe_name(prompt.id) in seen:
            raise ValueError(f"{path.name}: prompt id {prompt.id!r} appears twice; ids name the files, so they must differ.")
        seen.add(safe_name(prompt.id))
    return prompts


def _pick(row: dict, keys: Sequence[str], what: str, where: str) -> str:
    for key in keys:
        if key in row and row[key] is not None:
            return str(row[key])
    raise ValueError(f"{where}: an entry has no {what} (expected one of {', '.join(keys)}), "
                     f"found {', '.join(row) or 'nothing'}.")


def _json_prompts(text: str, name: str) -> list[Prompt]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"--prompts {name} is not valid JSON ({error}).") from None
    if isinstance(data, dict):
        return [Prompt(str(key), str(value)) for key, value in data.items()]
    if not isinstance(data, list):
        raise ValueError(f"--prompts {name}: give a JSON list of prompts or an object id -> prompt.")
    prompts = []
    for i, entry in enumerate(data):
        if isinstance(entry, str):
            prompts.append(Prompt(str(i), entry))
        elif isinstance(entry, dict):
            prompts.append(Prompt(_pick(entry, ID_KEYS, "id", name), _pick(entry, TEXT_KEYS, "prompt", name)))
        else:
            raise ValueError(f"--prompts {name}: entry {i} is neither a string nor an object.")
    return prompts


def _table_prompts(text: str, name: str, delimiter: str) -> list[Prompt]:
    rows = list(csv.DictReader(text.splitlines(), delimiter=delimiter))
    if rows and not any(key in rows[0] for key in TEXT_KEYS):
        raise ValueError(f"--prompts {name}: the header needs a prompt column ({', '.join(TEXT_KEYS)}), "
                         f"found {', '.join(rows[0])}.")
    id_key = next((key for key in ID_KEYS if key in rows[0]), None) if rows else None
    return [Prompt(row[id_key] if id_key else str(i), _pick(row, TEXT_KEYS, "prompt", name)) for i, row in enumerate(rows)]
