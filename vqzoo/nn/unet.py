"""The QG-VAE U-Net and its grid positional encoding (pure torch, no Lightning).

QG-VAE (Elsner et al., "Quantised Global Autoencoder") wraps its global
bottleneck in two U-Nets: the encoder turns an image into C feature maps at
``W / 2**f``, the decoder turns C feature maps back into an image. The layout
follows the facts recorded from the authors' notebooks
(docs/reference-implementations.md §B); the code is our own.

Layout of :class:`QGUNet`
-------------------------
* **Conditioning.** The U-Net's own input concatenated with a grid positional
  encoding ``sin/cos(2**i * (x / W, y / W))`` for ``i < num_frequencies``
  (:func:`grid_positional_encoding`). It is resized to every residual block's
  resolution and added to the block input through a 1x1 convolution. Because
  the conditioning contains the input itself, every level of the hourglass
  sees the input at its own resolution: this is how the reference network
  moves detail past the bottleneck without U-Net skip concatenations (it has
  none, and neither do we).
* **Hourglass.** A 3x3 stem, then down levels from the input resolution to
  ``bottom_resolution`` (each ``num_res_blocks`` residual blocks followed by a
  bilinear 0.5x resize), then up levels from ``bottom_resolution`` to the
  output resolution (a bilinear 2x resize followed by ``num_res_blocks``
  residual blocks). Input and output resolutions may differ: the encoder
  "skips the top f upsamplings" (in ``W``, out ``W / 2**f``) and the decoder
  "skips the top f downsamplings" (in ``W / 2**f``, out ``W``).
* **Channels.** The width of a level at resolution ``r`` is
  ``min(max_channels, start_channels * 2**(d + 1))`` with
  ``d = log2(in_resolution / r)`` (``d + 1`` clamped at 0 for levels above the
  input resolution): the reference doubles the width at every level below the
  stem, capped at ``max_channels``. The encoder starts at 16 channels, the
  decoder at ``max_channels`` (so the reference decoder is ``max_channels``
  wide everywhere).
* **Residual blocks** are Imagen-style: GroupNorm (groups = the largest divisor
  of the width that is at most 16, eps 1e-5), SiLU, 3x3 conv, GroupNorm, SiLU,
  3x3 conv, plus a bias-free 1x1 skip.
* **Output.** GroupNorm, SiLU and a bias-free 3x3 ``out_projection``, plus a
  bias-free 3x3 ``mega_residual`` conv applied to the U-Net input resized to
  the output resolution. The GroupNorm/SiLU before the projection is our
  choice (the notes do not say); it keeps the projection's input normalised as
  in the residual blocks.

Decisions where the notes are silent: at the bottom resolution the down and
the up residual blocks both run (a "middle" of ``2 * num_res_blocks``
blocks); the conditioning is resized by area averaging when shrinking and
bilinear interpolation when growing; inputs smaller than ``bottom_resolution``
simply do not recurse.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vqzoo.nn.spatial_norm import group_count

__all__ = [
    "grid_positional_encoding",
    "ConditionedResBlock",
    "QGUNet",
    "QGDiscriminator",
    "REFERENCE_LAYOUT",
]


def grid_positional_encoding(
    height: int,
    width: int,
    num_frequencies: int = 16,
    *,
    device: torch.device | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Grid encoding ``sin/cos(2**i * (x / W, y / W))`` for ``i < num_frequencies``.

    Returns a ``(4 * num_frequencies, height, width)`` tensor. Channel order:
    for each frequency ``i`` the four maps ``sin(2**i x/W), cos(2**i x/W),
    sin(2**i y/W), cos(2**i y/W)``, with ``x`` the column and ``y`` the row
    index in pixels. Both coordinates are divided by the width, as in the
    reference (which only uses square images). There is no factor pi: the
    reference uses the bare powers of two.
    """
    if height < 1 or width < 1:
        raise ValueError(f"grid size must be positive, got {height}x{width}")
    if num_frequencies < 0:
        raise ValueError(f"num_frequencies must be >= 0, got {num_frequencies}")
    ys = torch.arange(height, device=device, dtype=torch.float64) / width
    xs = torch.arange(width, device=device, dtype=torch.float64) / width
    yy, xx = torch.meshgrid(ys, xs, indexing="ij")
    maps = []
    for i in range(num_frequencies):
        scale = 2.0**i
        maps += [
            torch.sin(scale * xx),
            torch.cos(scale * xx),
            torch.sin(scale * yy),
            torch.cos(scale * yy),
        ]
    if not maps:
        return torch.zeros(0, height, width, device=device, dtype=dtype)
    return torch.stack(maps).to(dtype)


