"""How close each policy stays to the full cache on a real (trained) model: the `fidelity` command.

Sequences are the model's own full-cache samples, spread evenly over its classes (class models) or
drawn for the given prompts in turn (text-to-image models, with their logits rules). Each policy is
then scored by the teacher-forced KL(full ‖ policy) and top-1 agreement on those sequences (the
same prefix and tokens for both caches) and by the coupled-noise agreement of free-running samples.
"""
from __future__ import annotations

from dataclasses import replace

import torch

from .engine import generate
from .metrics import FULL, coupled_agreement, teacher_forced
from .pipeline import ClassConditionalPipeline, ImagePipeline
from .settings import CacheSettings
from .speculative import Speculation
from .text_pipeline import TextToImagePipeline


def spread_labels(count: int, classes: int) -> list[int]:
    """``count`` class ids covering all ``classes`` evenly (every class when count ≥ classes)."""
    return [int(i * classes / count) % classes if count < classes else i % classes for i in range(count)]


def _class_request(pipeline: ClassConditionalPipeline, labels: list[int], cfg: float):
    guidance = pipeline.model.guidance(cfg)
    conditioning = pipeline.model.conditioning(torch.tensor(labels, device=pipeline.device), guidance)
    return conditioning, guidance, pipeline.layout, None


def _text_request(pipeline: TextToImagePipeline, prompt: str, count: int, cfg: float):
    conditioning, guidance, layout = pipeline.model.request(prompt, "", count, cfg)
    return conditioning, guidance, layout, getattr(pipeline.model, "rules", None)


@torch.inference_mode()
def fidelity_report(pipeline: ImagePipeline, policies: tuple[str, ...], budget: str = "1/4",
                    sequences: int = 40, batch: int = 20, cfg: float | None = None, seed: int = 0,
                    base: CacheSettings = CacheSettings(), prompts: tuple[str, ...] = (), decode: str = "auto",
                    compile: str = "auto", speculative: Speculation | None = None,
                    quantized: ImagePipeline | None = None) -> dict:
    """Teacher-forced KL and agreement of ``policies`` against the full cache, on sequences the full
    cache samples (with ``speculative`` decoding when given: the same law, fewer forwards).
    ``quantized``: the same model loaded with quantized weights; each policy (and the full cache)
    then also runs on it, as ``policy+int8``, against the full cache of ``pipeline``'s weights."""
    model, layout = pipeline.model, pipeline.layout
    cfg = pipeline.defaults.cfg if cfg is None else cfg
    sampling = pipeline.defaults.sampling()
    plans = {policy: replace(base, policy=policy, budget=budget) for policy in policies}
    if not plans:
        raise ValueError("Give at least one policy to compare.")
    variants = {p: (s, model) for p, s in plans.items()}
    if quantized is not None:
        variants.update({f"{p}+{quantized.quantize}": (s, quantized.model) for p, s in {**plans, "full": FULL}.items()})
    for settings in plans.values():
        settings.make_policy().validate(layout.with_budget(settings.budget))  # fail before any work
    text = isinstance(pipeline, TextToImagePipeline)
    if text and not prompts:
        raise ValueError(f"{pipeline.name} draws from text: give the prompts to sample (--prompt, repeatable).")
    labels = [] if text else spread_labels(sequences, len(pipeline.class_names))
    sums = {p: {"kl": 0.0, "top1": 0.0, "coupled": 0.0, "kl_lines": torch.zeros(layout.grid_h)} for p in variants}
    for index, start in enumerate(range(0, sequences, batch)):
        count = min(batch, sequences - start)
        chunk_seed = seed + start
        conditioning, guidance, layout, rules = (
            _text_request(pipeline, prompts[index % len(prompts)], count, cfg) if text
            else _class_request(pipeline, labels[start:start + count], cfg))
        tokens = generate(model, conditioning, layout, FULL, guidance, sampling, chunk_seed, rules=rules,
                          decode=decode, compile=compile, speculative=speculative).tokens
        coupled_ref = None
        for policy, (settings, runner) in variants.items():
            forced = teacher_forced(runner, conditioning, layout, tokens, settings, guidance, rules, decode, compile,
                                    reference=model)
            coupled = coupled_agreement(runner, conditioning, layout, settings, guidance, sampling, chunk_seed,
                                        reference=coupled_ref, rules=rules, decode=decode, compile=compile)
            coupled_ref = coupled.full_tokens
            weight = count / sequences
            sums[policy]["kl"] += forced.kl_mean * weight
            sums[policy]["top1"] += forced.top1_agreement * weight
            sums[policy]["coupled"] += coupled.agreement * weight
            sums[policy]["kl_lines"] += torch.tensor(forced.per_line()["kl"]) * weight
    budget_tokens = layout.with_budget(plans[policies[0]].budget).budget_tokens if policies else layout.image_tokens
    return {
        "model": pipeline.name, "budget": str(budget), "budget_tokens": budget_tokens,
        "image_tokens": layout.image_tokens, "n_sequences": sequences, "cfg": cfg, "seed": seed,
        "keep_line_ends": base.keep_line_ends, "decode": decode,
        "quantize": quantized.quantize if quantized is not None else "none",
        "speculative_window": speculative.window if speculative is not None else 0, **({"prompts": list(prompts)} if prompts else {}),
        "results": {p: {"kl_mean": s["kl"], "top1_agreement": s["top1"], "coupled_agreement": s["coupled"],
                        "kl_per_line": [round(v, 6) for v in s["kl_lines"].tolist()]} for p, s in sums.items()},
    }


def format_fidelity(report: dict) -> str:
    lines = [f"{report['model']}: budget {report['budget']} = {report['budget_tokens']} of {report['image_tokens']} "
             f"image tokens, {report['n_sequences']} sequences, cfg {report['cfg']}",
             f"{'policy':<12} {'KL(full||policy)':>17} {'top-1 agree':>12} {'coupled agree':>14}"]
    for name, r in report["results"].items():
        lines.append(f"{name:<12} {r['kl_mean']:>17.5f} {r['top1_agreement']:>12.4f} {r['coupled_agreement']:>14.4f}")
    return "\n".join(lines)
