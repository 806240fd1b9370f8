"""`generate` and `fidelity` end to end: the CLI in a subprocess on tiny LlamaGen files, the
fidelity machinery, labels, and the built-in demo model."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from conftest import DEVICE
from linear_core import CacheSettings
from linear_core.fidelity import fidelity_report, spread_labels
from linear_core.labels import imagenet_classes, resolve_label
from linear_core.loading import load_pipeline
from llamagen_files import tiny_vq_state, upstream_state

ROOT = Path(__file__).resolve().parents[1]
GRID = 4


def run(*args):
    return subprocess.run([sys.executable, "-m", "linear_core", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=600)


@pytest.fixture
def files(tmp_path):
    gpt, vq = tmp_path / "c2i_T_256.pt", tmp_path / "vq_ds16_c2i.pt"
    torch.save({"model": upstream_state()}, gpt)
    torch.save({"model": tiny_vq_state()}, vq)
    return gpt, vq


def test_generate_cli_writes_png_and_json(files, tmp_path):
    gpt, vq = files
    out = tmp_path / "grid.png"
    result = run("generate", "--model", str(gpt), "--vq", str(vq), "--heads", "4", "--grid", str(GRID),
                 "--label", "3", "--label", "7", "--batch", "3", "--policy", "linear", "--budget", "2 lines",
                 "--anchors", "1", "--recent-lines", "1", "--cfg", "2", "--seed", "5", "--out", str(out),
                 "--device", "cpu", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["image"] == str(out) and out.is_file()
    with Image.open(out) as image:  # 3 images of 8x8 px in a 2x2 grid with 2 px gaps
        assert image.size == (2 * 8 + 3 * 2, 2 * 8 + 3 * 2)
    assert report["labels"] == [3, 7, 3] and report["batch"] == 3 and report["budget_tokens"] == 8
    assert 0 < report["peak_kv_bytes"] < report["full_kv_bytes"]
    assert report["tokens_per_s"] > 0 and report["seconds"] > 0 and report["cfg"] == 2.0


def test_generate_cli_errors_name_the_fix(files, tmp_path):
    gpt, vq = files
    common = ["--heads", "4", "--grid", str(GRID), "--device", "cpu", "--out", str(tmp_path / "x.png")]
    no_vq = run("generate", "--model", str(gpt), *common)
    assert no_vq.returncode == 2 and "VQ tokenizer" in no_vq.stderr
    swapped = run("generate", "--model", str(vq), "--vq", str(gpt), *common)
    assert swapped.returncode == 2 and "VQ image tokenizer" in swapped.stderr
    tight = run("generate", "--model", str(gpt), "--vq", str(vq), "--budget", "1 lines", *common)
    assert tight.returncode == 2 and "budget" in tight.stderr.lower()
    missing = run("generate", "--model", str(tmp_path / "absent.pt"), *common)
    assert missing.returncode == 2 and "not found" in missing.stderr
    label = run("generate", "--model", str(gpt), "--vq", str(vq), "--label", "11", *common)
    assert label.returncode == 2 and "out of range" in label.stderr


def test_fidelity_machinery(files):
    gpt, vq = files
    pipeline = load_pipeline(gpt, vq, grid=GRID, device=DEVICE, heads=4)
    whole = CacheSettings(anchors=1, recent_lines=1)
    exact = fidelity_report(pipeline, ("full", "linear"), budget="1.0", sequences=6, batch=4, cfg=2.0, base=whole)
    for name in ("full", "linear"):
        result = exact["results"][name]
        assert result["kl_mean"] == pytest.approx(0, abs=1e-6)
        assert result["top1_agreement"] == 1 and result["coupled_agreement"] == 1
    lossy = fidelity_report(pipeline, ("linear", "random"), budget="2 lines", sequences=6, batch=4, cfg=2.0, base=whole)
    again = fidelity_report(pipeline, ("linear", "random"), budget="2 lines", sequences=6, batch=4, cfg=2.0, base=whole)
    assert lossy == again  # deterministic for a fixed seed set
    assert lossy["budget_tokens"] == 2 * GRID and lossy["n_sequences"] == 6
    for result in lossy["results"].values():
        assert len(result["kl_per_line"]) == GRID
        assert result["kl_per_line"][0] == pytest.approx(0, abs=1e-6)  # nothing evicted before line 1 ends
        assert result["kl_mean"] > 1e-4
        assert sum(result["kl_per_line"]) / GRID == pytest.approx(result["kl_mean"], rel=1e-4)


def test_spread_labels_cover_every_class():
    assert sorted(set(spread_labels(40, 10))) == list(range(10))
    assert len(set(spread_labels(40, 1000))) == 40


def test_imagenet_labels():
    names = imagenet_classes()
    assert len(names) == 1000 and len(set(names)) == 1000
    assert resolve_label("golden retriever", names) == 207 == resolve_label("207", names)
    assert resolve_label("207: golden retriever", names) == 207
    with pytest.raises(ValueError, match="ambiguous"):
        resolve_label("retriever", names)
    with pytest.raises(ValueError, match="Did you mean 'golden retriever'"):
        resolve_label("golden retreiver", names)


def test_demo_model_draws_the_requested_digits():
    """Nearest-class-mean classification (means of real digits) recognises most samples drawn under LineAR."""
    sklearn = pytest.importorskip("sklearn.datasets")
    from linear_core.demo import class_means, nearest_mean_accuracy

    pipeline = load_pipeline("demo-digits", device=DEVICE)
    grid = pipeline.layout.grid_h
    assert pipeline.family == "demo-digits" and pipeline.class_names[7] == "7"
    digits = sklearn.load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32).flatten(1) / 16
    means = class_means(images, torch.tensor(digits.target))
    labels = [c for c in range(10) for _ in range(4)]
    batch = pipeline.generate(labels, CacheSettings(policy="linear", budget="1/4"), seed=0)
    assert batch.images.shape == (40, 3, 8 * grid, 8 * grid)
    accuracy = nearest_mean_accuracy(pipeline.decode.to_digits8(batch.tokens), torch.tensor(labels), means)
    # chance is 0.1; the model card measured 0.93 on 400 samples (P(< 0.7 on 40) ≈ 2e-6 at that rate)
    assert accuracy >= 0.7, accuracy


def test_demo_is_the_cli_default(tmp_path):
    out = tmp_path / "seven.png"
    result = run("generate", "--label", "7", "--policy", "linear", "--budget", "1/4", "--out", str(out), "--device", "cpu", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["model"] == "demo-digits" and report["budget_tokens"] == report["image_tokens"] // 4 and out.is_file()
    assert report["peak_kv_bytes"] < report["full_kv_bytes"]
