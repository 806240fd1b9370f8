"""Emu3-Gen folders through the real loader: the prompt against the reference template, rows and
logits rules, the full policy against transformers' own ``generate`` with the reference's logits
processor, eviction exactness and the static step on end-of-line lines, layouts, errors, the CLI
and the planned cache of the real model."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import DEVICE
from emu3_files import BOI, EOF, EOI, EOL, RESOLUTION, WRAPPER, reference_model, write_emu3
from linear_core import CacheSettings, SamplingConfig
from linear_core.archs import get_arch
from linear_core.session import planned_cache_bytes
from linear_core.families.emu3 import NEGATIVE_PROMPT, Emu3ImageModel, load_emu3
from linear_core.guidance import Guidance
from linear_core.loading import load_pipeline
from linear_core.policies import POLICIES
from test_exactness import assert_line_ends_never_evicted, assert_matches_masked_reference
from test_static_step import assert_static_equals_eager

ROOT = Path(__file__).resolve().parents[1]
#: transformers 4.x (4.56 on) runs Emu3 here too, but its generate lays out the image part differently
#: (a shorter answer, the closing tokens sampled rather than forced: measured on 4.56.2), so the
#: parity with transformers' own generate is checked on 5.x only
TRANSFORMERS_4 = int(__import__("transformers").__version__.split(".")[0]) < 5
PROMPT = "a red fox in the snow"
GRID = RESOLUTION // 8


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return write_emu3(tmp_path_factory.mktemp("emu3") / "Emu3-Gen-hf", shards=True)


@pytest.fixture(scope="module")
def pipeline(folder):
    return load_pipeline(folder, dtype="fp32", device=DEVICE, resolution=RESOLUTION)


@pytest.fixture(scope="module")
def model(pipeline):
    return pipeline.model


def reference_ids(tokenizer, text: str, height: int, width: int) -> list[int]:
    """The reference template written out: BOS, the text, image start, ``H*W`` in codes, the wrapper."""
    return tokenizer(f"{tokenizer.bos_token}{text}{BOI}{height}*{width}{WRAPPER}", add_special_tokens=False).input_ids


def test_prompt_is_the_reference_template_with_the_size(model):
    tokenizer = model.tokenizer
    assert model.prompt_ids(PROMPT) == reference_ids(tokenizer, PROMPT, GRID, GRID)
    names = tokenizer.convert_ids_to_tokens(model.prompt_ids(PROMPT))
    assert names[0] == tokenizer.bos_token and names[-5:] == [BOI, "8", "*", "8", WRAPPER]
    sized = Emu3ImageModel(model.emu3, model.processor, 720)  # the reference's 518400-pixel area: 90 x 90 codes
    assert sized.prompt_ids(PROMPT) == reference_ids(tokenizer, PROMPT, 90, 90)
    conditioning, guidance, layout = model.request(PROMPT, "", 2, 3.0)
    negative = reference_ids(tokenizer, NEGATIVE_PROMPT, GRID, GRID)
    assert guidance.layout == "separate" and conditioning.uncond_prefix.shape[:2] == (2, len(negative))
    embeds = model.backbone.embed_tokens(torch.tensor(negative, device=DEVICE))
    assert torch.equal(conditioning.uncond_prefix[0], embeds) and layout.prefix_len == len(model.prompt_ids(PROMPT))


def test_rows_end_with_the_end_of_line_token_and_rules_keep_codes_inside(model):
    sized = Emu3ImageModel(model.emu3, model.processor, 720)
    raster = sized.raster
    assert (raster.grid_h, raster.line_tokens, raster.image_tokens) == (90, 91, 8190)
    assert [i for i in range(raster.image_tokens) if raster.is_line_end(i)] == list(range(90, 8190, 91))
    assert model.tokenizer.convert_ids_to_tokens([model.eol_id, *model.closing_ids]) == [EOL, EOF, EOI,
                                                                                          model.tokenizer.eos_token]
    logits = torch.randn(2, model.vocab)
    forced = model.rules.apply(logits, True)
    assert torch.equal(forced.argmax(-1), torch.full((2,), model.eol_id)) and torch.isinf(forced).sum() == 2 * (model.vocab - 1)
    inside = torch.isfinite(model.rules.apply(logits, False)[0]).nonzero().flatten().tolist()
    assert inside == model.emu3.vocabulary_mapping.image_tokens
    with pytest.raises(ValueError, match="multiple of 8"):
        Emu3ImageModel(model.emu3, model.processor, 100)


def transformers_generate(model, batch: int, cfg: float, top_k: int, seed: int, negative: str):
    """transformers' own generate on the same weights: the processor's inputs, the negative prompt as
    ``negative_prompt_ids`` (unbatched CFG), the ``prefix_allowed_tokens_fn`` of transformers' Emu3
    docs, sampling with the global generator. Returns the tokens after the prompt (up to end of
    text), the reference model and the processor."""
    from transformers import GenerationConfig

    reference = reference_model().to(DEVICE)
    processor, tokenizer = model.processor, model.tokenizer
    area = RESOLUTION * RESOLUTION
    inputs = processor(text=[PROMPT] * batch, return_for_image_generation=True, image_area=area, return_tensors="pt")
    neg = processor(text=[negative] * batch, return_for_image_generation=True, image_area=area, return_tensors="pt")
    height, width = inputs.pop("image_sizes")[0]
    visual = reference.vocabulary_mapping.image_tokens
    eol = tokenizer.convert_tokens_to_ids(EOL)

    def prefix_allowed_tokens_fn(batch_id, input_ids):
        offset = input_ids.shape[0] - torch.nonzero(input_ids == tokenizer.image_wrapper_token_id)[0, 0]
        if offset % (width + 1) == 0:
            return [eol]
        end = (width + 1) * height
        ends = {end + 1: tokenizer.eof_token_id, end + 2: tokenizer.eoi_token_id, end + 3: tokenizer.eos_token_id}
        return [ends[int(offset)]] if int(offset) in ends else visual

    config = GenerationConfig(do_sample=True, top_k=top_k, temperature=1.0, top_p=1.0, guidance_scale=cfg,
                              max_new_tokens=height * (width + 1) + 3, eos_token_id=tokenizer.eos_token_id,
                              pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(seed)
    out = reference.generate(**inputs.to(DEVICE), generation_config=config, prefix_allowed_tokens_fn=prefix_allowed_tokens_fn,
                             negative_prompt_ids=neg.input_ids.to(DEVICE),
                             negative_prompt_attention_mask=neg.attention_mask.to(DEVICE))
    return out[:, inputs.input_ids.shape[1]:].cpu(), reference, processor


@pytest.mark.skipif(TRANSFORMERS_4, reason="transformers 4.x's Emu3 generate is not the reference (see TRANSFORMERS_4)")
@pytest.mark.parametrize("cfg,top_k,negative,decode", [(3.0, 2048, "", "auto"), (2.0, 5, "blurry", "eager")])
def test_full_policy_gives_transformers_generate_tokens_and_images(pipeline, cfg, top_k, negative, decode):
    ours = pipeline.generate(PROMPT, negative, batch=2, settings=CacheSettings("full"), cfg=cfg,
                             sampling=SamplingConfig(temperature=1.0, top_k=top_k), seed=5, decode=decode)
    theirs, reference, processor = transformers_generate(pipeline.model, 2, cfg, top_k, 5, negative or NEGATIVE_PROMPT)
    assert ours.stats.decode == ("eager" if decode == "eager" else "static")
    assert torch.equal(ours.tokens, theirs)  # raster, end of frame, end of image, end of text
    pixels = reference.decode_image_tokens(image_tokens=theirs.to(DEVICE), height=GRID, width=GRID)
    pictures = processor.postprocess(list(pixels.float().cpu()), return_tensors="PIL.Image.Image")["pixel_values"]
    expected = torch.stack([torch.from_numpy(np.array(picture)).permute(2, 0, 1) for picture in pictures])
    assert (ours.images * 255 - expected.float()).abs().max() <= 1.0  # the processor truncates to uint8


def test_linear_run_keeps_rows_codes_and_the_closing_tokens(pipeline, model):
    batch = pipeline.generate(PROMPT, batch=2, settings=CacheSettings("linear", "1/4", anchors=2, recent_lines=1), seed=1)
    raster = batch.tokens[:, :GRID * (GRID + 1)].view(2, GRID, GRID + 1)
    assert bool((raster[:, :, -1] == model.eol_id).all()) and bool(model.image_vocab[raster[:, :, :-1]].all())
    assert batch.tokens[:, GRID * (GRID + 1):].tolist() == [list(model.closing_ids)] * 2
    # every row holds the longer prefix (the negative prompt; the prompt rows are left-padded) + B + W'
    layout = batch.layout.with_prefix(len(model.prompt_ids(NEGATIVE_PROMPT)))
    assert layout.prefix_len > len(model.prompt_ids(PROMPT))
    assert batch.stats.kv_saving == pytest.approx(1 - layout.capacity / layout.full_length)
    assert batch.stats.compressions > 0 and batch.images.shape == (2, 3, RESOLUTION, RESOLUTION)


@pytest.mark.parametrize("policy", sorted(POLICIES))
def test_every_policy_draws_whole_rows(pipeline, model, policy):
    settings = CacheSettings(policy, "3 lines", anchors=2, recent_lines=1, sinks=2)
    batch = pipeline.generate(PROMPT, batch=1, settings=settings, seed=3)
    raster = batch.tokens[:, :GRID * (GRID + 1)].view(GRID, GRID + 1)
    assert bool((raster[:, -1] == model.eol_id).all()) and bool(model.image_vocab[raster[:, :-1]].all())
    assert batch.stats.compressions == (0 if policy == "full" else GRID - 4)


@pytest.mark.parametrize("policy,chunk,keep_ends,negative", [("linear", 1, False, ""), ("linear", 3, True, "blurry"),
                                                             ("h2o", 1, False, "")])
def test_logits_equal_masked_full_forward_with_end_of_line_lines(model, policy, chunk, keep_ends, negative):
    conditioning, guidance, layout = model.request(PROMPT, negative, 2, 3.0)
    settings = CacheSettings(policy, budget="3 lines", anchors=2, recent_lines=1, keep_line_ends=keep_ends)
    tokens = torch.randint(0, model.vocab, (2, layout.image_tokens), generator=torch.Generator().manual_seed(3))
    assert_matches_masked_reference(model, conditioning, layout, settings, guidance, tokens.to(DEVICE), chunk)


def test_kept_line_ends_are_never_evicted(model):
    assert_line_ends_never_evicted(model, *model.request(PROMPT, "", 1, 3.0))


def test_static_logits_equal_eager_with_grouped_query_attention(model):
    conditioning, guidance, layout = model.request(PROMPT, "", 2, 3.0)
    tokens = torch.randint(0, model.vocab, (2, layout.image_tokens), generator=torch.Generator().manual_seed(5))
    assert model.config.num_key_value_heads < model.config.num_attention_heads
    assert_static_equals_eager(model, conditioning, layout, CacheSettings("linear", "3 lines", anchors=2,
                               recent_lines=1), guidance, tokens.to(DEVICE))


def test_both_key_layouts_load_without_the_encoder_and_match_transformers(tmp_path, model):
    renamed = load_emu3(write_emu3(tmp_path / "Emu3-Gen-64", module_keys=True), dtype=torch.float32)
    assert renamed.resolution == 64 and renamed.emu3.model.vqmodel.encoder is None
    reference = reference_model()
    ids = torch.tensor([model.prompt_ids(PROMPT)])
    with torch.inference_mode():
        expected = reference(input_ids=ids).logits
        for loaded in (model, renamed):
            got = loaded.image_logits(loaded.backbone(input_ids=ids.to(DEVICE)).last_hidden_state)
            assert torch.allclose(got.cpu(), expected, atol=1e-5)
    assert not any(key.startswith("model.vqmodel.encoder.") for key in model.emu3.state_dict())


def test_bf16_and_a_layer_offloaded_to_disk(tmp_path, folder, pipeline):
    half = load_pipeline(folder, dtype="bf16", device=DEVICE, resolution=RESOLUTION)
    assert half.model.backbone.embed_tokens.weight.dtype == torch.bfloat16
    settings = CacheSettings("linear", "1/4", anchors=2, recent_lines=1)
    assert half.generate(PROMPT, batch=1, settings=settings, seed=2).images.isfinite().all()
    text = "model.text_model."
    placement = {text + "embed_tokens": DEVICE, text + "norm": DEVICE, text + "rotary_emb": DEVICE, "lm_head": DEVICE,
                 "model.vqmodel": DEVICE, text + "layers.0": DEVICE, text + "layers.1": "disk"}
    spread = load_pipeline(folder, dtype="fp32", device_map=placement, offload_folder=tmp_path, resolution=RESOLUTION)
    assert {p.device.type for p in spread.model.backbone.layers[1].parameters()} == {"meta"}
    runs = [p.generate(PROMPT, batch=1, settings=settings, seed=4) for p in (spread, pipeline)]
    assert torch.equal(runs[0].tokens, runs[1].tokens) and runs[0].stats.decode == "eager"


def test_wrong_or_incomplete_folders_are_explained(tmp_path, folder):
    chat = write_emu3(tmp_path / "Emu3-Chat-hf")
    with pytest.raises(ValueError, match="Emu3-Chat, which writes text about images; .*BAAI/Emu3-Gen-hf"):
        load_pipeline(chat)
    no_tokenizer = write_emu3(tmp_path / "Emu3-Gen-no-tokenizer", processor=False)
    with pytest.raises(ValueError, match="no usable tokenizer: none of tokenizer.json"):
        load_emu3(no_tokenizer)
    (no_tokenizer / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "GPT2Tokenizer"}))
    # 5.x builds an (empty) tokenizer from that config alone, so the missing processor is named; 4.x
    # looks for the vocabulary files the config implies, so the tokenizer is
    missing = ("no usable tokenizer .*tokenizer_config.json" if TRANSFORMERS_4
               else "no usable Emu3 processor: processor_config.json")
    with pytest.raises(ValueError, match=missing):
        load_emu3(no_tokenizer)
    original = tmp_path / "Emu3-Gen"
    original.mkdir()
    (original / "config.json").write_text(json.dumps({"model_type": "Emu3", "architectures": ["Emu3ForCausalLM"]}))
    with pytest.raises(ValueError, match="original Emu3 release .*BAAI/Emu3-Gen-hf"):
        load_pipeline(original)
    other = tmp_path / "not-emu3"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(ValueError, match="not a Emu3-Gen folder .*model_type 'llama'; expected 'emu3'"):
        load_emu3(other)
    with pytest.raises(ValueError, match="multiple of 8"):
        load_emu3(folder, resolution=100)


def test_cli_generates_from_a_folder(tmp_path, folder):
    out = tmp_path / "fox.png"
    result = subprocess.run([sys.executable, "-m", "linear_core", "generate", "--model", str(folder), "--prompt", PROMPT,
                             "--resolution", str(RESOLUTION), "--budget", "1/4", "--anchors", "2", "--recent-lines",
                             "1", "--keep-line-ends", "--batch", "2", "--out", str(out), "--json"],
                            cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["family"] == "emu3-gen" and report["image_tokens"] == GRID * (GRID + 1)
    assert (report["cfg"], report["top_k"]) == (3.0, 2048) and report["kv_saving"] > 0.3 and out.is_file()


def test_8b_in_bf16_on_a_24_gib_card_fits_far_more_images_with_an_eighth_of_the_cache():
    """Exact planned bytes at the real layout (720 px, 8,190 raster tokens), the model on the meta
    device; the VQ-VAE decoder at transformers' default (Emu3's) size and the logits work counted."""
    from accelerate import init_empty_weights
    from transformers import Emu3VQVAE, Emu3VQVAEConfig

    from linear_core.pipeline import LOGIT_WORK_BYTES

    shape = get_arch("emu3-gen")
    model = shape.build(dtype=torch.bfloat16, device="meta")
    with init_empty_weights():
        vq = Emu3VQVAE(Emu3VQVAEConfig())
    vq.encoder = vq.quant_conv = None
    weights = sum(p.numel() * 2 for module in (model, vq) for p in module.parameters())
    assert 16 * 2 ** 30 < weights < 16.3 * 2 ** 30  # Emu3-Gen's decoder, head and VQ decoder in bf16

    def total(batch: int, settings: CacheSettings) -> int:
        conditioning = model.conditioning(torch.arange(batch, device="meta"), Guidance(3.0, "separate"))
        rows, prefix_len = conditioning.batched()[0].shape[:2]
        cache = planned_cache_bytes(model, shape.layout().with_prefix(prefix_len), settings, rows)
        return weights + cache + rows * shape.vocab * LOGIT_WORK_BYTES

    card = 24 * 2 ** 30
    assert total(3, CacheSettings("full")) < card < total(4, CacheSettings("full"))
    assert total(16, CacheSettings("linear", "1/8")) + 2 ** 30 < card
    assert total(1, CacheSettings("full")) - weights > 6 * (total(1, CacheSettings("linear", "1/8")) - weights)


def test_fidelity_compares_policies_on_prompts_under_the_rules(pipeline):
    from linear_core.fidelity import fidelity_report

    report = fidelity_report(pipeline, ("full", "linear"), "3 lines", sequences=2, batch=1,
                             base=CacheSettings(anchors=2, recent_lines=1), prompts=(PROMPT, "a blurry fox"))
    full, linear = report["results"]["full"], report["results"]["linear"]
    assert (full["kl_mean"], full["top1_agreement"], full["coupled_agreement"]) == (0.0, 1.0, 1.0)
    assert linear["kl_mean"] > 0 and len(linear["kl_per_line"]) == GRID
