"""Translation equivariance and the stage-1 report of the TE-VQGAN paper (table 3).

The general metric on index maps lives in :mod:`vqzoo.metrics.equivariance`;
this module draws the shifted copies the way the quadrant dataset draws its
objects (:mod:`vqzoo.experiments.te.quadrants`) and gathers the stage-1
numbers of table 3.

Decisions:

* The objects are raw 28x28 source images, padded and resized exactly as the
  quadrant dataset does, each drawn in one color on a black canvas.
* The stage-1 report's L1 is ``mean |x - x_hat|`` on the [-1, 1] image scale
  the tokenizers train on; code usage is the number of distinct indices seen
  on the whole evaluation set (docs/pitfalls.md #10: not a sliding
  window).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import torch
from torch import Tensor

from vqzoo.data.batch import as_batch
from vqzoo.experiments.te.quadrants import COLOR_RGB, prepare_tiles
from vqzoo.metrics.equivariance import check_index_map, equivariance_rate_from_indices

__all__ = [
    "equivariance_rate",
    "place_in_all_quadrants",
    "stage1_report",
]

TokenizeFn = Callable[[Tensor], Tensor]


def place_in_all_quadrants(
    digits: np.ndarray | Tensor, colors: np.ndarray | Tensor | int, canvas_size: int
) -> Tensor:
    """Draw each 28x28 source image in each quadrant of a black canvas.

    Args:
        digits: uint8 ``(N, 28, 28)`` raw source images (padded and resized
            exactly as the quadrant dataset does).
        colors: color id per image ``(N,)`` or one id for all (0 white, 1 red, 2 green, 3 blue).
        canvas_size: S (even).

    Returns:
        float32 ``(N, 4, 3, S, S)`` in [-1, 1]; ``[:, k]`` has the object in quadrant k.
    """
    if canvas_size % 2 or canvas_size < 8:
        raise ValueError(f"canvas_size must be an even integer >= 8; got {canvas_size}")
    q = canvas_size // 2
    tiles = torch.from_numpy(prepare_tiles(digits, q)).float() / 255.0
    n = tiles.shape[0]
    colors_t = torch.as_tensor(colors, dtype=torch.int64)
    if colors_t.dim() == 0:
        colors_t = colors_t.expand(n)
    if colors_t.shape != (n,) or colors_t.min() < 0 or colors_t.max() > 3:
        raise ValueError(f"colors must be one id in 0..3 or one per image ({n},); got {colors!r}")
    rgb = torch.from_numpy(COLOR_RGB)[colors_t]  # (N, 3)
    colored = tiles[:, None] * rgb[:, :, None, None]  # (N, 3, q, q)
    out = torch.zeros(n, 4, 3, canvas_size, canvas_size)
    for k in range(4):
        r, c = divmod(k, 2)
        out[:, k, :, r * q : (r + 1) * q, c * q : (c + 1) * q] = colored
    return out * 2.0 - 1.0


@torch.no_grad()
def equivariance_rate(
    tokenize_fn: TokenizeFn,
    digits: np.ndarray | Tensor,
    colors: np.ndarray | Tensor | int,
    canvas_size: int,
    batch_size: int = 64,
    device: torch.device | str | None = None,
) -> float:
    """Translation-equivariance rate of a tokenizer (see :func:`equivariance_rate_from_indices`).

    Args:
        tokenize_fn: maps images ``(B, 3, S, S)`` in [-1, 1] to index maps
            ``(B, h, w[, M])``; e.g. ``model.tokenize``.
        digits: uint8 ``(N, 28, 28)`` source images.
        colors: color id per image or one for all.
        canvas_size: S.
        batch_size: canvases per ``tokenize_fn`` call.
        device: where to put the canvases (default: CPU).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1; got {batch_size}")
    canvases = place_in_all_quadrants(digits, colors, canvas_size)
    n = canvases.shape[0]
    flat = canvases.reshape(n * 4, 3, canvas_size, canvas_size)
    maps = []
    for start in range(0, flat.shape[0], batch_size):
        batch = flat[start : start + batch_size]
        if device is not None:
            batch = batch.to(device)
        idx = tokenize_fn(batch)
        check_index_map(idx, "tokenize_fn output")
        maps.append(idx.cpu())
    indices = torch.cat(maps)
    return equivariance_rate_from_indices(indices.reshape(n, 4, *indices.shape[1:]))


