"""Command line: ``python -m linear_core generate | fidelity | bench | plan | sample | evaluate …``."""
from __future__ import annotations

import argparse
import json
import sys

import torch

from . import arguments as arg
from .archs import ARCHS
from .bench import DECODES, format_table, run_bench
from .cli_sample import add_parsers as add_sample_parsers, run_evaluate, run_sample
from .demo import DEMO_NAME
from .compressor import CFG_MODES, HEAD_SHARING
from .devices import DTYPES, check_device
from .evaluate import format_evaluation
from .fidelity import fidelity_report, format_fidelity
from .images import check_output_file, save_png
from .janus_bench import bench_vs_transformers, format_vs_transformers
from .pipeline import describe_summary
from .loading import load_pipeline
from .memory_plan import plan_command
from .policies import POLICIES
from .sample import format_report as format_sample
from .quantize import MODES
from .settings import CacheSettings
from .speculative import Speculation
from .text_pipeline import TextToImagePipeline


def _policies(text: str) -> tuple[str, ...]:
    names = tuple(p.strip() for p in text.split(",") if p.strip())
    unknown = [p for p in names if p not in POLICIES]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown policy {', '.join(unknown)}; choose from {', '.join(POLICIES)}")
    return names


def _cache_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--anchors", type=arg.non_negative_int, default=CacheSettings.anchors,
                        help="first image tokens always kept")
    parser.add_argument("--recent-lines", type=arg.non_negative_int, default=CacheSettings.recent_lines,
                        help="latest lines always kept")
    parser.add_argument("--sinks", type=arg.non_negative_int, default=CacheSettings.sinks,
                        help="sink tokens of 'streaming'")
    parser.add_argument("--keep-line-ends", action="store_true",
                        help="never evict end-of-line tokens (Lumina-mGPT); default: they are scored like the rest")
    parser.add_argument("--head-sharing", default=CacheSettings.head_sharing, choices=HEAD_SHARING)
    parser.add_argument("--cfg-mode", default=CacheSettings.cfg_mode, choices=CFG_MODES)


def _device_map(text: str) -> str | dict:
    """``auto`` / ``balanced`` / ``sequential`` as they are, or a JSON object of module → device."""
    if not text.lstrip().startswith("{"):
        return text
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise argparse.ArgumentTypeError(f"--device-map is not valid JSON ({error}).") from None


def _settings(args: argparse.Namespace, policy: str = "full", budget: str = "full") -> CacheSettings:
    return CacheSettings(policy=policy, budget=budget, anchors=args.anchors, recent_lines=args.recent_lines,
                         sinks=args.sinks, keep_line_ends=args.keep_line_ends, head_sharing=args.head_sharing,
                         cfg_mode=args.cfg_mode)


def _model_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=DEMO_NAME, help=f"built-in name ({DEMO_NAME}), a LlamaGen c2i_*.pt / "
                        ".safetensors, or a Janus-Pro / Lumina-mGPT / Emu3-Gen folder")
    parser.add_argument("--vq", "--vqgan", dest="vq", default=None,
                        help="image decoder: LlamaGen's vq_ds16_c2i.pt, or the folder with Chameleon's vqgan.ckpt "
                             "+ vqgan.yaml for Lumina-mGPT (default: a 'vqgan' folder inside the model folder)")
    parser.add_argument("--grid", type=arg.grid_side, default=None,
                        help="token grid when the file name has no _256/_384/_512")
    parser.add_argument("--resolution", type=arg.resolution, default=None,
                        help="image size in pixels: Lumina-mGPT 512/768/1024 and LlamaGen 256/384/512 (16 per "
                             "token), Emu3-Gen 720 (8 per token)")
    parser.add_argument("--heads", type=arg.positive_int, default=None,
                        help="attention heads, for non-standard LlamaGen widths")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1, mps (default: best available)")
    parser.add_argument("--dtype", default="fp32", choices=sorted(DTYPES))
    parser.add_argument("--threads", type=arg.positive_int, default=None, help="torch CPU threads")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    _quantize_option(parser)
    _decode_options(parser)
    _speculative_options(parser)


