"""Tiny random Janus-Pro checkpoints on disk, in both layouts users have, for loader tests.

``write_native_janus`` writes a transformers-native `JanusForConditionalGeneration` folder (what
``deepseek-community/Janus-Pro-1B`` / ``-7B`` ship); ``write_deepseek_janus`` writes the SAME weights
(same ``seed`` ⇒ tensor-equal after renaming) in DeepSeek's original release layout
(``deepseek-ai/Janus-Pro-1B`` / ``-7B``: ``model_type "multi_modality"``, ``pytorch_model.bin``).
Both folders carry the same tokenizer. Nothing is downloaded; everything is built here.

Tiny model (``grid`` = 12 by default: 144 image tokens, 24×24 px images)
------------------------------------------------------------------------
12 is the smallest grid on which the engine's default ``linear`` policy (8 anchors + 2 recent lines)
fits a 1/4 budget (36 ≥ 8 + 2·12 image tokens); ``grid=`` takes any other size.

* Language model: Llama, hidden 64, 2 layers, 4 heads (head_dim 16), **2 KV heads** (GQA; the real
  models are MHA), FFN 128, RMSNorm eps 1e-6, RoPE θ 10000 (both `LlamaConfig` defaults, as DeepSeek's
  ``language_config`` names neither), max positions 1024, untied ``lm_head``.
  Embedding rows: ``VOCAB_SIZE`` = 102400, as the releases' ``language_config.vocab_size`` (more rows
  than tokenizer ids); the table is the largest tensor of the tiny model (26 MB in float32).
* SigLIP understanding tower: hidden 64, 1 layer, 16 heads, mlp_ratio 4, patch 16, image_size
  ``16·grid`` (so ``grid²`` patches); aligner 64 → 64 → 64 (depth 2). Unused for generation.
* VQ (LlamaGen VQ-16 layout): codebook ``CODEBOOK`` = 64 × 8, latent/z channels 32, base channels 32,
  channel multipliers (1, 2) (decoder widths 64 at the lowest level, then 32), 1 res block per encoder
  level (2 per decoder level), attention at the lowest level; one ×2 upsampling, so a grid g decodes to
  2g × 2g pixels (the real VQ-16 has 4 upsamplings: 24 → 384 px).
* Generation path: ``generation_embeddings`` (64, 8); aligner 8 → 64 → 64 (GELU between);
  head 64 → 64 → 64 codes (GELU between).
* ``vision_config.num_image_tokens`` = ``grid²`` — this is the count transformers' image ``generate``
  samples (``vq_config.num_patches`` = image_size // patch_size = ``grid`` is derived by `JanusConfig`).
* Weights: every tensor drawn independently from a generator seeded by ``(seed, crc32(key))`` (so a
  key's tensor does not depend on module order): matrices N(0, gain²/fan_in) with gain ``QK_GAIN`` = 1.5
  for the Llama ``q_proj``/``k_proj`` and ``HEAD_GAIN`` = 1.5 for ``generation_head.vision_head``, 1
  elsewhere; norm weights 1 + N(0, 0.1²); biases N(0, 0.1²); embeddings / codebooks / SigLIP positions
  N(0, 1). Measured with the engine's tests: a full forward with evicted keys masked matches the cached
  decode to ≤ 1.4e-6 of the logit scale, eviction moves the logits by 70–90 % of it, and the image-token
  distributions are broad enough that transformers' default top-k 50 (out of 64 codes) changes the
  sampled stream for most seeds (much larger gains make the head so peaked that such sampling-rule
  differences go unnoticed).
  All float32 (the real releases are bfloat16).

Tokenizer (identical in both folders)
-------------------------------------
Byte-level BPE built here with the ``tokenizers`` library: ids 0–255 are the 256 byte symbols (GPT-2
byte→unicode alphabet, sorted by code point; space = ``Ġ``, newline = ``Ċ``), then a few merges for
the chat roles and test words, then unreachable ``<filler_i>`` entries so that every token the
project names sits at **the id it has in the real Janus-Pro tokenizer** (``SPECIAL_IDS``; all
``special=True``, ``normalized=False``; ``len(tokenizer)`` = 100594). A fixture with ids of its own
would pass a lookup by the wrong name; this one does not (see ``docs/upstream-facts.md`` for each
id's source):

====================================  ======================  ======  ============================
string (exact characters)             ``*_TOKEN`` constant    id      role
====================================  ======================  ======  ============================
``<｜begin▁of▁sentence｜>``            ``BOS_TOKEN``            100000  BOS (U+FF5C bars, U+2581)
``<｜end▁of▁sentence｜>``              ``EOS_TOKEN``            100001  EOS (end of an assistant turn)
``<｜▁pad▁｜>``                        ``PAD_TOKEN``            100015  fills the unconditional prompt
``<begin_of_image>``                  ``BOI_TOKEN``            100016  last prompt id for generation
``<image_placeholder>``               ``IMAGE_TOKEN``          100581  ``JanusConfig.image_token_id``
``<end_of_image>``                    ``EOI_TOKEN``            100593  EOI
====================================  ======================  ======  ============================

``"<|User|>: a red fox in the snow\\n\\n<|Assistant|>:<begin_of_image>"`` encodes to 18 ids:
``[100000, 256, 260, 257, 25, 269, 272, 275, 277, 280, 284, 198, 198, 256, 268, 257, 25, 100016]``
(``\\n\\n`` is two ``Ċ`` tokens; words outside the merges fall back to single bytes).
``<|User|>`` / ``<|Assistant|>`` use ASCII bars and are ordinary text here (merged to ``<|`` ``User``
``|>`` …; whether the release makes them single tokens is unverified — read ids from the tokenizer).
The ``tokenizer.json`` post-processor prepends BOS (``tokenizer(text)`` starts with BOS;
``add_special_tokens=False`` does not), and ``tokenizer_config.json`` says ``add_bos_token: true``,
``tokenizer_class: "LlamaTokenizerFast"`` as the releases do; transformers 5 sees the byte-level
``tokenizer.json`` and loads it as ``TokenizersBackend`` (with a one-time warning) instead of
rebuilding a SentencePiece-style Llama tokenizer. The native ``tokenizer_config.json`` also names
``image_token`` / ``boi_token`` / ``eoi_token`` (saved from ``extra_special_tokens``): `JanusProcessor`
reads them as tokenizer attributes.

Generation prompt (both layouts, as DeepSeek's ``generation_inference.py`` and transformers do)::

    BOS + "<|User|>: {prompt}\\n\\n<|Assistant|>:" + "<begin_of_image>"

No system prompt for image generation (`JanusProcessor` prepends its default system prompt only in
``generation_mode="text"``). The native folder's chat template (written for these tests) renders
``[{"role": "user", "content": [{"type": "text", "text": p}]}]`` with ``add_generation_prompt=True``
as ``"<|User|>: p\\n\\n<|Assistant|>:"``; ``processor(text=..., generation_mode="image")`` appends
``<begin_of_image>`` and the tokenizer prepends BOS.

Native folder (``write_native_janus``)
--------------------------------------
``config.json`` (``model_type "janus"``, ``JanusConfig`` with ``text_config`` / ``vision_config`` /
``vq_config``, ``image_token_id``, ``tie_word_embeddings: false``), ``model.safetensors`` (or, with
``shards=True``, ``model-0000i-of-0000n.safetensors`` + ``model.safetensors.index.json``),
``generation_config.json`` (``bos_token_id``, ``eos_token_id``, ``pad_token_id``,
``generation_kwargs: {"boi_token_id": …}``, ``guidance_scale`` 5, ``temperature`` 1 — so
``model.generate(**inputs, generation_mode="image", do_sample=True)`` needs no other argument; it
then also applies transformers' global default top-k 50 — pass ``top_k=0`` to sample from the full
distribution as DeepSeek's loop does), ``tokenizer.json``, ``tokenizer_config.json``,
``chat_template.jinja`` and ``processor_config.json`` (`JanusProcessor`: ``num_image_tokens = grid²``,
``use_default_system_prompt`` true, and inside it the `JanusImageProcessor` settings: size ``16·grid``,
mean = std = 0.5). Loads with ``AutoProcessor`` / ``AutoTokenizer`` /
``JanusForConditionalGeneration.from_pretrained`` offline, with no missing or unexpected keys.

DeepSeek folder (``write_deepseek_janus``)
------------------------------------------
``pytorch_model.bin`` (a ``torch.save``d dict of plain float32 tensors; with ``shards=True``
``pytorch_model-00001-of-00002.bin`` (the ``language_model.*`` tensors) and
``pytorch_model-00002-of-00002.bin`` (the rest) + ``pytorch_model.bin.index.json`` with
``{"metadata": {"total_size": bytes}, "weight_map": {key: file}}``), the same tokenizer files
(``tokenizer_config.json`` without the ``extra_special_tokens`` / chat template the conversion adds,
plus ``special_tokens_map.json``), and DeepSeek's ``config.json``, ``processor_config.json`` and
``preprocessor_config.json``. The config (field names from DeepSeek's ``janus/models/modeling_vlm.py``,
which reads ``<part>_config.cls`` / ``.params``, and from transformers' conversion script, which
parses it; the real values are those of Janus-Pro-1B, 7B in brackets; file text reconstructed, not
copied)::

    model_type "multi_modality", architectures ["MultiModalityCausalLM"], torch_dtype
    language_config   {hidden_size 2048 [4096], intermediate_size 5632 [11008],
                       max_position_embeddings 16384, model_type "llama", num_attention_heads 16 [32],
                       num_hidden_layers 24 [30], num_key_value_heads 16 [32], torch_dtype "bfloat16",
                       vocab_size 102400}      → LlamaConfig(**language_config); nothing else set
    vision_config     {cls "CLIPVisionTower", model_type "vision", params {image_size 384,
                       model_name "siglip_large_patch16_384", select_feature "same", select_layer -1}}
    aligner_config    {cls "MlpProjector", model_type "aligner", params {depth 2, input_dim 1024,
                       n_embed 2048 [4096], projector_type "mlp_gelu"}}
    gen_vision_config {cls "VQ-16", model_type "gen_vision", params {image_token_size 16384, n_embed 8}}
    gen_aligner_config{cls "MlpProjector", model_type "gen_aligner", params {depth 2, input_dim 8,
                       n_embed 2048 [4096], projector_type "mlp_gelu"}}
    gen_head_config   {cls "vision_head", model_type "gen_head", params {image_token_embed 2048
                       [4096], image_token_size 16384, n_embed 2048 [4096]}}

The tiny file writes the same keys with the tiny values (``language_config.torch_dtype "float32"``).
Mapping to `JanusConfig` (what transformers' conversion does, plus what it leaves to defaults):

* ``text_config`` = ``LlamaConfig(**language_config)`` (vocab, hidden, FFN, layers, heads, KV heads,
  max positions; eps 1e-6 and θ 10000 by default) + ``bos/eos/pad_token_id`` from the tokenizer;
  ``tie_word_embeddings`` False (DeepSeek's ``LlamaForCausalLM`` default: ``language_model.lm_head``
  is its own tensor — note `JanusConfig` defaults to True).
* ``vision_config``: ``image_size`` = ``vision_config.params.image_size``; ``patch_size`` 16 (from the
  model name); ``projection_dim`` / ``depth`` = ``aligner_config.params.n_embed`` / ``.depth``;
  ``hidden_size``, ``num_hidden_layers``, ``mlp_ratio`` are implied by the model name
  (``siglip_large_patch16_384``: 1024, 24, 4, 16 heads) — for the tiny file read width, depth and MLP
  width from the weights (``…patch_embed.proj.weight`` rows, ``blocks.{i}`` count, ``mlp.fc1`` rows);
  the tiny tower has 16 heads like the real one (heads are not visible in the weights).
  ``num_image_tokens`` = (image_size // 16)² (the conversion leaves the default 576, right for 384 px).
* ``vq_config``: ``num_embeddings`` = ``gen_vision_config.params.image_token_size`` (=
  ``gen_head_config.params.image_token_size``); ``embed_dim`` = ``gen_vision_config.params.n_embed``;
  ``projection_dim`` = ``gen_aligner_config.params.n_embed`` (= ``gen_head.image_token_embed``);
  ``num_hidden_layers`` = ``gen_aligner_config.params.depth``; ``image_token_embed_dim`` =
  ``gen_head_config.params.n_embed`` (the LM width). ``"VQ-16"`` fixes the VQ architecture in
  DeepSeek's code (no parameters are passed): base 128, multipliers (1, 1, 2, 2, 4), 2 res blocks,
  z/latent 256 — the ``JanusVQVAEConfig`` defaults. The tiny VQ is smaller, so read it from the
  weights: ``base_channels`` = ``decoder.conv_out`` input channels; multipliers = widths of
  ``decoder.conv_blocks.{L-1-i}.res.0.conv1`` / base (``conv_blocks.0`` is the lowest resolution);
  ``num_res_blocks`` = number of ``encoder.conv_blocks.0.res.*`` (the decoder has one more);
  ``latent_channels`` = ``post_quant_conv`` output channels; ``embed_dim`` / ``num_embeddings`` from
  ``quantize.embedding.weight``.
* ``image_token_id`` = the tokenizer's ``<image_placeholder>`` id.

``processor_config.json``: ``{add_special_token false, ignore_id -100, image_tag
"<image_placeholder>", mask_prompt true, num_image_tokens 576 (here grid²), processor_class
"VLChatProcessor", sft_format "deepseek"}``; ``preprocessor_config.json``: ``{background_color
[127, 127, 127], do_normalize true, image_mean [0.5]*3, image_processor_type "VLMImageProcessor",
image_size 384 (here 16·grid), image_std [0.5]*3, min_size 14, processor_class "VLChatProcessor",
rescale_factor 1/255}`` (reconstructed from DeepSeek's ``VLChatProcessor`` / ``VLMImageProcessor``
arguments and the keys transformers' conversion reads; values as recalled, unverified).

Key mapping, original (DeepSeek) → native (transformers); `native_to_deepseek` applies it in reverse
to write the original layout, and the product's `linear_core.families.janus_convert` must undo it
(``{i}``, ``{j}`` indices are unchanged)::

    language_model.model.*                        → model.language_model.*
    language_model.lm_head.weight                 → lm_head.weight
    gen_vision_model.*                            → model.vqmodel.*, inside which
        encoder.conv_blocks.{i}.                  → encoder.down.{i}.
        decoder.conv_blocks.{i}.                  → decoder.up.{i}.   (index 0 = lowest resolution)
        .res.{j}.                                 → .block.{j}.
        (encoder|decoder).mid.0. / .mid.1. / .mid.2. → .mid.block_1. / .mid.attn_1. / .mid.block_2.
        quantize.codebook_used (65536,)           → dropped (a usage counter buffer)
        (attn.{j}.{norm,q,k,v,proj_out}, upsample.conv, downsample.conv, nin_shortcut, conv_in,
         norm_out, conv_out, quant_conv, post_quant_conv, quantize.embedding: same names)
    gen_embed.weight                              → model.generation_embeddings.weight
    gen_aligner.layers.0. / .layers.2.            → model.generation_aligner.fc1. / .hidden_layers.0.
    gen_head.output_mlp_projector.                → model.generation_head.proj_out.
    gen_head.vision_head.                         → model.generation_head.vision_head.
    aligner.layers.0. / .layers.2.                → model.aligner.fc1. / .hidden_layers.0.
    vision_model.vision_tower.
        pos_embed (1, N, D)                       → model.vision_model.embeddings.position_embedding.weight
                                                    (N, D): squeeze(0)
        patch_embed.proj.                         → model.vision_model.embeddings.patch_embedding.
        blocks.{i}.norm1. / norm2.                → model.vision_model.encoder.layers.{i}.layer_norm1. / 2.
        blocks.{i}.attn.qkv.{weight,bias}         → ….self_attn.{q,k,v}_proj.* (rows split in 3: q, k, v)
        blocks.{i}.attn.proj.                     → ….self_attn.projection_layer.
        blocks.{i}.mlp.fc1. / fc2.                → ….mlp.fc1. / fc2.
        norm.                                     → model.vision_model.post_layernorm.
        attn_pool.* (latent (1,1,D), q, kv, proj, norm, mlp.fc1, mlp.fc2) → dropped (unused MAP head)

So the native state dict has every original key except ``codebook_used`` and ``attn_pool.*``; the
fused SigLIP ``qkv`` is the only split and ``pos_embed`` the only reshape.
"""
from __future__ import annotations

