"""`python -m linear_core bench` end to end, in a subprocess, as users run it."""
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(*args):
    return subprocess.run([sys.executable, "-m", "linear_core", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=600)


def test_bench_json_reports_every_policy():
    out = run("bench", "--arch", "llamagen-b", "--layers", "1", "--grid", "8", "--batch", "2", "--budget", "1/2",
              "--policies", "full,linear,streaming,h2o,rkv,random", "--anchors", "2", "--recent-lines", "1",
              "--device", "cpu", "--json")
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    layout = report["layout"]
    assert (layout["prefix_len"], layout["grid_h"], layout["line_tokens"], layout["budget_tokens"], layout["batch"]) == (1, 8, 8, 32, 2)
    assert layout["device"] == "cpu" and layout["dtype"] == "fp32"
    full = report["results"]["full"]
    for name, result in report["results"].items():
        assert result["tokens_per_s"] > 0 and result["decode_s"] > 0
        assert result["full_kv_bytes"] == full["peak_kv_bytes"]
        if name != "full":
            # (prefix + B + W') / (prefix + N) of the full cache
            assert result["peak_kv_bytes"] * (1 + 64) == full["peak_kv_bytes"] * (1 + 32 + 8)
            assert result["compression_s"] > 0


def test_bench_bad_budget_is_a_clear_error():
    out = run("bench", "--layers", "1", "--grid", "4", "--budget", "1/16", "--policies", "linear", "--device", "cpu")
    assert out.returncode == 2
    assert "raise the budget" in out.stderr


def test_bench_several_budgets_side_by_side():
    out = run("bench", "--layers", "1", "--grid", "6", "--budget", "1/2,1/3", "--policies", "full,linear",
              "--anchors", "1", "--recent-lines", "1", "--device", "cpu", "--json")
    assert out.returncode == 0, out.stderr
    results = json.loads(out.stdout)["results"]
    assert list(results) == ["full", "linear@1/2", "linear@1/3"]
    assert (results["linear@1/2"]["budget_tokens"], results["linear@1/3"]["budget_tokens"]) == (18, 12)
    assert results["full"]["peak_kv_bytes"] > results["linear@1/2"]["peak_kv_bytes"] > results["linear@1/3"]["peak_kv_bytes"]


def test_plain_import_without_comfyui():
    out = subprocess.run([sys.executable, "-c", "import importlib.util, sys;"
                          f"spec = importlib.util.spec_from_file_location('pack', r'{ROOT / '__init__.py'}');"
                          "m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m); print(m.__all__)"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_named_architectures_match_the_paper_layouts():
    from linear_core.archs import get_arch

    lumina = get_arch("lumina-mgpt-7b-768").layout("1/8")
    assert (lumina.line_tokens, lumina.image_tokens, lumina.budget_tokens) == (49, 2352, 294)
    assert get_arch("lumina-mgpt-7b-1024").layout("1/8").budget_tokens == 520
    assert get_arch("llamagen-xl").layout("1/6").budget_tokens == 96
    assert get_arch("janus-pro-7b").cfg_layout == "halves" and get_arch("lumina-mgpt-7b-768").cfg_layout == "separate"
