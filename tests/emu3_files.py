"""Tiny Emu3-Gen folders in the transformers-native layout (``BAAI/Emu3-Gen-hf``), for the real loader.

A folder holds ``config.json`` (``model_type: emu3``, a ``text_config``, a ``vq_config`` and the
``vocabulary_map`` of every token), safetensors weights written by transformers' own
``save_pretrained`` (single or sharded with an index), which keeps the key names of the -hf uploads
(``text_model.model.*``, ``text_model.lm_head``, ``vqmodel.*``; or, with ``module_keys``, the names
of the 5.x module tree, ``model.text_model.*``, ``lm_head``, ``model.vqmodel.*``), and the processor:
tokenizer files with Emu3's special tokens (image start/end, the image wrapper, end of frame,
``<|extra_200|>`` as end of line) and the image processor's config. Token names are the real ones;
their ids are small because the vocabulary is.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from tokenizer_files import as_expected_by, byte_level_bpe

HIDDEN = 64
HEADS, KV_HEADS = 4, 2  # grouped-query attention, as Emu3-Gen (32 / 8)
VOCAB_SIZE = 512
CODEBOOK = 64  # the tiny VQ-VAE's codes
RESOLUTION = 64  # 8 x 8 codes (8 px each), 72 raster tokens with end-of-line tokens

BOS, EOS, PAD = "<|extra_203|>", "<|extra_204|>", "<|endoftext|>"
BOI, EOI, WRAPPER, EOL, EOF = "<|image start|>", "<|image end|>", "<|image token|>", "<|extra_200|>", "<|extra_201|>"
SPECIAL = [PAD, BOS, EOS, BOI, EOI, WRAPPER, EOL, EOF, "<image>"]
EXTRA_SPECIAL = {"image_token": "<image>", "boi_token": BOI, "eoi_token": EOI, "image_wrapper_token": WRAPPER,
                 "eof_token": EOF}
#: the prompts' words, so that they stay about as short as with Emu3's own tokenizer (the default
#: negative prompt: 50 tokens in its template)
_MERGED_WORDS = ("Ġred", "Ġfox", "Ġin", "Ġthe", "Ġsnow", "low", "res", "Ġbad", "Ġanatomy", "Ġhands", "Ġtext",
                 "Ġerror", "Ġmissing", "Ġfingers", "Ġextra", "Ġdigit", "Ġdigits", "Ġfewer", "Ġcropped", "Ġworst",
                 "Ġquality", "Ġlow", "Ġnormal", "Ġjpeg", "Ġartifacts", "Ġsignature", "Ġwatermark", "Ġusername",
                 "Ġblurry")


def visual_token(code: int) -> str:
    return f"<|visual token {code:06d}|>"


def build_tokenizer():
    """Special tokens first, then the image codes as the last ids (as in Emu3's vocabulary)."""
    return byte_level_bpe(_MERGED_WORDS, SPECIAL + [visual_token(c) for c in range(CODEBOOK)], limit=VOCAB_SIZE)


def tiny_config(vq_levels: int = 4):
    """``vq_levels`` VQ-VAE resolutions: 4 upsample codes ×8 as Emu3's does; fewer decode a large raster
    (720 px, 90×90 codes) to a small picture quickly."""
    from transformers import Emu3Config

    vocab = build_tokenizer().get_vocab()
    text = {"vocab_size": VOCAB_SIZE, "hidden_size": HIDDEN, "intermediate_size": 128, "num_hidden_layers": 2,
            "num_attention_heads": HEADS, "num_key_value_heads": KV_HEADS, "max_position_embeddings": 9216,
            "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0}, "pad_token_id": vocab[PAD],
            "bos_token_id": vocab[BOS], "eos_token_id": vocab[EOS]}
    vq = {"codebook_size": CODEBOOK, "embed_dim": 4, "latent_channels": 4, "base_channels": 32,
          "channel_multiplier": [1] * vq_levels, "num_res_blocks": 1, "attn_resolutions": [],
          "hidden_size": 32, "num_attention_heads": 1}
    return Emu3Config(text_config=text, vq_config=vq, vocabulary_map=vocab)


def reference_model(seed: int = 0, vq_levels: int = 4):
    """transformers' own Emu3ForConditionalGeneration with random weights; projections and
    embeddings get a larger gain than the default init so the tiny model's logits are not flat."""
    from transformers import Emu3ForConditionalGeneration

    torch.manual_seed(seed)
    model = Emu3ForConditionalGeneration(tiny_config(vq_levels)).eval()
    with torch.no_grad():
        model.model.text_model.embed_tokens.weight.normal_(0, 1.0)
        for layer in model.model.text_model.layers:
            layer.self_attn.q_proj.weight.mul_(6.0)
            layer.self_attn.k_proj.weight.mul_(6.0)
        model.lm_head.weight.normal_(0, HIDDEN ** -0.5)
    return model


def build_processor():
    from transformers import Emu3ImageProcessor, Emu3Processor, PreTrainedTokenizerFast

    tokenizer = PreTrainedTokenizerFast(tokenizer_object=build_tokenizer(), bos_token=BOS, eos_token=EOS,
                                        pad_token=PAD, extra_special_tokens=EXTRA_SPECIAL)
    return Emu3Processor(Emu3ImageProcessor(image_mean=[0.5] * 3, image_std=[0.5] * 3),
                         as_expected_by(Emu3Processor, tokenizer))


#: the checkpoint's key names → transformers 5.x module names
MODULE_KEYS = ((r"^text_model\.model\.", "model.text_model."), (r"^text_model\.lm_head\.", "lm_head."),
               (r"^vqmodel\.", "model.vqmodel."))


def write_emu3(folder: Path, seed: int = 0, shards: bool = False, module_keys: bool = False,
               processor: bool = True, vq_levels: int = 4) -> Path:
    """A tiny Emu3-Gen folder; ``shards`` splits the weights over files with an index (as
    ``save_pretrained`` does for large models); ``module_keys`` renames them to the module tree."""
    folder = Path(folder)
    reference_model(seed, vq_levels).save_pretrained(folder, max_shard_size="1MB" if shards else "50GB")
    if module_keys:
        _rename_keys(folder)
    if processor:
        build_processor().save_pretrained(folder)
    return folder


def _rename_keys(folder: Path) -> None:
    from safetensors.torch import load_file, save_file

    def rename(key: str) -> str:
        for pattern, new in MODULE_KEYS:
            key = re.sub(pattern, new, key)
        return key

    index = folder / "model.safetensors.index.json"
    files = sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.is_file() else ["model.safetensors"]
    for name in files:
        state = load_file(str(folder / name))
        save_file({rename(k): v for k, v in state.items()}, str(folder / name), metadata={"format": "pt"})
    if index.is_file():
        data = json.loads(index.read_text())
        data["weight_map"] = {rename(k): v for k, v in data["weight_map"].items()}
        index.write_text(json.dumps(data, indent=2))
