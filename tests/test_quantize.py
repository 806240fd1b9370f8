"""Weight-only int8 / int4 at load time: real checkpoints through the real loaders, the layers'
stored codes and bytes checked by hand, and generation under every policy."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from conftest import DEVICE
from emu3_files import write_emu3
from janus_files import write_native_janus
from llamagen_files import tiny_vq_state, upstream_state
from lumina_files import RESOLUTION as LUMINA_RESOLUTION, write_lumina
from linear_core import CacheSettings
from linear_core.loading import load_pipeline
from linear_core.policies import POLICIES
from linear_core.quantize import linear_bytes, quantize_linears, tensor_bytes, weight_bytes

pytest.importorskip("torchao")
PROMPT = "a red fox in the snow"


def linears(pipeline) -> list[nn.Linear]:
    return [m for m in pipeline.model.backbone.modules() if isinstance(m, nn.Linear)]


def hand_bytes(layer: nn.Linear, mode: str) -> int:
    """int8: a code per weight, an fp32 scale and an int8 zero per row; CPU int4: a code per weight
    (stored one per byte), a scale in the weight dtype and an int8 zero per group of 128/64/32."""
    rows, cols = layer.out_features, layer.in_features
    if mode == "int8":
        return rows * cols + rows * 5
    group = next(g for g in (128, 64, 32) if cols % g == 0)
    return rows * cols + rows * (cols // group) * (torch.finfo(layer.weight.dtype).bits // 8 + 1)


@pytest.mark.parametrize("mode", ["int8", "int4"])
def test_demo_decoder_linears_hold_integer_codes_and_the_bytes_counted_by_hand(mode):
    if DEVICE.type != "cpu" and mode == "int4":
        pytest.skip("the CPU int4 layout is checked here")
    plain = load_pipeline("demo-digits", dtype="bf16", device=DEVICE)
    small = load_pipeline("demo-digits", dtype="bf16", device=DEVICE, quantize=mode)
    layers = linears(small)
    assert len(layers) == 4 * 7 and small.quantize == mode
    for layer, original in zip(layers, linears(plain)):
        codes = layer.weight.qdata
        assert codes.dtype == torch.int8 and codes.shape == original.weight.shape
        low, high = (-128, 127) if mode == "int8" else (-8, 7)
        assert low <= codes.min().item() and codes.max().item() <= high
        if mode == "int4":
            assert codes.min().item() < -4 and codes.max().item() > 4  # the 4-bit range is used, not int8's
        assert tensor_bytes(layer.weight) == hand_bytes(layer, mode)
        assert linear_bytes(layer.in_features, layer.out_features, False, mode, "cpu", torch.bfloat16) == \
            hand_bytes(layer, mode)
    # the head and embeddings stay bf16 parameters; only the decoder linears changed size
    assert type(small.model.head.weight) is nn.Parameter and small.model.head.weight.dtype == torch.bfloat16
    saved = sum(l.weight.numel() * 2 - hand_bytes(l, mode) for l in layers)
    assert weight_bytes(small.weights()) == weight_bytes(plain.weights()) - saved


def test_int8_changes_the_output_by_a_rounding_error_and_int4_by_more():
    torch.manual_seed(0)
    layer = nn.Linear(256, 64, bias=False)
    x = torch.randn(8, 256)
    exact = layer(x)
    errors = {}
    for mode in ("int8", "int4"):
        copy = nn.Sequential(nn.Linear(256, 64, bias=False))
        copy[0].weight.data.copy_(layer.weight.data)
        assert quantize_linears(copy, mode, "cpu") == 1
        errors[mode] = ((copy(x) - exact).norm() / exact.norm()).item()
    assert errors["int8"] < 0.01 < errors["int4"] < 0.2


def test_none_keeps_the_loader_output_identical_and_unknown_modes_are_refused():
    assert load_pipeline("demo-digits", device="cpu", quantize="none").quantize == "none"
    with pytest.raises(ValueError, match="int8, int4"):
        load_pipeline("demo-digits", device="cpu", quantize="int3")
    if not torch.backends.mps.is_available():
        with pytest.raises(ValueError, match="CUDA and the CPU only"):
            from linear_core.quantize import check_device_supports
            check_device_supports("int4", "mps")


@pytest.mark.parametrize("policy", sorted(POLICIES))
def test_generation_runs_under_every_policy_on_int8_and_int4(policy):
    budget = "full" if policy == "full" else "1/2"
    for mode in ("int8",) + (("int4",) if DEVICE.type == "cpu" else ()):
        pipeline = load_pipeline("demo-digits", dtype="bf16", device=DEVICE, quantize=mode)
        batch = pipeline.generate(["3", "5"], CacheSettings(policy, budget), seed=1)
        assert batch.tokens.shape == (2, 576) and batch.images.shape == (2, 3, 192, 192)
        assert batch.summary()["quantize"] == mode
        assert batch.summary()["weight_bytes"] == weight_bytes(pipeline.weights())


def _family_folder(kind: str, tmp_path):
    if kind == "llamagen":
        from safetensors.torch import save_file
        save_file(upstream_state(classes=1000), str(tmp_path / "c2i_tiny_256.safetensors"), metadata={"heads": "4"})
        torch.save({"model": tiny_vq_state()}, tmp_path / "vq_ds16_c2i.pt")
        return tmp_path / "c2i_tiny_256.safetensors", tmp_path / "vq_ds16_c2i.pt"
    if kind == "lumina":  # Lumina folders are named after their size
        return write_lumina(tmp_path / f"Lumina-mGPT-tiny-{LUMINA_RESOLUTION}"), None
    return {"janus": write_native_janus, "emu3": write_emu3}[kind](tmp_path / kind), None


@pytest.mark.parametrize("kind", ["llamagen", "janus", "lumina", "emu3"])
def test_every_family_loads_quantized_from_its_checkpoint_format_and_generates(kind, tmp_path):
    model, vq = _family_folder(kind, tmp_path)
    pipeline = load_pipeline(model, vq, dtype="bf16", device=DEVICE, quantize="int8")
    layers = linears(pipeline)
    assert layers and all(type(l.weight).__name__ == "Int8Tensor" for l in layers)
    plain = load_pipeline(model, vq, dtype="bf16", device=DEVICE)
    assert weight_bytes(plain.weights()) - weight_bytes(pipeline.weights()) == sum(
        l.weight.numel() * 2 - hand_bytes(l, "int8") for l in layers)
    settings = CacheSettings("linear", "1/2", anchors=2, recent_lines=1)
    if kind == "llamagen":
        batch = pipeline.generate(["207"], settings, seed=2)
    else:
        batch = pipeline.generate(PROMPT, batch=1, settings=settings, seed=2)
    assert batch.images.shape[0] == 1 and torch.isfinite(batch.images).all()



def test_generate_and_bench_json_report_the_quantized_weight_bytes(tmp_path):
    """What the CLI reports is what the int8 weights hold: the bf16 bytes less, per decoder linear,
    two bytes a weight traded for one code and five bytes a row."""
    plain = load_pipeline("demo-digits", dtype="bf16", device="cpu")
    saved = sum(layer.weight.numel() * 2 - hand_bytes(layer, "int8") for layer in linears(plain))
    assert saved > 0

    def cli(*args: str) -> dict:
        out = subprocess.run([sys.executable, "-m", "linear_core", *args, "--dtype", "bf16", "--device", "cpu",
                              "--budget", "1/4", "--json"], cwd=Path(__file__).resolve().parents[1],
                             capture_output=True, text=True, timeout=600)
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout)

    generated = cli("generate", "--model", "demo-digits", "--label", "3", "--quantize", "int8",
                    "--out", str(tmp_path / "three.png"))
    assert generated["quantize"] == "int8"
    assert generated["weight_bytes"] == weight_bytes(plain.weights()) - saved
    results = cli("bench", "--arch", "demo-digits", "--policies", "linear", "--quantize", "none,int8")["results"]
    assert list(results) == ["linear/none", "linear/int8"]
    assert [r["quantize"] for r in results.values()] == ["none", "int8"]
    assert results["linear/none"]["weight_bytes"] - results["linear/int8"]["weight_bytes"] == saved
    assert all(r["tokens_per_s"] > 0 and r["peak_memory_bytes"] > 0 for r in results.values())


def test_a_layer_offloaded_to_disk_keeps_its_dtype_and_the_rest_is_quantized(tmp_path):
    """The planner's last resort with quantization: accelerate keeps the offloaded layer's
    checkpoint weights, the layers on the device are int8, and the tokens are those of the same
    model in memory with only the device's layer quantized."""
    from test_janus import _spread_map

    folder = write_native_janus(tmp_path / "janus")
    spread = load_pipeline(folder, dtype="fp32", device_map=_spread_map([DEVICE, "disk"]),
                           offload_folder=tmp_path / "offload", quantize="int8")
    kept, offloaded = spread.model.backbone.layers[:2]
    assert all(type(m.weight).__name__ == "Int8Tensor" for m in kept.modules() if isinstance(m, nn.Linear))
    assert {p.device.type for p in offloaded.parameters()} == {"meta"}
    reference = load_pipeline(folder, dtype="fp32", device=DEVICE)
    quantize_linears(reference.model.backbone.layers[0], "int8", DEVICE)
    settings = CacheSettings("linear", "1/2", anchors=2, recent_lines=1)
    tokens = [p.generate(PROMPT, batch=1, settings=settings, seed=2).tokens for p in (spread, reference)]
    assert torch.equal(*tokens)


@pytest.mark.parametrize("install", ["missing", "built for another torch"])
def test_a_missing_or_broken_torchao_is_a_clear_error_before_any_weight_is_read(install, tmp_path, monkeypatch):
    for name in [n for n in sys.modules if n == "torchao" or n.startswith("torchao.")]:
        monkeypatch.delitem(sys.modules, name)
    if install == "missing":
        monkeypatch.setitem(sys.modules, "torchao", None)  # what Python does for a package not installed
    else:
        (tmp_path / "torchao" / "quantization").mkdir(parents=True)
        (tmp_path / "torchao" / "__init__.py").write_text("")
        (tmp_path / "torchao" / "quantization" / "__init__.py").write_text(
            "import torch\ntorch._C._no_such_kernel_registry\n")  # as an extension built for another torch fails
        monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ValueError, match="pip install torchao" if install == "missing" else "torchao release made for"):
        load_pipeline("demo-digits", dtype="bf16", device="cpu", quantize="int8")