import functools
import json
import re
import zlib
from pathlib import Path

import torch

from tokenizer_files import as_expected_by, byte_level_bpe

#: special-token strings (exact characters: U+FF5C "｜" full-width bars, U+2581 "▁" lower one-eighth block)
BOS_TOKEN = "<｜begin▁of▁sentence｜>"
EOS_TOKEN = "<｜end▁of▁sentence｜>"
PAD_TOKEN = "<｜▁pad▁｜>"
BOI_TOKEN = "<begin_of_image>"
IMAGE_TOKEN = "<image_placeholder>"
EOI_TOKEN = "<end_of_image>"
SPECIAL_TOKENS = (BOS_TOKEN, EOS_TOKEN, PAD_TOKEN, BOI_TOKEN, IMAGE_TOKEN, EOI_TOKEN)
#: their ids in the real Janus-Pro / Janus-1.3B tokenizer (sources: docs/upstream-facts.md)
SPECIAL_IDS = {BOS_TOKEN: 100000, EOS_TOKEN: 100001, PAD_TOKEN: 100015, BOI_TOKEN: 100016, IMAGE_TOKEN: 100581,
               EOI_TOKEN: 100593}

#: Janus-Pro's chat turn for generation (ASCII bars; Janus-1.3B uses "User:" / "Assistant:")
PRO_TURN = "<|User|>: {prompt}\n\n<|Assistant|>:"

