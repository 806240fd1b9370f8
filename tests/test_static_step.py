"""The static decode step against the eager engine: the same logits at every step of runs with
evictions (every family, policy and CFG layout), the same tokens, a compiled step that never
recompiles for a second request, and nothing left alive after an interrupted run."""
from __future__ import annotations

import gc
import weakref

import pytest
import torch

from linear_core import CacheSettings, Callbacks, DecodeSession, GenerationInterrupted, Guidance, LineLayout
from linear_core import generate
from linear_core.families.janus import load_janus
from linear_core.families.llamagen import load_llamagen
from linear_core.families.lumina import load_lumina
from linear_core.loading import load_pipeline
from linear_core.static_step import bucket_widths
from conftest import DEVICE, tiny_model
from janus_files import write_native_janus
from llamagen_files import upstream_state
from lumina_files import RESOLUTION, write_lumina
from test_exactness import feed_and_record
from test_janus import _spread_map

PROMPT = "a red fox"


def both_decodes(model, conditioning, layout, settings, guidance, tokens):
    """Teacher-force ``tokens`` one at a time through an eager and a static session; the logits
    and, after every line boundary, the kept indices of each."""
    runs = []
    for decode in ("eager", "static"):
        session = DecodeSession(model, conditioning, layout, settings, guidance, seed=1, decode=decode)
        try:
            runs.append((*feed_and_record(session, tokens, 1), session.step_impl, session.compressions))
        finally:
            session.close()
    return runs


def assert_static_equals_eager(model, conditioning, layout, settings, guidance, tokens) -> None:
    (eager, kept_eager, impl_eager, evictions), (static, kept_static, impl_static, _) = both_decodes(
        model, conditioning, layout, settings, guidance, tokens)
    assert impl_eager == "eager" and impl_static != "eager"
    assert settings.policy == "full" or evictions > 0
    assert static.shape == eager.shape
    assert (static - eager).abs().max().item() <= 1e-5 * max(1.0, eager.abs().max().item())
    for layer_eager, layer_static in zip(kept_eager, kept_static):
        assert all(torch.equal(a, b) for a, b in zip(layer_eager, layer_static))


CASES = [
    # policy, eol, kv_heads, cfg layout
    ("full", False, 4, "halves"),
    ("linear", False, 4, "halves"),
    ("linear", True, 2, "interleaved"),  # GQA + end-of-line lines
    ("linear", False, 4, "separate"),  # a shorter unconditional prefix, left-padded into the batch
    ("h2o", True, 4, "none"),
    ("rkv", False, 2, "halves"),
    ("streaming", True, 4, "separate"),
    ("random", False, 4, "interleaved"),
]


@pytest.mark.parametrize("policy,eol,kv_heads,cfg_layout", CASES)
def test_static_logits_equal_eager_at_every_step(tmp_path, policy, eol, kv_heads, cfg_layout):
    model = tiny_model(tmp_path, kv_heads=kv_heads)
    layout = LineLayout(model.prefix_len, 6, 6, eol=eol)
    guidance = Guidance(2.0, cfg_layout)
    conditioning = model.conditioning(torch.tensor([3, 7], device=DEVICE), guidance)
    tokens = torch.randint(0, model.config.vocab_size, (2, layout.image_tokens),
                           generator=torch.Generator().manual_seed(2)).to(DEVICE)
    settings = CacheSettings(policy, "2 lines", anchors=2, recent_lines=1)
    assert_static_equals_eager(model, conditioning, layout, settings, guidance, tokens)


def test_static_logits_equal_eager_on_llamagen(tmp_path):
    path = tmp_path / "c2i_T_256.pt"
    torch.save({"model": upstream_state(layers=2)}, path)
    model = load_llamagen(path, grid=8, heads=4, device=DEVICE)
    guidance = model.guidance(3.0)
    conditioning = model.conditioning(torch.tensor([2, 9], device=DEVICE), guidance)
    tokens = torch.randint(0, 64, (2, 64), generator=torch.Generator().manual_seed(2)).to(DEVICE)
    assert_static_equals_eager(model, conditioning, model.spec.layout(), CacheSettings("linear", "3 lines", anchors=2,
                               recent_lines=1), guidance, tokens)


@pytest.mark.parametrize("negative", ["", "blurry"])
def test_static_logits_equal_eager_on_janus(tmp_path, negative):
    model = load_janus(write_native_janus(tmp_path / "Janus-Pro-tiny"), device=DEVICE)
    conditioning, guidance, layout = model.request(PROMPT, negative, 2, 4.0)
    tokens = torch.randint(0, model.vocab, (2, layout.image_tokens), generator=torch.Generator().manual_seed(3))
    assert_static_equals_eager(model, conditioning, layout, CacheSettings("linear", "2 lines", anchors=2,
                               recent_lines=1), guidance, tokens.to(DEVICE))


