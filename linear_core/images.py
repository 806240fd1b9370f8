"""Image tensors to files: a grid of a batch, written as PNG (atomically, with text chunks)."""
from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path

import numpy as np
import torch

from .files import replacing


def grey_unfinished(image: torch.Tensor, lines: int, grid_h: int) -> torch.Tensor:
    """Paint the rows below the first ``lines`` of ``grid_h`` token lines grey (in place): a
    preview decodes placeholder tokens there."""
    if lines < grid_h:
        image[:, :, lines * image.shape[-2] // grid_h:] = 0.5
    return image


def make_grid(images: torch.Tensor, columns: int | None = None, padding: int = 2) -> torch.Tensor:
    """``(batch, 3, H, W)`` in [0, 1] → one ``(3, H', W')`` image, row-major, black gaps."""
    batch, channels, height, width = images.shape
    columns = columns or math.ceil(math.sqrt(batch))
    rows = math.ceil(batch / columns)
    grid = images.new_zeros(channels, rows * (height + padding) + padding, columns * (width + padding) + padding)
    for i, image in enumerate(images):
        top, left = padding + (i // columns) * (height + padding), padding + (i % columns) * (width + padding)
        grid[:, top:top + height, left:left + width] = image
    return grid


def to_pil(image: torch.Tensor):
    """``(3, H, W)`` in [0, 1] → a PIL RGB image."""
    from PIL import Image

    array = (image.detach().float().cpu().clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    return Image.fromarray(array)


def save_png(images: torch.Tensor, path: str | Path, text: dict[str, str] | None = None) -> Path:
    """Write a batch (as a grid when more than one) to ``path``, with ``text`` as PNG text chunks
    (e.g. the run's stats); returns the path. See `write_png` for why no half file is ever left."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_png(to_pil(images[0] if images.shape[0] == 1 else make_grid(images)), path, text)
    return path


def write_png(image, path: str | Path, text: dict[str, str] | None = None, compress_level: int = 6) -> None:
    """Save a PIL image as PNG atomically: into a temporary file in the same folder, renamed over
    ``path`` once complete, so a crash or a full disk never leaves a half-written image there."""
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    for key, value in (text or {}).items():
        info.add_text(key, value)
    with replacing(path) as temporary, open(temporary, "wb") as out:
        image.save(out, format="PNG", pnginfo=info, compress_level=compress_level)


def check_output_file(path: str | Path, flag: str = "--out") -> Path:
    """Refuse an output path that cannot be written, before any work: a folder, a read-only file,
    or a folder where no file can be created (probed with a temporary file, then removed)."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{flag} {str(path)!r} is a folder: give a file name such as {str(path / 'out.png')!r}.")
    if path.exists() and not os.access(path, os.W_OK):
        raise ValueError(f"{flag} {str(path)!r} is not writable: choose another file or change its permissions.")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path.parent):
            pass
    except OSError as error:
        raise ValueError(f"{flag} {str(path)!r} cannot be written ({error.strerror or error}): "
                         "choose a file in a folder you can write to.") from None
    return path
