"""Janus-Pro against DeepSeek's own generation semantics, re-implemented here from reading upstream.

The reference is deepseek-ai/Janus: ``generation_inference.py`` (and the same loop in the README and
``demo/app_januspro.py``), ``janus/models/processing_vlm.py`` (`VLChatProcessor`: the sft template
call, ``image_start_tag``, ``pad_id``), ``janus/utils/conversation.py`` (the ``deepseek`` template)
and ``janus/models/modeling_vlm.py`` / ``projector.py`` (``gen_embed`` → ``gen_aligner``,
``gen_head``). transformers' ``generate(generation_mode="image")`` is *not* the reference: its image
loop has diverged from DeepSeek's before (transformers 5.2 fed the prompt again instead of the drawn
image token after step 0 — near-black images; see docs/upstream-facts.md).

What is compared, and how
-------------------------
One tiny random model (``janus_files``: the special tokens at their real Janus-Pro ids, 102400
embedding rows) is written in BOTH layouts with the same weights: the transformers-native folder
and DeepSeek's ``multi_modality`` folder (converted at load). The product loads each through
`load_janus` / `load_pipeline` and runs under the ``full`` policy. `DeepSeekReference` is built
only from the DeepSeek folder's own files — ``config.json``, ``pytorch_model.bin`` (``torch.load``)
and ``tokenizer.json`` (the ``tokenizers`` library, not transformers' tokenizer classes) — with
the language model as DeepSeek builds it (``LlamaForCausalLM(LlamaConfig(**language_config))``, used
through ``.model`` with its own cache and no position ids), and everything else written here:

1. **Ids.** The engine's BOS / pad / ``<begin_of_image>`` ids and the converted config's image id
   are the real release's numbers (100000, 100015, 100016, 100581), not just the right names.
2. **Prompt ids** (exact): the ``deepseek`` template with an empty system prompt, each message
   stripped and the whole prompt stripped, + ``<begin_of_image>``, encoded with the tokenizer's
   own BOS; Janus-Pro roles ``<|User|>`` / ``<|Assistant|>``, Janus-1.3B roles ``User`` /
   ``Assistant``; prompts with outer spaces and with special-token text inside.
3. **Unconditional rows** (exact): DeepSeek overwrites positions ``1:-1`` with ``<｜▁pad▁｜>``
   (by position, whatever ids are there); the engine's prefix embeddings equal the reference rows'.
4. **Logits per step** (teacher-forced, ≤ 1e-4): the CFG-combined logits ``u + cfg·(c − u)`` of
   every one of the 144 steps, the engine fed the reference's tokens through its own cache.
5. **Tokens** (exact) for the same seed: softmax(logits / temperature), ``torch.multinomial`` with a
   generator seeded like the engine's, next input ``gen_aligner(gen_embed(token))`` for both rows
   of a pair; at cfg 5 / temperature 1 (upstream's defaults) and cfg 2.5 / temperature 0.8.
6. **Decoded image** (≤ 1e-5 of the 0–255 range): the reference decodes its tokens with the
   LlamaGen VQ-16 decoder (``linear_core.decoders.vq16``, checked against LlamaGen upstream; Janus's
   ``gen_vision_model`` is that VQ) and DeepSeek's ``clip((dec + 1) / 2 · 255, 0, 255)``; the
   product decodes with transformers' ``vqmodel``.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from tokenizers import Tokenizer
from transformers import LlamaConfig, LlamaForCausalLM

from janus_files import GRID, write_deepseek_janus, write_native_janus
from linear_core import CacheSettings, DecodeSession, SamplingConfig
from linear_core.decoders.vq16 import load_vq16
from linear_core.session import cache_keyword
from linear_core.families.janus import load_janus
from linear_core.loading import load_pipeline

PROMPT = "a red fox in the snow"
PRO_ROLES, V1_ROLES = ("<|User|>", "<|Assistant|>"), ("User", "Assistant")
PROMPTS = [PROMPT, "  a red fox in the snow \n", "a red fox <begin_of_image> in the snow"]


def sft_prompt(conversation: list[tuple[str, str]]) -> str:
    """The ``deepseek`` conversation template with an empty system prompt: ``role: text`` + the
    separator of its turn (``\\n\\n`` after a user turn, end of sentence after an assistant turn),
    a bare ``role:`` for the empty assistant turn; messages and result stripped."""
    separators = ("\n\n", "<｜end▁of▁sentence｜>")
    text = ""
    for turn, (role, content) in enumerate(conversation):
        content = content.strip()
        text += f"{role}: {content}{separators[turn % 2]}" if content else f"{role}:"
    return text.strip()


class DeepSeekReference:
    """DeepSeek's text-to-image loop on the files of a ``multi_modality`` folder (see the module docstring)."""

    def __init__(self, folder, grid: int) -> None:
        config = json.loads((folder / "config.json").read_text())
        self.state = torch.load(folder / "pytorch_model.bin", weights_only=True)
        self.tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        language = LlamaForCausalLM(LlamaConfig(**config["language_config"]))
        prefix = "language_model."
        language.load_state_dict({k[len(prefix):]: v for k, v in self.state.items() if k.startswith(prefix)})
        self.language_model = language.eval()
        self.cache_name = cache_keyword(language.model)  # ``past_key_values`` upstream; renamed in transformers 5.24
        self.grid = grid  # the tiny analogue of img_size // patch_size = 384 // 16
        self.vq = load_vq16(folder / "pytorch_model.bin", prefix="gen_vision_model.")

    def prompt_ids(self, prompt: str, roles: tuple[str, str] = PRO_ROLES) -> list[int]:
        text = sft_prompt([(roles[0], prompt), (roles[1], "")]) + "<begin_of_image>"
        return self.tokenizer.encode(text).ids  # the tokenizer prepends BOS, as the release's does

    def rows(self, ids: list[int], parallel_size: int) -> torch.Tensor:
        """Cond and uncond rows interleaved; the uncond rows padded between the first and last id."""
        tokens = torch.tensor([ids] * (2 * parallel_size))
        tokens[1::2, 1:-1] = self.tokenizer.token_to_id("<｜▁pad▁｜>")
        return tokens

    def _mlp(self, x: torch.Tensor, first: str, second: str) -> torch.Tensor:
        """Linear, GELU, Linear (MlpProjector ``mlp_gelu`` of depth 2, and ``vision_head``)."""
        s = self.state
        hidden = F.gelu(F.linear(x, s[first + ".weight"], s[first + ".bias"]))
        return F.linear(hidden, s[second + ".weight"], s[second + ".bias"])

    def gen_img_embeds(self, codes: torch.Tensor) -> torch.Tensor:
        return self._mlp(F.embedding(codes, self.state["gen_embed.weight"]), "gen_aligner.layers.0",
                         "gen_aligner.layers.2")

    def gen_head(self, hidden: torch.Tensor) -> torch.Tensor:
        return self._mlp(hidden, "gen_head.output_mlp_projector", "gen_head.vision_head")

    @torch.inference_mode()
    def generate(self, ids: list[int], parallel_size: int, cfg_weight: float = 5.0, temperature: float = 1.0,
                 seed: int = 0, forced: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(tokens (parallel_size, N), CFG-combined logits (N, parallel_size, codes))``; ``forced``
        tokens replace the draws (teacher forcing)."""
        generator = torch.Generator().manual_seed(seed)
        embeds = self.language_model.get_input_embeddings()(self.rows(ids, parallel_size))
        tokens = torch.zeros(parallel_size, self.grid ** 2, dtype=torch.long)
        steps, cache = [], None
        for i in range(self.grid ** 2):
            out = self.language_model.model(inputs_embeds=embeds, use_cache=True, **{self.cache_name: cache})
            cache = out.past_key_values
            logits = self.gen_head(out.last_hidden_state[:, -1, :])
            cond, uncond = logits[0::2], logits[1::2]
            logits = uncond + cfg_weight * (cond - uncond)
            steps.append(logits)
            if forced is None:
                probs = torch.softmax(logits / temperature, dim=-1)
                tokens[:, i] = torch.multinomial(probs, num_samples=1, generator=generator)[:, 0]
            else:
                tokens[:, i] = forced[:, i]
            embeds = self.gen_img_embeds(tokens[:, i].repeat_interleave(2))[:, None]  # both rows of a pair
        return tokens, torch.stack(steps)

    @torch.inference_mode()
    def decode(self, tokens: torch.Tensor) -> np.ndarray:
        """``(parallel_size, H, W, 3)`` floats in [0, 255]: DeepSeek's scaling before its uint8 cast."""
        dec = self.vq.decoder(self.vq.post_quant_conv(self.vq.embed(tokens, self.grid, self.grid)))
        return np.clip((dec.permute(0, 2, 3, 1).numpy() + 1) / 2 * 255, 0, 255)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("janus-parity")
    native = write_native_janus(root / "Janus-Pro-tiny")
    deepseek = write_deepseek_janus(root / "deepseek" / "Janus-Pro-tiny")
    v1 = root / "Janus-1.3B"  # the same files under the older release's name
    v1.mkdir()
    for item in deepseek.iterdir():
        (v1 / item.name).symlink_to(item)
    return {"native": native, "deepseek": deepseek, "v1": v1}


@pytest.fixture(scope="module")
def reference(folders):
    return DeepSeekReference(folders["deepseek"], GRID)


@pytest.mark.parametrize("layout", ["native", "deepseek"])
def test_the_engine_uses_the_releases_token_ids(folders, layout):
    model = load_janus(folders[layout])
    assert (model.bos_id, model.pad_id, model.boi_id) == (100000, 100015, 100016)
    assert model.janus.config.image_token_id == 100581
    assert model.tokenizer.convert_tokens_to_ids(["<｜end▁of▁sentence｜>", "<end_of_image>"]) == [100001, 100593]
    assert model.backbone.embed_tokens.num_embeddings == 102400
    ids = model.prompt_ids(PROMPT)
    assert ids[0] == 100000 and ids[-1] == 100016 and set(model.unconditional_ids(ids)[1:-1]) == {100015}


@pytest.mark.parametrize("layout", ["native", "deepseek", "v1"])
@pytest.mark.parametrize("prompt", PROMPTS)
def test_prompt_and_unconditional_rows_are_deepseeks(folders, reference, layout, prompt):
    model = load_janus(folders[layout])
    ids = reference.prompt_ids(prompt, V1_ROLES if layout == "v1" else PRO_ROLES)
    assert model.prompt_ids(prompt) == ids
    rows = reference.rows(ids, parallel_size=2)
    assert model.unconditional_ids(ids) == rows[1].tolist()
    conditioning, guidance, _ = model.request(prompt, "", 2, 5.0)
    assert guidance.layout == "halves"  # [cond; uncond] instead of interleaved: the same rows, reordered
    embed = model.backbone.embed_tokens
    assert torch.equal(conditioning.prefix, embed(torch.cat([rows[0::2], rows[1::2]])))


@pytest.mark.parametrize("layout", ["native", "deepseek"])
@pytest.mark.parametrize("prompt", [PROMPT, PROMPTS[2]])
def test_logits_of_every_step_are_deepseeks(folders, reference, layout, prompt):
    model = load_janus(folders[layout])
    ids = reference.prompt_ids(prompt)
    tokens, _ = reference.generate(ids, parallel_size=2, seed=5)
    _, expected = reference.generate(ids, parallel_size=2, forced=tokens)
    conditioning, guidance, raster = model.request(prompt, "", 2, 5.0)
    session = DecodeSession(model, conditioning, raster, CacheSettings("full"), guidance, decode="eager")
    try:
        ours = [session.prefill()]
        ours += [session.feed(tokens[:, i:i + 1])[:, -1] for i in range(tokens.shape[1] - 1)]
    finally:
        session.close()
    ours = torch.stack(ours).cpu()
    scale = expected.abs().max()
    assert (ours - expected).abs().max() <= 1e-4 * scale, f"largest logit difference {(ours - expected).abs().max()}"


@pytest.mark.parametrize("layout", ["native", "deepseek"])
@pytest.mark.parametrize("cfg,temperature,seed", [(5.0, 1.0, 0), (2.5, 0.8, 3)])
def test_tokens_and_image_for_the_same_seed_are_deepseeks(folders, reference, layout, cfg, temperature, seed):
    pipeline = load_pipeline(folders[layout])
    ours = pipeline.generate(PROMPT, batch=2, settings=CacheSettings("full"), cfg=cfg,
                             sampling=SamplingConfig(temperature=temperature), seed=seed)
    tokens, _ = reference.generate(reference.prompt_ids(PROMPT), 2, cfg, temperature, seed)
    assert torch.equal(ours.tokens, tokens)
    image = ours.images.permute(0, 2, 3, 1).numpy() * 255
    expected = reference.decode(tokens)
    assert image.shape == expected.shape and np.abs(image - expected).max() <= 1e-5 * 255
