"""Residual and attention blocks of the taming-style convolutional autoencoder.

One implementation serves three models:

* VQGAN: plain GroupNorm, zero padding.
* TE-VQGAN encoder: ``padding="replicate"`` makes every 3x3 convolution
  replicate-pad its input by one pixel instead of zero-padding it (the TE code's
  ``use_replicationpad``: ReplicationPad2d(1) followed by an unpadded conv).
  We express this as ``nn.Conv2d(..., padding=1, padding_mode="replicate")``,
  which PyTorch computes as exactly that pad followed by an unpadded
  convolution, and which keeps the parameter names (``conv1.weight``, ...) the
  same for both paddings. ``tests/test_nn_blocks.py`` checks the equivalence.
* MoVQ decoder: with ``zq_channels`` set, every norm of a block is a
  :class:`~vqzoo.nn.spatial_norm.SpatialNorm` conditioned on the quantized map
  and ``forward(x, zq)`` passes ``zq`` on to it.

Decisions where the sources are silent:

* A block built without ``zq_channels`` accepts and ignores ``zq``; a shared
  decoder loop can then always pass it. A block built *with* ``zq_channels``
  raises ``ValueError`` when ``zq`` is missing.
* ``dropout=0`` installs ``nn.Identity`` rather than ``nn.Dropout(0)``: same
  result, one kernel launch fewer.
* Attention is single-head over all H*W positions with scale ``1/sqrt(C)``, as
  in taming; it is computed by ``F.scaled_dot_product_attention`` so the fused
  (flash / memory-efficient) kernels are used where available and the H*W x H*W
  matrix is never materialised by our code.
"""

from __future__ import annotations

from typing import Literal

import torch.nn.functional as F
from torch import Tensor, nn

from vqzoo.nn.spatial_norm import SpatialNorm, group_count

__all__ = [
    "AttnBlock",
    "Padding",
    "ResnetBlock",
    "apply_norm",
    "conv3x3",
    "group_norm",
    "make_norm",
]

Padding = Literal["zeros", "replicate"]


def group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm with 32 groups (or the largest divisor of ``channels`` <= 32), eps 1e-6, affine."""
    return nn.GroupNorm(num_groups=group_count(channels, 32), num_channels=channels, eps=1e-6, affine=True)


def make_norm(channels: int, zq_channels: int | None = None) -> nn.Module:
    """A plain :func:`group_norm`, or a :class:`SpatialNorm` when ``zq_channels`` is given."""
    if zq_channels is None:
        return group_norm(channels)
    return SpatialNorm(channels, zq_channels)


def apply_norm(norm: nn.Module, x: Tensor, zq: Tensor | None) -> Tensor:
    """Call a norm made by :func:`make_norm`; only a SpatialNorm receives ``zq``."""
    if isinstance(norm, SpatialNorm):
        return norm(x, zq)
    return norm(x)


def conv3x3(in_channels: int, out_channels: int, padding: Padding = "zeros", stride: int = 1) -> nn.Conv2d:
    """3x3 convolution that keeps the size (stride 1), padding with zeros or by replication."""
    if padding not in ("zeros", "replicate"):
        raise ValueError(f"padding must be 'zeros' or 'replicate', got {padding!r}")
    return nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=stride, padding=1, padding_mode=padding)


class ResnetBlock(nn.Module):
    """Pre-activation residual block: norm, swish, conv3x3, norm, swish, dropout, conv3x3.

    Args:
        in_channels: input channels.
        out_channels: output channels (defaults to ``in_channels``). When they
            differ, the skip path is a 1x1 convolution (``nin_shortcut``).
        dropout: dropout probability before the second convolution.
        padding: ``"zeros"`` (VQGAN) or ``"replicate"`` (TE-VQGAN encoder) for
            both 3x3 convolutions.
        zq_channels: when given, both norms are ``SpatialNorm(channels, zq_channels)``
            and ``forward`` requires the quantized map ``zq`` (MoVQ decoder).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int | None = None,
        dropout: float = 0.0,
        padding: Padding = "zeros",
        zq_channels: int | None = None,
    ) -> None:
        super().__init__()
        out_channels = in_channels if out_channels is None else out_channels
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.norm1 = make_norm(in_channels, zq_channels)
        self.conv1 = conv3x3(in_channels, out_channels, padding)
        self.norm2 = make_norm(out_channels, zq_channels)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.conv2 = conv3x3(out_channels, out_channels, padding)
        self.nin_shortcut = (
            nn.Conv2d(in_channels, out_channels, kernel_size=1) if in_channels != out_channels else nn.Identity()
        )

    def forward(self, x: Tensor, zq: Tensor | None = None) -> Tensor:
        h = self.conv1(F.silu(apply_norm(self.norm1, x, zq)))
        h = self.conv2(self.dropout(F.silu(apply_norm(self.norm2, h, zq))))
        return self.nin_shortcut(x) + h


class AttnBlock(nn.Module):
    """Single-head spatial self-attention with a residual connection.

    ``out = x + proj_out(attention(q(n), k(n), v(n)))`` with ``n = norm(x)``,
    where q, k, v, proj_out are 1x1 convolutions and the attention runs over all
    H*W positions with softmax(Q K^T / sqrt(C)) V.

    Args:
        channels: channels of the input (and of q, k, v).
        zq_channels: when given, the norm is a SpatialNorm conditioned on ``zq``.
    """

    def __init__(self, channels: int, zq_channels: int | None = None) -> None:
        super().__init__()
        self.channels = channels
        self.norm = make_norm(channels, zq_channels)
        self.q = nn.Conv2d(channels, channels, kernel_size=1)
        self.k = nn.Conv2d(channels, channels, kernel_size=1)
        self.v = nn.Conv2d(channels, channels, kernel_size=1)
        self.proj_out = nn.Conv2d(channels, channels, kernel_size=1)

    def forward(self, x: Tensor, zq: Tensor | None = None) -> Tensor:
        b, c, h, w = x.shape
        n = apply_norm(self.norm, x, zq)

        # (B, C, H, W) -> (B, 1, HW, C): one head, tokens are the positions.
        # The transpose is a view; SDPA accepts the strided layout.
        def tokens(t: Tensor) -> Tensor:
            return t.flatten(2).transpose(1, 2).unsqueeze(1)

        out = F.scaled_dot_product_attention(tokens(self.q(n)), tokens(self.k(n)), tokens(self.v(n)))
        out = out.squeeze(1).transpose(1, 2).reshape(b, c, h, w)
        return x + self.proj_out(out)
