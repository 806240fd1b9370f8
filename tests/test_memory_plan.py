"""The memory planner against what runs really hold: the cache bytes a run allocates, the peak of a
fresh process (CPU resident set; CUDA allocator when a GPU is there), and its suggestions."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import DEVICE, record_cache_bytes
from linear_core import CacheSettings
from linear_core.cli import main
from linear_core.memory_plan import GIB, load_target, plan, target_of, target_of_arch
from linear_core.loading import load_pipeline

pytest.importorskip("torchao")
TESTS = Path(__file__).resolve().parent


@pytest.mark.parametrize("policy,budget,mode", [("full", "full", "none"), ("linear", "1/4", "int8"),
                                                ("h2o", "1/3", "none")])
def test_planned_cache_equals_the_bytes_a_run_allocates(monkeypatch, policy, budget, mode):
    pipeline = load_pipeline("demo-digits", dtype="bf16", device=DEVICE, quantize=mode)
    settings = CacheSettings(policy, budget)
    measured = record_cache_bytes(monkeypatch)
    pipeline.generate(["1", "2", "3"], settings, seed=0)
    predicted = plan(target_of(pipeline), GIB, 3, settings, mode, str(DEVICE)).cache_bytes
    assert measured == [predicted]


def _probe(mode: str, policy: str, budget: str, device: str) -> dict:
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(TESTS.parent), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, str(TESTS / "peak_probe.py"), "janus-pro-1b", "1", "8", mode, policy, budget,
                          device], capture_output=True, text=True, env=env, timeout=600, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("mode,policy,budget", [("none", "full", "full"), ("int8", "linear", "1/2")])
def test_predicted_peak_is_within_ten_percent_of_a_fresh_processes_peak_on_cpu(mode, policy, budget):
    if not sys.platform.startswith("linux"):
        pytest.skip("the resident-set high-water mark is read from /proc")
    result = _probe(mode, policy, budget, "cpu")
    assert abs(result["predicted"] - result["measured"]) <= 0.1 * result["measured"], result


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("mode", ["none", "int8", "int4"])
def test_predicted_peak_is_within_ten_percent_of_max_memory_allocated_on_cuda(mode):
    result = _probe(mode, "linear", "1/2", "cuda")
    assert abs(result["predicted"] - result["measured"]) <= 0.1 * result["measured"], result


def test_a_7b_shape_on_8_gib_needs_quantization_and_the_suggestions_fit():
    target = target_of_arch("janus-pro-7b")
    verdict = plan(target, 8 * GIB, 1, CacheSettings("linear", "1/6"), "none", "cuda")
    layers = 30 * (4 * 4096 * 4096 + 3 * 4096 * 11008)
    assert verdict.weight_bytes > layers * 2 > 8 * GIB and not verdict.fits  # bf16 decoder weights alone
    changes = {s["change"]: s for s in verdict.suggestions}
    assert changes["quantize"]["quantize"] == "int8"
    for suggestion in verdict.suggestions:
        assert suggestion["peak_bytes"] <= 8 * GIB
    int8 = plan(target, 8 * GIB, 1, CacheSettings("linear", "1/6"), "int8", "cuda")
    assert int8.fits and abs(int8.weight_bytes - (verdict.weight_bytes - layers)) < 0.01 * layers
    offload = changes["offload"]
    cpu_layers = [name for name, where in offload["device_map"].items() if where == "cpu"]
    assert len(cpu_layers) == offload["offload_layers"] and cpu_layers[-1] == "backbone.layers.29"
    per_layer = (4 * 4096 * 4096 + 3 * 4096 * 11008) * 2 + 2 * 4096 * 2  # weights + two norms, bf16
    assert offload["bytes_per_token"] == per_layer * offload["offload_layers"]
    assert offload["seconds_per_token"] == pytest.approx(offload["bytes_per_token"] / 25e9)


def test_device_map_names_every_weight_exactly_once():
    target = target_of_arch("janus-pro-1b", layers=3)
    from linear_core.memory_plan import device_map
    placement = device_map(target.weights, "backbone", ["backbone.layers.2"])
    covered = [name for name, _ in target.weights.named_parameters()
               if sum(name == key or name.startswith(key + ".") for key in placement) == 1]
    assert len(covered) == len(list(target.weights.named_parameters()))


def test_smaller_budget_and_batch_are_suggested_when_only_the_cache_is_too_big():
    target = target_of_arch("janus-pro-1b", layers=2, grid=16)
    roomy = plan(target, 1 << 50, 8, CacheSettings("full"), "none", "cuda")
    room = roomy.weight_bytes + roomy.activation_bytes + roomy.cache_bytes * 6 // 10
    tight = plan(target, room, 8, CacheSettings("full"), "none", "cuda")
    assert not tight.fits
    changes = {s["change"]: s for s in tight.suggestions}
    assert changes["budget"]["policy"] == "linear" and changes["batch"]["batch"] < 8
    assert "does not fit" in tight.message() and "batch" in tight.message()


def test_plan_command_prints_the_verdict_as_json(capsys, tmp_path):
    assert main(["plan", "--model", "janus-pro-7b", "--device-memory", "8GiB", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["fits"] is False and report["weight_bytes"] > 8 * GIB
    assert {"cache_bytes", "peak_bytes", "suggestions"} <= set(report)
    assert main(["plan", "--model", "janus-pro-7b", "--device-memory", "8GiB", "--quantize", "int4", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["fits"] is True
    assert main(["plan", "--model", "demo-digits", "--device-memory", "8 GB", "--batch", "4"]) == 0
    assert "fits." in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit:
        main(["plan", "--model", "janus-pro-7b", "--device-memory", "lots"])
    assert exit.value.code == 2 and "is not a memory size" in capsys.readouterr().err


def test_a_real_folder_plans_from_the_meta_device_like_its_loaded_self():
    meta = load_target("demo-digits")
    loaded = target_of(load_pipeline("demo-digits", dtype="bf16", device="cpu"))
    settings = CacheSettings("linear", "1/4")
    a, b = (plan(t, GIB, 2, settings, "int8", "cpu") for t in (meta, loaded))
    assert (a.weight_bytes, a.cache_bytes, a.peak_bytes) == (b.weight_bytes, b.cache_bytes, b.peak_bytes)
    quantized = load_pipeline("demo-digits", dtype="bf16", device="cpu", quantize="int8")
    assert plan(target_of(quantized), GIB, 2, settings, "int8", "cpu").weight_bytes == a.weight_bytes