GRID = 12
HIDDEN = 64
VOCAB_SIZE = 102400
CODEBOOK = 64
CODE_DIM = 8
PATCH = 16
#: init gains of the Llama q/k projections and the image-token head (see the module docstring)
QK_GAIN = 1.5
HEAD_GAIN = 1.5

#: words the tokenizer merges (byte-level symbols: "Ġ" = space, "Ċ" = newline), so prompts stay short
_MERGED_WORDS = ("<|", "|>", "User", "Assistant", "Ġa", "Ġred", "Ġfox", "Ġin", "Ġthe", "Ġsnow",
                 "Ġcat", "Ġdog", "Ġblue", "Ġsky", "Ġblurry", "Ġphoto", "Ġof")

# a template of our own for user / assistant / system turns with text and image parts
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- set role = message['role'] | lower -%}"
    "{%- if role == 'user' -%}<|User|>: {% elif role == 'assistant' -%}<|Assistant|>: {% endif -%}"
    "{%- if message['content'] is string -%}{{ message['content'] | trim }}"
    "{%- else -%}{%- for part in message['content'] -%}"
    "{%- if not loop.first -%}{{ '\n' }}{%- endif -%}"
    "{%- if part['type'] == 'image' -%}<image_placeholder>{%- else -%}{{ part['text'] | trim }}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
    "{%- if role == 'assistant' -%}<｜end▁of▁sentence｜>{%- else -%}{{ '\n\n' }}{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}<|Assistant|>:{%- endif -%}"
)


