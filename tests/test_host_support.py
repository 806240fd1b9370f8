"""What the ComfyUI nodes rely on in `linear_core`: memory planning, partial previews, cache maps,
dropdown labels and model-folder errors."""
from __future__ import annotations

import json

import pytest
import torch

from conftest import record_cache_bytes
from linear_core import CacheSettings, Guidance, LineLayout
from linear_core import engine, session as session_module
from linear_core.cachemap import colourise, kept_grid, render_cache_map
from linear_core.labels import class_choices, label_from_choice
from linear_core.loading import load_pipeline


@pytest.mark.parametrize("policy,budget", [("full", "full"), ("linear", "1/3"), ("h2o", "2 lines"),
                                           ("rkv", "1/2"), ("streaming", "1/3")])
def test_planned_cache_bytes_equal_what_a_run_allocates(model, monkeypatch, policy, budget):
    layout = LineLayout(model.prefix_len, 6, 6)
    guidance = Guidance(2.0, "halves")
    settings = CacheSettings(policy, budget, anchors=2, recent_lines=1)
    sessions = []

    class RecordingSession(engine.DecodeSession):
        def prefill(self):
            sessions.append(self)
            return super().prefill()

    monkeypatch.setattr(engine, "DecodeSession", RecordingSession)
    measured = record_cache_bytes(monkeypatch)
    conditioning = model.conditioning(torch.tensor([1, 2, 3]), guidance)
    engine.generate(model, conditioning, layout, settings, guidance)
    assert len(sessions) == 1
    assert session_module.planned_cache_bytes(model, layout, settings, rows=6) == measured[0]


def test_partial_preview_shows_finished_lines_over_grey():
    pipeline = load_pipeline("demo-digits")
    tokens = torch.full((2, 5 * 24), 7)  # five finished lines of white (24 tokens, 8 px each)
    image = pipeline.preview(tokens)
    assert image.shape == (3, 192, 192)
    assert torch.equal(image[:, :40], torch.ones(3, 40, 192))
    assert torch.equal(image[:, 40:], torch.full((3, 152, 192), 0.5))


def test_memory_required_grows_with_batch_and_shrinks_with_budget():
    pipeline = load_pipeline("demo-digits")
    full = pipeline.memory_required(2, CacheSettings("full"))
    quarter = pipeline.memory_required(2, CacheSettings("linear", "1/4"))
    assert quarter < full < pipeline.memory_required(4, CacheSettings("full"))
    assert pipeline.memory_required(2, CacheSettings("full"), cfg=1.0) < full  # no CFG: half the rows


def test_cache_map_colours_the_kept_share_of_each_token():
    layout = LineLayout(3, grid_h=2, grid_w=3, eol=True)  # 2 lines of 3 tokens + an end-of-line entry
    kept = torch.zeros(2, 1, layout.image_tokens)
    kept[0, 0, 0] = 1.0  # layer 0 keeps token (0, 0); layer 1 keeps token (1, 2) in half its heads
    kept[1, 0, 6] = 0.5
    kept[:, 0, 3] = 1.0  # the end-of-line entry is not part of the picture
    grid = kept_grid(kept, layout)
    assert grid.shape == (1, 2, 3)
    assert grid[0, 0, 0] == 0.5 and grid[0, 1, 2] == 0.25 and grid.sum() == 0.75
    assert kept_grid(kept, layout, layer=1)[0, 1, 2] == 0.5
    picture = render_cache_map(kept, layout, layer=0, cell=4)
    assert picture.shape == (1, 3, 8, 12)
    assert torch.allclose(picture[0, :, 1, 1], colourise(torch.tensor(1.0)))
    assert torch.allclose(picture[0, :, 5, 9], colourise(torch.tensor(0.0)))
    images = torch.ones(1, 3, 16, 24)
    blended = render_cache_map(kept, layout, layer=0, images=images, opacity=0.25)
    assert torch.allclose(blended[0, :, 0, 0], 0.75 + 0.25 * colourise(torch.tensor(1.0)))
    with pytest.raises(ValueError, match="layers 0 to 1"):
        kept_grid(kept, layout, layer=2)


def test_colours_interpolate_between_the_stops():
    ends = colourise(torch.tensor([0.0, 0.5, 1.0]))
    assert torch.allclose(colourise(torch.tensor(0.25)), (ends[0] + ends[1]) / 2)


def test_dropdown_labels_resolve_for_the_right_kind_of_model():
    choices = class_choices()
    assert len(choices) == 1010 and choices[7] == "digit 7" and choices[10 + 207] == "207: golden retriever"
    digits, imagenet = tuple("0123456789"), tuple(f"class {i}" for i in range(1000))
    assert label_from_choice("digit 7", digits, "demo") == 7
    assert label_from_choice("207: golden retriever", imagenet, "c2i") == 207
    with pytest.raises(ValueError, match="demo draws digits"):
        label_from_choice("207: golden retriever", digits, "demo")
    with pytest.raises(ValueError, match="c2i draws ImageNet classes"):
        label_from_choice("digit 7", imagenet, "c2i")


@pytest.mark.parametrize("config,family", [
    ({"model_type": "mllama", "architectures": ["MllamaForConditionalGeneration"]}, "mllama"),
    ({"model_type": "qwen2"}, "qwen2"),
    ({}, "folder without config.json"),
])
def test_unsupported_model_folders_are_named_in_the_error(tmp_path, config, family):
    folder = tmp_path / "SomeModel"
    folder.mkdir()
    if config:
        (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=f"SomeModel is a.*{family.split(' (')[0]}"):
        load_pipeline(folder)
