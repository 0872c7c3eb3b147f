"""Spatially conditional normalization (MoVQ's SCN).

MoVQ (Zheng et al., 2022) replaces every normalization of the decoder by a
GroupNorm whose scale and shift are predicted, pixel by pixel, from the
quantized map ``zq``. Because two positions that received the same code still
carry their own modulation once the decoder mixes neighbourhoods, this breaks the
"same index -> same patch" repetition of a plain VQGAN decoder.

Formula (docs/reference-implementations.md §C):

    zq' = nearest-neighbour interpolation of zq to the spatial size of f
    out = GroupNorm(f) * conv_y(zq') + conv_b(zq')

with ``conv_y`` and ``conv_b`` 1x1 convolutions with bias and an *affine*
GroupNorm (32 groups, eps 1e-6). There is deliberately no ``1 + gamma``: the
modulation is the raw output of ``conv_y``, exactly as in the reproduced code.
The optional 3x3 ``add_conv`` of that code is off by default there and is not
offered here.

Decisions where the sources are silent:

* ``num_groups`` is an upper bound: when ``f_channels`` is not divisible by it,
  the largest divisor of ``f_channels`` not above it is used (the same rule as
  :func:`vqzoo.nn.blocks.group_norm`), so small test models and odd widths work.
* When ``zq`` already has the feature map's spatial size, the interpolation is
  skipped (it would be an identity copy).
* Nearest interpolation uses PyTorch's ``mode="nearest"`` (source index
  ``floor(i * in / out)``), the mode of the reproduced code; this matters only
  for non-integer size ratios.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["SpatialNorm", "group_count"]


def group_count(channels: int, max_groups: int = 32) -> int:
    """Largest divisor of ``channels`` that is at most ``max_groups``.

    GroupNorm needs ``channels % groups == 0``; taming-style models use 32 groups
    and assume widths that are multiples of 32. Falling back to the largest valid
    divisor keeps 32 groups for every such width and still accepts narrow models.
    """
    if not isinstance(channels, int) or channels < 1:
        raise ValueError(f"channels must be a positive int, got {channels!r}")
    if not isinstance(max_groups, int) or max_groups < 1:
        raise ValueError(f"max_groups must be a positive int, got {max_groups!r}")
    for groups in range(min(channels, max_groups), 0, -1):
        if channels % groups == 0:
            return groups
    return 1  # unreachable: 1 divides every channel count


class SpatialNorm(nn.Module):
    """GroupNorm modulated by a quantized map: ``GN(f) * conv_y(zq') + conv_b(zq')``.

    Args:
        f_channels: channels of the feature map that is normalized.
        zq_channels: channels of the conditioning quantized map ``zq``.
        num_groups: upper bound on the GroupNorm groups (see module docstring).
        eps: GroupNorm epsilon.

    ``forward(f, zq)`` takes ``f`` of shape (B, f_channels, H, W) and ``zq`` of
    shape (B, zq_channels, h, w) with any ``h, w``; ``zq`` is resized to (H, W)
    by nearest-neighbour interpolation.
    """

    def __init__(
        self,
        f_channels: int,
        zq_channels: int,
        num_groups: int = 32,
        eps: float = 1e-6,
    ) -> None:
        super().__init__()
        if not isinstance(zq_channels, int) or zq_channels < 1:
            raise ValueError(f"zq_channels must be a positive int, got {zq_channels!r}")
        self.f_channels = f_channels
        self.zq_channels = zq_channels
        self.norm_layer = nn.GroupNorm(
            num_groups=group_count(f_channels, num_groups),
            num_channels=f_channels,
            eps=eps,
            affine=True,
        )
        self.conv_y = nn.Conv2d(zq_channels, f_channels, kernel_size=1, bias=True)
        self.conv_b = nn.Conv2d(zq_channels, f_channels, kernel_size=1, bias=True)

    def forward(self, f: Tensor, zq: Tensor | None = None) -> Tensor:
        if zq is None:
            raise ValueError(
                "SpatialNorm needs the quantized map zq of shape "
                f"(B, {self.zq_channels}, h, w), got None"
            )
        if f.ndim != 4 or f.shape[1] != self.f_channels:
            raise ValueError(
                f"SpatialNorm expected f of shape (B, {self.f_channels}, H, W), "
                f"got {tuple(f.shape)}"
            )
        if zq.ndim != 4 or zq.shape[1] != self.zq_channels:
            raise ValueError(
                f"SpatialNorm expected zq of shape (B, {self.zq_channels}, h, w), "
                f"got {tuple(zq.shape)}"
            )
        if zq.shape[0] != f.shape[0]:
            raise ValueError(
                f"SpatialNorm batch-size mismatch: f has batch {f.shape[0]}, "
                f"zq has batch {zq.shape[0]}"
            )
        if zq.shape[-2:] != f.shape[-2:]:
            zq = F.interpolate(zq, size=f.shape[-2:], mode="nearest")
        normed = self.norm_layer(f)
        # addcmul fuses shift + normed * scale without an extra temporary.
        return torch.addcmul(self.conv_b(zq), normed, self.conv_y(zq))

    def extra_repr(self) -> str:
        return f"f_channels={self.f_channels}, zq_channels={self.zq_channels}"
