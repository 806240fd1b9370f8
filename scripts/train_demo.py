"""Train the built-in demo model ``demo-digits``: a LlamaGen-architecture GPT on scikit-learn's digits.

The data ships inside the scikit-learn wheel (1,797 8x8 digits, 10 classes), so the pack has a
working default with no download. Each digit is resampled to the 24x24 token grid of LlamaGen-384
(bilinear; for training through a fresh small random rotation, zoom and shift at every step) and
quantised to ``--levels`` grey levels: token ``t`` is grey ``t / (levels - 1)``, so the "tokenizer"
is exact and needs no VQ weights. The network is `LlamaGenModel` (class token with
a null class for CFG, fed ``--cls-tokens`` times; 2-D RoPE; the same code path as the real
checkpoints) and is saved in
upstream LlamaGen's key layout, so the demo loads through the real LlamaGen loader.

    pip install scikit-learn
    python scripts/train_demo.py                      # the shipped model (about 57 min on 2 cores)
    python scripts/train_demo.py --steps 50 --out /tmp/demo   # a quick smoke run

Seeded: the same machine and torch version give the same weights. Writes ``model.safetensors``
(upstream LlamaGen keys; heads and grid in the metadata) and ``config.json`` (grid, levels, class
names, sampling defaults, and the training record: losses, time, sample accuracy per CFG scale),
which the model card ``README.md`` beside them quotes.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

from linear_core.demo import DEMO_DIR, DigitsPalette, class_means, nearest_mean_accuracy, training_split  # noqa: E402
from linear_core.engine import generate  # noqa: E402
from linear_core.files import replacing  # noqa: E402
from linear_core.families.llamagen import LlamaGenModel, LlamaGenSpec, to_upstream  # noqa: E402
from linear_core.sampling import SamplingConfig  # noqa: E402
from linear_core.settings import CacheSettings  # noqa: E402


def load_digits(grid: int, levels: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(tokens (n, grid²), labels (n,), images8 (n, 1, 8, 8) in [0, 1])``: each digit upscaled
    (bilinear) and quantised, as the model's tokens; the 8x8 originals feed the augmentation."""
    from sklearn.datasets import load_digits as sklearn_digits

    digits = sklearn_digits()
    images = torch.tensor(digits.images, dtype=torch.float32)[:, None] / 16.0
    return to_tokens(images, grid, levels), torch.tensor(digits.target), images


def to_tokens(images8: torch.Tensor, grid: int, levels: int, warp: torch.Tensor | None = None) -> torch.Tensor:
    """8x8 digits → grey-level tokens on the ``grid``, optionally through affine ``warp`` matrices
    ``(n, 2, 3)`` (normalised coordinates, as `F.affine_grid`)."""
    if warp is None:
        up = F.interpolate(images8, size=(grid, grid), mode="bilinear", align_corners=False)
    else:
        coords = F.affine_grid(warp, [len(images8), 1, grid, grid], align_corners=False)
        up = F.grid_sample(images8, coords, mode="bilinear", padding_mode="border", align_corners=False)
    return (up.clamp(0, 1) * (levels - 1)).round().long().flatten(1)


def random_warps(n: int, grid: int, generator: torch.Generator, degrees: float = 6.0, scale: float = 0.06,
                 shift_tokens: float = 1.0) -> torch.Tensor:
    """Small random rotations, zooms and translations, one per digit: each step sees new digits, so
    the model learns the classes instead of memorising 1.6k pictures, and stays centred enough
    for the class-mean metric."""
    uniform = lambda low, high: low + (high - low) * torch.rand(n, generator=generator)  # noqa: E731
    angle = torch.deg2rad(uniform(-degrees, degrees))
    zoom = uniform(1 - scale, 1 + scale)
    shift = uniform(-shift_tokens, shift_tokens), uniform(-shift_tokens, shift_tokens)
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    step = 2.0 / grid  # one token in normalised coordinates
    return torch.stack([torch.stack([cos, -sin, shift[0] * step], 1), torch.stack([sin, cos, shift[1] * step], 1)], 1)