# -- tokenizer ---------------------------------------------------------------------------------------
def build_tokenizer():
    """The tiny byte-level BPE `tokenizers.Tokenizer` with the special tokens at their real ids
    (BOS-prepending post-processor included)."""
    from tokenizers import Tokenizer

    return Tokenizer.from_str(_tokenizer_json())


@functools.lru_cache(maxsize=1)
def _tokenizer_json() -> str:
    from tokenizers import Tokenizer, processors

    spec = json.loads(byte_level_bpe(_MERGED_WORDS, []).to_str())
    vocab, by_id = spec["model"]["vocab"], {i: t for t, i in SPECIAL_IDS.items()}
    if len(vocab) > min(by_id):
        raise AssertionError("the tiny tokenizer's regular tokens reach the special ids")
    vocab.update({by_id.get(i, f"<filler_{i}>"): i for i in range(len(vocab), max(by_id) + 1)})
    spec["added_tokens"] = [{"id": i, "content": t, "single_word": False, "lstrip": False, "rstrip": False,
                             "normalized": False, "special": True} for t, i in SPECIAL_IDS.items()]
    tokenizer = Tokenizer.from_str(json.dumps(spec))
    tokenizer.post_processor = processors.TemplateProcessing(single=f"{BOS_TOKEN}:0 $A:0",
                                                             pair=f"{BOS_TOKEN}:0 $A:0 {BOS_TOKEN}:1 $B:1",
                                                             special_tokens=[(BOS_TOKEN, SPECIAL_IDS[BOS_TOKEN])])
    return tokenizer.to_str()