@torch.no_grad()
def stage1_report(
    tokenizer: Any,
    batches: Iterable[Any],
    digits: np.ndarray | Tensor,
    colors: np.ndarray | Tensor | int,
    canvas_size: int,
    perceptual: Callable[[Tensor, Tensor], Tensor] | None = None,
    device: torch.device | str | None = None,
) -> dict[str, float | None]:
    """The stage-1 numbers of table 3, plus the equivariance rate.

    Args:
        tokenizer: anything with ``tokenize(x) -> indices`` and
            ``detokenize(indices) -> x`` (all vqzoo tokenizers).
        batches: the evaluation images, e.g. a test dataloader (image tensors
            or :class:`vqzoo.data.batch.Batch` dicts with ``images``).
        digits, colors, canvas_size: objects for :func:`equivariance_rate`.
        perceptual: a perceptual distance ``(x, x_hat) -> (B,)`` or scalar
            (e.g. vqzoo's LPIPS); ``None`` when its weights are not available,
            and the report's ``perceptual`` is then ``None``.
        device: where to run the tokenizer (default: CPU tensors as given).

    A tokenizer that is an ``nn.Module`` is switched to eval mode for the
    report and back afterwards.

    Returns:
        ``codes_used`` (distinct indices over all batches), ``l1`` (mean
        absolute error per pixel), ``perceptual`` (mean per image, or None),
        ``equivariance`` (rate in [0, 1]) and ``num_images``.
    """
    for name in ("tokenize", "detokenize"):
        if not callable(getattr(tokenizer, name, None)):
            raise ValueError(f"tokenizer must provide {name}(); got {type(tokenizer).__name__}")
    # Evaluate in eval mode (no EMA codebook updates, dropout or batch statistics), then restore.
    was_training = isinstance(tokenizer, torch.nn.Module) and tokenizer.training
    if was_training:
        tokenizer.eval()
    try:
        return _stage1_report(tokenizer, batches, digits, colors, canvas_size, perceptual, device)
    finally:
        if was_training:
            tokenizer.train()


def _stage1_report(
    tokenizer: Any,
    batches: Iterable[Any],
    digits: np.ndarray | Tensor,
    colors: np.ndarray | Tensor | int,
    canvas_size: int,
    perceptual: Callable[[Tensor, Tensor], Tensor] | None,
    device: torch.device | str | None,
) -> dict[str, float | None]:
    seen: Tensor | None = None
    l1_sum, perc_sum, n_pixels, n_images = 0.0, 0.0, 0, 0
    for batch in batches:
        x = as_batch(batch)["images"]
        if device is not None:
            x = x.to(device)
        indices = tokenizer.tokenize(x)
        x_hat = tokenizer.detokenize(indices)
        if x_hat.shape != x.shape:
            raise ValueError(f"detokenize returned {tuple(x_hat.shape)} for inputs {tuple(x.shape)}")
        codes = torch.unique(indices.detach().flatten().cpu())
        seen = codes if seen is None else torch.unique(torch.cat([seen, codes]))
        l1_sum += float((x - x_hat).abs().double().sum())
        n_pixels += x.numel()
        if perceptual is not None:
            d = perceptual(x_hat, x).double()
            perc_sum += float(d.sum()) if d.dim() > 0 else float(d) * x.shape[0]
        n_images += x.shape[0]
    if n_images == 0:
        raise ValueError("stage1_report needs at least one batch of images")
    rate = equivariance_rate(tokenizer.tokenize, digits, colors, canvas_size, device=device)
    return {
        "codes_used": float(seen.numel()),
        "l1": l1_sum / n_pixels,
        "perceptual": perc_sum / n_images if perceptual is not None else None,
        "equivariance": rate,
        "num_images": float(n_images),
    }
