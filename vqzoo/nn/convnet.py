"""Convolutional encoder and decoder shared by VQGAN, TE-VQGAN and MoVQ.

Layout (taming-style; docs/reference-implementations.md §A):

Encoder::

    conv_in (in_channels -> ch)
    for each level i (resolution r = resolution / 2**i):
        num_res_blocks x ResnetBlock(-> ch * ch_mult[i]) (+ AttnBlock if r in attn_resolutions)
        Downsample, except at the last level
    mid: ResnetBlock, AttnBlock, ResnetBlock
    norm_out, swish, conv_out (-> z_channels)

Decoder (mirror image)::

    conv_in (z_channels -> ch * ch_mult[-1])
    mid: ResnetBlock, AttnBlock, ResnetBlock
    for each level from the lowest resolution up:
        (num_res_blocks + 1) x ResnetBlock(-> ch * ch_mult[i]) (+ AttnBlock)
        Upsample, except at the top level
    norm_out, swish, conv_out (-> out_channels)

TE-VQGAN's changes live in the encoder only: the downsampling method and, with
``replicate_padding``, replication padding for conv_in, the ResnetBlock convs,
conv_out and the downsampling conv. Its decoder is stock taming (zero padding).

MoVQ's change lives in the decoder only: with ``zq_channels`` every decoder norm
(ResnetBlock norms, attention norms in the mid and up blocks, norm_out) is a
SpatialNorm conditioned on the quantized map ``zq``. In MoVQ ``zq`` is the
quantized tensor *before* ``post_quant_conv``; the decoder input ``h`` is
``post_quant_conv(zq)``.

Decisions where the sources are silent:

* ``attn_resolutions`` entries that match no level raise ``ValueError`` at
  construction (taming silently ignores them, which hides configuration typos).
* ``resolution`` only decides where attention goes. The networks are fully
  convolutional, so other input sizes are accepted, provided H and W are
  divisible by ``downsample_factor``: for odd sizes the four downsampling
  methods disagree (see :mod:`vqzoo.nn.sampling`) and the decoder could not
  return the input size.
* The encoder rejects non-finite input (one reduction per call), so a NaN batch
  fails loudly at the entrance rather than as a NaN loss later.
* A decoder built without ``zq_channels`` ignores a ``zq`` passed to it.
* Per-level modules are named ``down[i]`` / ``up[i]`` (indexed by level, ``up``
  counting from the top, as in taming) with ``block``, ``attn`` and
  ``resample`` children, plus ``mid.block_1``, ``mid.attn_1``, ``mid.block_2``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vqzoo.nn.blocks import AttnBlock, Padding, ResnetBlock, apply_norm, conv3x3, make_norm
from vqzoo.nn.sampling import Downsample, DownsampleMethod, Upsample

__all__ = ["Decoder", "Encoder"]


def _int_tuple(name: str, values: Sequence[int], allow_empty: bool) -> tuple[int, ...]:
    out = tuple(values)
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in out):
        raise ValueError(f"{name} must be a sequence of positive ints, got {values!r}")
    if not out and not allow_empty:
        raise ValueError(f"{name} must not be empty")
    return out


def _check_positive(**kwargs: int) -> None:
    for name, value in kwargs.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")


def _level_resolutions(resolution: int, ch_mult: tuple[int, ...], attn_resolutions: tuple[int, ...]) -> list[int]:
    factor = 2 ** (len(ch_mult) - 1)
    if resolution % factor != 0:
        raise ValueError(
            f"resolution {resolution} is not divisible by the downsampling factor {factor} "
            f"(2**(len(ch_mult) - 1) with ch_mult={ch_mult})"
        )
    levels = [resolution // 2**i for i in range(len(ch_mult))]
    unused = sorted(set(attn_resolutions) - set(levels))
    if unused:
        raise ValueError(
            f"attn_resolutions {unused} match no level; with resolution={resolution} and "
            f"ch_mult={ch_mult} the levels are {levels}"
        )
    return levels


class _Stage(nn.Module):
    """One resolution level: ResnetBlocks (each optionally followed by attention), then a resampler."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        num_blocks: int,
        with_attn: bool,
        resample: nn.Module,
        dropout: float,
        padding: Padding = "zeros",
        zq_channels: int | None = None,
    ) -> None:
        super().__init__()
        self.block = nn.ModuleList(
            ResnetBlock(in_channels if j == 0 else out_channels, out_channels, dropout, padding, zq_channels)
            for j in range(num_blocks)
        )
        self.attn = nn.ModuleList(AttnBlock(out_channels, zq_channels) for _ in range(num_blocks) if with_attn)
        self.resample = resample

    def forward(self, h: Tensor, zq: Tensor | None = None) -> Tensor:
        for j, block in enumerate(self.block):
            h = block(h, zq)
            if self.attn:
                h = self.attn[j](h, zq)
        return self.resample(h)