@functools.lru_cache(maxsize=1)
def special_token_ids() -> dict[str, int]:
    """``{token string: id}`` of the special tokens in the tiny tokenizer (read from it)."""
    tokenizer = build_tokenizer()
    return {t: tokenizer.token_to_id(t) for t in SPECIAL_TOKENS}


def _tokenizer_config(native: bool) -> dict:
    config = {"add_bos_token": True, "add_eos_token": False, "bos_token": BOS_TOKEN, "eos_token": EOS_TOKEN,
              "pad_token": PAD_TOKEN, "unk_token": None, "clean_up_tokenization_spaces": False, "legacy": True,
              "model_max_length": 16384, "tokenizer_class": "LlamaTokenizerFast", "use_default_system_prompt": False}
    if native:
        extra = {"image_token": IMAGE_TOKEN, "boi_token": BOI_TOKEN, "eoi_token": EOI_TOKEN}
        config.update(extra_special_tokens=extra, processor_class="JanusProcessor")
    return config


def _write_tokenizer(folder: Path, native: bool) -> None:
    tokenizer = build_tokenizer()
    tokenizer.save(str(folder / "tokenizer.json"))
    ids = {t: tokenizer.token_to_id(t) for t in SPECIAL_TOKENS}
    config = _tokenizer_config(native)
    config["added_tokens_decoder"] = {
        str(ids[t]): {"content": t, "lstrip": False, "normalized": False, "rstrip": False, "single_word": False,
                      "special": True} for t in SPECIAL_TOKENS}
    _write_json(folder / "tokenizer_config.json", config)
    if not native:
        _write_json(folder / "special_tokens_map.json", {
            "additional_special_tokens": [BOI_TOKEN, IMAGE_TOKEN, EOI_TOKEN],
            "bos_token": BOS_TOKEN, "eos_token": EOS_TOKEN, "pad_token": PAD_TOKEN})


