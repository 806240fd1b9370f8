"""An independent re-implementation of Lumina-mGPT's own text-to-image inference, for parity tests.

Written from a reading of Alpha-VLLM/Lumina-mGPT (``inference_solver.py``: the unbatched CFG
processor, ``MultiModalLogitsProcessor``, ``InterleavedTopKLogitsWarper``; ``data/item_processor.py``
and ``data/convertsation.py``: the conversation text, the token names, ``decode_image``), not from
the engine. Like upstream it works on the running sequence of ids: it counts image starts and ends,
reads the latent size from the two size tokens (id − 8804, times 2), hard-codes the image-code range
4…8195, and looks up the special tokens by upstream's *names*. Nothing here imports ``linear_core``.
"""
from __future__ import annotations

import torch
from transformers import DynamicCache

#: upstream's token names (FlexARItemProcessor, Conversation)
IMAGE_START, IMAGE_END, NEW_LINE, TURN_END = "<racm3:break>", "<eoss>", "<reserved08799>", "<reserved08706>"
FIRST_SIZE_ID = 8804  # upstream: h_grids = size token id - 8804
IMAGE_CODE_IDS = range(4, 8195 + 1)  # upstream: MultiModalLogitsProcessor.image_token_list
PATCH = 32  # upstream's patch_size: one size-token unit = 32 px = 2 latent rows


def conversation_ids(tokenizer, prompt: str, width: int, height: int) -> list[int]:
    """The human turn as generate.py writes it, the separator token after it, the whole string
    encoded without special tokens and BOS put in front (xllmx Tokenizer.encode(bos=True))."""
    request = f"Generate an image of {width}x{height} according to the following prompt:\n{prompt}"
    return [tokenizer.bos_token_id, *tokenizer.encode(request + TURN_END, add_special_tokens=False)]


def size_token_name(pixels: int) -> str:
    return f"<reserved{8800 + pixels // PATCH:05d}>"


def image_start_ids(tokenizer, width: int, height: int) -> list[int]:
    """``<racm3:break>``, then the height and width tokens (process_image's order)."""
    ids = tokenizer.convert_tokens_to_ids([IMAGE_START, size_token_name(height), size_token_name(width)])
    return list(ids)


def constrain(sequence: list[int], scores: torch.Tensor, ids: dict[str, int]) -> torch.Tensor:
    """MultiModalLogitsProcessor on one running sequence: new line at each row end, end of image
    after the last row, image codes only otherwise; text positions untouched."""
    starts, ends = sequence.count(ids[IMAGE_START]), sequence.count(ids[IMAGE_END])
    if starts != ends + 1:
        return scores
    index = len(sequence) - 1 - sequence[::-1].index(ids[IMAGE_START])
    if len(sequence) - index - 1 < 2:
        return scores
    h_latent = (sequence[index + 1] - FIRST_SIZE_ID) * 2
    w_latent = (sequence[index + 2] - FIRST_SIZE_ID) * 2
    written = len(sequence) - index - 3
    if (written + 1) % (w_latent + 1) == 0:
        forced = torch.full_like(scores, float("-inf"))
        forced[:, ids[NEW_LINE]] = 0
        return forced
    if written + 1 == (w_latent + 1) * h_latent + 1:
        forced = torch.full_like(scores, float("-inf"))
        forced[:, ids[IMAGE_END]] = 0
        return forced
    allowed = torch.zeros(scores.shape[-1], dtype=torch.bool, device=scores.device)
    allowed[IMAGE_CODE_IDS.start:IMAGE_CODE_IDS.stop] = True
    return scores.masked_fill(~allowed, float("-inf"))


def image_top_k(scores: torch.Tensor, k: int) -> torch.Tensor:
    """InterleavedTopKLogitsWarper inside an image: keep scores ≥ the k-th largest."""
    kth = torch.topk(scores, min(k, scores.shape[-1]))[0][..., -1, None]
    return scores.masked_fill(scores < kth, float("-inf"))


@torch.inference_mode()
def generate(model, tokenizer, prompt: str, pixels: int, batch: int, cfg: float, top_k: int,
             generator: torch.Generator) -> torch.Tensor:
    """Upstream's sampling loop for ``batch`` copies of one prompt on transformers' Chameleon
    (``model.model`` + ``lm_head``, as Lumina's class does not mask image logits). The image start
    and the size tokens are given (the engine teacher-forces them; upstream samples them, and its
    top-k-10 text sampling would pick them from a trained model). The unconditional branch has its
    own cache and sees the sequence from the image start on, with positions from 0. Returns the
    ids written after the size tokens, through the forced end of image."""
    ids = {name: tokenizer.convert_tokens_to_ids(name) for name in (IMAGE_START, IMAGE_END, NEW_LINE)}
    prompt_ids = conversation_ids(tokenizer, prompt, pixels, pixels) + image_start_ids(tokenizer, pixels, pixels)
    device = model.lm_head.weight.device
    cond = torch.tensor([prompt_ids] * batch, device=device)
    uncond = cond[:, prompt_ids.index(ids[IMAGE_START]):]
    caches, inputs = (DynamicCache(), DynamicCache()), (cond, uncond)
    sequence, written = list(prompt_ids), []
    while not written or written[-1][0] != ids[IMAGE_END]:
        last = [model.lm_head(model.model(input_ids=x, past_key_values=c, use_cache=True).last_hidden_state[:, -1])
                .float() for x, c in zip(inputs, caches)]
        scores = last[0] if cfg == 1.0 else cfg * (last[0] - last[1]) + last[1]
        scores = image_top_k(constrain(sequence, scores, ids), top_k)
        token = torch.multinomial(scores.softmax(-1), 1, generator=generator)[:, 0]
        written.append(token.tolist())
        sequence.append(written[-1][0])
        inputs = (token[:, None], token[:, None])
    return torch.tensor(written, dtype=torch.long).T


def image_codes(tokens: torch.Tensor, vocabulary_map: dict[str, int], pixels: int) -> torch.Tensor:
    """decode_image's code grid: drop each row's new-line token, map ids to VQGAN codes through the
    ``IMGIMG`` names (letters A–J spell the code's digits)."""
    code_of = {i: int("".join(str(ord(c) - ord("A")) for c in name[6:-1]))
               for name, i in vocabulary_map.items() if name.startswith("IMGIMG")}
    latent = pixels // 16
    rows = tokens[:, :latent * (latent + 1)].reshape(tokens.shape[0], latent, latent + 1)[:, :, :latent]
    return torch.tensor([[code_of[i] for i in row] for row in rows.flatten(1).tolist()])
