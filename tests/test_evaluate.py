"""`evaluate` through torch-fidelity with a small stand-in for Inception, registered with the library and
loaded from a weights file the way the real one is; scores checked against numpy/scipy formulas."""
from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import torch
from PIL import Image
from torch import nn

torch_fidelity = pytest.importorskip("torch_fidelity")
from torch_fidelity.feature_extractor_base import FeatureExtractorBase  # noqa: E402
from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY, register_feature_extractor  # noqa: E402

from linear_core.cli import main  # noqa: E402
from linear_core.evaluate import evaluate  # noqa: E402

STAND_IN = "linear-ar-test-stand-in"


class Net(nn.Module):
    """6 pooled features and 4 logits of an image in [0, 1]."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 6, 3, stride=2), nn.Tanh(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(6, 4)


class StandIn(FeatureExtractorBase):
    """torch-fidelity's side of `Net`: uint8 images in, named features out, weights from a file."""

    def __init__(self, name, features_list, feature_extractor_weights_path=None, **kwargs):
        super().__init__(name, features_list)
        self.net = Net()
        self.net.load_state_dict(torch.load(feature_extractor_weights_path, weights_only=True))

    def forward(self, x):
        features = self.net.body(x.float() / 255)
        out = {"pool": features, "logits": self.net.head(features)}
        return tuple(out[name] for name in self.features_list)

    @staticmethod
    def get_provided_features_list():
        return "pool", "logits"

    @staticmethod
    def get_default_feature_layer_for_metric(metric):
        return {"fid": "pool", "isc": "logits"}[metric]

    @staticmethod
    def can_be_compiled():
        return False

    @staticmethod
    def get_dummy_input_for_compile():
        return torch.zeros(1, 3, 32, 32, dtype=torch.uint8)


@pytest.fixture
def weights(tmp_path):
    if STAND_IN not in FEATURE_EXTRACTORS_REGISTRY:
        register_feature_extractor(STAND_IN, StandIn)
    torch.manual_seed(0)
    net = Net()
    path = tmp_path / "stand_in.pt"
    torch.save(net.state_dict(), path)
    return path, net


def images(seed: int, count: int, shift: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(rng.integers(0, 200, (count, 32, 32, 3)) + shift, 0, 255).astype(np.uint8)


def reference_fid(a: np.ndarray, b: np.ndarray) -> float:
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean))


def test_fid_and_inception_score_match_the_formulas(weights, tmp_path):
    path, net = weights
    ours, theirs = images(1, 40), images(2, 50, shift=40)
    folder = tmp_path / "samples"
    folder.mkdir()
    for i, image in enumerate(ours):
        Image.fromarray(image).save(folder / f"{i:06d}_0.png")
    np.savez(tmp_path / "ref_images.npz", arr_0=theirs)

    with torch.no_grad():
        f_ours = net.body(torch.from_numpy(ours).permute(0, 3, 1, 2).float() / 255)
        f_theirs = net.body(torch.from_numpy(theirs).permute(0, 3, 1, 2).float() / 255)
        logits = net.head(f_ours).double().numpy()
    expected = reference_fid(f_ours.double().numpy(), f_theirs.double().numpy())
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    expected_is = float(np.exp((p * (np.log(p) - np.log(p.mean(0)))).sum(1).mean()))

    report = evaluate(folder, tmp_path / "ref_images.npz", path, isc=True, extractor=STAND_IN, device="cpu", isc_splits=1)
    assert report["images"] == 40 and expected > 0.01
    assert report["fid"] == pytest.approx(expected, rel=1e-4)
    assert report["inception_score"] == pytest.approx(expected_is, rel=1e-6)

    # a reference of statistics, as ADM ships them; and samples as an .npz
    f = f_theirs.double().numpy()
    np.savez(tmp_path / "ref_stats.npz", mu=f.mean(0), sigma=np.cov(f, rowvar=False))
    np.savez(tmp_path / "ours.npz", arr_0=ours)
    again = evaluate(tmp_path / "ours.npz", tmp_path / "ref_stats.npz", path, extractor=STAND_IN, device="cpu")
    assert again["fid"] == pytest.approx(expected, rel=1e-4) and "inception_score" not in again


def test_bad_evaluation_input_is_a_clear_error(weights, tmp_path, capsys):
    path, _ = weights
    np.savez(tmp_path / "ours.npz", arr_0=images(1, 4))
    np.savez(tmp_path / "odd.npz", something=np.zeros(3))
    with pytest.raises(ValueError, match="neither mu/sigma nor arr_0"):
        evaluate(tmp_path / "ours.npz", tmp_path / "odd.npz", path, extractor=STAND_IN, device="cpu")
    with pytest.raises(ValueError, match="has no arr_0"):
        evaluate(tmp_path / "odd.npz", tmp_path / "ours.npz", path, extractor=STAND_IN, device="cpu")
    np.savez(tmp_path / "wide.npz", mu=np.zeros(2048), sigma=np.eye(2048))
    with pytest.raises(ValueError, match="2048-d statistics"):
        evaluate(tmp_path / "ours.npz", tmp_path / "wide.npz", path, extractor=STAND_IN, device="cpu")
    argv = ["evaluate", str(tmp_path / "ours.npz"), "--ref", str(tmp_path / "ours.npz"), "--inception",
            str(tmp_path / "missing.pth"), "--json"]
    assert main(argv) == 2
    assert "nothing is downloaded" in capsys.readouterr().err