def test_static_logits_equal_eager_on_lumina_end_of_line_layout(tmp_path):
    model = load_lumina(write_lumina(tmp_path / f"Lumina-mGPT-tiny-{RESOLUTION}"), dtype=torch.float32, device=DEVICE)
    conditioning, guidance, layout = model.request(PROMPT, "", 2, 4.0)
    assert layout.eol and guidance.layout == "separate"
    tokens = torch.randint(0, model.vocab, (2, layout.image_tokens), generator=torch.Generator().manual_seed(3))
    settings = CacheSettings("linear", "3 lines", anchors=2, recent_lines=1, keep_line_ends=True)
    assert_static_equals_eager(model, conditioning, layout, settings, guidance, tokens.to(DEVICE))


@pytest.mark.parametrize("policy", ["full", "linear"])
def test_static_generation_draws_the_eager_tokens_with_rules(tmp_path, policy):
    """Whole runs under a fixed seed: forced end-of-line tokens, image-vocabulary rule, top-k and
    CFG all inside the static step, token for token as the eager loop draws them."""
    pipeline = load_pipeline(write_lumina(tmp_path / f"Lumina-mGPT-tiny-{RESOLUTION}"), dtype="fp32", device=DEVICE)
    runs = {decode: pipeline.generate(PROMPT, batch=2, settings=CacheSettings(policy, "3 lines", anchors=2,
                                      recent_lines=1), seed=4, decode=decode) for decode in ("eager", "static")}
    assert runs["static"].stats.decode == "static" and runs["eager"].stats.decode == "eager"
    assert torch.equal(runs["static"].tokens, runs["eager"].tokens)
    assert runs["static"].stats.forwards == runs["eager"].stats.forwards == pipeline.layout.image_tokens - 1


def test_compiled_step_draws_the_eager_tokens_and_never_recompiles():
    """inductor compiles the step once; a second request with the same settings reuses it (no new
    graph, no recompile) and both draw what the eager loop draws."""
    import torch._dynamo.utils as dynamo_utils

    pipeline = load_pipeline("demo-digits", device=DEVICE)
    settings = CacheSettings("linear", "1/4")
    eager = pipeline.generate([7, 3], settings, seed=5, decode="eager")
    first = pipeline.generate([7, 3], settings, seed=5, decode="static", compile="on")
    assert first.stats.decode_step.startswith("compiled") and first.stats.compile_s > 0
    graphs = dynamo_utils.counters["stats"]["unique_graphs"]
    with torch._dynamo.config.patch(error_on_recompile=True):
        second = pipeline.generate([7, 3], settings, seed=5, decode="static", compile="on")
    assert dynamo_utils.counters["stats"]["unique_graphs"] == graphs
    assert second.stats.compile_s == 0.0
    assert torch.equal(first.tokens, eager.tokens) and torch.equal(second.tokens, eager.tokens)


def test_interrupting_a_static_run_frees_its_cache_and_its_step(model, monkeypatch):
    import linear_core.engine as engine

    sessions = []

    class RecordingSession(engine.DecodeSession):
        def prefill(self):
            logits = super().prefill()
            sessions.append((self, weakref.ref(self.static)))
            return logits

    monkeypatch.setattr(engine, "DecodeSession", RecordingSession)
    guidance = Guidance(2.0, "halves")
    conditioning = model.conditioning(torch.tensor([1], device=DEVICE), guidance)
    progress = []
    with pytest.raises(GenerationInterrupted, match="image token 9"):
        generate(model, conditioning, LineLayout(model.prefix_len, 6, 6), CacheSettings("linear", "1/2", anchors=2,
                 recent_lines=1), guidance, callbacks=Callbacks(should_stop=lambda: len(progress) >= 10,
                                                                on_token=lambda i, line: progress.append(i)))
    (session, static), = sessions
    gc.collect()
    assert static() is None and session.static is None
    assert session.cache.layers == [] and session.stream.queries is None


def test_eager_fallback_says_why(tmp_path):
    """A model whose layers accelerate moves in Python runs eagerly, and the stats say why."""
    folder = write_native_janus(tmp_path / "Janus-Pro-tiny")
    offloaded = load_pipeline(folder, device_map=_spread_map([DEVICE, "disk"]), offload_folder=tmp_path / "offload")
    run = offloaded.generate(PROMPT, batch=1, settings=CacheSettings("linear", "1/4"), seed=1)
    assert run.stats.decode == "eager" and "accelerate" in run.stats.decode_note


def test_bucket_widths_end_on_lines_and_cover_the_capacity():
    widths = bucket_widths(prefix_len=5, capacity=5 + 8 * 4, line_tokens=4, buckets=3)
    assert widths == sorted(widths) and widths[-1] == 37
    assert all((w - 5) % 4 == 0 for w in widths) and len(widths) == 3
    assert bucket_widths(5, 37, 4, 1) == [37]
