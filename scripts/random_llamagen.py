"""Random-weight LlamaGen files in upstream's key layout, at a real size, for timing `sample` on a GPU
where no checkpoint can be downloaded (speed does not depend on the weights' values).

    python scripts/random_llamagen.py OUTDIR [--layers 36 --dim 1280 --grid 24]
    → OUTDIR/c2i_XL_384.safetensors (bf16) + OUTDIR/vq_ds16_c2i.safetensors (the VQ-16 decoder's shapes)
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
from linear_core.decoders.vq16 import VQ16Decoder  # noqa: E402
from linear_core.families.llamagen import ffn_size  # noqa: E402


def gpt_state(layers: int, dim: int, vocab: int = 16384, classes: int = 1000) -> dict[str, torch.Tensor]:
    ffn = ffn_size(dim)
    rand = lambda *shape: (torch.randn(*shape) * shape[-1] ** -0.5).to(torch.bfloat16)  # noqa: E731
    state = {"tok_embeddings.weight": rand(vocab, dim), "cls_embedding.embedding_table.weight": rand(classes + 1, dim),
             "norm.weight": torch.ones(dim, dtype=torch.bfloat16), "output.weight": rand(vocab, dim)}
    for i in range(layers):
        p = f"layers.{i}."
        state.update({p + "attention.wqkv.weight": rand(3 * dim, dim), p + "attention.wo.weight": rand(dim, dim),
                      p + "feed_forward.w1.weight": rand(ffn, dim), p + "feed_forward.w3.weight": rand(ffn, dim),
                      p + "feed_forward.w2.weight": rand(dim, ffn),
                      p + "attention_norm.weight": torch.ones(dim, dtype=torch.bfloat16),
                      p + "ffn_norm.weight": torch.ones(dim, dtype=torch.bfloat16)})
    return state


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out")
    parser.add_argument("--layers", type=int, default=36)
    parser.add_argument("--dim", type=int, default=1280)
    parser.add_argument("--grid", type=int, default=24, help="tokens a side: 16, 24 or 32 (256/384/512 px)")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    save_file(gpt_state(args.layers, args.dim), str(out / f"c2i_XL_{args.grid * 16}.safetensors"))
    save_file({k: v.contiguous() for k, v in VQ16Decoder().state_dict().items()}, str(out / "vq_ds16_c2i.safetensors"))


if __name__ == "__main__":
    main()
