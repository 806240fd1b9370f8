"""DeepSeek's original Janus-Pro release (``deepseek-ai/Janus-Pro-1B`` / ``-7B``, ``model_type
"multi_modality"``) converted to transformers' native `JanusForConditionalGeneration` at load time.

A pure rename plus two reshapes (SigLIP's fused ``qkv`` split into q/k/v, ``pos_embed`` squeezed);
the VQ counter ``codebook_used`` and SigLIP's unused attention-pool head are dropped. The config is
rebuilt from DeepSeek's ``config.json`` and, where it only names an architecture ("VQ-16",
"siglip_large_patch16_384"), from the tensor shapes. Weights are memory-mapped and assigned to a
model built on the meta device, so a 7B model never needs a second copy in RAM.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ..checkpoints import read_folder_weights
from ..devices import dispatch

if TYPE_CHECKING:
    from transformers import JanusConfig

#: SigLIP-L, the understanding tower every Janus release uses: 64-wide heads
SIGLIP_HEAD_DIM = 64
#: the VQ-16 tokenizer halves the image 4 times: one token per 16×16 pixels
VQ_DOWNSAMPLE = 16

_VQ_RULES = ((r"\.conv_blocks\.", ".up."), (r"\.res\.", ".block."), (r"\.mid\.0\.", ".mid.block_1."),
             (r"\.mid\.1\.", ".mid.attn_1."), (r"\.mid\.2\.", ".mid.block_2."))
_RENAMES = (
    ("language_model.model.", "model.language_model."), ("language_model.lm_head.", "lm_head."),
    ("gen_embed.", "model.generation_embeddings."), ("gen_aligner.layers.0.", "model.generation_aligner.fc1."),
    ("gen_aligner.layers.2.", "model.generation_aligner.hidden_layers.0."),
    ("gen_head.output_mlp_projector.", "model.generation_head.proj_out."),
    ("gen_head.vision_head.", "model.generation_head.vision_head."),
    ("aligner.layers.0.", "model.aligner.fc1."), ("aligner.layers.2.", "model.aligner.hidden_layers.0."),
)
_TOWER, _SIGLIP = "vision_model.vision_tower.", "model.vision_model."
_TOWER_RENAMES = (("patch_embed.proj.", "embeddings.patch_embedding."), ("norm.", "post_layernorm."))
_BLOCK_RENAMES = (("norm1.", "layer_norm1."), ("norm2.", "layer_norm2."), ("attn.proj.", "self_attn.projection_layer."),
                  ("mlp.", "mlp."))


def _vq_key(key: str) -> str:
    key = "." + key
    if key.startswith(".encoder."):
        key = key.replace(".conv_blocks.", ".down.", 1)
    for pattern, replacement in _VQ_RULES:
        key = re.sub(pattern, replacement, key)
    return "model.vqmodel" + key


def _tower_keys(rest: str, tensor: torch.Tensor) -> dict[str, torch.Tensor]:
    if rest == "pos_embed":
        return {_SIGLIP + "embeddings.position_embedding.weight": tensor.squeeze(0)}
    if rest.startswith("attn_pool."):
        return {}
    for old, new in _TOWER_RENAMES:
        if rest.startswith(old):
            return {_SIGLIP + new + rest[len(old):]: tensor}
    match = re.fullmatch(r"blocks\.(\d+)\.(.+)", rest)
    if match is None:
        raise ValueError(f"Unexpected SigLIP tensor {_TOWER + rest!r} in a Janus checkpoint.")
    layer, inner = f"{_SIGLIP}encoder.layers.{match.group(1)}.", match.group(2)
    if inner.startswith("attn.qkv."):
        suffix = inner.rsplit(".", 1)[1]
        q, k, v = tensor.chunk(3, dim=0)
        return {f"{layer}self_attn.{name}_proj.{suffix}": part for name, part in zip("qkv", (q, k, v))}
    for old, new in _BLOCK_RENAMES:
        if inner.startswith(old):
            return {layer + new + inner[len(old):]: tensor}
    raise ValueError(f"Unexpected SigLIP tensor {_TOWER + rest!r} in a Janus checkpoint.")


def to_native(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Original key layout → `JanusForConditionalGeneration` keys."""
    out: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        if key.startswith("gen_vision_model."):
            if not key.endswith("codebook_used"):
                out[_vq_key(key[len("gen_vision_model."):])] = tensor
        elif key.startswith(_TOWER):
            out.update(_tower_keys(key[len(_TOWER):], tensor))
        else:
            for old, new in _RENAMES:
                if key.startswith(old):
                    out[new + key[len(old):]] = tensor
                    break
            else:
                raise ValueError(f"Unexpected tensor {key!r}: this is not a DeepSeek Janus checkpoint.")
    return out


