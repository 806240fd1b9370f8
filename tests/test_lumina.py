"""Lumina-mGPT folders through the real loaders: prompt and raster layout, logits rules, the full
policy against transformers' own Chameleon decoding step by step, eviction exactness with
end-of-line lines, formats, errors and the CLI."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import DEVICE
from lumina_files import HEADS, KV_HEADS, RESOLUTION, reference_model, write_lumina
from linear_core import CacheSettings, DecodeSession, SamplingConfig
from linear_core.families.lumina import LuminaImageModel, load_lumina
from linear_core.archs import get_arch
from linear_core.session import planned_cache_bytes
from linear_core.fidelity import fidelity_report
from linear_core.guidance import Guidance
from linear_core.loading import load_pipeline
from test_exactness import assert_line_ends_never_evicted, assert_matches_masked_reference
import upstream_lumina as upstream
from chameleon_files import reference_decode, tiny_vqgan_state

ROOT = Path(__file__).resolve().parents[1]
PROMPT = "a red fox in the snow"
GRID = RESOLUTION // 16


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return write_lumina(tmp_path_factory.mktemp("lumina") / f"Lumina-mGPT-tiny-{RESOLUTION}")


@pytest.fixture(scope="module")
def model(folder):
    return load_lumina(folder, dtype=torch.float32, device=DEVICE)


def test_prompt_ids_are_upstreams_conversation_then_the_image_start(model):
    ids = model.prompt_ids(PROMPT)
    assert ids == upstream.conversation_ids(model.tokenizer, PROMPT, RESOLUTION, RESOLUTION) + \
        upstream.image_start_ids(model.tokenizer, RESOLUTION, RESOLUTION)
    # ids, not names: BOS 0, end of turn 8710, <racm3:break> 8197, 128 px = 4 x 32 -> 8804 + 4
    assert ids[0] == 0 and ids[-4:] == [8710, 8197, 8808, 8808]
    assert model.tokenizer.decode(ids[1:-4]) == upstream_request(PROMPT)


def test_the_prompt_is_not_stripped_as_upstream(model):
    padded = f"  {PROMPT} "
    ids = model.prompt_ids(padded)
    assert ids != model.prompt_ids(PROMPT)
    assert ids == upstream.conversation_ids(model.tokenizer, padded, RESOLUTION, RESOLUTION) + \
        upstream.image_start_ids(model.tokenizer, RESOLUTION, RESOLUTION)
    assert model.tokenizer.decode(ids[1:-4]) == upstream_request(padded)


def test_the_rules_use_the_release_ids(model):
    """The end-of-line token is the one upstream names <reserved08799>, id 8803 (the token named
    <reserved08803> is 8807); image codes are exactly 4…8195; size tokens are 8804 + pixels / 32."""
    assert (model.eol_id, model.boi_id) == (8803, 8197)
    assert model.tokenizer.convert_tokens_to_ids("<reserved08803>") == 8807
    assert model.image_vocab.nonzero().flatten().tolist() == list(range(4, 8196))
    assert model.rules.line_end_token == 8803
    for pixels, size_id in ((512, 8820), (768, 8828), (1024, 8836)):
        assert LuminaImageModel(model.chameleon, model.tokenizer, None, pixels).size_id == size_id


def upstream_request(prompt: str) -> str:
    return f"Generate an image of {RESOLUTION}x{RESOLUTION} according to the following prompt:\n{prompt}"


@pytest.mark.parametrize("resolution,tokens", [(512, 1056), (768, 2352), (1024, 4160)])
def test_rows_end_with_an_end_of_line_token_at_every_resolution(model, resolution, tokens):
    sized = LuminaImageModel(model.chameleon, model.tokenizer, None, resolution)
    raster = sized.raster
    assert raster.image_tokens == tokens and raster.line_tokens == resolution // 16 + 1
    ends = [i for i in range(raster.image_tokens) if raster.is_line_end(i)]
    assert ends == list(range(resolution // 16, tokens, resolution // 16 + 1))
    assert model.tokenizer.convert_ids_to_tokens(sized.size_id) == f"<reserved{8800 + resolution // 32:05d}>"


def test_unsupported_resolutions_are_explained(model):
    for pixels in (100, 0):
        with pytest.raises(ValueError, match="multiple of 32"):
            LuminaImageModel(model.chameleon, model.tokenizer, None, pixels)
    with pytest.raises(ValueError, match="no <reserved08900> token"):  # 3200 px: past the fixture's reserved block
        LuminaImageModel(model.chameleon, model.tokenizer, None, 3200)


def test_logits_rules_force_line_ends_and_keep_image_codes_inside_rows(model):
    logits = torch.randn(2, model.vocab)
    forced = model.rules.apply(logits, True)  # a row's end
    assert torch.equal(forced.argmax(-1), torch.full((2,), model.eol_id))
    assert torch.isinf(forced).sum() == 2 * (model.vocab - 1)
    inside = model.rules.apply(logits, False)
    allowed = torch.isfinite(inside[0]).nonzero().flatten().tolist()
    image_ids = sorted(i for name, i in model.config.vocabulary_map.items() if name.startswith("IMGIMG"))
    assert allowed == image_ids


@pytest.mark.parametrize("cfg,top_k", [(4.0, 2000), (2.5, 5), (1.0, 2000)])
def test_full_policy_gives_upstreams_tokens_and_image(folder, cfg, top_k):
    """The engine under ``full`` against the re-implementation of Lumina-mGPT's own sampling loop
    (tests/upstream_lumina.py) on transformers' Chameleon with the same weights and seed: every
    token, the end-of-line id at each row end, the forced end of image, and the decoded image
    through the independent float64 VQGAN decoder."""
    pipeline = load_pipeline(folder, dtype="fp32", device=DEVICE)
    ours = pipeline.generate(PROMPT, batch=2, settings=CacheSettings("full"), cfg=cfg,
                             sampling=SamplingConfig(temperature=1.0, top_k=top_k), seed=5)
    model = reference_model().to(DEVICE)
    theirs = upstream.generate(model, pipeline.model.tokenizer, PROMPT, RESOLUTION, 2, cfg, top_k,
                               torch.Generator(DEVICE).manual_seed(5)).cpu()
    n = GRID * (GRID + 1)
    assert theirs.shape[1] == n + 1 and bool((theirs[:, -1] == 8196).all())
    assert torch.equal(ours.tokens, theirs[:, :n])
    assert bool((ours.tokens[:, GRID::GRID + 1] == 8803).all())
    codes = upstream.image_codes(theirs, model.config.vocabulary_map, RESOLUTION)
    pixels = reference_decode(tiny_vqgan_state(16, 8192, seed=0), codes, GRID, GRID)
    assert torch.allclose(ours.images.double(), pixels, atol=1e-4)


def test_linear_run_keeps_the_layout_and_saves_memory(folder):
    pipeline = load_pipeline(folder, dtype="fp32", device=DEVICE)
    batch = pipeline.generate(PROMPT, batch=2, settings=CacheSettings("linear", "1/4", anchors=2, recent_lines=1), seed=1)
    tokens, model = batch.tokens, pipeline.model
    line_ends = tokens[:, GRID::GRID + 1]
    assert line_ends.shape[1] == GRID and bool((line_ends == model.eol_id).all())
    codes = tokens.view(2, GRID, GRID + 1)[:, :, :GRID]
    assert bool(model.image_vocab[codes].all())
    # every row (the unconditional ones left-padded to the prompt's length) holds prefix + B + W' slots
    assert batch.stats.kv_saving == pytest.approx(1 - batch.layout.capacity / batch.layout.full_length)
    assert batch.stats.kv_saving > 0.4 and batch.stats.compressions > 0
    assert batch.images.shape[0] == 2 and batch.images.shape[-1] == batch.images.shape[-2]


@pytest.mark.parametrize("policy,chunk,keep_ends,negative", [("linear", 1, False, ""), ("linear", 3, True, ""),
                                                             ("h2o", 1, False, "blurry")])
def test_logits_equal_masked_full_forward_with_end_of_line_lines(model, policy, chunk, keep_ends, negative):
    conditioning, guidance, layout = model.request(PROMPT, negative, 2, 4.0)
    assert layout.eol and guidance.layout == "separate"
    settings = CacheSettings(policy, budget="3 lines", anchors=2, recent_lines=1, keep_line_ends=keep_ends)
    tokens = torch.randint(0, model.vocab, (2, layout.image_tokens), generator=torch.Generator().manual_seed(3))
    assert_matches_masked_reference(model, conditioning, layout, settings, guidance, tokens.to(DEVICE), chunk)


def test_kept_line_ends_are_never_evicted(model):
    assert_line_ends_never_evicted(model, *model.request(PROMPT, "", 1, 4.0))


def test_shared_qk_norm_rows_become_per_head_and_shards_load(tmp_path, folder):
    sharded = load_lumina(write_lumina(tmp_path / "Lumina-mGPT-7B-768", shards=True), resolution=RESOLUTION,
                          dtype=torch.float32)
    attention = sharded.backbone.layers[0].self_attn
    assert attention.q_norm.weight.shape == (HEADS, 16) and attention.k_norm.weight.shape == (KV_HEADS, 16)
    assert bool((attention.q_norm.weight == attention.q_norm.weight[:1]).all())
    assert sharded.resolution == RESOLUTION  # given beats the name's 768
    reference = reference_model()
    ids = torch.tensor([sharded.prompt_ids(PROMPT)])
    with torch.inference_mode():
        ours = sharded.image_logits(sharded.backbone(input_ids=ids).last_hidden_state)
        theirs = reference.lm_head(reference.model(input_ids=ids).last_hidden_state)
    assert torch.allclose(ours, theirs, atol=1e-5)
    half = load_pipeline(folder, dtype="bf16", device=DEVICE)
    assert half.model.backbone.embed_tokens.weight.dtype == torch.bfloat16
    assert half.generate(PROMPT, batch=1, settings=CacheSettings("linear", "1/4", anchors=2, recent_lines=1),
                         seed=2).images.isfinite().all()


def test_a_layer_offloaded_to_disk_gives_the_same_tokens(tmp_path, folder):
    placement = {"model.embed_tokens": DEVICE, "model.norm": DEVICE, "model.rotary_emb": DEVICE, "lm_head": DEVICE,
                 "model.layers.0": DEVICE, "model.layers.1": "disk"}
    spread = load_pipeline(folder, dtype="fp32", device_map=placement, offload_folder=tmp_path)
    assert {p.device.type for p in spread.model.backbone.layers[1].parameters()} == {"meta"}
    whole = load_pipeline(folder, dtype="fp32", device=DEVICE)
    settings = CacheSettings("linear", "1/4", anchors=2, recent_lines=1)
    runs = [p.generate(PROMPT, batch=1, settings=settings, seed=4).tokens for p in (spread, whole)]
    assert torch.equal(*runs)


def test_wrong_or_incomplete_folders_are_explained(tmp_path, folder):
    bare = write_lumina(tmp_path / "Lumina-mGPT-7B-512", vqgan=False)
    with pytest.raises(ValueError, match="No Chameleon VQGAN found .*tokenizer/vqgan.ckpt and vqgan.yaml"):
        load_lumina(bare)
    with pytest.raises(ValueError, match="Cannot tell the resolution"):
        load_lumina(write_lumina(tmp_path / "lumina-no-size"))
    no_tokenizer = write_lumina(tmp_path / "Lumina-mGPT-7B-768")
    (no_tokenizer / "tokenizer.json").unlink()
    (no_tokenizer / "tokenizer_config.json").unlink()
    with pytest.raises(ValueError, match="no usable tokenizer"):
        load_lumina(no_tokenizer)
    other = tmp_path / "not-lumina"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(ValueError, match="not a Lumina-mGPT folder"):
        load_lumina(other)


def test_cli_generates_with_a_vqgan_and_a_resolution(tmp_path, folder):
    out = tmp_path / "fox.png"
    result = subprocess.run([sys.executable, "-m", "linear_core", "generate", "--model", str(folder), "--vqgan",
                             str(folder / "vqgan"), "--prompt", PROMPT, "--resolution", str(RESOLUTION),
                             "--budget", "1/4", "--anchors", "2", "--recent-lines", "1", "--keep-line-ends",
                             "--out", str(out), "--json"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["family"] == "lumina-mgpt" and report["image_tokens"] == GRID * (GRID + 1)
    assert report["kv_saving"] > 0.4 and out.is_file()  # tiny layout: 30 prompt tokens beside 72 image tokens


def test_fidelity_compares_policies_on_prompts_under_the_logits_rules(folder):
    pipeline = load_pipeline(folder, dtype="fp32", device=DEVICE)
    report = fidelity_report(pipeline, ("full", "linear"), "3 lines", sequences=2, batch=1,
                             base=CacheSettings(anchors=2, recent_lines=1), prompts=(PROMPT, "a blue sky"))
    full, linear = report["results"]["full"], report["results"]["linear"]
    assert (full["kl_mean"], full["top1_agreement"], full["coupled_agreement"]) == (0.0, 1.0, 1.0)
    assert linear["kl_mean"] > 0 and linear["coupled_agreement"] < 1
    assert report["prompts"] == [PROMPT, "a blue sky"] and len(linear["kl_per_line"]) == GRID
    with pytest.raises(ValueError, match="draws from text"):
        fidelity_report(pipeline, ("linear",), "3 lines", sequences=1, batch=1)


def test_budget_too_small_for_kept_line_ends_names_them(model):
    conditioning, guidance, layout = model.request(PROMPT, "", 1, 4.0)
    settings = CacheSettings("linear", budget="1 lines", anchors=2, recent_lines=1, keep_line_ends=True)
    with pytest.raises(ValueError, match=r"\+ 7 older end-of-line tokens\); raise the budget"):
        DecodeSession(model, conditioning, layout, settings, guidance)


@pytest.mark.parametrize("arch,batch", [("lumina-mgpt-7b-768", 12), ("lumina-mgpt-7b-1024", 8)])
def test_7b_in_bf16_with_an_eighth_of_the_cache_fits_a_24_gib_card_where_the_full_cache_does_not(arch, batch):
    """Exact planned bytes of the paper's batch sizes, on a model built on the meta device."""
    shape = get_arch(arch)
    model = shape.build(dtype=torch.bfloat16, device="meta")
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    assert 13.0 * 2 ** 30 < weights < 13.5 * 2 ** 30  # Chameleon-7B in bf16
    conditioning = model.conditioning(torch.arange(batch, device="meta"), Guidance(4.0, "separate"))
    rows, prefix_len = conditioning.batched()[0].shape[:2]  # [cond; uncond], the uncond rows left-padded
    assert rows == 2 * batch

    def cache(settings: CacheSettings) -> int:
        return planned_cache_bytes(model, shape.layout().with_prefix(prefix_len), settings, rows)

    card = 24 * 2 ** 30
    assert weights + cache(CacheSettings("full")) > card > weights + cache(CacheSettings("linear", "1/8")) + 2 ** 30


def test_omni_folders_sample_with_their_own_defaults(tmp_path, folder):
    omni = load_pipeline(write_lumina(tmp_path / "Lumina-mGPT-7B-768-Omni"), grid=GRID, device=DEVICE)
    assert (omni.defaults.cfg, omni.defaults.top_k) == (1.0, 200) and omni.model.resolution == RESOLUTION
    plain = load_pipeline(folder, device=DEVICE)
    assert (plain.defaults.cfg, plain.defaults.top_k) == (4.0, 2000)
