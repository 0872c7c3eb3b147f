"""The feature-extractor interface behind FID/IS-style scores (Inception, a classifier, a test network)."""

from __future__ import annotations

from pathlib import Path

from torch import nn

from vqzoo.io import sha256_file

__all__ = ["FeatureExtractor"]


class FeatureExtractor(nn.Module):
    """Images in [-1, 1] -> ``(features (B, F), logits (B, K) or None)``.

    Attributes: ``name`` (spec), ``label`` (for reports), ``num_features``,
    ``weights_file`` (Path or None), ``fid_name`` (what the Fréchet distance
    on these features is called: ``"FID"`` only for Inception).
    """

    name: str = "?"
    label: str = "?"
    num_features: int = 0
    weights_file: Path | None = None
    fid_name: str = "FD"
    is_name: str = "IS-formula score"
    backend: str = "torchmetrics"

    def protocol(self) -> dict:
        """The feature-extractor part of a report's protocol."""
        return {
            "name": self.name,
            "label": self.label,
            "num_features": self.num_features,
            "weights_file": str(self.weights_file) if self.weights_file else None,
            "weights_sha256": sha256_file(self.weights_file) if self.weights_file else None,
            "distance_name": self.fid_name,
            "score_name": self.is_name,
        }
