"""Named real architecture shapes, for benchmarking at true sizes with random weights.

Sizes from the upstream checkpoints (LlamaGen GPT-B…3B, Janus-Pro-1B/7B language models,
Lumina-mGPT's Chameleon-7B, Emu3-Gen's decoder); prefix lengths are typical prompts. The benchmark
builds each as a `LlamaGenModel` (LlamaGen: the real architecture, 2-D rotary included) or a
`LlamaImageModel` (Janus-Pro, Lumina-mGPT, Emu3: the same attention, KV and vocabulary shapes
without needing a tokenizer; Chameleon's q/k-norm costs nothing measurable next to them; Lumina and
Emu3 shapes keep their end-of-line lines and a separate unconditional prefix, left-padded into the
batch).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import LlamaConfig

from .families.llama import LlamaImageModel
from .families.llamagen import LlamaGenModel, LlamaGenSpec
from .families.llamagen import build as build_llamagen
from .layout import Budget, LineLayout


@dataclass(frozen=True)
class ArchShape:
    name: str
    layers: int
    hidden: int
    heads: int
    ffn: int
    vocab: int
    grid: int
    prefix_len: int
    kv_heads: int | None = None
    head_dim: int | None = None
    eol: bool = False
    cfg_layout: str = "halves"
    top_k: int = 0
    family: str = "llama"

    def layout(self, budget: Budget | str = "1/6") -> LineLayout:
        return LineLayout(self.prefix_len, self.grid, self.grid, self.eol, Budget.parse(budget))

    def build(self, layers: int | None = None, dtype: torch.dtype = torch.float32,
              device: torch.device | str = "cpu", seed: int = 0) -> LlamaImageModel | LlamaGenModel:
        """A random-weight model of this shape (``layers`` cuts depth for CPU runs)."""
        if self.family == "llamagen":
            torch.manual_seed(seed)
            spec = LlamaGenSpec(dim=self.hidden, layers=layers or self.layers, heads=self.heads, grid=self.grid,
                                vocab=self.vocab, ffn=self.ffn)
            return build_llamagen(spec, dtype=dtype, device=device)
        config = LlamaConfig(
            vocab_size=self.vocab, hidden_size=self.hidden, intermediate_size=self.ffn,
            num_hidden_layers=layers or self.layers, num_attention_heads=self.heads,
            num_key_value_heads=self.kv_heads or self.heads, head_dim=self.head_dim or self.hidden // self.heads,
            max_position_embeddings=self.prefix_len + self.grid * (self.grid + 1) + 8, rms_norm_eps=1e-5,
        )
        torch.manual_seed(seed)
        previous = torch.get_default_dtype()
        torch.set_default_dtype(dtype if dtype.is_floating_point else torch.float32)
        try:
            with torch.device(device):
                model = LlamaImageModel(config, num_classes=1000, prompt_tokens=self.prefix_len - 1)
        finally:
            torch.set_default_dtype(previous)
        return model.eval()


def _llamagen(name: str, layers: int, hidden: int, heads: int, ffn: int, head_dim: int | None = None) -> ArchShape:
    return ArchShape(name, layers, hidden, heads, ffn, vocab=16384, grid=24, prefix_len=1, head_dim=head_dim,
                     family="llamagen")


def _janus(name: str, layers: int, hidden: int, heads: int, ffn: int) -> ArchShape:
    return ArchShape(name, layers, hidden, heads, ffn, vocab=16384, grid=24, prefix_len=40)


def _lumina(name: str, grid: int) -> ArchShape:
    return ArchShape(name, 32, 4096, 32, 11008, vocab=65536, grid=grid, prefix_len=48, eol=True,
                     cfg_layout="separate", top_k=2000)


#: Emu3-Gen (``BAAI/Emu3-Gen-hf``): 32 layers, 4096 wide, 32 query / 8 KV heads, FFN 14336, vocabulary
#: 184622; 720 px = 90 rows of 90 codes + an end-of-line token; the prefix is the longer CFG stream,
#: the default negative prompt in its template (≈52 tokens, counted by hand for Emu3's tokenizer)
EMU3_GEN = ArchShape("emu3-gen", 32, 4096, 32, 14336, vocab=184622, grid=90, prefix_len=52, kv_heads=8, eol=True,
                     cfg_layout="separate", top_k=2048)

ARCHS: dict[str, ArchShape] = {a.name: a for a in (
    _llamagen("llamagen-b", 12, 768, 12, 2048),
    _llamagen("llamagen-l", 24, 1024, 16, 2816),
    _llamagen("llamagen-xl", 36, 1280, 20, 3584),
    _llamagen("llamagen-xxl", 48, 1536, 24, 4096),
    _llamagen("llamagen-3b", 24, 3200, 32, 8704, head_dim=100),
    _janus("janus-pro-1b", 24, 2048, 16, 5632),
    _janus("janus-pro-7b", 30, 4096, 32, 11008),
    _lumina("lumina-mgpt-7b-512", 32),
    _lumina("lumina-mgpt-7b-768", 48),
    _lumina("lumina-mgpt-7b-1024", 64),
    EMU3_GEN,
)}


def get_arch(name: str) -> ArchShape:
    try:
        return ARCHS[name]
    except KeyError:
        raise ValueError(f"Unknown architecture {name!r}; choose one of: {', '.join(ARCHS)}.") from None