class _Mid(nn.Module):
    """Bottleneck: ResnetBlock, AttnBlock, ResnetBlock at constant width."""

    def __init__(self, channels: int, dropout: float, padding: Padding = "zeros", zq_channels: int | None = None):
        super().__init__()
        self.block_1 = ResnetBlock(channels, channels, dropout, padding, zq_channels)
        self.attn_1 = AttnBlock(channels, zq_channels)
        self.block_2 = ResnetBlock(channels, channels, dropout, padding, zq_channels)

    def forward(self, h: Tensor, zq: Tensor | None = None) -> Tensor:
        return self.block_2(self.attn_1(self.block_1(h, zq), zq), zq)


class Encoder(nn.Module):
    """Image -> latent map of ``z_channels`` at 1 / ``downsample_factor`` of the input size.

    Args:
        in_channels: image channels.
        ch: base width; level i has ``ch * ch_mult[i]`` channels.
        ch_mult: width multipliers, one per level; ``len(ch_mult) - 1`` downsamplings.
        num_res_blocks: ResnetBlocks per level.
        attn_resolutions: levels (by their resolution) that get attention after each ResnetBlock.
        resolution: nominal input size, used to place attention.
        z_channels: output channels.
        dropout: dropout inside the ResnetBlocks.
        downsample: TE-VQGAN's downsampling method (see :mod:`vqzoo.nn.sampling`).
        replicate_padding: replication padding for every encoder conv (TE-VQGAN).
    """

    def __init__(
        self,
        in_channels: int = 3,
        ch: int = 128,
        ch_mult: Sequence[int] = (1, 2, 2),
        num_res_blocks: int = 1,
        attn_resolutions: Sequence[int] = (16,),
        resolution: int = 64,
        z_channels: int = 256,
        dropout: float = 0.0,
        downsample: DownsampleMethod = "strided_conv",
        replicate_padding: bool = False,
    ) -> None:
        super().__init__()
        _check_positive(in_channels=in_channels, ch=ch, num_res_blocks=num_res_blocks,
                        resolution=resolution, z_channels=z_channels)
        ch_mult = _int_tuple("ch_mult", ch_mult, allow_empty=False)
        attn_resolutions = _int_tuple("attn_resolutions", attn_resolutions, allow_empty=True)
        levels = _level_resolutions(resolution, ch_mult, attn_resolutions)
        padding: Padding = "replicate" if replicate_padding else "zeros"

        self.in_channels = in_channels
        self.z_channels = z_channels
        self.resolution = resolution
        self.downsample_factor = 2 ** (len(ch_mult) - 1)

        self.conv_in = conv3x3(in_channels, ch, padding)
        self.down = nn.ModuleList()
        block_in = ch
        for i, mult in enumerate(ch_mult):
            block_out = ch * mult
            last = i == len(ch_mult) - 1
            resample = nn.Identity() if last else Downsample(block_out, downsample, replicate_padding)
            self.down.append(
                _Stage(block_in, block_out, num_res_blocks, levels[i] in attn_resolutions, resample, dropout, padding)
            )
            block_in = block_out
        self.mid = _Mid(block_in, dropout, padding)
        self.norm_out = make_norm(block_in)
        self.conv_out = conv3x3(block_in, z_channels, padding)

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv_in(x)
        for stage in self.down:
            h = stage(h)
        h = self.mid(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class Decoder(nn.Module):
    """Latent map -> image, upsampling by ``2**(len(ch_mult) - 1)``; optionally MoVQ-conditioned.

    Args:
        out_channels: image channels.
        ch: base width; level i has ``ch * ch_mult[i]`` channels.
        ch_mult: width multipliers, one per level (top level first, as in the encoder).
        num_res_blocks: the decoder has ``num_res_blocks + 1`` ResnetBlocks per level.
        attn_resolutions: levels (by their resolution) that get attention.
        resolution: nominal output size, used to place attention.
        z_channels: channels of the input latent ``h``.
        dropout: dropout inside the ResnetBlocks.
        zq_channels: when given, every norm is a SpatialNorm conditioned on the
            quantized map ``zq`` (MoVQ) and ``forward(h, zq)`` requires ``zq``.
    """

    def __init__(
        self,
        out_channels: int = 3,
        ch: int = 128,
        ch_mult: Sequence[int] = (1, 2, 2),
        num_res_blocks: int = 2,
        attn_resolutions: Sequence[int] = (16,),
        resolution: int = 64,
        z_channels: int = 256,
        dropout: float = 0.0,
        zq_channels: int | None = None,
    ) -> None:
        super().__init__()
        _check_positive(out_channels=out_channels, ch=ch, num_res_blocks=num_res_blocks,
                        resolution=resolution, z_channels=z_channels)
        if zq_channels is not None:
            _check_positive(zq_channels=zq_channels)
        ch_mult = _int_tuple("ch_mult", ch_mult, allow_empty=False)
        attn_resolutions = _int_tuple("attn_resolutions", attn_resolutions, allow_empty=True)
        levels = _level_resolutions(resolution, ch_mult, attn_resolutions)

        self.out_channels = out_channels
        self.z_channels = z_channels
        self.zq_channels = zq_channels
        self.resolution = resolution
        self.upsample_factor = 2 ** (len(ch_mult) - 1)

        block_in = ch * ch_mult[-1]
        self.conv_in = conv3x3(z_channels, block_in)
        self.mid = _Mid(block_in, dropout, zq_channels=zq_channels)
        stages: list[_Stage] = []
        for i in reversed(range(len(ch_mult))):
            block_out = ch * ch_mult[i]
            resample = Upsample(block_out) if i > 0 else nn.Identity()
            stages.append(
                _Stage(block_in, block_out, num_res_blocks + 1, levels[i] in attn_resolutions, resample, dropout,
                       zq_channels=zq_channels)
            )
            block_in = block_out
        # Indexed by level (up[0] is the full-resolution level), run from the last.
        self.up = nn.ModuleList(reversed(stages))
        self.norm_out = make_norm(block_in, zq_channels)
        self.conv_out = conv3x3(block_in, out_channels)

    @property
    def conditional(self) -> bool:
        """Whether the norms are SpatialNorms that need ``zq``."""
        return self.zq_channels is not None

    @property
    def last_layer(self) -> Tensor:
        """The final conv's weight: the layer at which the adaptive GAN weight compares gradients."""
        return self.conv_out.weight

    def forward(self, h: Tensor, zq: Tensor | None = None) -> Tensor:
        if self.conditional:
            if zq is None:
                raise ValueError(
                    f"this Decoder is conditioned (zq_channels={self.zq_channels}); pass the quantized map "
                    f"zq of shape (B, {self.zq_channels}, h, w)"
                )
        else:
            zq = None
        h = self.mid(self.conv_in(h), zq)
        for stage in reversed(self.up):
            h = stage(h, zq)
        return self.conv_out(F.silu(apply_norm(self.norm_out, h, zq)))
