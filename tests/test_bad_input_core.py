"""Bad input refused by linear_core itself, at the first place it can be, with a sentence naming the input
and what to give: budgets, non-finite numbers, seeds, choices, devices, lengths, memory, files."""
from __future__ import annotations

import json
import math
import os
from fractions import Fraction
from pathlib import Path

import pytest
import torch
from PIL import Image

from linear_core import CacheSettings, Guidance, LineLayout, SamplingConfig, generate
from linear_core.adapter import Conditioning
from linear_core.devices import check_device, free_bytes
from linear_core.engine import DecodeSession
from linear_core.families.llamagen import LlamaGenSpec, load_llamagen
from linear_core.files import replacing
from linear_core.images import check_output_file, save_png, write_png
from linear_core.labels import resolve_label
from linear_core.layout import MAX_BUDGET_CHARS, Budget
from linear_core.pipeline import RUN_CHUNK
from linear_core.loading import load_pipeline
from linear_core.sampling import MAX_SEED, check_seed
from llamagen_files import upstream_state

from conftest import DEVICE


@pytest.mark.parametrize("text, ratio, lines", [
    ("1/6", Fraction(1, 6), None), ("0.25", Fraction(1, 4), None), (".5", Fraction(1, 2), None),
    ("full", 1, None), ("1", 1, None), (" 3/4 ", Fraction(3, 4), None), ("4 lines", None, 4), ("2l", None, 2),
])
def test_budget_grammar_reads_the_forms_users_type(text, ratio, lines):
    budget = Budget.parse(text)
    assert budget.lines == lines
    assert budget.ratio == (None if ratio is None else float(ratio))


