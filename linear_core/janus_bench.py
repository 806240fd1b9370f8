"""The engine against transformers' own Janus image generation, on one random-weight model in one run.

transformers' ``JanusForConditionalGeneration.generate(generation_mode="image")`` (static cache) is
what users of the native release run today; this times it and the engine (``full``, then LineAR at
each budget) on the same weights, prompt and seed. Only the language model and the generation
head/embeddings are full size; the understanding tower and VQ decoder are tiny (neither is timed).
"""
from __future__ import annotations

import time

import torch

from .archs import get_arch
from .devices import DTYPES, default_device
from .engine import generate
from .session import synchronize
from .families.janus import JanusImageModel
from .sampling import SamplingConfig
from .settings import CacheSettings

BOS, PAD, BOI = 0, 1, 2


def random_janus(arch: str = "janus-pro-1b", layers: int | None = None, dtype: torch.dtype = torch.float32,
                 device: str = "cpu", seed: int = 0):
    """A `JanusForConditionalGeneration` with the arch's language shape (``layers`` cuts the depth)."""
    from transformers import JanusConfig, JanusForConditionalGeneration

    shape = get_arch(arch)
    torch.manual_seed(seed)
    config = JanusConfig(
        text_config={"model_type": "llama", "hidden_size": shape.hidden, "num_hidden_layers": layers or shape.layers,
                     "num_attention_heads": shape.heads, "intermediate_size": shape.ffn, "vocab_size": 1024,
                     "rms_norm_eps": 1e-6, "max_position_embeddings": 4096},
        vision_config={"hidden_size": 64, "num_hidden_layers": 1, "num_attention_heads": 1, "image_size": 64,
                       "projection_dim": shape.hidden, "num_image_tokens": shape.grid ** 2},
        vq_config={"num_embeddings": shape.vocab, "embed_dim": 8, "base_channels": 32, "channel_multiplier": [1, 1],
                   "num_res_blocks": 1, "latent_channels": 32, "projection_dim": shape.hidden,
                   "image_token_embed_dim": shape.hidden},
        tie_word_embeddings=False,
    )
    model = JanusForConditionalGeneration(config).to(device=device, dtype=dtype).eval()
    model.generation_config.bos_token_id, model.generation_config.pad_token_id = BOS, PAD
    model.generation_config.generation_kwargs = {"boi_token_id": BOI}
    return model


def bench_vs_transformers(arch: str = "janus-pro-1b", layers: int | None = 4, batch: int = 1,
                          budgets: tuple[str, ...] = ("1/4", "1/6"), device: str | None = None, dtype: str = "fp32",
                          cfg: float = 5.0, seed: int = 0, decode: str = "auto", compile: str = "auto") -> dict:
    device = device or default_device()
    model = random_janus(arch, layers, DTYPES[dtype], device, seed)
    adapter = JanusImageModel(model, special_ids=(BOS, PAD, BOI))
    prompt = [BOS, *torch.randint(3, 1024, (get_arch(arch).prefix_len - 2,), generator=torch.Generator().manual_seed(seed)).tolist(), BOI]
    ids = torch.tensor([prompt], device=device)
    sampling = SamplingConfig(temperature=1.0)
    conditioning, guidance, layout = adapter.request_ids(prompt, None, batch, cfg)

    def transformers_run() -> tuple[float, torch.Tensor]:
        torch.manual_seed(seed)
        synchronize([torch.device(device)])
        start = time.perf_counter()
        tokens = model.generate(ids, attention_mask=torch.ones_like(ids), generation_mode="image", do_sample=True,
                                guidance_scale=cfg, num_return_sequences=batch, top_k=0)  # its default is 50
        synchronize([torch.device(device)])
        return time.perf_counter() - start, tokens

    def engine_run(settings: CacheSettings):
        return generate(adapter, conditioning, layout, settings, guidance, sampling, seed, decode=decode,
                        compile=compile)

    engine_run(CacheSettings("full"))  # warm-up of both paths (the static step's capture is timed apart anyway)
    transformers_run()
    results = {}
    seconds, reference_tokens = transformers_run()
    n = batch * layout.image_tokens
    results["transformers.generate"] = {"tokens_per_s": n / seconds, "seconds": seconds}
    for name, settings in [("full", CacheSettings("full"))] + [(f"linear@{b}", CacheSettings("linear", b)) for b in budgets]:
        result = engine_run(settings)
        stats = result.stats
        results[name] = {"tokens_per_s": stats.tokens_per_s, "seconds": stats.total_s,
                         "peak_kv_bytes": stats.kv_allocated_bytes, "full_kv_bytes": stats.full_kv_bytes,
                         "kv_saving": stats.kv_saving, "budget_tokens": stats.budget_tokens, "decode": stats.decode,
                         "decode_step": stats.decode_step, "decode_note": stats.decode_note,
                         "forwards": stats.forwards, "compile_s": stats.compile_s, "step_ms": stats.step_ms}
        if name == "full":
            results[name]["same_tokens_as_transformers"] = bool(torch.equal(result.tokens.cpu(), reference_tokens.cpu()))
    base = results["transformers.generate"]["tokens_per_s"]
    for entry in results.values():
        entry["speedup_vs_transformers"] = entry["tokens_per_s"] / base
    return {"arch": arch, "layers": model.config.text_config.num_hidden_layers, "batch": batch, "device": device,
            "dtype": dtype, "prefix_len": layout.prefix_len, "image_tokens": layout.image_tokens, "results": results}


def format_vs_transformers(report: dict) -> str:
    lines = [f"{report['arch']} ({report['layers']} layers) on {report['device']} {report['dtype']}, batch "
             f"{report['batch']}, prefix {report['prefix_len']}, N={report['image_tokens']}",
             f"{'run':<22} {'tok/s':>8} {'vs transformers':>16} {'KV MiB':>8} {'full MiB':>9}"]
    for name, r in report["results"].items():
        kv = f"{r['peak_kv_bytes'] / 2**20:>8.1f} {r['full_kv_bytes'] / 2**20:>9.1f}" if "peak_kv_bytes" in r else ""
        same = "  (same tokens)" if r.get("same_tokens_as_transformers") else ""
        lines.append(f"{name:<22} {r['tokens_per_s']:>8.1f} {r['speedup_vs_transformers']:>15.2f}x {kv}{same}")
    return "\n".join(lines)