def _resize(x: Tensor, size: int) -> Tensor:
    """Area-average when shrinking (exact for power-of-two factors), bilinear when growing."""
    h, w = x.shape[-2:]
    if (h, w) == (size, size):
        return x
    if size < h:
        return F.adaptive_avg_pool2d(x, size)
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)


class ConditionedResBlock(nn.Module):
    """Imagen-style residual block with an additive 1x1 conditioning input.

    ``out = conv2(SiLU(GN(conv1(SiLU(GN(h)))))) + skip(s)`` with
    ``h = x + cond_proj(cond)``; ``skip`` is a bias-free 1x1 convolution (kept
    even when widths match, as in the reference). ``conv1`` maps to
    ``hidden_channels`` (default ``out_channels``), ``conv2`` to ``out_channels``.

    ``skip_from`` says what the skip sees: ``"conditioned"`` (``s = h``, vqzoo's
    original layout) or ``"input"`` (``s = x``, the skip taken before the
    conditioning is added, as in the authors' notebooks; see
    docs/reference-implementations.md §B).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        cond_channels: int = 0,
        hidden_channels: int | None = None,
        skip_from: Literal["conditioned", "input"] = "conditioned",
    ) -> None:
        super().__init__()
        if skip_from not in ("conditioned", "input"):
            raise ValueError(f"skip_from must be 'conditioned' or 'input', got {skip_from!r}")
        hidden = out_channels if hidden_channels is None else hidden_channels
        if hidden < 1:
            raise ValueError(f"hidden_channels must be >= 1, got {hidden}")
        self.skip_from = skip_from
        self.cond_proj = nn.Conv2d(cond_channels, in_channels, 1) if cond_channels > 0 else None
        self.norm1 = nn.GroupNorm(group_count(in_channels, 16), in_channels, eps=1e-5)
        self.conv1 = nn.Conv2d(in_channels, hidden, 3, padding=1)
        self.norm2 = nn.GroupNorm(group_count(hidden, 16), hidden, eps=1e-5)
        self.conv2 = nn.Conv2d(hidden, out_channels, 3, padding=1)
        self.skip = nn.Conv2d(in_channels, out_channels, 1, bias=False)

    def forward(self, x: Tensor, cond: Tensor | None = None) -> Tensor:
        skip_input = x
        if self.cond_proj is not None:
            if cond is None:
                raise ValueError("this block was built with conditioning channels but got cond=None")
            x = x + self.cond_proj(cond)
        if self.skip_from == "conditioned":
            skip_input = x
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return h + self.skip(skip_input)


class QGUNet(nn.Module):
    """Hourglass U-Net of QG-VAE, conditioned on its input and a grid encoding.

    Maps ``(B, in_channels, in_resolution, in_resolution)`` to
    ``(B, out_channels, out_resolution, out_resolution)``; both resolutions
    must be powers of two times each other (see the module docstring for the
    layout and the decisions behind it).

    Args:
        in_channels: channels of the input (3 for images, C for the decoder).
        out_channels: channels of the output.
        in_resolution: side length of the (square) input.
        out_resolution: side length of the output.
        start_channels: stem width; level widths double from it (16 in the
            reference encoder, ``max_channels`` in the reference decoder).
        max_channels: cap on the level width (table 3's "Channels").
        num_res_blocks: residual blocks per level and direction (table 3's "Blocks").
        num_frequencies: frequencies of the grid encoding (16 in the reference).
        bottom_resolution: the hourglass recurses while the width is larger
            than this (8 in the reference).
        level_convs: add a 3x3 convolution entering every down level and
            leaving every up level (the reference's per-level ``in_conv`` /
            ``out_conv``; the stem is level 0's entry conv). False keeps
            vqzoo's original layout (one stem, no per-level convs).
        last_stage: width of the last up level. ``"capped"`` (original):
            the level width, at most ``max_channels``, then the projection to
            ``out_channels``. ``"out_channels"`` (reference): the last level's
            blocks already output ``out_channels`` (e.g. C = num_tokens in the
            encoder), with hidden width ``max(level width, out_channels)``.
        global_residual: where the bias-free 3x3 ``mega_residual`` of the
            input joins. ``"after_projection"`` (original):
            ``out_projection(SiLU(GN(h))) + mega_residual(x)``.
            ``"before_projection"`` (reference):
            ``out_projection(h + mega_residual(x))``, no norm before the
            projection.
        skip_from: what every residual block's 1x1 skip sees: ``"conditioned"``
            (original: the block input after the conditioning is added) or
            ``"input"`` (reference: before it is added).

    The defaults are vqzoo's original layout, so that every existing config and
    checkpoint (whose saved hyperparameters do not name these options) rebuilds
    the same network. :data:`REFERENCE_LAYOUT` gives the reference's values.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        in_resolution: int,
        out_resolution: int,
        start_channels: int = 16,
        max_channels: int = 128,
        num_res_blocks: int = 1,
        num_frequencies: int = 16,
        bottom_resolution: int = 8,
        level_convs: bool = False,
        last_stage: Literal["capped", "out_channels"] = "capped",
        global_residual: Literal["after_projection", "before_projection"] = "after_projection",
        skip_from: Literal["conditioned", "input"] = "conditioned",
    ) -> None:
        super().__init__()
        if last_stage not in ("capped", "out_channels"):
            raise ValueError(f"last_stage must be 'capped' or 'out_channels', got {last_stage!r}")
        if global_residual not in ("after_projection", "before_projection"):
            raise ValueError(
                f"global_residual must be 'after_projection' or 'before_projection', got {global_residual!r}"
            )
        for name, value in {
            "in_channels": in_channels,
            "out_channels": out_channels,
            "in_resolution": in_resolution,
            "out_resolution": out_resolution,
            "start_channels": start_channels,
            "max_channels": max_channels,
            "num_res_blocks": num_res_blocks,
            "bottom_resolution": bottom_resolution,
        }.items():
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if num_frequencies < 0:
            raise ValueError(f"num_frequencies must be >= 0, got {num_frequencies}")
        for name, value in {"in_resolution": in_resolution, "out_resolution": out_resolution}.items():
            if value & (value - 1):
                raise ValueError(f"{name} must be a power of two, got {value}")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.in_resolution = in_resolution
        self.out_resolution = out_resolution
        self.num_frequencies = num_frequencies
        cond_channels = in_channels + 4 * num_frequencies

        bottom = min(bottom_resolution, in_resolution, out_resolution)
        down_res = [in_resolution >> i for i in range(int(math.log2(in_resolution // bottom)) + 1)]
        up_res = [bottom << i for i in range(int(math.log2(out_resolution // bottom)) + 1)]

        def width(r: int) -> int:
            depth = int(math.log2(in_resolution)) - int(math.log2(r))
            return min(max_channels, start_channels * 2 ** max(depth + 1, 0))

        self.level_convs = level_convs
        self.last_stage = last_stage
        self.global_residual = global_residual
        self.skip_from = skip_from
        self.stem = nn.Conv2d(in_channels, start_channels, 3, padding=1)
        self.down_resolutions = down_res
        self.up_resolutions = up_res
        self.down = nn.ModuleList()
        down_convs, up_convs = [], []
        ch = start_channels
        for i, r in enumerate(down_res):
            # level 0's entry conv is the stem
            down_convs.append(nn.Identity() if i == 0 else nn.Conv2d(ch, ch, 3, padding=1))
            level = nn.ModuleList()
            for _ in range(num_res_blocks):
                level.append(ConditionedResBlock(ch, width(r), cond_channels, skip_from=skip_from))
                ch = width(r)
            self.down.append(level)
        self.up = nn.ModuleList()
        for i, r in enumerate(up_res):
            level = nn.ModuleList()
            last = i == len(up_res) - 1 and last_stage == "out_channels"
            hidden = max(width(r), out_channels) if last else width(r)
            for j in range(num_res_blocks):
                out = out_channels if last and j == num_res_blocks - 1 else hidden
                level.append(ConditionedResBlock(ch, out, cond_channels, hidden_channels=hidden, skip_from=skip_from))
                ch = out
            self.up.append(level)
            up_convs.append(nn.Conv2d(ch, ch, 3, padding=1))
        if level_convs:
            self.down_convs = nn.ModuleList(down_convs)
            self.up_convs = nn.ModuleList(up_convs)
        if global_residual == "after_projection":
            self.out_norm = nn.GroupNorm(group_count(ch, 16), ch, eps=1e-5)
            self.mega_residual = nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False)
        else:
            self.mega_residual = nn.Conv2d(in_channels, ch, 3, padding=1, bias=False)
        self.out_projection = nn.Conv2d(ch, out_channels, 3, padding=1, bias=False)

    def conditioning(self, x: Tensor) -> Tensor:
        """The input concatenated with the grid encoding at the input's resolution."""
        b, _, h, w = x.shape
        grid = grid_positional_encoding(h, w, self.num_frequencies, device=x.device, dtype=x.dtype)
        return torch.cat([x, grid.unsqueeze(0).expand(b, -1, -1, -1)], dim=1)

    def forward(self, x: Tensor) -> Tensor:
        cond_full = self.conditioning(x)
        cond_at: dict[int, Tensor] = {}

        def cond(r: int) -> Tensor:
            if r not in cond_at:
                cond_at[r] = _resize(cond_full, r)
            return cond_at[r]

        h = self.stem(x)
        for i, (r, level) in enumerate(zip(self.down_resolutions, self.down)):
            if i > 0:
                h = F.interpolate(h, scale_factor=0.5, mode="bilinear", align_corners=False)
                if self.level_convs:
                    h = self.down_convs[i](h)
            for block in level:
                h = block(h, cond(r))
        for i, (r, level) in enumerate(zip(self.up_resolutions, self.up)):
            if i > 0:
                h = F.interpolate(h, scale_factor=2.0, mode="bilinear", align_corners=False)
            for block in level:
                h = block(h, cond(r))
            if self.level_convs:
                h = self.up_convs[i](h)
        if self.global_residual == "before_projection":
            # the reference convolves the input at its own resolution, then resizes
            return self.out_projection(h + _resize(self.mega_residual(x), self.out_resolution))
        out = self.out_projection(F.silu(self.out_norm(h)))
        return out + self.mega_residual(_resize(x, self.out_resolution))


#: The values of :class:`QGUNet`'s layout options that follow the authors' notebooks
#: (docs/reference-implementations.md §B). Other differences remain; see
#: docs/reference-implementations.md §B "vqzoo's U-Net against the reference".
REFERENCE_LAYOUT: dict[str, object] = {
    "level_convs": True,
    "last_stage": "out_channels",
    "global_residual": "before_projection",
    "skip_from": "input",
}


class QGDiscriminator(nn.Module):
    """The QGGAN discriminator: residual block -> :class:`QGUNet` -> residual block.

    Outputs a full-resolution patch map ``(B, 1, R, R)`` of logits. Layout from
    the reference notes: a residual block 3 -> ``channels``, a U-Net at
    ``channels`` wide (same input and output resolution), a residual block
    ``channels`` -> 1. The outer residual blocks are unconditioned (the U-Net
    carries the conditioning).

    Args:
        in_channels: image channels.
        resolution: image side length (power of two).
        channels: width of the outer blocks and the U-Net's stem (16 in the reference).
        max_channels: cap on the inner U-Net's width.
        num_res_blocks: residual blocks per U-Net level.
        num_frequencies: frequencies of the U-Net's grid encoding.
    """

    def __init__(
        self,
        in_channels: int = 3,
        resolution: int = 128,
        channels: int = 16,
        max_channels: int = 128,
        num_res_blocks: int = 1,
        num_frequencies: int = 16,
    ) -> None:
        super().__init__()
        self.inp = ConditionedResBlock(in_channels, channels)
        self.unet = QGUNet(
            channels,
            channels,
            resolution,
            resolution,
            start_channels=channels,
            max_channels=max_channels,
            num_res_blocks=num_res_blocks,
            num_frequencies=num_frequencies,
        )
        self.out = ConditionedResBlock(channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.out(self.unet(self.inp(x)))
