"""Command line: ``python -m linear_core bench …``."""
from __future__ import annotations

import argparse
import json
import sys

import torch

from .archs import ARCHS
from .bench import DTYPES, format_table, run_bench
from .policies import POLICIES
from .settings import CacheSettings


def _policies(text: str) -> tuple[str, ...]:
    names = tuple(p.strip() for p in text.split(",") if p.strip())
    unknown = [p for p in names if p not in POLICIES]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown policy {', '.join(unknown)}; choose from {', '.join(POLICIES)}")
    return names


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m linear_core", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    bench = sub.add_parser("bench", help="throughput and KV memory of policies side by side (random weights)")
    bench.add_argument("--arch", default="llamagen-b", choices=sorted(ARCHS))
    bench.add_argument("--policies", type=_policies, default=("full", "linear"), help="comma-separated, first = baseline")
    bench.add_argument("--budget", default="1/6", help="ratio of image tokens ('1/6', '0.25') or lines ('4 lines'); several: '1/4,1/6'")
    bench.add_argument("--batch", type=int, default=1, help="images (CFG doubles the rows)")
    bench.add_argument("--layers", type=int, default=None, help="cut the depth (CPU runs)")
    bench.add_argument("--grid", type=int, default=None, help="override the square token grid")
    bench.add_argument("--device", default=None, help="cpu, cuda, cuda:1, mps (default: best available)")
    bench.add_argument("--dtype", default="fp32", choices=sorted(DTYPES))
    bench.add_argument("--repeats", type=int, default=1, help="interleaved repeats; medians are reported")
    bench.add_argument("--anchors", type=int, default=CacheSettings.anchors)
    bench.add_argument("--recent-lines", type=int, default=CacheSettings.recent_lines)
    bench.add_argument("--head-sharing", default=CacheSettings.head_sharing, choices=("per_head", "shared"))
    bench.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    bench.add_argument("--json", action="store_true", help="print one JSON object")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        base = CacheSettings(anchors=args.anchors, recent_lines=args.recent_lines, head_sharing=args.head_sharing)
        report = run_bench(args.arch, args.policies, args.budget, args.batch, args.layers, args.grid,
                           args.device, args.dtype, args.repeats, base=base)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(json.dumps(report, indent=2) if args.json else format_table(report))
    return 0
