"""LlamaGen (FoundationVision) class-conditional GPTs on transformers' `LlamaModel`.

Upstream's GPT is a Llama decoder with three differences, reproduced here exactly:

* a class embedding table with one extra row, the null class used for CFG, as the prefix;
* 2-D rotary embeddings: the head dimension's rotation pairs are *interleaved* ``(x[2i], x[2i+1])``,
  the first half of the pairs turn with the token's row and the second half with its column, and
  the condition token(s) get cos = sin = 0 (their queries and keys are exactly zero);
* fused ``wqkv`` and its own key names.

Checkpoints are converted at load time: ``wqkv`` is split, and the q/k rows of every head are
permuted from interleaved pairs to the rotate-half layout `LlamaModel` expects, so
`GridRotaryEmbedding` can hand `LlamaModel` plain ``cos``/``sin`` tables. Checkpoints carry no
config: the size comes from tensor shapes, the grid from the file name or an explicit option.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from transformers import LlamaConfig, LlamaModel

from ..adapter import Conditioning
from ..checkpoints import describe_state_dict, read_state_dict
from ..guidance import Guidance
from ..layout import Budget, LineLayout, check_grid

#: upstream GPT sizes: name → (layers, heads, dim)
SIZES: dict[str, tuple[int, int, int]] = {
    "B": (12, 12, 768), "L": (24, 16, 1024), "XL": (36, 20, 1280), "XXL": (48, 24, 1536),
    "XXXL": (48, 40, 2560), "1B": (22, 32, 2048), "3B": (24, 32, 3200), "7B": (32, 32, 4096),
}
HEADS_BY_DIM = {dim: heads for _, heads, dim in SIZES.values()}
#: image side in pixels → token grid (VQ-16 downsamples by 16)
GRID_BY_PIXELS = {256: 16, 384: 24, 512: 32}


def ffn_size(dim: int, multiple_of: int = 256) -> int:
    """SwiGLU width of upstream's FeedForward: 2/3 of 4·dim, rounded up to ``multiple_of``."""
    hidden = int(2 * 4 * dim / 3)
    return -(-hidden // multiple_of) * multiple_of


@dataclass(frozen=True)
class LlamaGenSpec:
    """Everything needed to build the network; upstream stores none of it in the checkpoint."""

    dim: int
    layers: int
    heads: int
    grid: int
    vocab: int = 16384
    num_classes: int = 1000
    kv_heads: int | None = None
    ffn: int | None = None
    cls_token_num: int = 1
    rope_base: float = 10000.0
    norm_eps: float = 1e-5

    def __post_init__(self) -> None:
        check_grid(self.grid)  # before a rotary table of grid² rows is built

    @property
    def head_dim(self) -> int:
        return self.dim // self.heads

    @property
    def size_name(self) -> str:
        for name, shape in SIZES.items():
            if shape == (self.layers, self.heads, self.dim):
                return f"GPT-{name}"
        return f"custom ({self.layers} layers, dim {self.dim})"

    def llama_config(self) -> LlamaConfig:
        return LlamaConfig(
            vocab_size=self.vocab, hidden_size=self.dim, intermediate_size=self.ffn or ffn_size(self.dim),
            num_hidden_layers=self.layers, num_attention_heads=self.heads,
            num_key_value_heads=self.kv_heads or self.heads, head_dim=self.head_dim,
            max_position_embeddings=self.cls_token_num + self.grid * self.grid, rms_norm_eps=self.norm_eps,
            attention_bias=False, mlp_bias=False, tie_word_embeddings=False,
        )

    def layout(self, budget: Budget | str = "full") -> LineLayout:
        return LineLayout(self.cls_token_num, self.grid, self.grid, eol=False, budget=Budget.parse(budget))


def grid_rotary_tables(spec: LlamaGenSpec) -> tuple[torch.Tensor, torch.Tensor]:
    """``cos, sin`` of shape ``(cls_token_num + grid², head_dim)`` in rotate-half layout.

    Pair ``i < head_dim/4`` turns by ``row · θ_i``, pair ``head_dim/4 + i`` by ``column · θ_i``,
    ``θ_i = base^(−4i/head_dim)``; the condition rows are all zero, as upstream."""
    half = spec.head_dim // 2
    theta = 1.0 / (spec.rope_base ** (torch.arange(0, half, 2, device="cpu")[: half // 2].float() / half))
    steps = torch.outer(torch.arange(spec.grid, device="cpu", dtype=torch.float32), theta)  # (grid, d/4)
    angles = torch.cat([steps[:, None, :].expand(-1, spec.grid, -1),
                        steps[None, :, :].expand(spec.grid, -1, -1)], dim=-1).flatten(0, 1)  # (grid², d/2)
    zeros = torch.zeros(spec.cls_token_num, half, device="cpu")
    cos = torch.cat([zeros, angles.cos()]).repeat(1, 2)
    sin = torch.cat([zeros, angles.sin()]).repeat(1, 2)
    return cos, sin


class GridRotaryEmbedding(nn.Module):
    """Drop-in for `LlamaModel.rotary_emb`: looks the 2-D tables up at ``position_ids``.

    The tables stay fp32 (they are attributes, not buffers, so ``model.to(bf16)`` leaves them alone)
    and follow the activations to their device on first use."""

    def __init__(self, spec: LlamaGenSpec) -> None:
        super().__init__()
        self.cos, self.sin = grid_rotary_tables(spec)

    def forward(self, x: torch.Tensor, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.cos.device != x.device:
            self.cos, self.sin = self.cos.to(x.device), self.sin.to(x.device)
        # positions are not range-checked here (that would wait for the device at every step): the
        # engine checks the whole layout against `LlamaGenModel.max_positions` once per request
        return self.cos[position_ids].to(x.dtype), self.sin[position_ids].to(x.dtype)


class LlamaGenModel(nn.Module):
    """A LlamaGen c2i GPT as an engine adapter: `LlamaModel` backbone (final norm included),
    class-embedding prefix, untied output head."""

    def __init__(self, spec: LlamaGenSpec) -> None:
        super().__init__()
        self.spec = spec
        self.backbone = LlamaModel(spec.llama_config())
        self.backbone.rotary_emb = GridRotaryEmbedding(spec)
        self.cls_embedding = nn.Embedding(spec.num_classes + 1, spec.dim)
        self.head = nn.Linear(spec.dim, spec.vocab, bias=False)

    @property
    def config(self) -> LlamaConfig:
        return self.backbone.config

    @property
    def max_positions(self) -> int:
        """Condition tokens + grid²: the longest sequence the 2-D rotary table covers."""
        return self.backbone.rotary_emb.cos.shape[0]

    @property
    def num_classes(self) -> int:
        return self.spec.num_classes

    def embed_image_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.backbone.embed_tokens(tokens)

    def image_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.head(hidden).float()

    def prefix_embeddings(self, labels: torch.Tensor) -> torch.Tensor:
        """``(batch,)`` class ids (``num_classes`` = null) → ``(batch, cls_token_num, dim)``.

        Upstream c2i models have one class token. A model saved with ``cls_token_num`` K > 1 (the
        demo) repeats it K times: the condition rows' rotary tables are zero, so each copy's key is
        zero and K copies give the class K times the attention weight of one."""
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) > self.num_classes):
            raise ValueError(f"Class labels must be in 0..{self.num_classes - 1} (or {self.num_classes} for the null "
                             f"class); got {labels.tolist()}.")
        embedding = self.cls_embedding(labels.to(self.cls_embedding.weight.device))
        return embedding[:, None].repeat(1, self.spec.cls_token_num, 1)

    def guidance(self, cfg: float) -> Guidance:
        """Upstream runs the ``[cond; uncond]`` batch only when cfg > 1."""
        return Guidance(cfg, "halves" if cfg > 1.0 else "none")

    def conditioning(self, labels: torch.Tensor, guidance: Guidance) -> Conditioning:
        cond = self.prefix_embeddings(labels)
        if guidance.layout == "none":
            return Conditioning(cond)
        if guidance.layout != "halves":
            raise ValueError(f"LlamaGen batches CFG as [cond; uncond] halves, not {guidance.layout!r}.")
        return Conditioning(torch.cat([cond, self.prefix_embeddings(torch.full_like(labels, self.num_classes))]))


# -- checkpoint conversion ---------------------------------------------------------------------

def _rotate_half_order(head_dim: int) -> torch.Tensor:
    """Row order taking one head's interleaved rotation pairs to rotate-half halves."""
    return torch.cat([torch.arange(0, head_dim, 2), torch.arange(1, head_dim, 2)])


def _permute_heads(weight: torch.Tensor, heads: int, order: torch.Tensor) -> torch.Tensor:
    head_dim = order.numel()
    return weight.view(heads, head_dim, -1)[:, order].reshape(heads * head_dim, -1)


#: upstream key → `LlamaGenModel` key, outside the layers and per layer (``wqkv`` is split apart)
TOP_KEYS = {"tok_embeddings.weight": "backbone.embed_tokens.weight", "norm.weight": "backbone.norm.weight",
            "output.weight": "head.weight", "cls_embedding.embedding_table.weight": "cls_embedding.weight"}
LAYER_KEYS = {"attention.wo.weight": "self_attn.o_proj.weight", "feed_forward.w1.weight": "mlp.gate_proj.weight",
              "feed_forward.w3.weight": "mlp.up_proj.weight", "feed_forward.w2.weight": "mlp.down_proj.weight",
              "attention_norm.weight": "input_layernorm.weight", "ffn_norm.weight": "post_attention_layernorm.weight"}


def from_upstream(state: dict[str, torch.Tensor], spec: LlamaGenSpec) -> dict[str, torch.Tensor]:
    """Upstream GPT keys → `LlamaGenModel` keys (q/k rows permuted per head)."""
    order = _rotate_half_order(spec.head_dim)
    kv_heads = spec.kv_heads or spec.heads
    q_rows, kv_rows = spec.heads * spec.head_dim, kv_heads * spec.head_dim
    out = {ours: state[theirs] for theirs, ours in TOP_KEYS.items()}
    for i in range(spec.layers):
        src, dst = f"layers.{i}.", f"backbone.layers.{i}."
        out.update({dst + ours: state[src + theirs] for theirs, ours in LAYER_KEYS.items()})
        q, k, v = state[src + "attention.wqkv.weight"].split([q_rows, kv_rows, kv_rows])
        out[dst + "self_attn.q_proj.weight"] = _permute_heads(q, spec.heads, order)
        out[dst + "self_attn.k_proj.weight"] = _permute_heads(k, kv_heads, order)
        out[dst + "self_attn.v_proj.weight"] = v
    return out


def to_upstream(model: LlamaGenModel) -> dict[str, torch.Tensor]:
    """`LlamaGenModel` weights in upstream's key layout (what our own checkpoints are saved as)."""
    spec, state = model.spec, model.state_dict()
    inverse = torch.argsort(_rotate_half_order(spec.head_dim))
    out = {theirs: state[ours] for theirs, ours in TOP_KEYS.items()}
    for i in range(spec.layers):
        src, dst = f"backbone.layers.{i}.", f"layers.{i}."
        out.update({dst + theirs: state[src + ours] for theirs, ours in LAYER_KEYS.items()})
        q = _permute_heads(state[src + "self_attn.q_proj.weight"], spec.heads, inverse)
        k = _permute_heads(state[src + "self_attn.k_proj.weight"], spec.kv_heads or spec.heads, inverse)
        out[dst + "attention.wqkv.weight"] = torch.cat([q, k, state[src + "self_attn.v_proj.weight"]])
    return {k: v.contiguous() for k, v in out.items()}


# -- size inference and loading ------------------------------------------------------------------

def grid_from_name(name: str) -> int | None:
    """``c2i_XL_384.pt`` → 24: upstream names files by image side; nothing in the weights says it."""
    match = re.search(r"(?:^|[_\-.])(256|384|512)(?=$|[_\-.])", Path(name).stem)
    return GRID_BY_PIXELS[int(match.group(1))] if match else None


def infer_spec(state: dict[str, torch.Tensor], grid: int | None = None, metadata: dict[str, str] | None = None,
               name: str = "checkpoint", heads: int | None = None) -> LlamaGenSpec:
    """The network shape of an upstream state dict (works on meta tensors). ``grid`` and ``heads``
    override what the file name, the safetensors metadata and the size table say."""
    metadata = metadata or {}
    if "tok_embeddings.weight" not in state or "layers.0.attention.wqkv.weight" not in state:
        raise ValueError(f"{name} is not a LlamaGen GPT checkpoint: it looks like {describe_state_dict(state)}.")
    if "cls_embedding.embedding_table.weight" not in state:
        kind = "text-conditional (t2i)" if any(k.startswith("cls_embedding.cap_proj") for k in state) else "unknown"
        raise ValueError(f"{name} is a {kind} LlamaGen GPT; only class-conditional (c2i) checkpoints are supported.")
    vocab, dim = state["tok_embeddings.weight"].shape
    layers = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("layers."))
    heads = heads or (int(metadata["heads"]) if "heads" in metadata else HEADS_BY_DIM.get(dim))
    if heads is None:
        raise ValueError(f"{name}: width {dim} matches no LlamaGen size ({', '.join(map(str, HEADS_BY_DIM))}) "
                         "and the file does not record its head count; pass heads explicitly.")
    if heads < 1 or dim % heads or (dim // heads) % 2:
        raise ValueError(f"{name}: {heads} heads do not split its width {dim} into even head sizes (rotary "
                         f"embeddings pair dimensions); give a head count that divides {dim} into an even size"
                         f"{', e.g. ' + str(HEADS_BY_DIM[dim]) if dim in HEADS_BY_DIM else ''}.")
    head_dim = dim // heads
    kv_heads = (state["layers.0.attention.wqkv.weight"].shape[0] // head_dim - heads) // 2
    grid = grid or (int(metadata["grid"]) if "grid" in metadata else None) or grid_from_name(name)
    if grid is None:
        raise ValueError(f"Cannot tell the image size of {name}: its name has no _256/_384/_512. "
                         "Pass the grid explicitly (16 for 256 px, 24 for 384 px, 32 for 512 px).")
    return LlamaGenSpec(
        dim=dim, layers=layers, heads=heads, grid=grid, vocab=vocab,
        num_classes=state["cls_embedding.embedding_table.weight"].shape[0] - 1,
        kv_heads=kv_heads if kv_heads != heads else None, ffn=state["layers.0.feed_forward.w1.weight"].shape[0],
        cls_token_num=int(metadata.get("cls_token_num", 1)),
    )


def build(spec: LlamaGenSpec, state: dict[str, torch.Tensor] | None = None, dtype: torch.dtype = torch.float32,
          device: torch.device | str = "cpu") -> LlamaGenModel:
    """A model of ``spec``: with ``state`` (upstream keys) the weights are assigned without a
    second copy; without it, a randomly initialised model (benchmarks)."""
    with torch.device("meta" if state is not None else device):
        model = LlamaGenModel(spec)
    if state is not None:
        converted = {k: v.to(device=device, dtype=dtype) for k, v in from_upstream(state, spec).items()}
        model.load_state_dict(converted, strict=True, assign=True)
    return model.to(device=device, dtype=dtype).eval()


def load_llamagen(path: str | Path, grid: int | None = None, dtype: torch.dtype = torch.float32,
                  device: torch.device | str = "cpu", heads: int | None = None) -> LlamaGenModel:
    """Load an upstream ``c2i_*.pt`` (or the same weights as ``.safetensors``)."""
    state, metadata = read_state_dict(path)
    spec = infer_spec(state, grid, metadata, Path(path).name, heads)
    try:
        return build(spec, state, dtype, device)
    except KeyError as error:
        raise ValueError(f"{Path(path).name} is missing LlamaGen tensor {error.args[0]!r}: truncated or not LlamaGen.") from None

