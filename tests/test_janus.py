"""Janus-Pro folders in both layouts through the real loaders: prompt formatting, token-for-token
equality with transformers' own image generation, eviction exactness, formats and errors."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer, JanusForConditionalGeneration

from conftest import DEVICE
from janus_files import write_deepseek_janus, write_native_janus
from linear_core import CacheSettings, DecodeSession, SamplingConfig
from linear_core.adapter import CacheGeometry
from linear_core.families.janus import PRO_TEMPLATE, load_janus
from linear_core.loading import load_pipeline
from linear_core.text_pipeline import TextToImagePipeline
from test_exactness import assert_matches_masked_reference

ROOT = Path(__file__).resolve().parents[1]
PROMPT = "a red fox in the snow"


@pytest.fixture(scope="module")
def native(tmp_path_factory):
    return write_native_janus(tmp_path_factory.mktemp("janus") / "Janus-Pro-tiny")


@pytest.fixture(scope="module")
def deepseek(tmp_path_factory):
    return write_deepseek_janus(tmp_path_factory.mktemp("deepseek") / "Janus-Pro-tiny")


def test_prompt_is_the_reference_chat_turn_with_begin_of_image(native):
    model = load_janus(native)
    tokenizer = AutoTokenizer.from_pretrained(native)
    ids = model.prompt_ids(PROMPT)
    text = "<|User|>: a red fox in the snow\n\n<|Assistant|>:<begin_of_image>"
    assert PRO_TEMPLATE.format(prompt=PROMPT) + "<begin_of_image>" == text
    assert ids == tokenizer(text).input_ids  # the tokenizer's own BOS, then the turn, then BOI
    assert ids[0] == tokenizer.bos_token_id and ids[-1] == tokenizer.convert_tokens_to_ids("<begin_of_image>")
    uncond = model.unconditional_ids(ids)
    pad = tokenizer.convert_tokens_to_ids("<｜▁pad▁｜>")
    assert uncond[0] == ids[0] and uncond[-1] == ids[-1] and set(uncond[1:-1]) == {pad}


@pytest.mark.parametrize("batch,cfg,top_k", [(1, 5.0, 0), (3, 2.5, 0), (2, 5.0, 50)])
def test_full_policy_gives_transformers_own_tokens(native, batch, cfg, top_k):
    """Users lose nothing by switching: `generate(generation_mode="image")` draws the same tokens
    (top-k 50 is transformers' silent default there; DeepSeek's reference and ours use none)."""
    pipeline = load_pipeline(native, device=DEVICE)
    assert isinstance(pipeline, TextToImagePipeline)
    ours = pipeline.generate(PROMPT, batch=batch, settings=CacheSettings("full"), cfg=cfg,
                             sampling=SamplingConfig(temperature=1.0, top_k=top_k), seed=7)
    model = JanusForConditionalGeneration.from_pretrained(native).to(DEVICE).eval()
    janus = pipeline.model
    ids = torch.tensor([janus.prompt_ids(PROMPT)], device=DEVICE)
    torch.manual_seed(7)
    theirs = model.generate(ids, attention_mask=torch.ones_like(ids), generation_mode="image", do_sample=True,
                            guidance_scale=cfg, num_return_sequences=batch, bos_token_id=janus.bos_id,
                            pad_token_id=janus.pad_id, generation_kwargs={"boi_token_id": janus.boi_id},
                            **({} if top_k == 50 else {"top_k": top_k}))
    assert torch.equal(ours.tokens, theirs.cpu())
    assert ours.images.shape[:2] == (batch, 3) and 0 <= ours.images.min() and ours.images.max() <= 1
    decoded = ((model.decode_image_tokens(theirs).float() + 1) / 2).clamp(0, 1).permute(0, 3, 1, 2).cpu()
    assert torch.allclose(ours.images, decoded, atol=1e-5)


@pytest.mark.parametrize("policy,chunk,negative", [("linear", 1, ""), ("h2o", 3, ""), ("linear", 2, "blurry")])
def test_logits_equal_masked_full_forward(native, policy, chunk, negative):
    """Eviction exactness on this family: every logit equals a full forward with the evicted keys
    masked, with the padded unconditional prompt (halves) and with a negative prompt (separate)."""
    model = load_janus(native, device=DEVICE)
    conditioning, guidance, layout = model.request(PROMPT, negative, 2, 4.0)
    assert guidance.layout == ("separate" if negative else "halves")
    settings = CacheSettings(policy, budget="2 lines", anchors=2, recent_lines=1)
    tokens = torch.randint(0, model.vocab, (2, layout.image_tokens), generator=torch.Generator().manual_seed(3))
    assert_matches_masked_reference(model, conditioning, layout, settings, guidance, tokens.to(DEVICE), chunk)


@pytest.mark.parametrize("shards", [False, True])
def test_deepseek_release_converts_to_the_native_model(tmp_path, native, shards):
    original = write_deepseek_janus(tmp_path / "Janus-Pro-tiny", shards=shards)
    assert json.loads((original / "config.json").read_text())["model_type"] == "multi_modality"
    converted, reference = load_janus(original), load_janus(native)
    theirs = reference.janus.state_dict()
    ours = converted.janus.state_dict()
    assert set(ours) == set(theirs)
    assert all(torch.equal(ours[k], theirs[k]) for k in theirs)
    assert converted.prompt_ids(PROMPT) == reference.prompt_ids(PROMPT)


def test_sharded_native_folder_and_dtypes(tmp_path):
    folder = write_native_janus(tmp_path / "Janus-Pro-sharded", shards=True)
    assert (folder / "model.safetensors.index.json").is_file()
    model = load_janus(folder, dtype=torch.bfloat16)
    assert model.backbone.embed_tokens.weight.dtype == torch.bfloat16
    conditioning, guidance, layout = model.request(PROMPT, "", 1, 5.0)
    assert conditioning.prefix.dtype == torch.bfloat16 and layout.prefix_len == len(model.prompt_ids(PROMPT))


def test_folders_that_are_not_janus_or_lack_a_tokenizer_are_explained(tmp_path, native):
    other = tmp_path / "llama"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(ValueError, match="llama is not a Janus-Pro folder .*expected .janus. or .multi_modality."):
        load_janus(other)
    bare = tmp_path / "Janus-Pro-no-tokenizer"
    bare.mkdir()
    for item in native.iterdir():
        if "token" not in item.name and "chat_template" not in item.name and item.name != "special_tokens_map.json":
            (bare / item.name).symlink_to(item)
    with pytest.raises(ValueError, match="no usable tokenizer"):
        load_janus(bare)
    with pytest.raises(ValueError, match="prompt is empty"):
        load_janus(native).request("  ", "", 1, 5.0)


def test_cli_generates_from_a_prompt(tmp_path, native):
    out = tmp_path / "fox.png"
    run = lambda *args: subprocess.run([sys.executable, "-m", "linear_core", "generate", "--model", str(native),  # noqa: E731
                                        *args], cwd=ROOT, capture_output=True, text=True, timeout=600)
    offload = json.dumps(_spread_map([DEVICE, "disk"]), default=str)  # a JSON map with one layer on disk
    result = run("--prompt", PROMPT, "--batch", "2", "--budget", "1/4", "--out", str(out), "--json",
                 "--device-map", offload, "--offload-folder", str(tmp_path / "offload"))
    assert result.returncode == 0, result.stderr
    assert "meta device because they were offloaded to the" in result.stderr  # accelerate says so
    report = json.loads(result.stdout)
    assert report["prompt"] == PROMPT and report["family"] == "janus-pro" and report["batch"] == 2
    assert report["kv_saving"] > 0.5 and out.is_file()
    wrong = run("--label", "7")
    assert wrong.returncode == 2 and "draws from text: give --prompt" in wrong.stderr
    bad_map = run("--prompt", PROMPT, "--device-map", "{layers: 0")
    assert bad_map.returncode == 2 and "--device-map is not valid JSON" in bad_map.stderr


def test_converted_vq_decodes_like_the_llamagen_vq16_decoder(deepseek):
    """An independent check of the VQ renames (level order, res/attn/mid blocks): the converted
    native `vqmodel` and our LlamaGen VQ-16 decoder (checked against upstream) on the original
    `gen_vision_model.*` tensors decode the same image."""
    from linear_core.decoders.vq16 import load_vq16

    reference = load_vq16(deepseek / "pytorch_model.bin", prefix="gen_vision_model.")
    janus = load_janus(deepseek)
    tokens = torch.randint(0, reference.codebook_size, (2, janus.image_tokens), generator=torch.Generator().manual_seed(0))
    expected = reference(tokens, janus.grid)
    assert torch.allclose(janus.decode(tokens), expected, atol=1e-5)
    partial = janus.decode(tokens[:, :3 * janus.grid])  # a preview: 3 finished lines, the rest grey
    rows = 3 * expected.shape[-2] // janus.grid
    assert torch.equal(partial[:, :, rows:], torch.full_like(partial[:, :, rows:], 0.5))


def test_accelerate_device_map_loads_both_layouts(native, deepseek):
    for folder in (native, deepseek):
        pipeline = load_pipeline(folder, device_map="auto")
        batch = pipeline.generate(PROMPT, batch=1, settings=CacheSettings("linear", "1/4"), seed=1)
        assert batch.stats.kv_saving > 0.5 and batch.images.shape[0] == 1


def _spread_map(layer_devices: list) -> dict:
    """Everything on the test device except the decoder layers, placed one by one."""
    prefix = "model.language_model."
    placement = {"lm_head": DEVICE, "model.vision_model": DEVICE, "model.aligner": DEVICE, "model.vqmodel": DEVICE,
                 "model.generation_embeddings": DEVICE, "model.generation_aligner": DEVICE,
                 "model.generation_head": DEVICE, prefix + "embed_tokens": DEVICE, prefix + "norm": DEVICE,
                 prefix + "rotary_emb": DEVICE}
    placement.update({f"{prefix}layers.{i}": device for i, device in enumerate(layer_devices)})
    return placement


def _tokens(pipeline, policy: str) -> torch.Tensor:
    batch = pipeline.generate(PROMPT, batch=2, cfg=5.0, settings=CacheSettings(policy, "1/4"), seed=3,
                              sampling=SamplingConfig(temperature=1.0, top_k=0))
    return batch.tokens


@pytest.mark.parametrize("layout", ["native", "deepseek"])
def test_a_layer_offloaded_to_disk_computes_and_caches_on_the_execution_device(request, tmp_path, layout):
    folder = request.getfixturevalue(layout)
    whole = load_pipeline(folder, device=DEVICE)
    spread = load_pipeline(folder, device_map=_spread_map([DEVICE, "disk"]), offload_folder=tmp_path)
    layers = spread.model.backbone.layers
    assert {p.device.type for p in layers[1].parameters()} == {"meta"}  # really offloaded
    geometry = CacheGeometry.of(spread.model.backbone)
    assert geometry.layer_devices[1] == geometry.layer_devices[0] == geometry.device  # brought to the main device
    assert geometry.device.type == torch.device(DEVICE).type
    for policy in ("full", "linear"):
        assert torch.equal(_tokens(spread, policy), _tokens(whole, policy))


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_layers_on_two_gpus_keep_their_caches_beside_them(native):
    spread = load_pipeline(native, device_map=_spread_map(["cuda:0", "cuda:1"]))
    geometry = CacheGeometry.of(spread.model.backbone)
    assert geometry.layer_devices == (torch.device("cuda:0"), torch.device("cuda:1"))
    whole = load_pipeline(native, device="cuda:0")
    for policy in ("full", "linear"):
        assert torch.equal(_tokens(spread, policy).cpu(), _tokens(whole, policy).cpu())


def test_a_layer_without_weights_or_hook_is_explained(native):
    model = load_janus(native)
    model.backbone.layers[1].to("meta")  # what a half-finished load leaves behind
    conditioning, guidance, layout = model.request(PROMPT, "", 1, 5.0)
    with pytest.raises(ValueError, match="weights on the meta device and no accelerate hook"):
        DecodeSession(model, conditioning, layout, CacheSettings("full"), guidance)