# -- config and weights ------------------------------------------------------------------------------
def tiny_config(grid: int = GRID):
    """The tiny `JanusConfig` (image grid ``grid`` × ``grid``)."""
    from transformers import JanusConfig, JanusVisionConfig, JanusVQVAEConfig, LlamaConfig

    ids = special_token_ids()
    text = LlamaConfig(vocab_size=VOCAB_SIZE, hidden_size=HIDDEN, intermediate_size=128, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                       bos_token_id=ids[BOS_TOKEN], eos_token_id=ids[EOS_TOKEN], pad_token_id=ids[PAD_TOKEN],
                       tie_word_embeddings=False)
    vision = JanusVisionConfig(hidden_size=HIDDEN, num_hidden_layers=1, num_attention_heads=16, mlp_ratio=4.0,
                               image_size=PATCH * grid, patch_size=PATCH, projection_dim=HIDDEN, depth=2,
                               num_image_tokens=grid * grid)
    vq = JanusVQVAEConfig(embed_dim=CODE_DIM, num_embeddings=CODEBOOK, latent_channels=32, base_channels=32,
                          channel_multiplier=[1, 2], num_res_blocks=1, projection_dim=HIDDEN, num_hidden_layers=2,
                          image_token_embed_dim=HIDDEN)
    return JanusConfig(text_config=text, vision_config=vision, vq_config=vq, image_token_id=ids[IMAGE_TOKEN],
                       tie_word_embeddings=False)


def _gain(key: str) -> float:
    if re.search(r"language_model\.layers\.\d+\.self_attn\.[qk]_proj\.", key):
        return QK_GAIN
    return HEAD_GAIN if "generation_head.vision_head." in key else 1.0


def native_state(seed: int = 0, grid: int = GRID) -> dict[str, torch.Tensor]:
    """The random weights, keyed as `JanusForConditionalGeneration.state_dict()` (float32, CPU)."""
    from transformers import JanusForConditionalGeneration

    with torch.device("meta"):
        shapes = {k: v.shape for k, v in JanusForConditionalGeneration(tiny_config(grid)).state_dict().items()}
    state = {}
    for key, shape in shapes.items():
        g = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(key.encode()))
        x = torch.randn(*shape, generator=g)
        if key.endswith(".bias"):
            x = x * 0.1
        elif len(shape) == 1:  # LayerNorm / RMSNorm / GroupNorm scales
            x = 1 + 0.1 * x
        elif not any(s in key for s in ("embed_tokens", "embeddings.weight", "embedding.weight")):
            x = x * (_gain(key) / shape[1:].numel() ** 0.5)
        state[key] = x
    return state


# -- key mapping -------------------------------------------------------------------------------------
_VQ_BACKWARD = ((r"encoder\.down\.", "encoder.conv_blocks."), (r"decoder\.up\.", "decoder.conv_blocks."),
                (r"\.block\.", ".res."), (r"\.mid\.block_1\.", ".mid.0."), (r"\.mid\.attn_1\.", ".mid.1."),
                (r"\.mid\.block_2\.", ".mid.2."))
_PREFIX_FORWARD = (("language_model.model.", "model.language_model."), ("language_model.lm_head.", "lm_head."),
                   ("gen_embed.", "model.generation_embeddings."),
                   ("gen_aligner.layers.0.", "model.generation_aligner.fc1."),
                   ("gen_aligner.layers.2.", "model.generation_aligner.hidden_layers.0."),
                   ("gen_head.output_mlp_projector.", "model.generation_head.proj_out."),
                   ("gen_head.vision_head.", "model.generation_head.vision_head."),
                   ("aligner.layers.0.", "model.aligner.fc1."), ("aligner.layers.2.", "model.aligner.hidden_layers.0."))
_TOWER = "vision_model.vision_tower."
_SIGLIP = "model.vision_model."
_TOWER_FORWARD = (("patch_embed.proj.", "embeddings.patch_embedding."), ("norm.", "post_layernorm."))
_BLOCK_FORWARD = (("norm1.", "layer_norm1."), ("norm2.", "layer_norm2."), ("attn.proj.", "self_attn.projection_layer."),
                  ("mlp.", "mlp."))


