"""Measure the cache defaults on a small *trained* model (random weights say nothing about fidelity).

Trains a class-conditional Llama-backbone model on scikit-learn's digits (upscaled to 16x16, 16
grey levels: one token per pixel, so the model learns real 2-D locality), then reports the
teacher-forced KL to the full cache and the coupled-noise agreement for each option of
`CacheSettings`, at budgets 1/4 and 1/6, on held-out digits of every class.

    pip install scikit-learn
    python scripts/ablate_defaults.py [--steps 800] [--out out/ablation]

Seeded and deterministic on one machine; the weights are cached in ``--out``.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import LlamaConfig

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from linear_core import CacheSettings, Guidance, LineLayout
from linear_core.families.llama import LlamaImageModel
from linear_core.metrics import coupled_agreement, teacher_forced

GRID, LEVELS = 16, 16


def load_digits_tokens() -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32)[:, None] / 16.0
    up = F.interpolate(images, size=(GRID, GRID), mode="bilinear", align_corners=False).clamp(0, 1)
    tokens = (up * (LEVELS - 1)).round().long().flatten(1)
    return tokens, torch.tensor(digits.target)


def build_model() -> LlamaImageModel:
    config = LlamaConfig(vocab_size=LEVELS, hidden_size=128, intermediate_size=384, num_hidden_layers=4,
                         num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=GRID * GRID + 8,
                         rms_norm_eps=1e-5, attention_dropout=0.0)
    return LlamaImageModel(config, num_classes=10, prompt_tokens=0)


def train(model: LlamaImageModel, tokens: torch.Tensor, labels: torch.Tensor, steps: int, batch_size: int,
          seed: int) -> list[float]:
    generator = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.05, betas=(0.9, 0.95))
    warmup = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    model.backbone.set_attn_implementation("sdpa")
    model.train()
    losses = []
    for step in range(steps):
        idx = torch.randint(0, len(tokens), (batch_size,), generator=generator)
        batch, cls = tokens[idx], labels[idx].clone()
        flip = torch.rand(batch_size, generator=generator) < 0.5  # horizontal flips double the data
        batch = torch.where(flip[:, None], batch.view(-1, GRID, GRID).flip(-1).flatten(1), batch)
        cls[torch.rand(batch_size, generator=generator) < 0.1] = model.num_classes  # null class for CFG
        embeds = torch.cat([model.prefix_embeddings(cls), model.embed_image_tokens(batch[:, :-1])], dim=1)
        hidden = model.backbone(inputs_embeds=embeds).last_hidden_state
        loss = F.cross_entropy(model.image_logits(hidden).flatten(0, 1), batch.flatten())
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
        if step % 100 == 0 or step == steps - 1:
            print(f"step {step:5d}  loss {sum(losses[-100:]) / len(losses[-100:]):.4f}", flush=True)
    model.eval()
    return losses


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=800)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--out", default="out/ablation")
    parser.add_argument("--sequences", type=int, default=48, help="held-out digits scored per setting")
    parser.add_argument("--cfg", type=float, default=2.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    tokens, labels = load_digits_tokens()
    order = torch.randperm(len(tokens), generator=torch.Generator().manual_seed(args.seed))
    test, train_idx = order[:args.sequences], order[args.sequences:]
    model = build_model()
    weights = out / f"digits-{args.steps}.pt"
    if weights.exists():
        model.load_state_dict(torch.load(weights, weights_only=True))
    else:
        t0 = time.time()
        losses = train(model, tokens[train_idx], labels[train_idx], args.steps, args.batch, args.seed)
        torch.save(model.state_dict(), weights)
        print(f"trained {args.steps} steps in {time.time() - t0:.0f} s, final loss {sum(losses[-100:]) / 100:.4f}")

    guidance = Guidance(args.cfg, "halves")
    conditioning = model.conditioning(labels[test], guidance)
    base = LineLayout(prefix_len=1, grid_h=GRID, grid_w=GRID)

    def measure(settings: CacheSettings) -> dict:
        tf = teacher_forced(model, conditioning, base, tokens[test], settings, guidance)
        coupled = coupled_agreement(model, model.conditioning(labels[test][:24], guidance), base, settings, guidance,
                                    seed=args.seed)
        return {"kl": round(tf.kl_mean, 5), "top1": round(tf.top1_agreement, 4), "coupled": round(coupled.agreement, 4)}

    variants = {
        "linear (defaults)": {},
        "linear anchors=0": {"anchors": 0}, "linear anchors=1": {"anchors": 1}, "linear anchors=16": {"anchors": 16},
        "linear recent=1": {"recent_lines": 1}, "linear recent=3": {"recent_lines": 3},
        "linear shared heads": {"head_sharing": "shared"},
        "linear cfg shared_cond": {"cfg_mode": "shared_cond"}, "linear cfg shared_sum": {"cfg_mode": "shared_sum"},
        "streaming": {"policy": "streaming"}, "h2o": {"policy": "h2o"}, "rkv": {"policy": "rkv"},
        "random": {"policy": "random"},
    }
    report = {}
    for budget in ("1/4", "1/6"):
        for name, change in variants.items():
            options = {"policy": "linear", "budget": budget, **change}
            try:
                result = measure(CacheSettings(**options))
            except ValueError as error:  # e.g. recent=3 does not fit 1/6 of a 16x16 grid
                result = {"skipped": str(error).split(";")[0]}
            report[f"{budget} {name}"] = result
            print(f"{budget:>4} {name:<24} {result}", flush=True)
    (out / "report.json").write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
