"""Sampling at evaluation scale: a work list drawn over accelerate's processes, resumable, in evaluators' formats.

Every process loads the model, builds the same work list (`worklist`), skips the images whose PNG
is already in the folder and takes its contiguous share of the rest (``split_between_processes``).
A PNG is written to a temporary name and renamed once complete (`files.replacing`), so a file
under its final name is always whole and *is* the record that the image is done: a killed run,
restarted, redraws exactly what is missing. Nothing but the PNGs is written while sampling; once
every process has finished (a barrier), the main process assembles the ``.npz`` (``arr_0``, uint8
``N×H×W×3``, what the ADM / guided-diffusion evaluator reads) from the PNGs, and the manifest.
The output folder must be one file system seen by every process (one machine, or a shared mount).
"""
from __future__ import annotations

import json
import os
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from .files import replacing
from .images import to_pil, write_png
from .progress import Progress
from .worklist import WorkItem

RUN_FILE = "run.json"
MANIFEST_FILE = "manifest.jsonl"
NPZ_FILE = "samples.npz"
#: the PNG text chunk with the image's manifest line
SAMPLE_CHUNK = "linear_ar_sample"


@dataclass
class SampleTimes:
    """Seconds of the main process: drawing images (model + image decoder) against the rest."""

    generate_s: float = 0.0
    write_s: float = 0.0  # PNG encoding and writing
    images: int = 0


@dataclass
class SampleRun:
    """One run: its folder, its settings (what ``run.json`` records and a resume must match), its items."""

    folder: Path
    settings: dict
    items: list[WorkItem]
    times: SampleTimes = field(default_factory=SampleTimes)

    @property
    def width(self) -> int:
        return max(6, len(str(len(self.items) - 1)))

    def path(self, item: WorkItem) -> Path:
        return self.folder / item.file_name(self.width)

    def record(self, item: WorkItem) -> dict:
        """The manifest line of an item: where it is, what drew it."""
        keys = ("model", "family", "quantize", "policy", "budget", "cfg", "temperature", "top_k", "top_p",
                "negative_prompt")
        return {"file": self.path(item).name, **item.record(),
                **{key: self.settings[key] for key in keys if key in self.settings}}

    def check_folder(self, resume: bool) -> None:
        """Refuse a folder that holds another run, or this run's images without ``--resume``."""
        run_file = self.folder / RUN_FILE
        if self.folder.exists() and not self.folder.is_dir():
            raise ValueError(f"--out {str(self.folder)!r} is a file: give a folder for the images.")
        if run_file.is_file():
            try:
                before = json.loads(run_file.read_text())
            except (OSError, json.JSONDecodeError) as error:
                raise ValueError(f"{run_file} cannot be read ({error}): remove it or choose another --out.") from None
            changed = sorted(key for key in set(before) | set(self.settings) if before.get(key) != self.settings.get(key))
            if changed:
                detail = "; ".join(f"{key}: {before.get(key)!r} there, {self.settings.get(key)!r} now"
                                   for key in changed[:4])
                raise ValueError(f"--out {str(self.folder)!r} holds another run with other settings ({detail}): "
                                 "choose another folder, or repeat that run's settings with --resume.")
            if not resume:
                raise ValueError(f"--out {str(self.folder)!r} already holds this run: add --resume to finish it "
                                 "(done images are kept), or choose another folder.")
        elif self.folder.is_dir() and any(name.endswith(".png") for name in os.listdir(self.folder)):
            raise ValueError(f"--out {str(self.folder)!r} holds PNG files but no {RUN_FILE}: choose an empty or new folder.")

    def pending(self) -> list[WorkItem]:
        """Items whose PNG is not there under its final name (a temporary file does not count)."""
        present = set(os.listdir(self.folder)) if self.folder.is_dir() else set()
        return [item for item in self.items if self.path(item).name not in present]

    def start(self) -> None:
        """Main process, once every process has scanned the folder: record the settings, drop the
        temporary files a killed run left behind."""
        self.folder.mkdir(parents=True, exist_ok=True)
        with replacing(self.folder / RUN_FILE) as temporary:
            temporary.write_text(json.dumps(self.settings, indent=1, sort_keys=True))
        for name in os.listdir(self.folder):
            if name.startswith(".") and name.endswith(".tmp"):
                (self.folder / name).unlink(missing_ok=True)

    def done_count(self) -> int:
        names = {self.path(item).name for item in self.items}
        return len(names & set(os.listdir(self.folder)))

    def write(self, item: WorkItem, image) -> None:
        write_png(to_pil(image), self.path(item), {SAMPLE_CHUNK: json.dumps(self.record(item))})

    def assemble(self) -> tuple[Path, Path]:
        """Main process, after every process finished: the manifest and the ``.npz``, from the PNGs."""
        missing = [self.path(item).name for item in self.items if not self.path(item).is_file()]
        if missing:
            raise RuntimeError(f"{len(missing)} images are missing ({', '.join(missing[:3])}, ...): "
                               "run again with --resume.")
        manifest = self.folder / MANIFEST_FILE
        with replacing(manifest) as temporary:
            temporary.write_text("".join(json.dumps(self.record(item)) + "\n" for item in self.items))
        npz = self.folder / NPZ_FILE
        write_npz(npz, [self.path(item) for item in self.items])
        return manifest, npz


