"""Tiny Lumina-mGPT folders in the upstream layout, for the real loaders.

A folder holds ``config.json`` (``model_type: chameleon`` with a ``vocabulary_map`` whose
``IMGIMG…Z`` names spell the VQGAN code in letters), safetensors weights (single or sharded with
an index) whose q/k-norms are stored as Lumina stores them, one ``(1, head_dim)`` row shared by
every head, the tokenizer files, and a tiny VQGAN in a ``vqgan`` sub-folder.

The tokenizer gives every token the code names the id it has in the real Chameleon / Lumina-mGPT
vocabulary (see docs/upstream-facts.md): ``<s>`` 0, ``<pad>`` 1, ``</s>`` 2, the 8192 image codes
4…8195, ``<eoss>`` 8196, ``<racm3:break>`` 8197, and ``<reservedNNNNN>`` at id NNNNN + 4 (so the
end-of-line token ``<reserved08799>`` is 8803 and the token *named* ``<reserved08803>`` is 8807).
The text tokens follow the reserved block; the real release has its text BPE elsewhere, which no
code here depends on.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from chameleon_files import write_tiny_vqgan
from tokenizer_files import byte_level_bpe

HIDDEN = 64
HEADS, KV_HEADS = 4, 2
CODEBOOK = 8192  # the real codebook size: image codes occupy ids 4…8195 as in the release
FIRST_CODE_ID, END_OF_IMAGE_ID, IMAGE_START_ID = 4, 8196, 8197
RESERVED_ID_OFFSET = 4  # <reservedNNNNN> has id NNNNN + 4
LAST_RESERVED = 8899  # the reserved block is filled up to <reserved08899> (id 8903)
VOCAB_SIZE = 9280  # rows of the tiny embedding: the tokenizer's length rounded up (the real one has 65536)
RESOLUTION = 128  # 8 x 8 codes, 72 raster tokens with end-of-line tokens
SIZES = (128, 160, 512, 768, 1024)

BOS, EOS, PAD, UNK = "<s>", "</s>", "<pad>", "<unk>"
_MERGED_WORDS = ("Generate", "Ġan", "Ġimage", "Ġof", "Ġaccording", "Ġto", "Ġthe", "Ġfollowing", "Ġprompt",
                 "Ġa", "Ġred", "Ġfox", "Ġin", "Ġsnow", "Ġblurry")


def image_token_name(code: int) -> str:
    """``IMGIMG`` + the code's digits as letters (0 → A … 9 → J) + ``Z``, as Chameleon names them."""
    return "IMGIMG" + "".join(chr(ord("A") + int(d)) for d in str(code)) + "Z"


def reserved_name(number: int) -> str:
    return f"<reserved{number:05d}>"


def release_ids() -> dict[str, int]:
    """Every non-text token at its id in the real release, dense from 0 (id 3 is ``<unk>``)."""
    ids = {BOS: 0, PAD: 1, EOS: 2, UNK: 3}
    ids.update({image_token_name(code): FIRST_CODE_ID + code for code in range(CODEBOOK)})
    ids.update({"<eoss>": END_OF_IMAGE_ID, "<racm3:break>": IMAGE_START_ID})
    first = IMAGE_START_ID + 1 - RESERVED_ID_OFFSET
    ids.update({reserved_name(n): n + RESERVED_ID_OFFSET for n in range(first, LAST_RESERVED + 1)})
    return ids


SPECIAL = [name for name in release_ids() if not name.startswith("IMGIMG")]


def build_tokenizer():
    return byte_level_bpe(_MERGED_WORDS, SPECIAL, limit=VOCAB_SIZE, fixed=release_ids())


def tiny_config():
    from transformers import ChameleonConfig

    tokenizer = build_tokenizer()
    vocab = tokenizer.get_vocab()
    vocabulary_map = dict(vocab)  # the release's map is the whole vocabulary too
    vocabulary_map["<image>"] = vocab[PAD]  # transformers reads the placeholder id from the map
    return ChameleonConfig(
        vocab_size=VOCAB_SIZE, hidden_size=HIDDEN, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=HEADS, num_key_value_heads=KV_HEADS, max_position_embeddings=4096, rope_theta=10000.0,
        bos_token_id=vocab[BOS], eos_token_id=vocab[EOS], pad_token_id=vocab[PAD], tie_word_embeddings=False,
        vocabulary_map=vocabulary_map,
        vq_config={"embed_dim": 16, "num_embeddings": CODEBOOK, "base_channels": 32, "channel_multiplier": [1, 2],
                   "num_res_blocks": 1, "latent_channels": 16, "resolution": 32},
    )


