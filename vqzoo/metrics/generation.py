"""Fréchet distance (FID) and Inception Score on a named feature extractor.

The statistics are torchmetrics' (``FrechetInceptionDistance``,
``InceptionScore``: float64 sums, summed across DDP ranks before ``compute``).
The network that turns images into features is chosen by name, and is run
once per batch for both metrics (torchmetrics is handed the features through
an identity "feature" module):

* ``"inception"``: torch-fidelity's Inception-V3 (``inception-v3-compat``,
  pool3 2048-d features for FID, unbiased logits for IS) — the network of the
  published FID/IS numbers. Its weights are never downloaded here: the file
  :data:`INCEPTION_FILE` must be in :func:`inception_folder` (or be passed
  explicitly), else :func:`build_feature_extractor` stops with a message that
  names the file, the folder and the URL.
* ``"classifier:PATH"``: a small classifier trained on the data set
  (:mod:`vqzoo.metrics.classifier`). Its distance is **not** an FID: reports
  call it ``cFID (<classifier label> features)``, never rFID/gFID, because no
  published number uses it.
* anything registered with :func:`register_feature_extractor` (tests register
  a tiny deterministic one to run the whole path offline).

Every extractor reports what the protocol needs: its name, label, feature
dimension, the weights file and its SHA-256 (see :mod:`vqzoo.metrics.report`).
Images enter as float ``(B, C, H, W)`` in [-1, 1]; each extractor converts
them the way its network expects (Inception: uint8 RGB, resized to 299 by
torch-fidelity).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor, nn

from vqzoo.io import sha256_file
from vqzoo.metrics.features import FeatureExtractor

__all__ = [
    "FeatureExtractor",
    "GenerativeMetrics",
    "INCEPTION_FILE",
    "INCEPTION_URL",
    "InceptionExtractor",
    "build_feature_extractor",
    "inception_folder",
    "register_feature_extractor",
    "sha256_file",
]

INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"
INCEPTION_URL = "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/" + INCEPTION_FILE


def inception_folder() -> Path:
    """Where torch-fidelity (through ``torch.hub``) caches the Inception weights: ``$TORCH_HOME/hub/checkpoints``."""
    return Path(torch.hub.get_dir()) / "checkpoints"


class InceptionExtractor(FeatureExtractor):
    """torch-fidelity's Inception-V3 (the network of published FID/IS), from a local weights file."""

    name = "inception"
    label = "Inception-V3 (torch-fidelity inception-v3-compat, pool3 2048-d; IS on logits_unbiased)"
    num_features = 2048
    fid_name = "FID"
    is_name = "IS"

    def __init__(self, weights: str | os.PathLike | None = None) -> None:
        super().__init__()
        path = Path(weights) if weights else inception_folder() / INCEPTION_FILE
        if not path.is_file():
            raise FileNotFoundError(
                f"FID/IS need torch-fidelity's Inception-V3 weights, which are not downloaded here: "
                f"put {INCEPTION_FILE} into {path.parent} (or pass its path) — it is {INCEPTION_URL}. "
                "For an offline run use a classifier's features instead (--feature-extractor classifier:PATH), "
                "reported as cFID, or --feature-extractor none"
            )
        from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

        self.weights_file = path
        self.net = FeatureExtractorInceptionV3(
            "inception-v3-compat", ["2048", "logits_unbiased"], feature_extractor_weights_path=str(path)
        )

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        x = ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        feats, logits = self.net(x)
        return feats.reshape(x.shape[0], -1), logits.reshape(x.shape[0], -1)


_REGISTRY: dict[str, Callable[..., FeatureExtractor]] = {}


def register_feature_extractor(name: str, factory: Callable[..., FeatureExtractor]) -> None:
    """Make ``build_feature_extractor(name)`` (and ``--feature-extractor name``) return ``factory()``."""
    _REGISTRY[name] = factory