def write_npz(path: Path, files: Sequence[Path]) -> None:
    """``arr_0`` = the images as uint8 ``N×H×W×3``, streamed one image at a time into an uncompressed
    ``.npz`` (50,000 images never sit in memory at once); atomic like every other write."""
    from PIL import Image

    def pixels(file: Path) -> np.ndarray:
        with Image.open(file) as image:
            return np.asarray(image.convert("RGB"), dtype=np.uint8)

    first = pixels(files[0])
    header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.uint8)), "fortran_order": False,
              "shape": (len(files), *first.shape)}
    with replacing(path) as temporary, zipfile.ZipFile(temporary, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:
        with archive.open("arr_0.npy", "w", force_zip64=True) as out:
            np.lib.format.write_array_header_1_0(out, header)
            for file in files:
                array = pixels(file) if file != files[0] else first
                if array.shape != first.shape:
                    raise ValueError(f"{file.name} is {array.shape[1]}x{array.shape[0]}, the first image "
                                     f"{first.shape[1]}x{first.shape[0]}: one .npz needs one size.")
                out.write(array.tobytes())


def batches(items: Sequence[WorkItem], size: int) -> list[list[WorkItem]]:
    """Consecutive items, at most ``size`` a batch; text-to-image batches share one prompt."""
    out: list[list[WorkItem]] = []
    for item in items:
        if out and len(out[-1]) < size and out[-1][0].prompt == item.prompt:
            out[-1].append(item)
        else:
            out.append([item])
    return out


def draw(run: SampleRun, state, generate: Callable[[list[WorkItem]], object], batch: int,
         log_every: int = 100, interactive: bool | None = None) -> dict:
    """Draw this process's share of the pending items and write each PNG as it comes; returns the
    run's report once the main process has assembled the outputs. ``state``: accelerate's
    ``PartialState``; ``generate``: a batch of items → an `ImageBatch` (per-image seeds)."""
    t_start = time.perf_counter()
    pending = run.pending()
    state.wait_for_everyone()  # every process has scanned before anything is written
    if state.is_main_process:
        run.start()
    state.wait_for_everyone()  # run.json is there before the first image
    total, done_before = len(run.items), len(run.items) - len(pending)
    progress = Progress(total, done_before, log_every, interactive=interactive, enabled=state.is_main_process)
    last_scan = 0.0
    with state.split_between_processes(pending) as mine:
        for group in batches(mine, batch):
            t0 = time.perf_counter()
            images = generate(group).images
            t1 = time.perf_counter()
            for item, image in zip(group, images):
                run.write(item, image)
            t2 = time.perf_counter()
            run.times.generate_s += t1 - t0
            run.times.write_s += t2 - t1
            run.times.images += len(group)
            if state.is_main_process and t2 - last_scan > 1.0:  # the folder counts every process's images
                progress.update(run.done_count())
                last_scan = time.perf_counter()
    t_loop = time.perf_counter()
    state.wait_for_everyone()
    if not state.is_main_process:
        return {}
    t_all = time.perf_counter()
    progress.update(run.done_count())
    progress.close()
    manifest, npz = run.assemble()
    t_end = time.perf_counter()
    loop_s, wall_s = t_loop - t_start, t_end - t_start
    new = len(pending)
    return {
        "folder": str(run.folder), "images": total, "drawn": new, "skipped": done_before,
        "processes": state.num_processes, "manifest": manifest.name, "npz": npz.name,
        "seconds": wall_s, "images_per_s": new / max(wall_s, 1e-9),
        "main_process": {"images": run.times.images, "generate_s": run.times.generate_s,
                         "write_s": run.times.write_s, "loop_s": loop_s, "wait_s": t_all - t_loop,
                         "assemble_s": t_end - t_all,
                         "outside_generation": 1.0 - run.times.generate_s / max(wall_s, 1e-9)},
    }


def format_report(report: dict) -> str:
    if not report:
        return ""
    main = report["main_process"]
    return "\n".join([
        f"wrote {report['images']} images to {report['folder']} ({report['drawn']} drawn now, {report['skipped']} "
        f"already there) + {report['npz']} + {report['manifest']}",
        f"{report['processes']} process{'es' if report['processes'] > 1 else ''}: {report['images_per_s']:.2f} images/s "
        f"over {report['seconds']:.1f} s"
        + (f" (after {report['load_s']:.1f} s loading the model)" if "load_s" in report else ""),
        f"main process: {main['images']} images, generation {main['generate_s']:.1f} s, PNG writing "
        f"{main['write_s']:.1f} s, waiting for the others {main['wait_s']:.1f} s, .npz + manifest "
        f"{main['assemble_s']:.1f} s; "
        f"{main['outside_generation'] * 100:.1f}% of the time outside generation",
    ])