def _quantize_option(parser: argparse.ArgumentParser, several: bool = False) -> None:
    if several:
        parser.add_argument("--quantize", type=arg.quantize_modes, default=("none",),
                            help="decoder weights, comma-separated side by side: none, int8, int4 (torchao)")
    else:
        parser.add_argument("--quantize", default="none", choices=MODES,
                            help="decoder linear weights: none, int8 or int4 (weight-only, torchao)")


def _decode_options(parser: argparse.ArgumentParser, several: bool = False) -> None:
    if several:
        parser.add_argument("--decode", type=_decodes, default=("auto",),
                            help="comma-separated, side by side: auto, static, eager, compiled (static + inductor)")
    else:
        parser.add_argument("--decode", default="auto", choices=("auto", "static", "eager"),
                            help="static: fixed-shape step, CUDA-graph captured on GPUs (default where it runs)")
    parser.add_argument("--compile", default="auto", choices=("auto", "on", "off"),
                        help="inductor for the static step (auto: off; worth it for many requests in one process)")


def _speculative_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--speculative", default="off", choices=("off", "jacobi"),
                        help="jacobi: verify a window of drafts per forward (same distribution, fewer forwards)")
    parser.add_argument("--window", type=arg.positive_int, default=Speculation.window,
                        help="speculative inputs per forward: the newest token + window - 1 drafts")


def _speculation(args: argparse.Namespace) -> Speculation | None:
    return Speculation(args.window) if args.speculative == "jacobi" else None


def _decodes(text: str) -> tuple[str, ...]:
    names = tuple(d.strip() for d in text.split(",") if d.strip())
    unknown = [d for d in names if d not in DECODES]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown decode {', '.join(unknown)}; choose from {', '.join(DECODES)}")
    return names


