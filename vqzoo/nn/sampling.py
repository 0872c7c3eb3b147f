"""Down- and up-sampling layers, including the four variants compared by TE-VQGAN.

TE-VQGAN (Shin et al.) trains VQGAN with four downsampling methods because
aliasing during downsampling breaks translation equivariance of the code map
(docs/reference-implementations.md §A):

============== ==============================================================
method         layers
============== ==============================================================
strided_conv   pad (0, 1, 0, 1) (replicate, or zeros), conv 3x3 stride 2 ("v2")
conv_blurpool  conv 3x3 stride 1 (replicate or zero padding), BlurPool
maxpool        MaxPool2d(kernel 2, stride 2)
max_blurpool   MaxPool2d(kernel 2, stride 1), BlurPool
============== ==============================================================

BlurPool (Zhang, 2019) is a depthwise low-pass filter followed by subsampling:
the filter is the outer product of the normalised binomial row [1, 4, 6, 4, 1],
the input is replicate-padded by 2 and the stride is 2.

Output sizes for an input of size n (per spatial dimension):

* strided_conv: pad to n + 1, then (n + 1 - 3) // 2 + 1 = floor(n / 2).
* conv_blurpool: the conv keeps n, BlurPool gives (n + 4 - 5) // 2 + 1 = ceil(n / 2).
* maxpool: floor(n / 2).
* max_blurpool: MaxPool k2 s1 gives n - 1, BlurPool gives ceil((n - 1) / 2),
  which is n / 2 for even n and floor(n / 2) for odd n.

So every variant halves an even size exactly. For odd sizes all give
floor(n / 2) except conv_blurpool, which gives ceil(n / 2); the
:class:`~vqzoo.nn.convnet.Encoder` therefore only accepts sizes divisible by its
downsampling factor, so that every variant yields the same latent grid.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vqzoo.nn.blocks import conv3x3

__all__ = ["BlurPool", "Downsample", "DownsampleMethod", "Upsample", "binomial_filter"]

DownsampleMethod = Literal["strided_conv", "conv_blurpool", "maxpool", "max_blurpool"]
_DOWNSAMPLE_METHODS = ("strided_conv", "conv_blurpool", "maxpool", "max_blurpool")

# F.pad's name for each padding mode we accept.
_PAD_MODE = {"replicate": "replicate", "reflect": "reflect", "zeros": "constant"}


def binomial_filter(size: int, dtype: torch.dtype = torch.float32) -> Tensor:
    """2-D normalised binomial filter of ``size`` x ``size`` (size 5: outer([1,4,6,4,1]) / 256)."""
    if not isinstance(size, int) or size < 1:
        raise ValueError(f"filter size must be a positive int, got {size!r}")
    row = torch.tensor([math.comb(size - 1, i) for i in range(size)], dtype=torch.float64)
    kernel = torch.outer(row, row)
    return (kernel / kernel.sum()).to(dtype)


class BlurPool(nn.Module):
    """Anti-aliased subsampling: depthwise binomial blur, then stride.

    Args:
        channels: number of channels (the filter is applied to each separately).
        filter_size: side of the binomial filter; 5 is TE-VQGAN's choice.
        stride: subsampling factor.
        padding_mode: how the borders are padded before blurring. Replicate is
            what TE-VQGAN uses; it keeps a constant image constant.

    The padding is (filter_size - 1) // 2 before and the rest after, in each
    dimension (2 and 2 for the default size 5). The filter is a non-persistent
    buffer: it is fixed, follows ``.to()`` / ``.half()``, and is not written to
    checkpoints.
    """

    def __init__(
        self,
        channels: int,
        filter_size: int = 5,
        stride: int = 2,
        padding_mode: Literal["replicate", "reflect", "zeros"] = "replicate",
    ) -> None:
        super().__init__()
        if not isinstance(channels, int) or channels < 1:
            raise ValueError(f"channels must be a positive int, got {channels!r}")
        if not isinstance(stride, int) or stride < 1:
            raise ValueError(f"stride must be a positive int, got {stride!r}")
        if padding_mode not in _PAD_MODE:
            raise ValueError(f"padding_mode must be one of {tuple(_PAD_MODE)}, got {padding_mode!r}")
        self.channels = channels
        self.filter_size = filter_size
        self.stride = stride
        self.padding_mode = padding_mode
        before = (filter_size - 1) // 2
        after = filter_size - 1 - before
        self._pad = (before, after, before, after)
        kernel = binomial_filter(filter_size).expand(channels, 1, filter_size, filter_size).contiguous()
        self.register_buffer("filter", kernel, persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim != 4 or x.shape[1] != self.channels:
            raise ValueError(f"BlurPool expected input of shape (B, {self.channels}, H, W), got {tuple(x.shape)}")
        if any(p > 0 for p in self._pad):
            x = F.pad(x, self._pad, mode=_PAD_MODE[self.padding_mode])
        return F.conv2d(x, self.filter.to(x.dtype), stride=self.stride, groups=self.channels)

    def extra_repr(self) -> str:
        return (
            f"channels={self.channels}, filter_size={self.filter_size}, stride={self.stride}, "
            f"padding_mode={self.padding_mode!r}"
        )


class Downsample(nn.Sequential):
    """Halve H and W with one of TE-VQGAN's four methods (see the module docstring).

    Args:
        channels: channels in and out (the method never changes them).
        method: ``"strided_conv"``, ``"conv_blurpool"``, ``"maxpool"`` or ``"max_blurpool"``.
        replicate_padding: for the two methods with a convolution, pad by
            replication instead of zeros (TE-VQGAN's ``use_replicationpad``).
            It does not affect the pooling layers; BlurPool always replicates.

    A ``nn.Sequential`` of named layers, so the parameters read ``conv.weight``
    whichever padding is used.
    """

    def __init__(self, channels: int, method: DownsampleMethod = "strided_conv", replicate_padding: bool = False) -> None:
        if method not in _DOWNSAMPLE_METHODS:
            raise ValueError(f"method must be one of {_DOWNSAMPLE_METHODS}, got {method!r}")
        super().__init__()
        self.channels = channels
        self.method = method
        padding = "replicate" if replicate_padding else "zeros"
        if method == "strided_conv":
            # Asymmetric pad (right and bottom only) then an unpadded stride-2 conv:
            # an even n maps to exactly n / 2.
            self.pad = nn.ReplicationPad2d((0, 1, 0, 1)) if replicate_padding else nn.ZeroPad2d((0, 1, 0, 1))
            self.conv = nn.Conv2d(channels, channels, kernel_size=3, stride=2, padding=0)
        elif method == "conv_blurpool":
            self.conv = conv3x3(channels, channels, padding)
            self.blur = BlurPool(channels)
        elif method == "maxpool":
            self.pool = nn.MaxPool2d(kernel_size=2, stride=2)
        else:  # max_blurpool
            self.pool = nn.MaxPool2d(kernel_size=2, stride=1)
            self.blur = BlurPool(channels)

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim != 4 or x.shape[1] != self.channels:
            raise ValueError(f"Downsample expected input of shape (B, {self.channels}, H, W), got {tuple(x.shape)}")
        return super().forward(x)


# Nearest x2 followed by a 3-tap conv (padding 1) along one axis equals a stride-2
# transposed conv with 4 taps K = M w: even outputs see (w0) x[i-1] + (w1 + w2) x[i],
# odd outputs (w0 + w1) x[i] + (w2) x[i+1], with zeros outside as in the padding.
_UPSAMPLE_TAPS = torch.tensor([[0.0, 0.0, 1.0], [0.0, 1.0, 1.0], [1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])


class Upsample(nn.Module):
    """Nearest-neighbour x2 upsampling, optionally followed by a 3x3 convolution (zero padding).

    With the convolution, the two steps run as one stride-2 transposed convolution
    whose 4x4 kernel is ``M W Mᵀ`` (see ``_UPSAMPLE_TAPS``): the same function
    (equal up to float rounding) with 4 taps per output instead of 9 and no
    upsampled intermediate, about 2x faster on CPU. The weights stay those of
    the 3x3 ``conv``, so checkpoints are the same either way.
    """

    def __init__(self, channels: int, with_conv: bool = True) -> None:
        super().__init__()
        self.channels = channels
        self.conv = conv3x3(channels, channels) if with_conv else None

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim != 4 or x.shape[1] != self.channels:
            raise ValueError(f"Upsample expected input of shape (B, {self.channels}, H, W), got {tuple(x.shape)}")
        if self.conv is None:
            return F.interpolate(x, scale_factor=2.0, mode="nearest")
        m = _UPSAMPLE_TAPS.to(device=x.device, dtype=self.conv.weight.dtype)
        kernel = torch.einsum("ak,oikl,bl->ioab", m, self.conv.weight, m)  # (in, out, 4, 4)
        return F.conv_transpose2d(x, kernel.to(x.dtype), self.conv.bias, stride=2, padding=1)
