"""Tiny Chameleon VQGAN checkpoints in Meta's format, and an independent reference decoder.

`write_tiny_vqgan` writes ``vqgan.ckpt`` (``{"state_dict": …}`` with the encoder, ``quant_conv`` and
loss tensors a real training checkpoint carries) and a taming-style ``vqgan.yaml``. The state dict
is generated from the configuration by explicit loops over the real key names, not from our
module, and `reference_decode` runs it with plain functional ops in float64.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

YAML = """model:
  base_learning_rate: 4.5e-06
  target: taming.models.vqgan.VQModel
  params:
    embed_dim: {embed_dim}
    n_embed: {n_embed}
    ddconfig:
      double_z: false
      z_channels: {z}
      resolution: 64
      in_channels: 3
      out_ch: 3
      ch: {ch}
      ch_mult: [{mult}]
      num_res_blocks: {res}
      attn_resolutions: [{attn}]
      dropout: 0.0
"""


def _conv(state, name, cin, cout, k, g):
    state[name + ".weight"] = torch.randn(cout, cin, k, k, generator=g) * (cin * k * k) ** -0.5
    state[name + ".bias"] = torch.randn(cout, generator=g) * 0.05


def _norm(state, name, c, g):
    state[name + ".weight"] = 1 + 0.1 * torch.randn(c, generator=g)
    state[name + ".bias"] = 0.1 * torch.randn(c, generator=g)


def _res(state, name, cin, cout, g):
    _norm(state, name + ".norm1", cin, g)
    _conv(state, name + ".conv1", cin, cout, 3, g)
    _norm(state, name + ".norm2", cout, g)
    _conv(state, name + ".conv2", cout, cout, 3, g)
    if cin != cout:
        _conv(state, name + ".nin_shortcut", cin, cout, 1, g)


def _attn(state, name, c, g):
    _norm(state, name + ".norm", c, g)
    for part in ("q", "k", "v", "proj_out"):
        _conv(state, f"{name}.{part}", c, c, 1, g)


def tiny_vqgan_state(embed_dim=16, n_embed=64, z=16, ch=32, mult=(1, 2), res=1, attn_levels=(), seed=0) -> dict:
    g = torch.Generator().manual_seed(seed)
    state: dict[str, torch.Tensor] = {"quantize.embedding.weight": torch.randn(n_embed, embed_dim, generator=g)}
    _conv(state, "post_quant_conv", embed_dim, z, 1, g)
    _conv(state, "quant_conv", z, embed_dim, 1, g)  # encoder side: in the file, never loaded
    _conv(state, "encoder.conv_in", 3, ch, 3, g)
    state["loss.discriminator.main.0.weight"] = torch.randn(8, 3, 4, 4, generator=g)
    top = ch * mult[-1]
    _conv(state, "decoder.conv_in", z, top, 3, g)
    _res(state, "decoder.mid.block_1", top, top, g)
    _attn(state, "decoder.mid.attn_1", top, g)
    _res(state, "decoder.mid.block_2", top, top, g)
    cin = top
    for level in reversed(range(len(mult))):
        cout = ch * mult[level]
        for j in range(res + 1):
            _res(state, f"decoder.up.{level}.block.{j}", cin, cout, g)
            cin = cout
            if level in attn_levels:
                _attn(state, f"decoder.up.{level}.attn.{j}", cout, g)
        if level:
            _conv(state, f"decoder.up.{level}.upsample.conv", cout, cout, 3, g)
    _norm(state, "decoder.norm_out", cin, g)
    _conv(state, "decoder.conv_out", cin, 3, 3, g)
    return state


def write_tiny_vqgan(folder: Path, embed_dim=16, n_embed=64, z=16, ch=32, mult=(1, 2), res=1, attn_levels=(),
                     seed=0, yaml: bool = True) -> Path:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = tiny_vqgan_state(embed_dim, n_embed, z, ch, mult, res, attn_levels, seed)
    torch.save({"state_dict": state, "global_step": 0}, folder / "vqgan.ckpt")
    if yaml:
        # taming lists attention by resolution; level i runs at 64 / 2**i here
        attn = ", ".join(str(64 // 2 ** i) for i in attn_levels)
        (folder / "vqgan.yaml").write_text(YAML.format(embed_dim=embed_dim, n_embed=n_embed, z=z, ch=ch,
                                                       mult=", ".join(map(str, mult)), res=res, attn=attn))
    return folder


# -- independent reference ---------------------------------------------------------------------
def _f_norm(s, name, x):
    return F.group_norm(x, 32, s[name + ".weight"], s[name + ".bias"], eps=1e-6)


def _f_conv(s, name, x):
    w = s[name + ".weight"]
    return F.conv2d(x, w, s[name + ".bias"], padding=w.shape[-1] // 2)


def _f_res(s, name, x):
    h = _f_conv(s, name + ".conv1", F.silu(_f_norm(s, name + ".norm1", x)))
    h = _f_conv(s, name + ".conv2", F.silu(_f_norm(s, name + ".norm2", h)))
    skip = _f_conv(s, name + ".nin_shortcut", x) if name + ".nin_shortcut.weight" in s else x
    return skip + h


def _f_attn(s, name, x):
    b, c, hh, ww = x.shape
    n = _f_norm(s, name + ".norm", x)
    q, k, v = (_f_conv(s, f"{name}.{p}", n).reshape(b, c, hh * ww) for p in ("q", "k", "v"))
    weights = torch.softmax(torch.einsum("bci,bcj->bij", q, k) / c ** 0.5, dim=-1)
    out = torch.einsum("bij,bcj->bci", weights, v).reshape(b, c, hh, ww)
    return x + _f_conv(s, name + ".proj_out", out)


def reference_decode(state: dict, codes: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Codes ``(batch, h·w)`` → RGB in [0, 1], float64, straight from the state dict."""
    s = {k: v.double() for k, v in state.items()}
    z = s["quantize.embedding.weight"][codes].reshape(codes.shape[0], h, w, -1).permute(0, 3, 1, 2)
    x = _f_conv(s, "decoder.conv_in", _f_conv(s, "post_quant_conv", z))
    x = _f_res(s, "decoder.mid.block_2", _f_attn(s, "decoder.mid.attn_1", _f_res(s, "decoder.mid.block_1", x)))
    levels = len({k.split(".")[2] for k in s if k.startswith("decoder.up.")})
    for level in reversed(range(levels)):
        j = 0
        while f"decoder.up.{level}.block.{j}.conv1.weight" in s:
            x = _f_res(s, f"decoder.up.{level}.block.{j}", x)
            if f"decoder.up.{level}.attn.{j}.q.weight" in s:
                x = _f_attn(s, f"decoder.up.{level}.attn.{j}", x)
            j += 1
        if level:
            x = _f_conv(s, f"decoder.up.{level}.upsample.conv", F.interpolate(x, scale_factor=2.0, mode="nearest"))
    x = _f_conv(s, "decoder.conv_out", F.silu(_f_norm(s, "decoder.norm_out", x)))
    return ((x + 1) / 2).clamp(0, 1)