def native_to_deepseek(state: dict[str, torch.Tensor], seed: int = 0) -> dict[str, torch.Tensor]:
    """Native keys → DeepSeek's original ones (the mapping in the module docstring, inverted), plus
    the tensors the original carries and transformers
    drops (``quantize.codebook_used`` zeros and a random SigLIP ``attn_pool``, seeded by ``seed``)."""
    out = {}
    qkv: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        if key.startswith("model.vqmodel."):
            new = key[len("model.vqmodel."):]
            for pattern, repl in _VQ_BACKWARD:
                new = re.sub(pattern, repl, new)
            out["gen_vision_model." + new] = value.clone()
        elif key.startswith(_SIGLIP):
            rest = key[len(_SIGLIP):]
            if rest == "embeddings.position_embedding.weight":
                out[_TOWER + "pos_embed"] = value.unsqueeze(0).clone()
                continue
            layer = re.match(r"encoder\.layers\.(\d+)\.(.*)", rest)
            if layer:
                block, tail = f"{_TOWER}blocks.{layer[1]}.", layer[2]
                fused = re.match(r"self_attn\.([qkv])_proj\.(weight|bias)", tail)
                if fused:
                    qkv.setdefault(f"{block}attn.qkv.{fused[2]}", {})[fused[1]] = value
                    continue
                original, native = next((o, n) for o, n in _BLOCK_FORWARD if tail.startswith(n))
                out[block + original + tail[len(native):]] = value.clone()
                continue
            original, native = next((o, n) for o, n in _TOWER_FORWARD if rest.startswith(n))
            out[_TOWER + original + rest[len(native):]] = value.clone()
        else:
            original, native = next(((o, n) for o, n in _PREFIX_FORWARD if key.startswith(n)), (None, None))
            if native is None:
                raise KeyError(f"no DeepSeek name for {key}")
            out[original + key[len(native):]] = value.clone()
    for key, parts in qkv.items():
        out[key] = torch.cat([parts["q"], parts["k"], parts["v"]])
    out["gen_vision_model.quantize.codebook_used"] = torch.zeros(65536)
    width = state[_SIGLIP + "post_layernorm.weight"].shape[0]
    g = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(b"attn_pool"))
    mlp = state[_SIGLIP + "encoder.layers.0.mlp.fc1.weight"].shape[0]
    pool = {"latent": (1, 1, width), "q.weight": (width, width), "q.bias": (width,), "kv.weight": (2 * width, width),
            "kv.bias": (2 * width,), "proj.weight": (width, width), "proj.bias": (width,), "norm.weight": (width,),
            "norm.bias": (width,), "mlp.fc1.weight": (mlp, width), "mlp.fc1.bias": (mlp,),
            "mlp.fc2.weight": (width, mlp), "mlp.fc2.bias": (width,)}
    for name, shape in pool.items():
        out[f"{_TOWER}attn_pool.{name}"] = torch.randn(*shape, generator=g) * 0.02
    return out


# -- writers -----------------------------------------------------------------------------------------
def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def write_native_janus(folder: Path, seed: int = 0, shards: bool = False, grid: int = GRID) -> Path:
    """A transformers-native Janus-Pro folder (config, safetensors weights, generation config,
    tokenizer, processor, chat template). ``shards`` writes several ``model-*.safetensors`` files and
    ``model.safetensors.index.json``. Returns ``folder``."""
    from accelerate import init_empty_weights
    from transformers import GenerationConfig, JanusForConditionalGeneration, JanusImageProcessor, JanusProcessor
    from transformers import PreTrainedTokenizerFast

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with init_empty_weights():  # no random init of the 102400-row tables the state replaces
        model = JanusForConditionalGeneration(tiny_config(grid))
    model.load_state_dict(native_state(seed, grid), strict=True, assign=True)
    ids = special_token_ids()
    model.generation_config = GenerationConfig(
        bos_token_id=ids[BOS_TOKEN], eos_token_id=ids[EOS_TOKEN], pad_token_id=ids[PAD_TOKEN],
        generation_kwargs={"boi_token_id": ids[BOI_TOKEN]}, guidance_scale=5.0, temperature=1.0)
    model.save_pretrained(folder, safe_serialization=True, **({"max_shard_size": "1MB"} if shards else {}))

    tokenizer = PreTrainedTokenizerFast(tokenizer_object=build_tokenizer(), **{
        k: v for k, v in _tokenizer_config(True).items() if k not in ("tokenizer_class", "processor_class")})
    size = PATCH * grid
    image_processor = JanusImageProcessor(size={"height": size, "width": size}, image_mean=[0.5] * 3,
                                          image_std=[0.5] * 3, do_normalize=True)
    processor = JanusProcessor(image_processor=image_processor, tokenizer=as_expected_by(JanusProcessor, tokenizer),
                               chat_template=CHAT_TEMPLATE,
                               use_default_system_prompt=True, num_image_tokens=grid * grid)
    processor.save_pretrained(folder)
    # the releases declare LlamaTokenizerFast over a byte-level tokenizer.json; keep that quirk
    path = folder / "tokenizer_config.json"
    saved = json.loads(path.read_text(encoding="utf-8"))
    saved.update(tokenizer_class="LlamaTokenizerFast", add_bos_token=True, add_eos_token=False)
    _write_json(path, saved)
    return folder


