"""Chameleon's VQGAN image decoder (Lumina-mGPT's images), read from Meta's ``vqgan.ckpt``.

transformers ships only the encoder half of this model, so the decoder is ours: a plain codebook
(8192 × 256, no L2 norm), ``post_quant_conv`` and a taming-transformers decoder — ``conv_in``, a
mid block (res, attention, res), then ``up.{i}`` levels run from the lowest resolution (highest
``i``) to ``up.0``, each with ``num_res_blocks + 1`` res blocks, attention where configured and
an upsampling step on every level but ``up.0``; GroupNorm, swish, ``conv_out``. Widths, depth and
block counts are read off the weights, so small test decoders load too; ``vqgan.yaml``, when
present, must agree with them. The encoder and the training losses in the file are skipped.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..checkpoints import describe_state_dict, read_state_dict
from .blocks import AttnBlock, ResnetBlock, Upsample, conv3x3, count_indexed, group_norm

FILES = ("vqgan.ckpt", "vqgan.safetensors")
WANTED = ("quantize.embedding.", "post_quant_conv.", "decoder.")


class MidBlock(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.block_1, self.attn_1, self.block_2 = ResnetBlock(width, width), AttnBlock(width), ResnetBlock(width, width)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.block_2(self.attn_1(self.block_1(h)))


class UpLevel(nn.Module):
    def __init__(self, cin: int, cout: int, blocks: int, attn: bool, upsample: bool) -> None:
        super().__init__()
        self.block = nn.ModuleList(ResnetBlock(cin if j == 0 else cout, cout) for j in range(blocks))
        self.attn = nn.ModuleList(AttnBlock(cout) for _ in range(blocks if attn else 0))
        self.upsample = Upsample(cout) if upsample else None

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        for j, block in enumerate(self.block):
            h = block(h)
            if len(self.attn):
                h = self.attn[j](h)
        return self.upsample(h) if self.upsample is not None else h


class TamingDecoder(nn.Module):
    """``widths[i]`` is level ``up.i``'s width (``up.0`` = full resolution)."""

    def __init__(self, z_channels: int, widths: list[int], blocks: int, attn_levels: frozenset[int]) -> None:
        super().__init__()
        top = widths[-1]
        self.conv_in = conv3x3(z_channels, top)
        self.mid = MidBlock(top)
        self.up = nn.ModuleList(
            UpLevel(widths[i + 1] if i + 1 < len(widths) else top, width, blocks, i in attn_levels, upsample=i > 0)
            for i, width in enumerate(widths))
        self.norm_out = group_norm(widths[0])
        self.conv_out = conv3x3(widths[0], 3)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.mid(self.conv_in(z))
        for level in reversed(self.up):
            h = level(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class ChameleonVQGANDecoder(nn.Module):
    """VQGAN codes on a grid → RGB in [0, 1]. Call with ``(batch, h·w)`` codes and the grid."""

    def __init__(self, n_embed: int = 8192, embed_dim: int = 256, z_channels: int = 256,
                 widths: tuple[int, ...] = (128, 128, 256, 256, 512), blocks: int = 3,
                 attn_levels: frozenset[int] = frozenset()) -> None:
        super().__init__()
        self.quantize = nn.Module()
        self.quantize.embedding = nn.Embedding(n_embed, embed_dim)
        self.post_quant_conv = nn.Conv2d(embed_dim, z_channels, kernel_size=1)
        self.decoder = TamingDecoder(z_channels, list(widths), blocks, attn_levels)

    @property
    def codebook_size(self) -> int:
        return self.quantize.embedding.num_embeddings

    @torch.inference_mode()
    def forward(self, codes: torch.Tensor, grid_h: int, grid_w: int | None = None) -> torch.Tensor:
        grid_w = grid_w or grid_h
        if codes.shape[-1] != grid_h * grid_w:
            raise ValueError(f"{codes.shape[-1]} codes do not fill a {grid_h}x{grid_w} grid.")
        weight = self.post_quant_conv.weight
        z = self.quantize.embedding(codes.to(weight.device).long()).to(weight.dtype)
        z = z.view(codes.shape[0], grid_h, grid_w, -1).permute(0, 3, 1, 2)
        image = self.decoder(self.post_quant_conv(z))
        return ((image.float() + 1) / 2).clamp(0, 1)


def vqgan_config(state: dict[str, torch.Tensor]) -> dict:
    """Constructor arguments of `ChameleonVQGANDecoder` read off a state dict's shapes."""
    n_embed, embed_dim = state["quantize.embedding.weight"].shape
    levels = count_indexed(state, "decoder.up.")
    return {"n_embed": n_embed, "embed_dim": embed_dim, "z_channels": state["decoder.conv_in.weight"].shape[1],
            "widths": tuple(state[f"decoder.up.{i}.block.0.conv1.weight"].shape[0] for i in range(levels)),
            "blocks": count_indexed(state, "decoder.up.0.block."),
            "attn_levels": frozenset(i for i in range(levels) if f"decoder.up.{i}.attn.0.q.weight" in state)}


def _check_yaml(path: Path, config: dict) -> None:
    """``vqgan.yaml`` (taming's ``model.params``) must describe the weights beside it."""
    import yaml  # PyYAML comes with transformers

    try:
        params = yaml.safe_load(path.read_text())["model"]["params"]
        dd = params.get("ddconfig") or {}
    except (yaml.YAMLError, KeyError, TypeError, AttributeError) as error:
        raise ValueError(f"{path.name} is not a taming VQGAN config (model: params: ddconfig: …; {error!r}): "
                         "use the vqgan.yaml of Meta's Chameleon release, or remove it.") from None
    if dd.get("give_pre_end") or dd.get("tanh_out"):  # taming options Chameleon leaves off
        raise ValueError(f"{path.name} sets give_pre_end / tanh_out, which this decoder does not implement.")
    actual = dict(config)
    declared = {"n_embed": params.get("n_embed"), "embed_dim": params.get("embed_dim"),
                "z_channels": dd.get("z_channels")}
    if "num_res_blocks" in dd:
        declared["blocks"] = dd["num_res_blocks"] + 1  # the decoder has one more per level than the encoder
    if "ch" in dd and "ch_mult" in dd:
        declared["widths"] = tuple(dd["ch"] * m for m in dd["ch_mult"])
    if "resolution" in dd and "attn_resolutions" in dd:  # level up.i runs at resolution / 2**i
        sizes = [dd["resolution"] // 2 ** i for i in range(len(config["widths"]))]
        declared["attn_resolutions"] = [r for r in sizes if r in dd["attn_resolutions"]]
        actual["attn_resolutions"] = [r for i, r in enumerate(sizes) if i in config["attn_levels"]]
    wrong = {k: (v, actual[k]) for k, v in declared.items() if v is not None and v != actual[k]}
    if wrong:
        detail = "; ".join(f"{k}: yaml {a}, weights {b}" for k, (a, b) in wrong.items())
        raise ValueError(f"{path.name} does not describe the VQGAN weights beside it ({detail}): use the yaml and "
                         "ckpt of the same release.")


def _find(path: Path) -> Path:
    if path.is_dir():
        for name in FILES:
            if (path / name).is_file():
                return path / name
    elif path.is_file():
        return path
    raise ValueError(f"No Chameleon VQGAN at {path}: put Meta's tokenizer/vqgan.ckpt and vqgan.yaml (from the "
                     "Chameleon release) in that folder.")


def load_chameleon_vqgan(path: str | Path, dtype: torch.dtype = torch.float32,
                         device: torch.device | str = "cpu") -> ChameleonVQGANDecoder:
    """``path``: the folder with ``vqgan.ckpt`` (+ ``vqgan.yaml``), or the weight file itself."""
    file = _find(Path(path))
    state, _ = read_state_dict(file)
    if "quantize.embedding.weight" not in state or "decoder.up.0.block.0.conv1.weight" not in state:
        looks = ("LlamaGen's VQ-16 tokenizer" if any(k.startswith("decoder.conv_blocks.") for k in state)
                 else describe_state_dict(state))
        raise ValueError(f"{file.name} is not a Chameleon VQGAN checkpoint (it looks like {looks}): give Meta's "
                         "Chameleon tokenizer/vqgan.ckpt.")
    state = {k: v for k, v in state.items() if k.startswith(WANTED)}
    config = vqgan_config(state)
    if (file.parent / "vqgan.yaml").is_file():
        _check_yaml(file.parent / "vqgan.yaml", config)
    with torch.device("meta"):
        decoder = ChameleonVQGANDecoder(**config)
    decoder.load_state_dict({k: v.to(device=device, dtype=dtype) for k, v in state.items()}, strict=True, assign=True)
    return decoder.eval()
