"""A small image classifier whose features stand in for Inception where its weights cannot be had.

The Fréchet distance on these features is reported as ``cFID (<label>
features)`` — a number to compare runs of this library on the same data, never
an rFID/gFID comparable with published tables (those use Inception-V3, see
:mod:`vqzoo.metrics.generation`).

The network (like the TE experiment's quadrant classifier, smaller): three
3x3 conv stages with BatchNorm and ReLU at widths ``w, 2w, 4w`` (strides 1, 2,
2), global average pooling -> ``4w`` features, one linear head -> logits (the
Inception Score uses them). Saved as a directory with ``model.safetensors``
and ``config.json`` (no pickle); :func:`train_feature_classifier` trains one
with plain torch on a tensor data set.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vqzoo.metrics.features import FeatureExtractor

__all__ = ["ClassifierExtractor", "FeatureClassifier", "train_feature_classifier"]

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


class FeatureClassifier(nn.Module):
    """Images ``(B, in_channels, resolution, resolution)`` in [-1, 1] -> (features, logits)."""

    def __init__(self, in_channels: int = 1, resolution: int = 32, num_classes: int = 10, width: int = 32) -> None:
        super().__init__()
        self.config = {"in_channels": in_channels, "resolution": resolution, "num_classes": num_classes, "width": width}
        self.in_channels, self.resolution = in_channels, resolution

        def stage(c_in: int, c_out: int, stride: int) -> nn.Sequential:
            return nn.Sequential(
                nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(),
                nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(),
            )

        self.body = nn.Sequential(stage(in_channels, width, 1), stage(width, 2 * width, 2), stage(2 * width, 4 * width, 2))
        self.head = nn.Linear(4 * width, num_classes)
        self.num_features = 4 * width

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        feats = self.body(x).mean(dim=(2, 3))
        return feats, self.head(feats)

    def save(self, out: str | os.PathLike, meta: dict[str, Any] | None = None) -> Path:
        """Write ``model.safetensors`` + ``config.json`` (with ``meta``: label, data set, accuracy) atomically."""
        from safetensors.torch import save_file

        from vqzoo.io import atomic_dir

        with atomic_dir(out, overwrite=True) as tmp:
            save_file({k: v.contiguous() for k, v in self.state_dict().items()}, str(tmp / WEIGHTS_NAME))
            (tmp / CONFIG_NAME).write_text(json.dumps({"config": self.config, "meta": meta or {}}, indent=2))
        return Path(out)


class ClassifierExtractor(FeatureExtractor):
    """A trained :class:`FeatureClassifier` as a feature extractor (pooled features + logits)."""

    backend = "torchmetrics (FrechetInceptionDistance/InceptionScore statistics on classifier features)"

    def __init__(self, net: FeatureClassifier, weights_file: Path | None = None, label: str = "classifier",
                 name: str = "classifier") -> None:
        super().__init__()
        self.net = net
        self.num_features = net.num_features
        self.weights_file = weights_file
        self.label = f"{label} features"
        self.name = name
        self.fid_name = f"cFID ({label} features)"
        self.is_name = f"cIS ({label} logits)"

    @classmethod
    def from_dir(cls, path: str | os.PathLike) -> ClassifierExtractor:
        from safetensors.torch import load_file

        path = Path(path)
        cfg_file, weights = path / CONFIG_NAME, path / WEIGHTS_NAME
        if not (cfg_file.is_file() and weights.is_file()):
            raise FileNotFoundError(
                f"no feature classifier at {path}: expected a directory with {CONFIG_NAME} and {WEIGHTS_NAME} "
                "(written by benchmarks/train_feature_classifier.py)"
            )
        meta = json.loads(cfg_file.read_text())
        net = FeatureClassifier(**meta["config"])
        net.load_state_dict(load_file(str(weights)))
        label = (meta.get("meta") or {}).get("label", "classifier")
        return cls(net.eval(), weights, label=label, name=f"classifier:{path}")

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        if images.shape[1] != self.net.in_channels:
            raise ValueError(
                f"the feature classifier takes {self.net.in_channels}-channel images, got {images.shape[1]} channels"
            )
        if images.shape[-2:] != (self.net.resolution, self.net.resolution):
            images = F.interpolate(images.float(), size=(self.net.resolution,) * 2, mode="bilinear", antialias=True,
                                   align_corners=False)
        return self.net(images.float().clamp(-1, 1))


def train_feature_classifier(
    images: Tensor, labels: Tensor, num_classes: int = 10, width: int = 32, epochs: int = 3,
    batch_size: int = 64, lr: float = 3e-3, seed: int = 0,
) -> FeatureClassifier:
    """Train a :class:`FeatureClassifier` on ``images`` (N, C, H, W) in [-1, 1] with AdamW and a one-cycle schedule."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    net = FeatureClassifier(images.shape[1], images.shape[-1], num_classes, width)
    steps = epochs * ((len(images) + batch_size - 1) // batch_size)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    net.train()
    for _ in range(epochs):
        order = torch.randperm(len(images), generator=g)
        for i in range(0, len(images), batch_size):
            idx = order[i : i + batch_size]
            x = images[idx]
            # small random shifts: features then describe digits, not pixel positions
            x = torch.roll(x, shifts=(int(torch.randint(-2, 3, (1,), generator=g)), int(torch.randint(-2, 3, (1,), generator=g))), dims=(2, 3))
            loss = F.cross_entropy(net(x)[1], labels[idx].long())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    return net.eval()