def deepseek_config(grid: int = GRID) -> dict:
    """DeepSeek's ``config.json`` for the tiny model (the release's fields, tiny values)."""
    config = tiny_config(grid)
    text = config.text_config
    return {
        "model_type": "multi_modality",
        "architectures": ["MultiModalityCausalLM"],
        "torch_dtype": "float32",
        "language_config": {"hidden_size": text.hidden_size, "intermediate_size": text.intermediate_size,
                            "max_position_embeddings": text.max_position_embeddings, "model_type": "llama",
                            "num_attention_heads": text.num_attention_heads,
                            "num_hidden_layers": text.num_hidden_layers,
                            "num_key_value_heads": text.num_key_value_heads, "torch_dtype": "float32",
                            "vocab_size": text.vocab_size},
        "vision_config": {"cls": "CLIPVisionTower", "model_type": "vision",
                          "params": {"image_size": PATCH * grid, "model_name": "siglip_large_patch16_384",
                                     "select_feature": "same", "select_layer": -1}},
        "aligner_config": {"cls": "MlpProjector", "model_type": "aligner",
                           "params": {"depth": 2, "input_dim": config.vision_config.hidden_size,
                                      "n_embed": HIDDEN, "projector_type": "mlp_gelu"}},
        "gen_vision_config": {"cls": "VQ-16", "model_type": "gen_vision",
                              "params": {"image_token_size": CODEBOOK, "n_embed": CODE_DIM}},
        "gen_aligner_config": {"cls": "MlpProjector", "model_type": "gen_aligner",
                               "params": {"depth": 2, "input_dim": CODE_DIM, "n_embed": HIDDEN,
                                          "projector_type": "mlp_gelu"}},
        "gen_head_config": {"cls": "vision_head", "model_type": "gen_head",
                            "params": {"image_token_embed": HIDDEN, "image_token_size": CODEBOOK, "n_embed": HIDDEN}},
    }


def write_deepseek_janus(folder: Path, seed: int = 0, shards: bool = False, grid: int = GRID) -> Path:
    """The same weights as ``write_native_janus(…, seed, grid=grid)`` in DeepSeek's release layout
    (``pytorch_model.bin`` or two ``.bin`` shards + index, DeepSeek's configs, the tokenizer).
    Returns ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = native_to_deepseek(native_state(seed, grid), seed)
    if shards:
        parts = ({k: v for k, v in state.items() if k.startswith("language_model.")},
                 {k: v for k, v in state.items() if not k.startswith("language_model.")})
        names = [f"pytorch_model-{i:05d}-of-{len(parts):05d}.bin" for i in range(1, len(parts) + 1)]
        weight_map = {}
        for name, part in zip(names, parts):
            torch.save(part, folder / name)
            weight_map.update({k: name for k in part})
        total = sum(v.numel() * v.element_size() for v in state.values())
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        _write_json(folder / "pytorch_model.bin.index.json", index)
    else:
        torch.save(state, folder / "pytorch_model.bin")
    _write_json(folder / "config.json", deepseek_config(grid))
    _write_json(folder / "processor_config.json", {
        "add_special_token": False, "ignore_id": -100, "image_tag": IMAGE_TOKEN, "mask_prompt": True,
        "num_image_tokens": grid * grid, "processor_class": "VLChatProcessor", "sft_format": "deepseek"})
    _write_json(folder / "preprocessor_config.json", {
        "background_color": [127, 127, 127], "do_normalize": True, "image_mean": [0.5, 0.5, 0.5],
        "image_processor_type": "VLMImageProcessor", "image_size": PATCH * grid, "image_std": [0.5, 0.5, 0.5],
        "min_size": 14, "processor_class": "VLChatProcessor", "rescale_factor": 1 / 255})
    _write_tokenizer(folder, native=False)
    return folder
