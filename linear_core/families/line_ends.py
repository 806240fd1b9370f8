"""What the text-to-image families with end-of-line tokens share (Lumina-mGPT, Emu3).

Both write an image as rows of VQ codes, each row closed by an end-of-line token that is cached like
a code and forced by the same logits rules (`EndOfLineRows`); both map vocabulary ids to codes
through transformers' vocabulary-mapping classes (``image_tokens``, ``bpe2img``); both run the
unconditional CFG branch on a prefix of its own; and both decode by dropping the end-of-line column
of the raster.
"""
from __future__ import annotations

import torch
from torch import nn

from ..adapter import Conditioning, execution_device
from ..guidance import Guidance
from ..layout import LineLayout
from ..rules import TokenRules


class EndOfLineRows:
    """The adapter members the families share. A family sets ``grid_h``, ``grid_w``, ``eol_id`` and
    the ``image_vocab`` mask, and provides ``backbone`` (the decoder stack) and ``head`` (its
    ``lm_head``, read directly: the CausalLM forwards would mask image logits)."""

    grid_h: int
    grid_w: int
    eol_id: int
    image_vocab: torch.Tensor

    @property
    def raster(self) -> LineLayout:
        """Rows of ``grid_w`` codes plus an end-of-line token (no prefix)."""
        return LineLayout(0, self.grid_h, self.grid_w, eol=True)

    @property
    def vocab(self) -> int:
        return self.head.out_features

    def embed_image_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.backbone.embed_tokens(tokens)

    def image_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.head(hidden).float()

    @property
    def rules(self) -> TokenRules:
        """The reference's rules on CFG-mixed logits: the end-of-line token at a row end, otherwise
        image codes only."""
        return TokenRules(self.image_vocab, self.eol_id)


def image_vocabulary(mapping, vocab_size: int, family: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``(code_of, allowed)``: vocabulary id → VQ code (-1 outside the image vocabulary), and the
    ``(vocab,)`` mask of the image ids (the only tokens a row may hold besides its end)."""
    image_ids = torch.tensor(mapping.image_tokens, dtype=torch.long)
    if not len(image_ids):
        raise ValueError(f"config.json's vocabulary_map has no image tokens: not a {family} image model.")
    code_of = torch.full((vocab_size,), -1, dtype=torch.long)
    code_of[image_ids] = torch.tensor([mapping.bpe2img[int(i)] for i in image_ids])
    allowed = torch.zeros(vocab_size, dtype=torch.bool)
    allowed[image_ids] = True
    return code_of, allowed


def separate_cfg_request(embed_tokens: nn.Module, ids: list[int], uncond_ids: list[int], batch: int, cfg: float,
                         grid_h: int, grid_w: int) -> tuple[Conditioning, Guidance, LineLayout]:
    """``batch`` rows of the prompt ``ids`` and, with CFG, ``batch`` unconditional rows of
    ``uncond_ids`` with positions of their own (the ``separate`` layout); rows of ``grid_w`` codes
    plus an end-of-line token."""
    device = execution_device(embed_tokens)
    embed = lambda rows: embed_tokens(torch.tensor(rows, device=device))  # noqa: E731
    layout = LineLayout(len(ids), grid_h, grid_w, eol=True)
    if cfg <= 1.0:
        return Conditioning(embed([ids] * batch)), Guidance(cfg, "none"), layout
    return Conditioning(embed([ids] * batch), embed([uncond_ids] * batch)), Guidance(cfg, "separate"), layout


def code_grid(tokens: torch.Tensor, code_of: torch.Tensor, grid_h: int, grid_w: int) -> tuple[torch.Tensor, int]:
    """``(batch, n)`` raster ids, end-of-line tokens included (a partial raster for a preview; tokens
    after the raster are ignored) → ``(batch, grid_h, grid_w)`` VQ codes, 0 in unfinished rows, and
    the number of finished rows."""
    line = grid_w + 1
    rows = min(grid_h, tokens.shape[1] // line)
    grid = tokens.new_zeros(tokens.shape[0], grid_h, line)
    grid.view(tokens.shape[0], -1)[:, :rows * line] = tokens[:, :rows * line]
    return code_of.to(tokens.device)[grid[:, :, :grid_w]].clamp(min=0), rows
