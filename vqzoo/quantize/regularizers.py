"""Codebook regularizers: losses on the code vectors alone, added to the VQ loss."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vqzoo.config import Configurable


class _GramFrobenius(torch.autograd.Function):
    """``‖eᵀe‖²_F − 2‖e‖²_F`` per group of ``e`` (G, K, D), with the gradient ``4 e (eᵀe − I)``.

    Autograd through ``bmm`` would form two K·D² products in backward (one per operand);
    the closed form needs one, with ``eᵀe`` kept from forward.
    """

    @staticmethod
    def forward(ctx, e: torch.Tensor) -> torch.Tensor:  # noqa: ANN001
        small = torch.bmm(e.transpose(1, 2), e)  # (G, D, D)
        ctx.save_for_backward(e, small)
        return small.pow(2).sum((1, 2)) - 2.0 * e.pow(2).sum((1, 2))

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # noqa: ANN001
        e, small = ctx.saved_tensors
        return (4.0 * grad).view(-1, 1, 1) * (torch.bmm(e, small) - e)


class OrthogonalRegularizer(Configurable, nn.Module):
    """Orthogonality of the L2-normalised codes (TE-VQGAN paper, eq. 5).

    ``weight / K² · ‖ l2(E) l2(E)ᵀ − I ‖²_F`` for each group, averaged over groups
    (the average keeps ``weight`` meaning the same for per-token codebooks).

    When K is larger than D the Gram matrix is never formed: with rows
    ``ê_k`` of the normalised codes, ``‖ÊÊᵀ − I‖² = ‖ÊᵀÊ‖² − 2Σ‖ê_k‖² + K``,
    which needs only the D × D matrix ``ÊᵀÊ`` (docs/pitfalls.md #8: 16384 codes would
    otherwise need a 1 GiB K × K matrix). ``Σ‖ê_k‖²`` is kept exact, so an
    all-zero code (normalised to zero) is still handled correctly.

    Args:
        weight: the coefficient (10 in the paper).
        max_codes: when set and K exceeds it, the term is computed on a fresh
            random subset of this many codes per call (normalised by the subset
            size squared), an unbiased-in-spirit estimate for very large K.
    """

    name = "orthogonal"

    def __init__(self, weight: float = 10.0, max_codes: int | None = None) -> None:
        super().__init__()
        if weight < 0:
            raise ValueError(f"OrthogonalRegularizer: weight must be >= 0, got {weight}")
        if max_codes is not None and max_codes < 2:
            raise ValueError(f"OrthogonalRegularizer: max_codes must be >= 2 or None, got {max_codes}")
        self.weight = weight
        self.max_codes = max_codes

    def extra_repr(self) -> str:
        return f"weight={self.weight}, max_codes={self.max_codes}"

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        """``codes``: the raw code vectors (G, K, D). Returns a scalar."""
        if codes.dim() != 3:
            raise ValueError(f"OrthogonalRegularizer expects codes (G, K, D), got shape {tuple(codes.shape)}")
        with torch.autocast(device_type=codes.device.type, enabled=False):
            e = codes.float()
            K = e.shape[1]
            if self.max_codes is not None and K > self.max_codes:
                pick = torch.randperm(K, device=e.device)[: self.max_codes]
                e = e[:, pick]
                K = self.max_codes
            e = F.normalize(e, dim=-1)
            D = e.shape[2]
            if K <= D:
                gram = torch.bmm(e, e.transpose(1, 2))
                eye = torch.eye(K, device=e.device, dtype=e.dtype)
                frob = (gram - eye).pow(2).sum((1, 2))
            else:
                frob = _GramFrobenius.apply(e) + K
            return self.weight * (frob / (K * K)).mean()
