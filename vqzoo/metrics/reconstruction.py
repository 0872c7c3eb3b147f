"""Reconstruction metrics over a whole split: PSNR, SSIM, LPIPS, and a Fréchet distance/IS of the reconstructions.

Library implementations only: PSNR and SSIM are torchmetrics'
(``PeakSignalNoiseRatio`` per image then averaged, i.e. ``dim=(1, 2, 3)``,
the convention of the validation logs; ``StructuralSimilarityIndexMeasure``
with its 11x11 Gaussian window), both on images mapped from [-1, 1] to
[0, 1] with ``data_range=1``; LPIPS is whatever callable the caller passes
(``vqzoo.losses.perceptual.LPIPS``: metrics know no network of their own);
rFID and IS come from :class:`~vqzoo.metrics.generation.GenerativeMetrics` on
the reconstructions against the same images. Every state is a torchmetrics
state, summed across DDP ranks before ``compute``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from vqzoo.metrics.codebook import CodebookUsage
from vqzoo.metrics.generation import GenerativeMetrics

__all__ = ["ReconstructionMetrics"]


class ReconstructionMetrics(nn.Module):
    """Accumulate reconstruction quality over batches; :meth:`compute` returns plain floats.

    Args:
        lpips: ``(recon, images) -> (B,)`` or scalar perceptual distance on [-1, 1] images, or None.
        generative: a :class:`GenerativeMetrics` (reconstructions are the "fake" set), or None.
        num_codes, num_groups: codebook size and number of codebooks (histogram rows) for usage/perplexity/entropy (None: not measured).
    """

    def __init__(self, lpips: Callable[[Tensor, Tensor], Tensor] | None = None,
                 generative: GenerativeMetrics | None = None, num_codes: int | None = None,
                 num_groups: int = 1) -> None:
        super().__init__()
        from torchmetrics import MeanMetric
        from torchmetrics.image import PeakSignalNoiseRatio, StructuralSimilarityIndexMeasure

        self.psnr = PeakSignalNoiseRatio(data_range=1.0, dim=(1, 2, 3))
        self.ssim = StructuralSimilarityIndexMeasure(data_range=1.0)
        self.lpips_fn = lpips
        self.lpips = MeanMetric() if lpips is not None else None
        self.generative = generative
        self.codebook = CodebookUsage(num_codes, num_groups) if num_codes else None
        self.register_buffer("num_images", torch.zeros((), dtype=torch.long), persistent=False)

    @torch.no_grad()
    def update(self, images: Tensor, recon: Tensor, code_counts: Tensor | None = None) -> None:
        """``images``, ``recon``: (B, C, H, W) in [-1, 1]; ``code_counts``: (G, K) histogram of the batch's codes."""
        if images.shape != recon.shape:
            raise ValueError(f"images {tuple(images.shape)} and reconstructions {tuple(recon.shape)} differ in shape")
        x01 = ((images.float() + 1) / 2).clamp(0, 1)
        r01 = ((recon.float() + 1) / 2).clamp(0, 1)
        self.psnr.update(r01, x01)
        self.ssim.update(r01, x01)
        if self.lpips is not None:
            d = self.lpips_fn(recon.float().clamp(-1, 1), images.float())
            self.lpips.update(d.reshape(-1), weight=torch.ones_like(d.reshape(-1)) if d.numel() > 1 else images.shape[0])
        if self.generative is not None:
            self.generative.update_real(images)
            self.generative.update_fake(recon.clamp(-1, 1))
        if self.codebook is not None and code_counts is not None:
            self.codebook.update(code_counts)
        self.num_images += images.shape[0]

    def compute(self) -> dict[str, float]:
        out: dict[str, float] = {"psnr": float(self.psnr.compute()), "ssim": float(self.ssim.compute())}
        if self.lpips is not None:
            out["lpips"] = float(self.lpips.compute())
        if self.generative is not None:
            g = self.generative.compute()
            out["fd"] = g["fd"]
            out.update({k: v for k, v in g.items() if k.startswith("is_")})
        if self.codebook is not None and int(self.codebook.counts.sum()) > 0:
            c = self.codebook.compute()
            out.update({"codebook_usage": float(c["usage"]), "codes_used": int(c["codes_used"]),
                        "perplexity": float(c["perplexity"]), "entropy_bits": float(c["entropy"])})
        return out

    def reset(self) -> None:
        for m in (self.psnr, self.ssim, self.lpips, self.generative, self.codebook):
            if m is not None:
                m.reset()
        self.num_images.zero_()
