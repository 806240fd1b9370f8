"""LlamaGen's VQ-16 image tokenizer, decoder side (also Janus-Pro's ``gen_vision_model``).

Codebook 16384 × 8, L2-normalised at lookup; ``post_quant_conv`` 8 → 256; a decoder of
``conv_in``, a mid block (res, attention, res) and one ``conv_blocks`` entry per resolution from
the lowest up (the lowest with attention after every res block, all but the last upsampling),
then GroupNorm, swish and ``conv_out``. Widths, depth and block counts are read from the weights,
so VQ-8 and small test decoders load too. The encoder is never needed and is skipped.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..checkpoints import describe_state_dict, read_state_dict
from .blocks import AttnBlock, ResnetBlock, Upsample, conv3x3, count_indexed, group_norm


class DecoderLevel(nn.Module):
    def __init__(self, cin: int, cout: int, res_blocks: int, attn: bool, upsample: bool) -> None:
        super().__init__()
        self.res = nn.ModuleList(ResnetBlock(cin if i == 0 else cout, cout) for i in range(res_blocks))
        self.attn = nn.ModuleList(AttnBlock(cout) for _ in range(res_blocks if attn else 0))
        self.upsample = Upsample(cout) if upsample else None

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        for i, block in enumerate(self.res):
            h = block(h)
            if len(self.attn):
                h = self.attn[i](h)
        return self.upsample(h) if self.upsample is not None else h


class Decoder(nn.Module):
    def __init__(self, z_channels: int, widths: list[int], res_blocks: int, attn_levels: int = 1) -> None:
        super().__init__()
        self.conv_in = conv3x3(z_channels, widths[0])
        self.mid = nn.ModuleList([ResnetBlock(widths[0], widths[0]), AttnBlock(widths[0]), ResnetBlock(widths[0], widths[0])])
        self.conv_blocks = nn.ModuleList(
            DecoderLevel(widths[max(i - 1, 0)], width, res_blocks, attn=i < attn_levels, upsample=i < len(widths) - 1)
            for i, width in enumerate(widths))
        self.norm_out = group_norm(widths[-1])
        self.conv_out = conv3x3(widths[-1], 3)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(z)
        for block in self.mid:
            h = block(h)
        for level in self.conv_blocks:
            h = level(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class Codebook(nn.Module):
    def __init__(self, size: int, dim: int) -> None:
        super().__init__()
        self.embedding = nn.Embedding(size, dim)


class VQ16Decoder(nn.Module):
    """Token ids on a grid → RGB in [0, 1]. Call with ``(batch, h·w)`` tokens and the grid."""

    def __init__(self, codebook_size: int = 16384, codebook_dim: int = 8, z_channels: int = 256,
                 widths: tuple[int, ...] = (512, 256, 256, 128, 128), res_blocks: int = 3, l2_norm: bool = True) -> None:
        super().__init__()
        self.quantize = Codebook(codebook_size, codebook_dim)
        self.post_quant_conv = nn.Conv2d(codebook_dim, z_channels, kernel_size=1)
        self.decoder = Decoder(z_channels, list(widths), res_blocks)
        self.l2_norm = l2_norm

    @property
    def codebook_size(self) -> int:
        return self.quantize.embedding.num_embeddings

    def embed(self, tokens: torch.Tensor, grid_h: int, grid_w: int) -> torch.Tensor:
        codes = self.quantize.embedding.weight
        if self.l2_norm:
            codes = F.normalize(codes, p=2, dim=-1)
        return codes[tokens].view(tokens.shape[0], grid_h, grid_w, -1).permute(0, 3, 1, 2)

    @torch.inference_mode()
    def forward(self, tokens: torch.Tensor, grid_h: int, grid_w: int | None = None) -> torch.Tensor:
        grid_w = grid_w or grid_h
        if tokens.shape[-1] != grid_h * grid_w:
            raise ValueError(f"{tokens.shape[-1]} tokens do not fill a {grid_h}x{grid_w} grid.")
        param = self.post_quant_conv.weight
        z = self.embed(tokens.to(param.device).long(), grid_h, grid_w).to(param.dtype)
        image = self.decoder(self.post_quant_conv(z))
        return ((image.float() + 1) / 2).clamp(0, 1)


def vq16_config(state: dict[str, torch.Tensor]) -> dict:
    """Constructor arguments of `VQ16Decoder` read off a state dict's shapes."""
    size, dim = state["quantize.embedding.weight"].shape
    levels = count_indexed(state, "decoder.conv_blocks.")
    widths = [state[f"decoder.conv_blocks.{i}.res.0.conv1.weight"].shape[0] for i in range(levels)]
    return {"codebook_size": size, "codebook_dim": dim, "z_channels": state["post_quant_conv.weight"].shape[0],
            "widths": tuple(widths), "res_blocks": count_indexed(state, "decoder.conv_blocks.0.res.")}


def load_vq16(path: str | Path, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu",
              prefix: str = "") -> VQ16Decoder:
    """Load ``vq_ds16_c2i.pt`` (or its ``.safetensors``); ``prefix`` selects a sub-model
    (``gen_vision_model.`` in Janus checkpoints)."""
    path = Path(path)
    state, _ = read_state_dict(path)
    state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    missing = [key for key in ("quantize.embedding.weight", "decoder.conv_in.weight") if key not in state]
    if missing and any(key.startswith(("quantize.", "decoder.")) for key in state):
        raise ValueError(f"{path.name} is a VQ tokenizer without {missing[0]}: truncated or damaged; download "
                         "vq_ds16_c2i.pt again.")
    if missing:
        raise ValueError(f"{path.name} is not a VQ tokenizer checkpoint: it looks like {describe_state_dict(state)}.")
    wanted = ("quantize.embedding.", "post_quant_conv.", "decoder.")
    state = {k: v for k, v in state.items() if k.startswith(wanted)}
    with torch.device("meta"):
        decoder = VQ16Decoder(**vq16_config(state))
    decoder.load_state_dict({k: v.to(device=device, dtype=dtype) for k, v in state.items()}, strict=True, assign=True)
    return decoder.eval()
