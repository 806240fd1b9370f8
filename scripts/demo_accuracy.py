"""How recognisable a demo-format model's digits are, per cache setting: the model card's figures.

Draws ``--per-class`` samples of each digit for every seed and setting, maps them back to 8x8 and
scores them with the nearest class mean of the training split that ``scripts/train_demo.py`` uses
(scikit-learn's digits, seeded split), so a number here is comparable with the training record.

    python scripts/demo_accuracy.py full linear:1/4 linear:1/6            # the shipped model, 4 seeds
    python scripts/demo_accuracy.py linear:1/4 --anchors 24 --model /tmp/demo --seeds 1

A setting is ``policy[:budget]``; ``--cfg`` / ``--temperature`` / ``--top-p`` default to the model's
own defaults (its ``config.json``). Prints one line per setting: mean accuracy and each seed's.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

from linear_core.demo import DEMO_DIR, class_means, nearest_mean_accuracy, training_split  # noqa: E402
from linear_core.loading import load_pipeline  # noqa: E402
from linear_core.settings import CacheSettings  # noqa: E402


def training_split_means(seed: int = 0) -> torch.Tensor:
    """``(10, 64)`` class means of the digits ``train_demo.py`` trains on with ``--seed seed``."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32).flatten(1) / 16.0
    labels = torch.tensor(digits.target)
    _, train = training_split(len(images), seed)
    return class_means(images[train], labels[train])


def parse_setting(text: str, args: argparse.Namespace) -> CacheSettings:
    policy, _, budget = text.partition(":")
    extra = {"budget": budget} if budget else {}
    return CacheSettings(policy=policy, anchors=args.anchors, recent_lines=args.recent_lines, sinks=args.sinks,
                         head_sharing=args.head_sharing, **extra)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("settings", nargs="+", help="policy[:budget], e.g. full linear:1/4 h2o:1/6")
    parser.add_argument("--model", default=str(DEMO_DIR), help="a demo-format folder (default: the built-in one)")
    parser.add_argument("--seeds", type=int, default=4, help="seeds 0..N-1, each --per-class samples per digit")
    parser.add_argument("--per-class", type=int, default=10)
    parser.add_argument("--cfg", type=float, default=None)
    parser.add_argument("--temperature", type=float, default=None)
    parser.add_argument("--top-p", type=float, default=None)
    parser.add_argument("--anchors", type=int, default=CacheSettings.anchors)
    parser.add_argument("--recent-lines", type=int, default=CacheSettings.recent_lines)
    parser.add_argument("--sinks", type=int, default=CacheSettings.sinks)
    parser.add_argument("--head-sharing", default=CacheSettings.head_sharing, choices=("per_head", "shared"))
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    pipeline = load_pipeline(args.model, device="cpu")
    sampling = pipeline.defaults.sampling(args.temperature, top_p=args.top_p)
    cfg = pipeline.defaults.cfg if args.cfg is None else args.cfg
    means = training_split_means()
    labels = [c for c in range(10) for _ in range(args.per_class)]
    print(f"cfg {cfg}, temperature {sampling.temperature}, top-p {sampling.top_p}; "
          f"{len(labels)} samples per seed, seeds 0..{args.seeds - 1}")
    for text in args.settings:
        settings = parse_setting(text, args)
        scores = []
        for seed in range(args.seeds):
            batch = pipeline.generate(labels, settings, cfg=cfg, sampling=sampling, seed=seed)
            scores.append(nearest_mean_accuracy(pipeline.decode.to_digits8(batch.tokens), torch.tensor(labels), means))
        print(f"{text:14s} {sum(scores) / len(scores):.3f}  per seed "
              + " ".join(f"{score:.2f}" for score in scores), flush=True)


if __name__ == "__main__":
    main()