def train(model: LlamaGenModel, images8: torch.Tensor, labels: torch.Tensor, args,
          progress: Callable[[int], None] | None = None) -> list[float]:
    """AdamW on the next-token loss; ``progress(step)`` runs every ``--eval-every`` steps."""
    generator = torch.Generator().manual_seed(args.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.05, betas=(0.9, 0.95))
    warmup = max(1, args.steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(s, args.steps) / args.steps))))
    model.backbone.set_attn_implementation("sdpa")
    model.train()
    losses: list[float] = []
    t0 = time.time()
    for step in range(args.steps):
        idx = torch.randint(0, len(images8), (args.batch,), generator=generator)
        warps = random_warps(args.batch, args.grid, generator) if args.augment else None
        batch, cls = to_tokens(images8[idx], args.grid, args.levels, warps), labels[idx].clone()
        cls[torch.rand(args.batch, generator=generator) < 0.1] = model.num_classes  # null class for CFG
        loss = next_token_loss(model, batch, cls)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
        if step % 50 == 0 or step == args.steps - 1:
            recent = losses[-50:]
            print(f"step {step:5d}  loss {sum(recent) / len(recent):.4f}  {time.time() - t0:6.0f} s", flush=True)
        if progress and args.eval_every and (step + 1) % args.eval_every == 0 and step + 1 < args.steps:
            model.eval()
            progress(step + 1)
            model.train()
    model.eval()
    return losses


