"""Bad input on the command line: exit status 2 and one ``error:`` line that names the input, checked
before the model loads wherever it can be; nothing half-written."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from linear_core.cli import main
from linear_core.devices import free_bytes
from linear_core.loading import load_pipeline
from linear_core.settings import CacheSettings
from janus_files import write_native_janus
from llamagen_files import tiny_vq_state, upstream_state

ROOT = Path(__file__).resolve().parents[1]


def run_main(capsys, *argv: str) -> tuple[int, str]:
    """``main(argv)`` in this process: its exit status and what it wrote to stderr."""
    capsys.readouterr()  # what fixtures printed is not the CLI's
    try:
        status = main(list(argv))
    except SystemExit as stop:  # argparse exits on a bad argument
        status = stop.code
    return status, capsys.readouterr().err


def assert_one_error(status: int, err: str, *expected: str) -> None:
    """Status 2 and one ``error:`` line, the last thing written (a library's warning while loading may
    come before it), with no traceback."""
    lines = err.strip().splitlines()
    assert status == 2, err
    assert lines and lines[-1].startswith("error: "), err
    assert sum(line.startswith("error") for line in lines) == 1 and "Traceback" not in err, err
    for text in expected:
        assert text in lines[-1], err


NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present")


@pytest.mark.parametrize("argv, expected", [
    (["generate", "--cfg", "inf"], ["argument --cfg: must be a finite number, got 'inf'"]),
    (["generate", "--cfg", "nan"], ["argument --cfg: must be a finite number, got 'nan'"]),
    (["generate", "--temperature", "nan"], ["argument --temperature: must be a finite number"]),
    (["generate", "--top-p=-inf"], ["argument --top-p: must be a finite number"]),
    (["generate", "--budget", "1e309"], ["argument --budget: Cannot read budget '1e309'"]),
    (["generate", "--budget", "1e10000000"], ["argument --budget: Cannot read budget '1e10000000'"]),
    (["generate", "--threads", "-1"], ["argument --threads: must be at least 1, got -1"]),
    (["generate", "--grid", "-1"], ["argument --grid: must be at least 1, got -1"]),
    (["generate", "--grid", "100000"], ["argument --grid: 100000 tokens a side is too large: at most 128"]),
    (["generate", "--resolution", "8"], ["argument --resolution: 8 px is not a multiple of 16"]),
    (["generate", "--heads", "0"], ["argument --heads: must be at least 1"]),
    (["generate", "--batch", "0"], ["argument --batch: must be at least 1, got 0"]),
    (["generate", "--seed", str(2**70)], ["argument --seed: 1180591620717411303424 is out of range"]),
    (["generate", "--seed", "-1"], ["argument --seed: -1 is out of range"]),
    (["generate", "--top-k", "-3"], ["argument --top-k: must be 0 or more, got -3"]),
    (["generate", "--anchors", "x"], ["argument --anchors: 'x' is not a whole number"]),
    (["generate", "--policy", "lru"], ["argument --policy: invalid choice: 'lru'"]),
    (["generate", "--device", "foo"], ["Unknown device 'foo'"]),
    pytest.param(["generate", "--device", "cuda"], ["Device 'cuda' is not available"], marks=NO_CUDA),
    pytest.param(["generate", "--device", "cuda:7"], ["Device 'cuda:7' is not available"], marks=NO_CUDA),
    (["generate", "--out", "/proc/x.png"], ["--out '/proc/x.png' cannot be written"]),
    (["bench", "--batch", "0"], ["argument --batch: must be at least 1"]),
    (["bench", "--repeats", "0"], ["argument --repeats: must be at least 1"]),
    (["bench", "--layers", "0"], ["argument --layers: must be at least 1"]),
    (["bench", "--layers", "99", "--device", "cpu"], ["--layers 99 is outside 1..12, the depth of llamagen-b"]),
    (["bench", "--budget", "1/4,1e309"], ["argument --budget: Cannot read budget '1e309'"]),
    (["generate", "--budget", "1/4,1/6"], ["argument --budget: Cannot read budget '1/4,1/6'"]),  # one budget here
    (["bench", "--peak-bandwidth", "0"], ["argument --peak-bandwidth: must be above 0"]),
    (["bench", "--policies", "lru"], ["argument --policies: unknown policy lru"]),
    (["fidelity", "--sequences", "0"], ["argument --sequences: must be at least 1, got 0"]),
    (["fidelity", "--chunk", "0"], ["argument --chunk: must be at least 1, got 0"]),
    (["generate", "--no-such-flag"], ["unrecognized arguments: --no-such-flag"]),
])
def test_refused_before_any_model_loads(capsys, argv, expected):
    if "/proc/x.png" in argv and not Path("/proc/self").is_dir():
        pytest.skip("no /proc here")
    assert_one_error(*run_main(capsys, *argv), *expected)


def test_an_output_folder_is_refused_before_the_model_loads(capsys, tmp_path):
    assert_one_error(*run_main(capsys, "generate", "--out", str(tmp_path)), f"--out '{tmp_path}' is a folder")


def test_a_unicode_digit_label_is_an_unknown_class(capsys, tmp_path):
    status, err = run_main(capsys, "generate", "--label", "²", "--out", str(tmp_path / "a.png"), "--device", "cpu")
    assert_one_error(status, err, "Unknown class '²': give an id (0..9) or a class name")
    assert not (tmp_path / "a.png").exists()


def test_a_batch_whose_cache_exceeds_free_memory_is_refused_before_allocating(capsys, tmp_path):
    free = free_bytes("cpu")
    if free is None:
        pytest.skip("the CPU's free memory is unknown here")
    settings = CacheSettings()
    per_image = load_pipeline("demo-digits", device="cpu").memory_required(1, settings)
    batch = free // per_image + 1
    status, err = run_main(capsys, "generate", "--batch", str(batch), "--out", str(tmp_path / "a.png"),
                           "--device", "cpu")
    assert_one_error(status, err, f"The KV cache of {batch} images", "GiB free: lower the batch size")


def test_a_head_count_that_does_not_fit_the_width(capsys, tmp_path):
    gpt, vq = tmp_path / "c2i_T_256.pt", tmp_path / "vq_ds16_c2i.pt"
    torch.save({"model": upstream_state(dim=64, heads=4, vocab=64)}, gpt)
    torch.save({"model": tiny_vq_state()}, vq)
    status, err = run_main(capsys, "generate", "--model", str(gpt), "--vq", str(vq), "--heads", "3",
                           "--out", str(tmp_path / "a.png"), "--device", "cpu")
    assert_one_error(status, err, "c2i_T_256.pt: 3 heads do not split its width 64")


def test_a_janus_folder_without_weights_is_named_before_loading(capsys, tmp_path):
    folder = write_native_janus(tmp_path / "Janus-Pro-1B", grid=16)
    for weights in folder.glob("model*.safetensors*"):
        weights.unlink()
    status, err = run_main(capsys, "generate", "--model", str(folder), "--prompt", "a fox",
                           "--out", str(tmp_path / "a.png"), "--device", "cpu")
    assert_one_error(status, err, "Janus-Pro-1B has no weights (model.safetensors, pytorch_model.bin")


def test_an_error_nobody_foresaw_is_still_one_line(capsys, tmp_path):
    """The top-level catch: transformers refuses a config whose ``text_config`` is a number with its
    own exception type and a message over several lines."""
    folder = write_native_janus(tmp_path / "Janus-Pro-1B", grid=16)
    (folder / "config.json").write_text(json.dumps({"model_type": "janus", "text_config": 5}))
    status, err = run_main(capsys, "generate", "--model", str(folder), "--prompt", "a fox",
                           "--out", str(tmp_path / "a.png"), "--device", "cpu")
    assert_one_error(status, err, "text_config")
    assert not (tmp_path / "a.png").exists()


@pytest.mark.parametrize("argv, expected", [
    (["generate", "--budget", "1e10000000"], "error: argument --budget: Cannot read budget"),
    (["bench", "--repeats", "0"], "error: argument --repeats: must be at least 1"),
])
def test_the_real_entry_point_exits_2_with_one_line(argv, expected):
    out = subprocess.run([sys.executable, "-m", "linear_core", *argv], cwd=ROOT, capture_output=True, text=True,
                         timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.strip().splitlines() == [out.stderr.strip()] and out.stderr.startswith(expected), out.stderr