def build_parser() -> argparse.ArgumentParser:
    parser = arg.Parser(prog="python -m linear_core", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    gen = sub.add_parser("generate", help="generate images with a cache policy; writes a PNG and prints stats")
    _model_options(gen)
    gen.add_argument("--label", action="append", default=None,
                     help="class id or name ('207', 'golden retriever'); repeat for several, cycled over --batch")
    gen.add_argument("--prompt", default=None, help="what to draw, for text-to-image models (Janus-Pro)")
    gen.add_argument("--negative-prompt", default="", help="text-to-image: what the unconditional branch says")
    gen.add_argument("--device-map", default=None, type=_device_map,
                     help="accelerate device map for large models: 'auto' or JSON such as "
                          "'{\"model.language_model.layers.0\": 0, ...}' (Janus-Pro)")
    gen.add_argument("--offload-folder", default=None, help="where --device-map may put weights on disk")
    gen.add_argument("--policy", default="linear", choices=sorted(POLICIES))
    gen.add_argument("--budget", type=arg.budget, default=CacheSettings.budget,
                     help="'1/6', '0.25', '4 lines' or 'full'")
    gen.add_argument("--cfg", type=arg.finite_float, default=None, help="guidance scale (default: the model's)")
    gen.add_argument("--temperature", type=arg.finite_float, default=None)
    gen.add_argument("--top-k", type=arg.non_negative_int, default=None, help="0 = off (default: the model's)")
    gen.add_argument("--top-p", type=arg.finite_float, default=None)
    gen.add_argument("--seed", type=arg.seed, default=0)
    gen.add_argument("--batch", type=arg.positive_int, default=1, help="images (CFG doubles the rows)")
    gen.add_argument("--out", default="linear_ar.png", help="PNG to write (a grid when --batch > 1)")
    _cache_options(gen)

    fid = sub.add_parser("fidelity", help="teacher-forced KL and agreement of policies vs the full cache")
    _model_options(fid)
    fid.add_argument("--budget", type=arg.budget, default="1/4")
    fid.add_argument("--policies", type=_policies, default=("linear", "streaming", "h2o", "rkv", "random"))
    fid.add_argument("--sequences", type=arg.positive_int, default=40, help="sequences, spread over all classes (or prompts)")
    fid.add_argument("--prompt", action="append", default=None,
                     help="text-to-image models: a prompt to sample; repeat for several, one per --chunk")
    fid.add_argument("--chunk", type=arg.positive_int, default=20, help="sequences per forward batch")
    fid.add_argument("--cfg", type=arg.finite_float, default=None)
    fid.add_argument("--seed", type=arg.seed, default=0)
    _cache_options(fid)

    bench = sub.add_parser("bench", help="throughput and KV memory of policies side by side (random weights)")
    bench.add_argument("--arch", default="llamagen-b", choices=sorted(ARCHS) + [DEMO_NAME],
                       help=f"a real shape with random weights, or the trained {DEMO_NAME}")
    bench.add_argument("--policies", type=_policies, default=("full", "linear"), help="comma-separated, first = baseline")
    bench.add_argument("--budget", type=arg.budgets, default="1/6", help="ratio of image tokens ('1/6', '0.25') or lines ('4 lines'); several: '1/4,1/6'")
    bench.add_argument("--batch", type=arg.positive_int, default=1, help="images (CFG doubles the rows)")
    bench.add_argument("--layers", type=arg.positive_int, default=None, help="cut the depth (CPU runs)")
    bench.add_argument("--grid", type=arg.grid_side, default=None, help="override the square token grid")
    bench.add_argument("--device", default=None, help="cpu, cuda, cuda:1, mps (default: best available)")
    bench.add_argument("--dtype", default="fp32", choices=sorted(DTYPES))
    bench.add_argument("--repeats", type=arg.positive_int, default=1, help="interleaved repeats; medians are reported")
    bench.add_argument("--threads", type=arg.positive_int, default=None, help="torch CPU threads")
    bench.add_argument("--json", action="store_true", help="print one JSON object")
    bench.add_argument("--vs-transformers", action="store_true",
                       help="janus-pro-*: time transformers' own generate(generation_mode='image') against the engine")
    bench.add_argument("--peak-bandwidth", type=arg.positive_float, default=None,
                       help="memory bandwidth in GB/s for the roofline (default: the GPU table, or measured)")
    bench.add_argument("--peak-tflops", type=arg.positive_float, default=None, help="peak TFLOP/s for the roofline")
    _decode_options(bench, several=True)
    _speculative_options(bench)
    _quantize_option(bench, several=True)
    _cache_options(bench)
    add_sample_parsers(sub, _model_options, _cache_options)

    planner = sub.add_parser("plan", help="will a request fit in a device's memory, and what would make it fit")
    planner.add_argument("--model", default=DEMO_NAME, help=f"a bench shape ({', '.join(ARCHS)}), {DEMO_NAME}, a "
                         "LlamaGen file or a model folder")
    planner.add_argument("--vq", "--vqgan", dest="vq", default=None, help="image decoder, as for generate")
    planner.add_argument("--resolution", type=arg.resolution, default=None, help="image size in pixels")
    planner.add_argument("--layers", type=arg.positive_int, default=None, help="cut the depth of a bench shape")
    planner.add_argument("--device-memory", type=arg.memory_size, required=True, help="free memory, e.g. 8GiB")
    planner.add_argument("--device", default="cuda", help="device type the plan is for (int4 layouts differ)")
    planner.add_argument("--dtype", default="bf16", choices=sorted(DTYPES))
    planner.add_argument("--policy", default="linear", choices=sorted(POLICIES))
    planner.add_argument("--budget", type=arg.budget, default=CacheSettings.budget)
    planner.add_argument("--batch", type=arg.positive_int, default=1, help="images (CFG doubles the rows)")
    planner.add_argument("--cfg", type=arg.finite_float, default=None, help="guidance scale (1 = no CFG rows)")
    planner.add_argument("--prompt", default="an image", help="text-to-image: the prompt whose length sets the prefix")
    planner.add_argument("--pcie-gbps", type=arg.positive_float, default=25.0,
                         help="host-to-device GB/s assumed for offloaded layers")
    _quantize_option(planner)
    planner.add_argument("--json", action="store_true", help="print one JSON object")
    _cache_options(planner)
    return parser


def _generate(args: argparse.Namespace) -> dict:
    settings = _settings(args, args.policy, args.budget)
    pipeline = load_pipeline(args.model, args.vq, arg.grid_of(args), args.dtype, args.device, args.heads, args.device_map,
                             args.offload_folder, args.resolution, args.quantize)
    sampling = pipeline.defaults.sampling(args.temperature, args.top_k, args.top_p)
    if isinstance(pipeline, TextToImagePipeline):
        if not args.prompt:
            raise ValueError(f"{pipeline.name} draws from text: give --prompt \"...\".")
        batch = pipeline.generate(args.prompt, args.negative_prompt, args.batch, settings, args.cfg, sampling, args.seed,
                                  decode=args.decode, compile=args.compile, speculative=_speculation(args))
    else:
        if args.prompt:
            raise ValueError(f"{pipeline.name} is class-conditional: give --label instead of --prompt.")
        labels = args.label or ["0"]
        labels = [labels[i % len(labels)] for i in range(args.batch)]
        batch = pipeline.generate(labels, settings, args.cfg, sampling, args.seed, decode=args.decode,
                                  compile=args.compile, speculative=_speculation(args))
    path = save_png(batch.images, args.out, batch.png_text())
    return {"image": str(path), **batch.summary()}


def _check_before_loading(args: argparse.Namespace) -> None:
    """What can be refused before a model loads: the device, the output file."""
    if args.device is not None and args.command != "plan":
        check_device(args.device)
    if args.command == "generate":
        check_output_file(args.out)
    if getattr(args, "threads", None):
        torch.set_num_threads(args.threads)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        _check_before_loading(args)
        if args.command == "generate":
            report = _generate(args)
            text = _format_generate(report)
        elif args.command == "plan":
            report, text = plan_command(args, _settings(args, args.policy, args.budget))
        elif args.command == "fidelity":
            load = lambda mode: load_pipeline(args.model, args.vq, arg.grid_of(args), args.dtype, args.device,  # noqa: E731
                                              args.heads, resolution=args.resolution, quantize=mode)
            pipeline = load("none")
            report = fidelity_report(pipeline, args.policies, args.budget, args.sequences, args.chunk, args.cfg,
                                     args.seed, _settings(args), tuple(args.prompt or ()), args.decode, args.compile,
                                     speculative=_speculation(args),
                                     quantized=load(args.quantize) if args.quantize != "none" else None)
            text = format_fidelity(report)
        elif args.command == "sample":
            report = run_sample(args, _settings(args, args.policy, args.budget))
            text = format_sample(report)
        elif args.command == "evaluate":
            report = run_evaluate(args)
            text = format_evaluation(report)
        elif args.vs_transformers:
            if not args.arch.startswith("janus"):
                raise ValueError("--vs-transformers compares with transformers' Janus generate: use --arch janus-pro-1b or janus-pro-7b.")
            budgets = tuple(b.strip() for b in args.budget.split(",") if b.strip())
            decode = args.decode[0] if len(args.decode) == 1 else "auto"
            report = bench_vs_transformers(args.arch, args.layers, args.batch, budgets, args.device, args.dtype,
                                           decode=DECODES[decode][0], compile=DECODES[decode][1])
            text = format_vs_transformers(report)
        else:
            report = run_bench(args.arch, args.policies, args.budget, args.batch, args.layers, args.grid,
                               args.device, args.dtype, args.repeats, base=_settings(args), decodes=args.decode,
                               peak_bandwidth=args.peak_bandwidth and args.peak_bandwidth * 1e9,
                               peak_tflops=args.peak_tflops, speculative=_speculation(args), quantize=args.quantize)
            text = format_table(report)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except torch.OutOfMemoryError:
        print("error: the device ran out of memory: lower --batch, the budget or the resolution, or use a "
              "smaller --dtype.", file=sys.stderr)
        return 2
    except Exception as error:  # anything else is still one line, not a traceback
        text = " ".join(str(error).split())  # one line, however many the library wrote
        print(f"error: {type(error).__name__}: {text[:400]}", file=sys.stderr)
        return 2
    for note in decode_notes(report):
        print(f"note: {note}", file=sys.stderr)
    if report or text:  # a sample run's other processes have nothing to say
        print(json.dumps(report, indent=2) if args.json else text)
    return 0


def decode_notes(report: dict) -> set[str]:
    """Why a static decode ran eagerly, wherever a report says so."""
    found = {report["decode_note"]} if report.get("decode_note") else set()
    for entry in report.get("results", {}).values():
        if isinstance(entry, dict) and entry.get("decode_note"):
            found.add(entry["decode_note"])
    return found


def _format_generate(report: dict) -> str:
    count = f"{report['batch']} image{'s' if report['batch'] > 1 else ''}"
    condition = f"prompt {report['prompt']!r}" if "prompt" in report else f"labels {report['labels']}"
    return f"wrote {report['image']} ({count}, {condition})\n" + describe_summary(report)
