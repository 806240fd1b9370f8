"""FID (and Inception Score) of a sample folder or ``.npz`` against a reference, through torch-fidelity.

torch-fidelity's ``inception-v3-compat`` reproduces the TensorFlow Inception graph that the ADM /
guided-diffusion reference statistics were computed with; we use its extractor, its FID and its
IS, and only read the inputs: PNGs or ``arr_0`` on our side, a reference ``.npz`` of statistics
(``mu``, ``sigma``, as ADM ships them) or of images (``arr_0``). The weights come from a local file
(nothing is downloaded). Any extractor registered with torch-fidelity runs through the same code,
which is how the tests use a small stand-in network.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

INCEPTION = "inception-v3-compat"
INSTALL = "pip install torch-fidelity==0.4.0"


def _fidelity():
    try:
        from torch_fidelity import metric_fid, metric_isc, registry, utils
    except ImportError:
        raise ValueError(f"evaluate needs torch-fidelity: {INSTALL}") from None
    return metric_fid, metric_isc, registry, utils


class _Images(torch.utils.data.Dataset):
    """uint8 ``(3, H, W)`` tensors, what torch-fidelity's extractors take."""

    def __init__(self, array: np.ndarray) -> None:
        self.array = array

    def __len__(self) -> int:
        return len(self.array)

    def __getitem__(self, i: int) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(self.array[i])).permute(2, 0, 1)


def load_images(path: str | Path) -> np.ndarray:
    """A sample folder (its PNGs, in name order) or an ``.npz`` with ``arr_0`` → uint8 ``N×H×W×3``."""
    from PIL import Image

    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.glob("*.png") if not p.name.startswith("."))
        if not files:
            raise ValueError(f"{path} holds no PNG images: give a folder written by 'sample', or its .npz.")
        images = []
        for file in files:
            with Image.open(file) as image:
                images.append(np.asarray(image.convert("RGB"), dtype=np.uint8))
        if len({image.shape for image in images}) > 1:
            raise ValueError(f"the images in {path} have different sizes: evaluate one run at a time.")
        return np.stack(images)
    data = _npz(path)
    if "arr_0" not in data:
        raise ValueError(f"{path.name} has no arr_0 (found {', '.join(data.files)}): give the images' .npz.")
    array = data["arr_0"]
    if array.dtype != np.uint8 or array.ndim != 4 or array.shape[-1] != 3:
        raise ValueError(f"{path.name}: arr_0 is {array.dtype} {array.shape}; expected uint8 N×H×W×3.")
    return array


def _npz(path: Path):
    if not path.is_file():
        raise ValueError(f"{path} does not exist: give a sample folder or an .npz.")
    try:
        return np.load(path)
    except (OSError, ValueError) as error:
        raise ValueError(f"{path.name} is not a readable .npz ({error}).") from None


def evaluate(samples: str | Path, reference: str | Path, weights: str | Path | None, isc: bool = False,
             extractor: str = INCEPTION, batch: int = 64, device: str | None = None, isc_splits: int = 10) -> dict:
    """FID of ``samples`` against ``reference`` (statistics or images) and, with ``isc``, the
    Inception Score, using torch-fidelity's ``extractor`` loaded from ``weights``."""
    metric_fid, metric_isc, registry, utils = _fidelity()
    if extractor not in registry.FEATURE_EXTRACTORS_REGISTRY:
        known = ", ".join(registry.FEATURE_EXTRACTORS_REGISTRY)
        raise ValueError(f"unknown feature extractor {extractor!r}; registered: {known}.")
    if weights is None or not Path(weights).is_file():
        raise ValueError(f"--inception {weights!s}: give the local weights file of {extractor} (for Inception: "
                         "pt_inception-2015-12-05-6726825d.pth, as torch-fidelity publishes it); nothing is downloaded.")
    images = load_images(samples)
    cls = registry.FEATURE_EXTRACTORS_REGISTRY[extractor]
    fid_layer = cls.get_default_feature_layer_for_metric("fid")
    isc_layer = cls.get_default_feature_layer_for_metric("isc")
    layers = [fid_layer] + ([isc_layer] if isc and isc_layer != fid_layer else [])
    cuda = (device or ("cuda" if torch.cuda.is_available() else "cpu")).startswith("cuda")
    net = utils.create_feature_extractor(extractor, layers, cuda=cuda, feature_extractor_weights_path=str(weights),
                                         verbose=False)

    def features(array: np.ndarray) -> dict:
        return utils.get_featuresdict_from_dataset(_Images(array), net, batch, cuda, save_cpu_ram=True, verbose=False)

    ours = features(images)
    stats = {k: v.astype(np.float64) for k, v in metric_fid.fid_features_to_statistics(ours[fid_layer]).items()}
    reference_stats = _reference_statistics(Path(reference), lambda array: features(array)[fid_layer], metric_fid)
    if reference_stats["mu"].shape != stats["mu"].shape:
        raise ValueError(f"{Path(reference).name} holds {reference_stats['mu'].shape[0]}-d statistics, {extractor} "
                         f"gives {stats['mu'].shape[0]}-d features: use the extractor the reference was made with.")
    report = {"images": len(images), "reference": Path(reference).name, "extractor": extractor,
              "fid": metric_fid.fid_statistics_to_metric(stats, reference_stats, False)[metric_fid.KEY_METRIC_FID]}
    if isc:
        scores = metric_isc.isc_features_to_metric(ours[isc_layer], splits=isc_splits)
        report.update(inception_score=scores[metric_isc.KEY_METRIC_ISC_MEAN],
                      inception_score_std=scores[metric_isc.KEY_METRIC_ISC_STD])
    return report


def _reference_statistics(path: Path, features, metric_fid) -> dict:
    """``mu`` / ``sigma`` as stored, or computed from the reference's ``arr_0`` images."""
    data = _npz(path)
    if "mu" in data and "sigma" in data:
        return {"mu": data["mu"].astype(np.float64), "sigma": data["sigma"].astype(np.float64)}
    if "arr_0" in data:
        stats = metric_fid.fid_features_to_statistics(features(load_images(path)))
        return {k: v.astype(np.float64) for k, v in stats.items()}
    raise ValueError(f"{path.name} has neither mu/sigma nor arr_0 (found {', '.join(data.files)}): give the "
                     "reference batch's .npz (ADM's VIRTUAL_imagenet256_labeled.npz, for example).")


def format_evaluation(report: dict) -> str:
    line = f"FID {report['fid']:.4f} over {report['images']} images against {report['reference']} ({report['extractor']})"
    if "inception_score" in report:
        line += f"\nInception Score {report['inception_score']:.4f} ± {report['inception_score_std']:.4f}"
    return line