def lumina_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """Random decoder weights in the checkpoint's layout: no VQ encoder, shared q/k-norm rows.
    Projections get a larger gain than the default init so the tiny model's logits are not flat."""
    config = tiny_config()
    generator = torch.Generator().manual_seed(seed)
    head_dim = HIDDEN // HEADS
    randn = lambda *shape, scale=1.0: torch.randn(*shape, generator=generator) * scale  # noqa: E731
    state = {"model.embed_tokens.weight": randn(VOCAB_SIZE, HIDDEN), "model.norm.weight": 1 + randn(HIDDEN, scale=0.1),
             "lm_head.weight": randn(VOCAB_SIZE, HIDDEN, scale=HIDDEN ** -0.5)}
    for i in range(config.num_hidden_layers):
        p = f"model.layers.{i}."
        state.update({
            p + "self_attn.q_proj.weight": randn(HEADS * head_dim, HIDDEN, scale=1.5 * HIDDEN ** -0.5),
            p + "self_attn.k_proj.weight": randn(KV_HEADS * head_dim, HIDDEN, scale=1.5 * HIDDEN ** -0.5),
            p + "self_attn.v_proj.weight": randn(KV_HEADS * head_dim, HIDDEN, scale=HIDDEN ** -0.5),
            p + "self_attn.o_proj.weight": randn(HIDDEN, HEADS * head_dim, scale=HIDDEN ** -0.5),
            p + "self_attn.q_norm.weight": 1 + randn(1, head_dim, scale=0.2),
            p + "self_attn.q_norm.bias": randn(1, head_dim, scale=0.1),
            p + "self_attn.k_norm.weight": 1 + randn(1, head_dim, scale=0.2),
            p + "self_attn.k_norm.bias": randn(1, head_dim, scale=0.1),
            p + "mlp.gate_proj.weight": randn(128, HIDDEN, scale=HIDDEN ** -0.5),
            p + "mlp.up_proj.weight": randn(128, HIDDEN, scale=HIDDEN ** -0.5),
            p + "mlp.down_proj.weight": randn(HIDDEN, 128, scale=128 ** -0.5),
            p + "input_layernorm.weight": 1 + randn(HIDDEN, scale=0.1),
            p + "post_attention_layernorm.weight": 1 + randn(HIDDEN, scale=0.1),
        })
    return state


def reference_model(seed: int = 0):
    """transformers' own Chameleon with the same weights, norms repeated per head by hand."""
    from transformers import ChameleonForConditionalGeneration

    model = ChameleonForConditionalGeneration(tiny_config()).eval()
    state = lumina_state(seed)
    for key, value in state.items():
        if "_norm." in key and "self_attn" in key:
            state[key] = value.expand(HEADS if ".q_norm." in key else KV_HEADS, -1).clone()
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not unexpected and all(k.startswith("model.vqmodel.") for k in missing)
    return model


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def write_lumina(folder: Path, seed: int = 0, shards: bool = False, vqgan: bool = True) -> Path:
    """A tiny Lumina-mGPT folder; ``shards`` splits the weights over two files with an index."""
    from safetensors.torch import save_file
    from transformers import PreTrainedTokenizerFast

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config = tiny_config().to_dict()
    config.update(architectures=["ChameleonXLLMXForConditionalGeneration"], mask_image_logits=False,
                  z_loss_weight=1e-5, torch_dtype="float32")
    _write_json(folder / "config.json", config)
    state = {k: v.contiguous() for k, v in lumina_state(seed).items()}
    if shards:
        keys = sorted(state)
        parts = {"model-00001-of-00002.safetensors": keys[: len(keys) // 2],
                 "model-00002-of-00002.safetensors": keys[len(keys) // 2:]}
        for name, part in parts.items():
            save_file({k: state[k] for k in part}, str(folder / name), metadata={"format": "pt"})
        _write_json(folder / "model.safetensors.index.json",
                    {"metadata": {}, "weight_map": {k: name for name, part in parts.items() for k in part}})
    else:
        save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=build_tokenizer(), bos_token=BOS, eos_token=EOS,
                                        pad_token=PAD)
    tokenizer.save_pretrained(folder)
    if vqgan:
        write_tiny_vqgan(folder / "vqgan", embed_dim=16, n_embed=CODEBOOK, seed=seed)
    return folder
