"""`scripts/train_demo.py` end to end at toy size: the files it writes load through the real loader."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from linear_core.loading import load_pipeline
from linear_core.settings import CacheSettings

ROOT = Path(__file__).resolve().parents[1]


def test_a_short_training_run_writes_a_loadable_demo_model(tmp_path):
    pytest.importorskip("sklearn.datasets")
    out, checkpoints = tmp_path / "demo", tmp_path / "checkpoints"
    command = [sys.executable, str(ROOT / "scripts" / "train_demo.py"), "--steps", "4", "--grid", "16",
               "--dim", "32", "--layers", "1", "--heads", "2", "--cls-tokens", "3", "--cfgs", "1,2",
               "--temperatures", "1.0", "--per-class", "1", "--eval-every", "2", "--checkpoints", str(checkpoints),
               "--threads", "1", "--out", str(out)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert "step 2: sample accuracy" in result.stdout and (checkpoints / "step-2.safetensors").is_file()

    config = json.loads((out / "config.json").read_text())
    training = config["training"]
    assert config["grid"] == 16 and training["steps"] == 4 and training["spec"]["cls_token_num"] == 3
    assert training["augmentation"].startswith("random affine") and len(training["sample_accuracy"]) == 2
    assert (config["defaults"]["cfg"], config["defaults"]["temperature"]) in {
        (row["cfg"], row["temperature"]) for row in training["sample_accuracy"]}

    pipeline = load_pipeline(out, device="cpu")
    assert pipeline.model.spec.cls_token_num == 3 and pipeline.layout.prefix_len == 3
    batch = pipeline.generate([0, 9], CacheSettings(policy="linear", budget="4 lines", anchors=2, recent_lines=1), seed=0)
    assert batch.tokens.shape == (2, 256) and int(batch.tokens.max()) < 8
    assert batch.images.shape == (2, 3, 128, 128) and torch.isfinite(batch.images).all()


def test_a_grid_too_small_for_the_progress_check_is_refused_before_training(tmp_path):
    pytest.importorskip("sklearn.datasets")
    command = [sys.executable, str(ROOT / "scripts" / "train_demo.py"), "--steps", "4", "--grid", "8",
               "--eval-every", "2", "--out", str(tmp_path / "demo")]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 2 and "use --grid 16 or more" in result.stderr, result.stderr
    assert "step " not in result.stdout and not (tmp_path / "demo" / "model.safetensors").exists()
