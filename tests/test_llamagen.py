"""LlamaGen checkpoints through the real loader: formats, size inference, exact logits, CFG, VQ, errors."""
from __future__ import annotations

import pickle

import pytest
import torch
from safetensors.torch import save_file

from conftest import DEVICE
from linear_core import CacheSettings, SamplingConfig, generate
from linear_core.decoders.vq16 import load_vq16
from linear_core.families.llamagen import SIZES, ffn_size, grid_from_name, infer_spec, load_llamagen
from llamagen_files import meta_state, reference_generate, reference_logits, tiny_vq_state, upstream_state

GRID = 4


def write_pt(path, state, wrapper="model"):
    data = {wrapper: state, "steps": 1000, "config": {"lr": 1e-4}} if wrapper else state
    torch.save(data, path)
    return path


@pytest.fixture
def upstream():
    return upstream_state()


@pytest.mark.parametrize("fmt", ["pt-model", "pt-fsdp", "pt-module", "safetensors"])
def test_loaded_model_matches_upstream_math(tmp_path, upstream, fmt):
    if fmt == "safetensors":
        path = tmp_path / "c2i_T_256.safetensors"
        save_file(upstream, str(path), metadata={"heads": "4", "grid": str(GRID)})
        model = load_llamagen(path, device=DEVICE)
    else:
        wrapper = {"pt-model": "model", "pt-fsdp": None, "pt-module": "module"}[fmt]
        path = write_pt(tmp_path / "c2i_T_256.pt", upstream, wrapper)
        model = load_llamagen(path, grid=GRID, heads=4, device=DEVICE)
    assert model.spec.grid == GRID and model.spec.layers == 2 and model.num_classes == 10
    labels = torch.tensor([0, 7, 10])  # 10 = the null class
    tokens = torch.randint(0, 64, (3, GRID * GRID - 1), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        embeds = torch.cat([model.prefix_embeddings(labels), model.embed_image_tokens(tokens.to(DEVICE))], 1)
        hidden = model.backbone(inputs_embeds=embeds, position_ids=torch.arange(GRID * GRID, device=DEVICE)[None]).last_hidden_state
        ours = model.image_logits(hidden).double().cpu()
    expected = reference_logits(upstream, 4, GRID, labels, tokens)
    assert (ours - expected).abs().max() <= 1e-4
    # the zeroed condition rotary matters: rotating the class token like cell (0, 0) is caught
    wrong = reference_logits(upstream, 4, GRID, labels, tokens, zero_condition_rotary=False)
    assert (ours - wrong).abs().max() > 1e-2


def test_engine_full_cache_decode_equals_upstream_loop(tmp_path, upstream):
    """Greedy decoding with CFG through the engine = a loop over upstream's full forward."""
    model = load_llamagen(write_pt(tmp_path / "c2i_T_256.pt", upstream), grid=GRID, heads=4, device=DEVICE)
    labels, cfg = torch.tensor([3, 5]), 2.5
    guidance = model.guidance(cfg)
    assert guidance.layout == "halves" and model.guidance(1.0).layout == "none"
    conditioning = model.conditioning(labels.to(DEVICE), guidance)
    null = conditioning.prefix[2:]
    assert torch.equal(null, model.prefix_embeddings(torch.tensor([10, 10])))  # [cond; uncond] halves
    out = generate(model, conditioning, model.spec.layout(), CacheSettings(policy="full"), guidance,
                   SamplingConfig(temperature=0), seed=0).tokens.cpu()
    tokens = torch.zeros(2, 0, dtype=torch.long)
    for _ in range(GRID * GRID):
        both = reference_logits(upstream, 4, GRID, torch.cat([labels, torch.tensor([10, 10])]), torch.cat([tokens, tokens]))
        cond, uncond = both[:, -1].chunk(2)
        tokens = torch.cat([tokens, (uncond + (cond - uncond) * cfg).argmax(-1, keepdim=True)], 1)
    assert torch.equal(out, tokens)


def test_several_condition_tokens_repeat_the_class(tmp_path, upstream):
    """``cls_token_num`` K in the metadata (the demo model has 16): K copies of the class token
    before the image, all with zero rotary rows, in the logits and in a greedy CFG decode."""
    path = tmp_path / "c2i_T_256.safetensors"
    save_file(upstream, str(path), metadata={"heads": "4", "grid": str(GRID), "cls_token_num": "3"})
    model = load_llamagen(path, device=DEVICE)
    assert model.spec.cls_token_num == 3 and model.spec.layout().prefix_len == 3
    labels = torch.tensor([0, 7, 10])
    tokens = torch.randint(0, 64, (3, GRID * GRID - 1), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        embeds = torch.cat([model.prefix_embeddings(labels), model.embed_image_tokens(tokens.to(DEVICE))], 1)
        hidden = model.backbone(inputs_embeds=embeds, position_ids=torch.arange(embeds.shape[1], device=DEVICE)[None])
        ours = model.image_logits(hidden.last_hidden_state[:, 2:]).double().cpu()
    expected = reference_logits(upstream, 4, GRID, labels, tokens, cond_tokens=3)[:, 2:]
    assert (ours - expected).abs().max() <= 1e-4
    one_token = reference_logits(upstream, 4, GRID, labels, tokens)  # the copies change the attention weights
    assert (ours - one_token).abs().max() > 1e-2

    cfg, labels = 3.0, torch.tensor([3, 5])
    guidance = model.guidance(cfg)
    out = generate(model, model.conditioning(labels.to(DEVICE), guidance), model.spec.layout(),
                   CacheSettings(policy="full"), guidance, SamplingConfig(temperature=0), seed=0).tokens.cpu()
    generated = torch.zeros(2, 0, dtype=torch.long)
    for _ in range(GRID * GRID):
        both = reference_logits(upstream, 4, GRID, torch.cat([labels, torch.tensor([10, 10])]),
                                torch.cat([generated, generated]), cond_tokens=3)
        cond, uncond = both[:, -1].chunk(2)
        generated = torch.cat([generated, (uncond + (cond - uncond) * cfg).argmax(-1, keepdim=True)], 1)
    assert torch.equal(out, generated)


@pytest.mark.parametrize("cfg,temperature,top_k,top_p", [(4.0, 1.0, 0, 1.0), (2.0, 0.8, 20, 0.9), (1.0, 1.0, 0, 1.0)])
def test_sampled_tokens_equal_upstreams_generate(tmp_path, upstream, cfg, temperature, top_k, top_p):
    """Sampling with the same seed as upstream's generate.py (re-implemented in llamagen_files):
    the null class 10 (= num_classes) for the unconditional half, the CFG formula, temperature
    before top-k and top-p, one draw per image."""
    model = load_llamagen(write_pt(tmp_path / "c2i_T_256.pt", upstream), grid=GRID, heads=4, device=DEVICE)
    assert model.num_classes == 10
    labels = torch.tensor([3, 5, 10])  # the null class is a valid label too (an unconditional image)
    guidance = model.guidance(cfg)
    out = generate(model, model.conditioning(labels.to(DEVICE), guidance), model.spec.layout(),
                   CacheSettings(policy="full"), guidance,
                   SamplingConfig(temperature=temperature, top_k=top_k, top_p=top_p), seed=11).tokens.cpu()
    expected = reference_generate(upstream, 4, GRID, labels, cfg, temperature, top_k, top_p,
                                  torch.Generator(DEVICE).manual_seed(11))
    assert torch.equal(out, expected)


@pytest.mark.parametrize("name", list(SIZES))
def test_size_inference_for_every_named_size(name):
    layers, heads, dim = SIZES[name]
    spec = infer_spec(meta_state(layers, heads, dim), name=f"c2i_{name}_384.pt")
    assert (spec.layers, spec.heads, spec.dim, spec.grid, spec.vocab, spec.num_classes) == (layers, heads, dim, 24, 16384, 1000)
    assert spec.ffn == ffn_size(dim) and spec.llama_config().intermediate_size == spec.ffn
    assert spec.size_name == f"GPT-{name}"
    if name == "3B":
        assert spec.head_dim == 100 and spec.ffn == 8704


@pytest.mark.parametrize("name,grid", [("c2i_XL_384.pt", 24), ("c2i_B_256.pt", 16), ("c2i_L_512.safetensors", 32),
                                       ("my-model.pt", None), ("c2i_XL_3840.pt", None)])
def test_grid_from_file_name(name, grid):
    assert grid_from_name(name) == grid


def test_missing_grid_and_unknown_width_are_explained():
    with pytest.raises(ValueError, match="grid"):
        infer_spec(meta_state(12, 12, 768), name="mine.pt")
    assert infer_spec(meta_state(12, 12, 768), grid=16, name="mine.pt").grid == 16
    with pytest.raises(ValueError, match="heads"):
        infer_spec(meta_state(2, 4, 64), name="c2i_T_256.pt")


def test_bad_checkpoints_get_clear_errors(tmp_path, upstream):
    vq = write_pt(tmp_path / "vq_ds16_c2i.pt", tiny_vq_state())
    with pytest.raises(ValueError, match="VQ image tokenizer"):
        load_llamagen(vq)
    t2i = {k: v for k, v in upstream.items() if not k.startswith("cls_embedding")}
    t2i["cls_embedding.cap_proj.fc1.weight"] = torch.zeros(64, 32)
    with pytest.raises(ValueError, match="t2i"):
        load_llamagen(write_pt(tmp_path / "t2i_XL_256.pt", t2i), heads=4)
    truncated = {k: v for k, v in upstream.items() if k != "layers.1.feed_forward.w2.weight"}
    with pytest.raises(ValueError, match="missing LlamaGen tensor"):
        load_llamagen(write_pt(tmp_path / "c2i_T_256.pt", truncated), heads=4)
    with pytest.raises(ValueError, match="does not exist"):
        load_llamagen(tmp_path / "nope_256.pt")
    (tmp_path / "junk_256.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="is damaged or pickles objects other than tensors: refused"):
        load_llamagen(tmp_path / "junk_256.pt")
    with pytest.raises(ValueError, match="not a LlamaGen GPT"):
        load_llamagen(write_pt(tmp_path / "other_256.pt", {"model.layers.0.mlp.up_proj.weight": torch.zeros(2, 2)}))


class Payload:
    """Unpickling this would run code; the loader must refuse it."""

    def __reduce__(self):
        return (print, ("pickled code ran",))


def test_pickled_code_is_refused(tmp_path, upstream, capsys):
    path = tmp_path / "c2i_T_256.pt"
    with open(path, "wb") as handle:
        pickle.dump({"model": upstream, "payload": Payload()}, handle)
    with pytest.raises(ValueError, match="refused, nothing in it ran"):
        load_llamagen(path, heads=4)
    assert "pickled code ran" not in capsys.readouterr().out


def test_vq_decoder_shapes_range_and_normalised_codebook(tmp_path):
    state = tiny_vq_state()
    decoder = load_vq16(write_pt(tmp_path / "vq_ds16_c2i.pt", state), device=DEVICE)
    assert decoder.codebook_size == 64
    tokens = torch.randint(0, 64, (3, 12))
    image = decoder(tokens, 3, 4)
    assert image.shape == (3, 3, 6, 8) and image.dtype == torch.float32
    assert image.min() >= 0 and image.max() <= 1 and image.std() > 0
    # lookups are L2-normalised: rescaling codebook rows changes nothing
    state["quantize.embedding.weight"] = state["quantize.embedding.weight"] * torch.rand(64, 1) * 10
    rescaled = load_vq16(write_pt(tmp_path / "vq2.pt", state), device=DEVICE)
    assert torch.allclose(rescaled(tokens, 3, 4), image, atol=1e-5)
    with pytest.raises(ValueError, match="do not fill"):
        decoder(tokens, 4, 4)
    with pytest.raises(ValueError, match="not a VQ tokenizer"):
        load_vq16(write_pt(tmp_path / "c2i_T_256.pt", upstream_state()))


def test_a_layout_larger_than_the_rotary_table_is_refused_up_front(tmp_path, upstream):
    from linear_core import LineLayout

    model = load_llamagen(write_pt(tmp_path / "c2i_T_256.pt", upstream), grid=GRID, heads=4, device=DEVICE)
    assert model.max_positions == 1 + GRID * GRID
    guidance = model.guidance(1.0)
    conditioning = model.conditioning(torch.tensor([3], device=DEVICE), guidance)
    too_big = LineLayout(model.spec.layout().prefix_len, GRID + 1, GRID)
    with pytest.raises(ValueError, match=rf"needs {1 + (GRID + 1) * GRID} positions \(.*\) but the model covers {1 + GRID * GRID}"):
        generate(model, conditioning, too_big, CacheSettings(policy="full"), guidance)