def native_config(config: dict, state: dict[str, torch.Tensor], tokenizer) -> JanusConfig:
    """`JanusConfig` from DeepSeek's sub-configs, with the architecture details read off the weights."""
    from transformers import JanusConfig

    count = lambda prefix: len({k[len(prefix):].split(".")[0] for k in state if k.startswith(prefix)})  # noqa: E731
    vision = config.get("vision_config", {}).get("params", {})
    gen_aligner = config.get("gen_aligner_config", {}).get("params", {})
    gen_head = config.get("gen_head_config", {}).get("params", {})
    patch = state[_TOWER + "patch_embed.proj.weight"]
    width = patch.shape[0]
    image_size = vision.get("image_size", 384)
    codebook = state["gen_vision_model.quantize.embedding.weight"]
    widths = [state[f"gen_vision_model.decoder.conv_blocks.{i}.res.0.conv1.weight"].shape[0]
              for i in range(count("gen_vision_model.decoder.conv_blocks."))]
    base = state["gen_vision_model.decoder.conv_out.weight"].shape[1]
    vocab = tokenizer.get_vocab()
    text = {k: v for k, v in config["language_config"].items() if k not in ("torch_dtype", "dtype")}
    text.update(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                pad_token_id=vocab.get("<｜▁pad▁｜>"), tie_word_embeddings=False)
    return JanusConfig(
        text_config=text,
        vision_config={
            "hidden_size": width, "num_hidden_layers": count(_TOWER + "blocks."),
            "num_attention_heads": width // SIGLIP_HEAD_DIM, "patch_size": patch.shape[-1], "image_size": image_size,
            "mlp_ratio": state[_TOWER + "blocks.0.mlp.fc1.weight"].shape[0] / width,
            "projection_dim": state["aligner.layers.0.weight"].shape[0], "depth": 2,
            "num_image_tokens": (image_size // VQ_DOWNSAMPLE) ** 2,
        },
        vq_config={
            "num_embeddings": codebook.shape[0], "embed_dim": codebook.shape[1], "base_channels": base,
            "channel_multiplier": [w // base for w in reversed(widths)],
            "num_res_blocks": count("gen_vision_model.encoder.conv_blocks.0.res."),
            "latent_channels": state["gen_vision_model.post_quant_conv.weight"].shape[0],
            "projection_dim": gen_aligner.get("n_embed", state["gen_aligner.layers.0.weight"].shape[0]),
            "num_hidden_layers": gen_aligner.get("depth", 2),
            "image_token_embed_dim": gen_head.get("n_embed", state["gen_head.output_mlp_projector.weight"].shape[1]),
        },
        image_token_id=vocab.get("<image_placeholder>", 100581),
        tie_word_embeddings=False,
    )


def load_deepseek_janus(folder: Path, config: dict, dtype: torch.dtype, device: torch.device | str,
                        device_map: str | dict | None, tokenizer, offload_folder: str | Path | None = None
                        ) -> torch.nn.Module:
    from accelerate import init_empty_weights
    from transformers import JanusForConditionalGeneration

    state = read_folder_weights(folder)
    janus_config = native_config(config, state, tokenizer)
    with init_empty_weights():  # parameters on the meta device, buffers (rotary tables) real
        model = JanusForConditionalGeneration(janus_config)
    target = "cpu" if device_map else device
    native = {k: v.to(device=target, dtype=dtype) for k, v in to_native(state).items()}
    missing, unexpected = model.load_state_dict(native, strict=False, assign=True)
    if missing or unexpected:
        raise ValueError(f"{folder.name} does not match the Janus-Pro architecture: missing {missing[:4]}, "
                         f"unexpected {unexpected[:4]}.")
    model.to(device=target)  # the buffers (built on the CPU) follow the weights
    model.generation_config.update(bos_token_id=janus_config.text_config.bos_token_id,
                                   pad_token_id=janus_config.text_config.pad_token_id)
    if device_map:
        model = dispatch(model, device_map, offload_folder)
    return model
