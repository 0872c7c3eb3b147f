"""Reconstruction quality from the first k global tokens of a QG-VAE (ordered latents).

QG-VAE's ordered dropout (paper section 3.4; vqzoo/tokenizers/qgvae.py) trains the
decoder to work from a prefix of its C tokens: tokens ``k, ..., C-1`` are zeroed at the
decoder input. The claim to check is that the first tokens carry the coarse content, i.e.
that PSNR rises quickly with k for a model trained with ordered dropout and stays low
until k is close to C for one trained without it. :func:`prefix_psnr` measures the curve;
``benchmarks/qgvae_ordered_latents.py`` writes it for trained checkpoints.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import Tensor

__all__ = ["prefix_psnr"]


def _psnr(a01: Tensor, b01: Tensor) -> Tensor:
    """Per-image PSNR in dB of images on [0, 1]."""
    mse = (a01 - b01).square().flatten(1).mean(1)
    return 10 * torch.log10(1.0 / mse.clamp_min(1e-10))


@torch.no_grad()
def prefix_psnr(
    model: Any, batches: Iterable[Any], ks: Sequence[int] | None = None, max_images: int | None = None
) -> dict[int, float]:
    """PSNR (dB, per image on [0, 1], averaged) when decoding from the first ``k`` tokens.

    Every image is tokenized once; for each ``k`` the tokens ``k, ...`` are masked exactly as
    the ordered dropout masks them (:meth:`~vqzoo.tokenizers.qgvae.QGVAE.detokenize` with
    ``keep=k``) and the reconstruction, clamped to the image range, is compared with the input.

    Args:
        model: a :class:`~vqzoo.tokenizers.qgvae.QGVAE` (anything with ``num_tokens``,
            ``tokenize`` and ``detokenize(indices, keep=k)``); images on [-1, 1].
        batches: image batches (tensors or :class:`~vqzoo.data.batch.Batch` dicts).
        ks: the prefixes to decode from; default ``1, ..., C``.
        max_images: stop after this many images (default: all).

    Returns:
        ``{k: mean PSNR}`` in the order of ``ks``.
    """
    from vqzoo.data.batch import as_batch

    C = int(model.num_tokens)
    ks = list(range(1, C + 1)) if ks is None else [int(k) for k in ks]
    bad = [k for k in ks if not 0 <= k <= C]
    if bad:
        raise ValueError(f"every k must be in [0, {C}], got {bad}")
    was_training = model.training
    model.eval()
    sums = {k: 0.0 for k in ks}
    seen = 0
    try:
        for batch in batches:
            x = as_batch(batch).get("images")
            if x is None:
                raise ValueError("prefix_psnr needs image batches; this batch has no 'images'")
            if max_images is not None:
                x = x[: max_images - seen]
            if x.shape[0] == 0:
                break
            idx = model.tokenize(x)
            x01 = (x + 1) / 2
            for k in ks:
                rec01 = ((model.detokenize(idx, keep=k) + 1) / 2).clamp(0, 1)
                sums[k] += float(_psnr(rec01, x01).sum())
            seen += x.shape[0]
            if max_images is not None and seen >= max_images:
                break
    finally:
        model.train(was_training)
    if seen == 0:
        raise ValueError("prefix_psnr got no images")
    return {k: sums[k] / seen for k in ks}
