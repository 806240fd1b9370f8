"""The ``sample`` and ``evaluate`` commands: many images for an evaluator, and the scores of a sample set."""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import time
from dataclasses import asdict
from pathlib import Path
from typing import Callable

from . import arguments as arg
from .evaluate import INCEPTION, evaluate
from .pipeline import ImageBatch
from .loading import load_pipeline
from .policies import POLICIES
from .sample import RUN_FILE, SampleRun, draw
from .settings import CacheSettings
from .text_pipeline import TextToImagePipeline
from .worklist import PER_CLASS, WorkItem, class_items, parse_classes, prompt_items, read_prompts

Options = Callable[[argparse.ArgumentParser], None]


def add_parsers(sub, model_options: Options, cache_options: Options) -> None:
    """``sample`` (with the model and cache options every command shares) and ``evaluate``."""
    sample = sub.add_parser("sample", help="many images for evaluation (PNGs + .npz + manifest); resumable, "
                                           "data-parallel under 'accelerate launch -m linear_core sample'")
    model_options(sample)
    sample.add_argument("--out", required=True, help="folder for the PNGs, samples.npz, manifest.jsonl and run.json")
    sample.add_argument("--classes", default=None,
                        help="class-conditional: 'all' (default) or ids / names separated by commas; image i "
                             "draws class i mod their count")
    sample.add_argument("--prompts", default=None,
                        help="text-to-image: a .txt (one prompt a line), .json (list, or objects with id and "
                             "prompt/caption) or .csv/.tsv (header with id and prompt/caption columns)")
    sample.add_argument("--images-per-prompt", type=arg.positive_int, default=1)
    sample.add_argument("--negative-prompt", default="", help="text-to-image: the unconditional branch's prompt")
    sample.add_argument("--num-images", type=arg.positive_int, default=None,
                        help=f"images (default: {PER_CLASS} per class, or every prompt x --images-per-prompt)")
    sample.add_argument("--policy", default="linear", choices=sorted(POLICIES))
    sample.add_argument("--budget", type=arg.budget, default=CacheSettings.budget, help="'1/6', '0.25', '4 lines' or 'full'")
    sample.add_argument("--cfg", type=arg.finite_float, default=None, help="guidance scale (default: the model's)")
    sample.add_argument("--temperature", type=arg.finite_float, default=None)
    sample.add_argument("--top-k", type=arg.non_negative_int, default=None, help="0 = off (default: the model's)")
    sample.add_argument("--top-p", type=arg.finite_float, default=None)
    sample.add_argument("--seed", type=arg.seed, default=0, help="image i is drawn with seed + i")
    sample.add_argument("--batch", type=arg.positive_int, default=16, help="images per forward batch, per process")
    sample.add_argument("--resume", action="store_true", help="finish a run in --out that has the same settings")
    sample.add_argument("--log-every", type=arg.positive_int, default=100,
                        help="when stderr is not a terminal: a progress line every N images")
    cache_options(sample)

    ev = sub.add_parser("evaluate", help="FID (and Inception Score) of a sample folder or .npz via torch-fidelity")
    ev.add_argument("samples", help="a folder written by 'sample', or an .npz with arr_0")
    ev.add_argument("--ref", required=True,
                    help="reference .npz: statistics (mu, sigma; ADM's reference batches) or images (arr_0)")
    ev.add_argument("--inception", required=True,
                    help="local Inception weights for torch-fidelity (pt_inception-2015-12-05-6726825d.pth)")
    ev.add_argument("--isc", action="store_true",
                    help="also the Inception Score (on by itself for a class-conditional sample folder)")
    ev.add_argument("--batch", type=arg.positive_int, default=64)
    ev.add_argument("--device", default=None, help="cuda or cpu (default: cuda where there is one)")
    ev.add_argument("--json", action="store_true", help="print one JSON object")


def _settings_record(args: argparse.Namespace, pipeline, cache: CacheSettings, count: int, cfg: float, sampling,
                     classes: list[int] | None) -> dict:
    """Everything that decides the images: what ``run.json`` keeps and a resume must repeat."""
    record = {"format": 1, "model": pipeline.name, "family": pipeline.family, "vq": args.vq and Path(args.vq).name,
              "grid": args.grid, "resolution": args.resolution, "heads": args.heads, "dtype": args.dtype,
              "quantize": args.quantize,
              **asdict(cache), "budget": args.budget, "cfg": cfg, "temperature": sampling.temperature,
              "top_k": sampling.top_k, "top_p": sampling.top_p, "seed": args.seed, "num_images": count}
    if classes is None:
        data = Path(args.prompts).read_bytes()
        record.update(prompts=Path(args.prompts).name, prompts_sha256=hashlib.sha256(data).hexdigest(),
                      images_per_prompt=args.images_per_prompt, negative_prompt=args.negative_prompt)
    else:
        record["classes"] = classes  # in the order given: image i draws classes[i mod their count]
    return record


def run_sample(args: argparse.Namespace, cache: CacheSettings) -> dict:
    from accelerate import PartialState

    if args.speculative != "off":
        raise ValueError("sample draws every image from its own seed; speculative windows share one per batch: "
                         "drop --speculative.")
    t0 = time.perf_counter()
    prompts = read_prompts(args.prompts) if args.prompts is not None else None
    # on CPU, accelerate starts a gloo process group only when asked to (launch --cpu alone starts one process)
    cpu = (args.device or "").startswith("cpu") or os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true")
    state = PartialState(cpu=cpu)
    pipeline = load_pipeline(args.model, args.vq, arg.grid_of(args), args.dtype, args.device or str(state.device),
                             args.heads, resolution=args.resolution, quantize=args.quantize)
    sampling = pipeline.defaults.sampling(args.temperature, args.top_k, args.top_p)
    cfg = pipeline.defaults.cfg if args.cfg is None else args.cfg
    text = isinstance(pipeline, TextToImagePipeline)
    if text and (prompts is None or args.classes is not None):
        raise ValueError(f"{pipeline.name} draws from text: give --prompts FILE (not --classes).")
    if not text and prompts is not None:
        raise ValueError(f"{pipeline.name} is class-conditional: give --classes instead of --prompts.")
    classes = None
    if text:
        items = prompt_items(prompts, args.images_per_prompt, args.num_images, args.seed)
    else:
        classes = parse_classes(args.classes or "all", pipeline.label, len(pipeline.class_names))
        items = class_items(classes, pipeline.class_names, args.num_images, args.seed)
    record = _settings_record(args, pipeline, cache, len(items), cfg, sampling, classes)
    run = SampleRun(Path(args.out), record, items)
    run.check_folder(args.resume)
    load_s = time.perf_counter() - t0

    def generate(group: list[WorkItem]) -> ImageBatch:
        seeds = [item.seed for item in group]
        if text:
            return pipeline.generate(group[0].prompt.text, args.negative_prompt, len(group), cache, cfg, sampling,
                                     seeds, decode=args.decode, compile=args.compile)
        return pipeline.generate([item.label for item in group], cache, cfg, sampling, seeds, decode=args.decode,
                                 compile=args.compile)

    report = draw(run, state, generate, args.batch, args.log_every)
    return {**report, "load_s": load_s} if report else report


def run_evaluate(args: argparse.Namespace) -> dict:
    run_file = Path(args.samples) / RUN_FILE
    isc = args.isc or (run_file.is_file() and "classes" in json.loads(run_file.read_text()))
    return evaluate(args.samples, args.ref, args.inception, isc=isc, extractor=INCEPTION, batch=args.batch,
                    device=args.device)