def next_token_loss(model: LlamaGenModel, tokens: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of every image token given the condition tokens and the tokens before it
    (the last condition position predicts the first image token)."""
    embeds = torch.cat([model.prefix_embeddings(labels), model.embed_image_tokens(tokens[:, :-1])], 1)
    positions = torch.arange(embeds.shape[1])[None]
    hidden = model.backbone(inputs_embeds=embeds, position_ids=positions).last_hidden_state
    logits = model.image_logits(hidden[:, model.spec.cls_token_num - 1:])
    return F.cross_entropy(logits.flatten(0, 1), tokens.flatten())


@torch.no_grad()
def held_out_loss(model: LlamaGenModel, tokens: torch.Tensor, labels: torch.Tensor) -> float:
    return next_token_loss(model, tokens, labels).item()


def sample_accuracy(model: LlamaGenModel, palette: DigitsPalette, means: torch.Tensor, cfg: float, temperature: float,
                    per_class: int, seed: int, settings: CacheSettings = CacheSettings(policy="full")) -> float:
    labels = torch.arange(10).repeat_interleave(per_class)
    guidance = model.guidance(cfg)
    result = generate(model, model.conditioning(labels, guidance), model.spec.layout(), settings,
                      guidance, SamplingConfig(temperature=temperature), seed)
    return nearest_mean_accuracy(palette.to_digits8(result.tokens), labels, means)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=4000)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--grid", type=int, default=24)
    parser.add_argument("--cls-tokens", type=int, default=16,
                        help="condition tokens (copies of the class embedding) before the image")
    parser.add_argument("--levels", type=int, default=8)
    parser.add_argument("--no-augment", dest="augment", action="store_false",
                        help="train on the digits as they are (default: small random rotations, zooms, shifts)")
    parser.add_argument("--cfgs", default="1,2,3,4", help="CFG scales scored after training; the best is the default")
    parser.add_argument("--temperatures", default="1.0,0.8", help="temperatures scored with each CFG scale")
    parser.add_argument("--per-class", type=int, default=10, help="samples per class for the accuracy")
    parser.add_argument("--eval-every", type=int, default=0,
                        help="every N steps, print the sample accuracy (full and LineAR 1/4; CFG 2, temperature 0.8, 5 per class)")
    parser.add_argument("--checkpoints", default="", help="with --eval-every, also save the weights there each time")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=str(DEMO_DIR))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    tokens, labels, images8 = load_digits(args.grid, args.levels)
    flat8 = images8.flatten(1)
    held_out, train_idx = training_split(len(tokens), args.seed)
    means = class_means(flat8[train_idx], labels[train_idx])
    real_accuracy = nearest_mean_accuracy(flat8[held_out], labels[held_out], means)
    palette = DigitsPalette(args.grid, args.levels)
    quantised_accuracy = nearest_mean_accuracy(palette.to_digits8(tokens[held_out]), labels[held_out], means)

    spec = LlamaGenSpec(dim=args.dim, layers=args.layers, heads=args.heads, grid=args.grid, vocab=args.levels,
                        num_classes=10, cls_token_num=args.cls_tokens)
    model = LlamaGenModel(spec)
    params = sum(p.numel() for p in model.parameters())
    print(f"{spec.size_name}: {params / 1e6:.2f} M parameters; {len(train_idx)} training digits")

    quarter_cache = CacheSettings(budget="1/4")
    if args.eval_every:  # fail now, not after the first N steps
        try:
            quarter_cache.make_policy().validate(spec.layout().with_budget(quarter_cache.budget))
        except ValueError as error:
            parser.error(f"--eval-every also scores LineAR at 1/4, which does not fit a {args.grid}x{args.grid} grid "
                         f"({error}); use --grid 16 or more.")

    def progress(step: int) -> None:
        full = sample_accuracy(model, palette, means, 2.0, 0.8, 5, args.seed)
        quarter = sample_accuracy(model, palette, means, 2.0, 0.8, 5, args.seed, quarter_cache)
        print(f"step {step}: sample accuracy {full:.2f} full, {quarter:.2f} LineAR 1/4 "
              "(CFG 2, temperature 0.8, 50 samples)", flush=True)
        if args.checkpoints:
            Path(args.checkpoints).mkdir(parents=True, exist_ok=True)
            save_file(to_upstream(model), str(Path(args.checkpoints) / f"step-{step}.safetensors"), metadata=metadata)

    metadata = {"format": "llamagen", "heads": str(spec.heads), "grid": str(spec.grid),
                "cls_token_num": str(spec.cls_token_num)}
    t0 = time.time()
    losses = train(model, images8[train_idx], labels[train_idx], args, progress)
    train_s = time.time() - t0
    held_loss = held_out_loss(model, tokens[held_out], labels[held_out])
    null_loss = held_out_loss(model, tokens[held_out], torch.full_like(labels[held_out], model.num_classes))
    print(f"held-out loss {held_loss:.4f} with the class, {null_loss:.4f} with the null class", flush=True)
    accuracy = {}
    for cfg in (float(c) for c in args.cfgs.split(",")):
        for temperature in (float(t) for t in args.temperatures.split(",")):
            accuracy[cfg, temperature] = sample_accuracy(model, palette, means, cfg, temperature, args.per_class, args.seed)
            print(f"cfg {cfg} temperature {temperature}: nearest-class-mean accuracy of samples "
                  f"{accuracy[cfg, temperature]:.3f}", flush=True)
    best_cfg, best_temperature = max(accuracy, key=accuracy.get)
    total_s = time.time() - t0

    with replacing(out / "model.safetensors") as temporary:  # a killed run leaves the old model whole
        save_file(to_upstream(model), str(temporary), metadata=metadata)
    report = {
        "family": "demo-digits", "grid": spec.grid, "levels": args.levels,
        "class_names": [str(c) for c in range(10)],
        "defaults": {"cfg": best_cfg, "temperature": best_temperature, "top_k": 0, "top_p": 1.0},
        "training": {
            "data": "scikit-learn digits (1,797 8x8 images), bilinear to grid, quantised to levels; "
                    f"{len(train_idx)} train / {len(held_out)} held out (seeded split)",
            "spec": {"dim": spec.dim, "layers": spec.layers, "heads": spec.heads, "ffn": spec.llama_config().intermediate_size,
                     "cls_token_num": spec.cls_token_num},
            "parameters": params, "steps": args.steps, "batch": args.batch, "lr": args.lr, "seed": args.seed,
            "augmentation": ("random affine per digit before upscaling: rotation ±6°, zoom ±6%, shift ±1 token per axis"
                             if args.augment else "none") + "; 10% null class", "schedule": "AdamW, warmup 5%, cosine to 10%",
            "final_train_loss": round(sum(losses[-50:]) / len(losses[-50:]), 4), "held_out_loss": round(held_loss, 4),
            "held_out_loss_null_class": round(null_loss, 4),
            "train_seconds": round(train_s), "total_seconds": round(total_s), "threads": args.threads,
            "torch": torch.__version__,
            "sample_accuracy": [{"cfg": c, "temperature": t, "accuracy": round(v, 3)} for (c, t), v in accuracy.items()],
            "real_digit_accuracy": round(real_accuracy, 3), "quantised_digit_accuracy": round(quantised_accuracy, 3),
            "samples_per_cfg": 10 * args.per_class,
        },
    }
    with replacing(out / "config.json") as temporary:
        temporary.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report["training"], indent=2))


if __name__ == "__main__":
    main()
