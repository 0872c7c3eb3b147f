"""Translation equivariance in the quantized space (TE-VQGAN paper, eq. 2).

A tokenizer is translation-equivariant in the quantized space when shifting an
object by a whole quadrant shifts its token indices by the matching number of
tokens and changes nothing else. Given the index maps of the same object drawn
in each of the four quadrants of an otherwise empty canvas, we cut out the
token block of the quadrant that holds the object in each map and count the
fraction of equal indices over all pairs of quadrants, as the authors' code
does (``ShiftEqMetric``).

This module holds the metric on index maps only; how the shifted copies are
drawn belongs to the experiment (the TE paper's quadrant canvases:
:mod:`vqzoo.experiments.te.equivariance`).

Decisions:

* Four quadrants, six pairs. The authors' arXiv v1 code also had a "center"
  placement (ten pairs); the ICASSP paper dropped it, and so do we.
* The token region of a quadrant is the whole corresponding quarter of the
  token map (empty margin included), as in the reference. The map's height and
  width must therefore be even, i.e. quadrant borders fall on token borders.
* Multichannel index maps ``(B, h, w, M)`` are accepted; all M indices of a
  position are compared. Per-token layouts ``(B, T)`` have no spatial
  arrangement, so equivariance is undefined for them and they are rejected.
"""

from __future__ import annotations

import itertools

import torch
from torch import Tensor

__all__ = [
    "check_index_map",
    "equivariance_rate_from_indices",
    "quadrant_token_regions",
]


def check_index_map(indices: Tensor, name: str = "indices") -> None:
    """Raise a ``ValueError`` unless ``indices`` is an integer ``(B, h, w[, M])`` map with even h and w."""
    if not isinstance(indices, Tensor):
        raise ValueError(f"{name} must be a tensor; got {type(indices).__name__}")
    if indices.dtype.is_floating_point or indices.dtype == torch.bool:
        raise ValueError(f"{name} must hold integer token indices; got dtype {indices.dtype}")
    if indices.dim() not in (3, 4):
        raise ValueError(
            f"{name} must be a spatial index map (B, h, w) or multichannel (B, h, w, M); got shape"
            f" {tuple(indices.shape)} (per-token (B, T) maps have no quadrants)"
        )
    h, w = indices.shape[1], indices.shape[2]
    if h % 2 or w % 2:
        raise ValueError(
            f"{name}: token map height and width must be even so quadrant borders fall on token"
            f" borders; got {h}x{w}"
        )


def quadrant_token_regions(indices: Tensor) -> Tensor:
    """Split index maps ``(B, h, w[, M])`` into ``(B, 4, h/2, w/2[, M])`` (UL, UR, LL, LR)."""
    check_index_map(indices)
    h2, w2 = indices.shape[1] // 2, indices.shape[2] // 2
    blocks = [indices[:, r * h2 : (r + 1) * h2, c * w2 : (c + 1) * w2] for r in (0, 1) for c in (0, 1)]
    return torch.stack(blocks, dim=1)


def equivariance_rate_from_indices(indices: Tensor) -> float:
    """Fraction of equal indices between the quadrant token regions of shifted copies.

    Args:
        indices: ``(N, 4, h, w[, M])`` integer maps; ``indices[n, k]`` is the
            token map of object n drawn in quadrant k (UL, UR, LL, LR).

    Returns:
        The mean, over the six quadrant pairs (i, j), all N objects and every
        token of the region, of ``[region_i(map_i) == region_j(map_j)]``,
        where ``region_k(map_k)`` is the quarter of ``map_k`` covering quadrant k.
    """
    if not isinstance(indices, Tensor) or indices.dim() not in (4, 5) or indices.shape[1] != 4:
        raise ValueError(
            "expected (N, 4, h, w) or (N, 4, h, w, M) index maps, one per quadrant placement; got"
            f" {tuple(getattr(indices, 'shape', ()))}"
        )
    if indices.shape[0] == 0:
        raise ValueError("need at least one object (N >= 1)")
    n = indices.shape[0]
    flat = indices.reshape(n * 4, *indices.shape[2:])
    regions = quadrant_token_regions(flat)
    regions = regions.reshape(n, 4, 4, *regions.shape[2:])
    # regions[n, k, r] is region r of the map for placement k; keep r == k.
    own = torch.stack([regions[:, k, k] for k in range(4)], dim=1)
    matches = [(own[:, i] == own[:, j]).double().mean() for i, j in itertools.combinations(range(4), 2)]
    return float(torch.stack(matches).mean())