@pytest.mark.parametrize("text, message", [
    ("1e10000000", "Cannot read budget '1e10000000'"),  # would build a ten-million-digit Fraction
    ("1e309", "Cannot read budget '1e309'"), ("nan", "Cannot read budget 'nan'"), ("inf", "Cannot read budget"),
    ("-1/6", "outside (0, 1]"), ("0x10", "Cannot read budget"), ("²", "Cannot read budget '²'"),
    ("1/-6", "Cannot read budget"), ("1/0", "divides by zero"), ("0", "outside (0, 1]"), ("7/6", "outside (0, 1]"),
    ("0 lines", "at least 1 line"), ("1" * (MAX_BUDGET_CHARS + 1), f"longer than {MAX_BUDGET_CHARS} characters"),
    (float("nan"), "not a finite number"), (float("inf"), "not a finite number"),
])
def test_bad_budgets_are_refused_before_any_arithmetic(text, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        Budget.parse(text)


@pytest.mark.parametrize("field", ["temperature", "top_p"])
@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_sampling_refuses_non_finite_numbers(field, value):
    with pytest.raises(ValueError, match=f"{field} must be a finite number"):
        SamplingConfig(**{field: value})


@pytest.mark.parametrize("value", [math.nan, math.inf])
def test_guidance_refuses_non_finite_cfg(value):
    with pytest.raises(ValueError, match="cfg must be a finite number"):
        Guidance(value, "none")


@pytest.mark.parametrize("options, message", [
    ({"policy": "lru"}, "Unknown policy 'lru'; choose one of: full, linear"),
    ({"head_sharing": "all"}, "head_sharing must be one of per_head, shared, not 'all'"),
    ({"cfg_mode": "mixed"}, "cfg_mode must be one of independent, shared_cond, shared_sum, not 'mixed'"),
    ({"anchors": -1}, "anchors must be >= 0"),
])
def test_cache_settings_refuse_unknown_choices_when_built(options, message):
    with pytest.raises(ValueError, match=message):
        CacheSettings(**options)


@pytest.mark.parametrize("seed", [-1, MAX_SEED + 1, 2**70, 1.5, "3"])
def test_seeds_outside_64_bits_are_refused(seed):
    with pytest.raises(ValueError, match="seed"):
        check_seed(seed)


def test_the_largest_seed_runs(model):
    """2^64 - 1 (ComfyUI's widget maximum) once overflowed the compressor's seed + 1."""
    layout = LineLayout(model.prefix_len, 4, 4)
    conditioning = model.conditioning(torch.tensor([1]), Guidance(1.0, "none"))
    result = generate(model, conditioning, layout, CacheSettings("random", "2 lines", anchors=1, recent_lines=1),
                      seed=MAX_SEED)
    assert result.tokens.shape == (1, 16)


@pytest.mark.parametrize("label, message", [
    ("²", "Unknown class '²'"), ("٣", "Unknown class '٣'"), ("10", "Class id 10 is out of range"),
    ("-1", "Class id -1 is out of range"),
])
def test_labels_take_ascii_ids_only(label, message):
    with pytest.raises(ValueError, match=message):
        resolve_label(label, [str(i) for i in range(10)])


@pytest.mark.parametrize("name, message", [
    ("foo", "Unknown device 'foo'"), ("cuda:x", "Unknown device 'cuda:x'"),
    ("cuda", "not available" if not torch.cuda.is_available() else None),
    ("cuda:97", "not available" if not torch.cuda.is_available() else "does not exist: this machine has"),
])
def test_devices_torch_cannot_use_are_refused(name, message):
    if message is None:
        assert check_device(name).type == "cuda"
        return
    with pytest.raises(ValueError, match=message):
        check_device(name)


def test_cpu_is_always_a_device():
    assert check_device("cpu") == torch.device("cpu")


def test_a_cache_larger_than_free_memory_is_refused_before_allocating(model):
    layout = LineLayout(model.prefix_len, 128, 128)
    config = model.backbone.config
    head_dim = config.hidden_size // config.num_attention_heads
    # keys + values of one row: layers × 2 × kv heads × head_dim × fp32, for every slot of the full cache
    per_row = config.num_hidden_layers * 2 * config.num_key_value_heads * head_dim * 4 * layout.full_length
    free = free_bytes(DEVICE)
    if free is None:
        pytest.skip(f"{DEVICE} does not say how much memory is free")
    rows = free // per_row + 1
    conditioning = Conditioning(torch.zeros(rows, model.prefix_len, config.hidden_size, device=DEVICE))
    with pytest.raises(ValueError, match=rf"The KV cache of {rows} images \({rows} rows, .* GiB free: lower the batch"):
        DecodeSession(model, conditioning, layout, CacheSettings("full"))


def test_positions_beyond_the_model_name_the_limit_and_the_fix():
    with pytest.raises(ValueError, match=r"needs 1300 positions \(1044 prefix tokens \+ 256 image tokens\) but the "
                                         r"model covers 1024: shorten the prompt to at most 768 tokens"):
        LineLayout(1044, 16, 16).check_positions(1024)
    with pytest.raises(ValueError, match="a 64x64 grid does not fit it; use the model's own grid"):
        LineLayout(1, 64, 64).check_positions(1025)
    LineLayout(768, 16, 16).check_positions(1024)  # exactly full: fine


def test_a_too_long_prompt_is_refused_before_it_is_embedded(tmp_path):
    from janus_files import write_native_janus

    pipeline = load_pipeline(write_native_janus(tmp_path / "Janus-Pro-1B", grid=16))
    limit = pipeline.model.max_positions
    with pytest.raises(ValueError, match=f"but the model covers {limit}: shorten the prompt"):
        pipeline.generate("a red fox " * 2000, batch=1)


def test_grids_too_large_are_refused_before_tables_are_built():
    with pytest.raises(ValueError, match="Grid 100000 is too large: a side may have at most 128"):
        LlamaGenSpec(dim=64, layers=1, heads=4, grid=100000)
    with pytest.raises(ValueError, match="Grid 0x4 is empty"):
        LineLayout(1, 0, 4)


def test_a_head_count_that_does_not_divide_the_width_is_named(tmp_path):
    path = tmp_path / "c2i_T_256.pt"
    torch.save({"model": upstream_state(dim=64, heads=4)}, path)
    with pytest.raises(ValueError, match="c2i_T_256.pt: 3 heads do not split its width 64"):
        load_llamagen(path, heads=3)


@pytest.mark.parametrize("content, message", [
    ("[1, 2]", "config.json holds an array, not a JSON object"), ("null", "config.json holds null, not a JSON object"),
    ("7", "config.json holds a number"),
    ("{\"model_type\": ", "config.json is not readable JSON"),
])
def test_a_config_json_that_is_not_an_object_names_the_file(tmp_path, content, message):
    folder = tmp_path / "Some-Model"
    folder.mkdir()
    (folder / "config.json").write_text(content)
    with pytest.raises(ValueError, match=f"Some-Model/{message}"):
        load_pipeline(folder)


class Payload:
    def __reduce__(self):
        return (os.system, ("true",))


def test_a_refused_pickle_says_what_to_do_not_how_to_load_it_unsafely(tmp_path):
    path = tmp_path / "c2i_T_256.pt"
    torch.save({"model": upstream_state(), "payload": Payload()}, path)
    with pytest.raises(ValueError) as refused:
        load_llamagen(path, heads=4)
    text = str(refused.value)
    assert "c2i_T_256.pt pickles posix.system" in text or "c2i_T_256.pt pickles os.system" in text
    assert "Convert the checkpoint to .safetensors" in text and "original source" in text
    assert "weights_only" not in text


def test_a_janus_folder_without_tokenizer_files_says_which_files(tmp_path):
    from janus_files import write_native_janus

    folder = write_native_janus(tmp_path / "Janus-Pro-1B", grid=16)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        (folder / name).unlink(missing_ok=True)
    with pytest.raises(ValueError) as refused:
        load_pipeline(folder)
    assert "Janus-Pro-1B has no usable tokenizer: none of tokenizer.json" in str(refused.value)
    assert "sentencepiece" not in str(refused.value)


def test_a_chameleon_config_in_a_janus_folder_is_explained(tmp_path):
    from lumina_files import write_lumina

    with pytest.raises(ValueError, match="Janus-Pro-1B: its config.json says model_type 'chameleon'"):
        load_pipeline(write_lumina(tmp_path / "Janus-Pro-1B"))


def test_save_png_writes_the_stats_chunk_and_leaves_no_temporary_file(tmp_path):
    images = torch.rand(2, 3, 8, 8)
    path = save_png(images, tmp_path / "out" / "grid.png", {RUN_CHUNK: json.dumps({"policy": "linear"})})
    with Image.open(path) as image:
        assert image.size == (2 + 2 * 10, 2 + 10)  # one row of two 8 px images with 2 px gaps
        assert json.loads(image.info[RUN_CHUNK]) == {"policy": "linear"}
    assert sorted(p.name for p in path.parent.iterdir()) == ["grid.png"]


class BrokenImage:
    """An image whose encoder dies after writing part of the file (a crash, a full disk)."""

    def save(self, out, **options):
        out.write(b"\x89PNG\r\n\x1a\n half")
        raise OSError(28, "No space left on device")


def test_a_crash_mid_write_keeps_the_old_file_whole(tmp_path):
    target = tmp_path / "image.png"
    Image.new("RGB", (4, 4), "red").save(target)
    before = target.read_bytes()
    with pytest.raises(OSError, match="No space left"):
        write_png(BrokenImage(), target)
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["image.png"]


def test_output_paths_that_cannot_be_written_are_refused(tmp_path):
    with pytest.raises(ValueError, match="is a folder: give a file name"):
        check_output_file(tmp_path)
    if Path("/proc/self").is_dir():
        with pytest.raises(ValueError, match="'/proc/x.png' cannot be written"):
            check_output_file("/proc/x.png")
    assert check_output_file(tmp_path / "new" / "a.png") == tmp_path / "new" / "a.png"
    assert [p.name for p in (tmp_path / "new").iterdir()] == []  # the probe left nothing behind


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write read-only files")
def test_a_read_only_output_file_is_refused(tmp_path):
    target = tmp_path / "locked.png"
    target.write_bytes(b"")
    target.chmod(0o444)
    with pytest.raises(ValueError, match="is not writable"):
        check_output_file(target)



def test_a_replaced_file_gets_the_permissions_of_any_new_file(tmp_path):
    (tmp_path / "plain.json").write_text("{}")  # created the ordinary way, under this process's umask
    with replacing(tmp_path / "config.json") as temporary:
        temporary.write_text("{}")
    assert (tmp_path / "config.json").stat().st_mode == (tmp_path / "plain.json").stat().st_mode
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "plain.json"]


def test_a_truncated_vq_file_is_called_truncated_not_something_else(tmp_path):
    from linear_core.decoders.vq16 import load_vq16
    from llamagen_files import tiny_vq_state

    state = {k: v for k, v in tiny_vq_state().items() if k != "decoder.conv_in.weight"}
    torch.save({"model": state}, tmp_path / "vq_ds16_c2i.pt")
    with pytest.raises(ValueError, match="vq_ds16_c2i.pt is a VQ tokenizer without decoder.conv_in.weight: "
                                         "truncated or damaged"):
        load_vq16(tmp_path / "vq_ds16_c2i.pt")