def build_feature_extractor(spec: str, inception_weights: str | None = None) -> FeatureExtractor:
    """``"inception"``, ``"classifier:PATH"`` or a registered name -> a frozen extractor in eval mode."""
    if spec == "inception":
        ext: FeatureExtractor = InceptionExtractor(inception_weights)
    elif spec.startswith("classifier:"):
        from vqzoo.metrics.classifier import ClassifierExtractor

        ext = ClassifierExtractor.from_dir(spec.split(":", 1)[1])
    elif spec in _REGISTRY:
        ext = _REGISTRY[spec]()
    else:
        known = ", ".join(["inception", "classifier:PATH", *_REGISTRY])
        raise ValueError(f"unknown feature extractor {spec!r}; expected one of: {known}")
    ext.eval().requires_grad_(False)
    return ext


class _Identity(nn.Module):
    """Hands precomputed features to torchmetrics (which otherwise runs its own network)."""

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.num_features = num_features

    def forward(self, x: Tensor) -> Tensor:
        return x


class GenerativeMetrics(nn.Module):
    """Fréchet distance and Inception Score of ``fake`` images against ``real`` ones.

    ``update_real`` / ``update_fake`` take images in [-1, 1]; ``update_features``
    takes features directly (tests, precomputed statistics). ``compute`` returns
    ``{"fd": ..., "is_mean": ..., "is_std": ..., "is_real_mean": ...}`` (IS
    only when the extractor has logits and ``inception_score``; ``is_real`` is
    the score of the real images, the ceiling a reconstruction can reach), as
    Python floats; under DDP the sums are gathered over ranks by torchmetrics first.
    """

    def __init__(self, extractor: FeatureExtractor | None, num_features: int | None = None,
                 inception_score: bool = True, is_splits: int = 10) -> None:
        super().__init__()
        from torchmetrics.image.fid import FrechetInceptionDistance
        from torchmetrics.image.inception import InceptionScore

        dim = extractor.num_features if extractor is not None else num_features
        if not dim:
            raise ValueError("GenerativeMetrics needs an extractor or num_features")
        self.extractor = extractor
        self.fid = FrechetInceptionDistance(feature=_Identity(dim), reset_real_features=True)
        self.inception_score = inception_score
        self.is_splits = is_splits
        self.isc = self.isc_real = None
        if inception_score:
            import warnings

            with warnings.catch_warnings():  # it keeps the logits of every image: N x K floats, small here
                warnings.filterwarnings("ignore", message=".*will save all extracted features.*")
                self.isc = InceptionScore(feature=_Identity(1), splits=is_splits)
                self.isc_real = InceptionScore(feature=_Identity(1), splits=is_splits)

    @torch.no_grad()
    def _features(self, images: Tensor) -> tuple[Tensor, Tensor | None]:
        assert self.extractor is not None
        return self.extractor(images)

    def update_features(self, features: Tensor, real: bool, logits: Tensor | None = None) -> None:
        self.fid.update(features.double(), real=real)
        if self.isc is not None and logits is not None:
            (self.isc_real if real else self.isc).update(logits.double())

    def update_real(self, images: Tensor) -> None:
        feats, logits = self._features(images)
        self.update_features(feats, real=True, logits=logits)

    def update_fake(self, images: Tensor) -> None:
        feats, logits = self._features(images)
        self.update_features(feats, real=False, logits=logits)

    def compute(self) -> dict[str, float]:
        out = {"fd": float(self.fid.compute())}
        if self.isc is not None and self.isc.update_count > 0:
            mean, std = self.isc.compute()
            out["is_mean"], out["is_std"] = float(mean), float(std)
        if self.isc_real is not None and self.isc_real.update_count > 0:
            mean, std = self.isc_real.compute()
            out["is_real_mean"], out["is_real_std"] = float(mean), float(std)
        return out

    def reset(self) -> None:
        self.fid.reset()
        for m in (self.isc, self.isc_real):
            if m is not None:
                m.reset()
