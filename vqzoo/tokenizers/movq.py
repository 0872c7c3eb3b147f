"""MoVQ: a VQGAN whose decoder is modulated by the quantized map, with multichannel codes.

MoVQ (Zheng et al., NeurIPS 2022, "Modulating Quantized Vectors for
High-Fidelity Image Generation") changes two things in a VQGAN tokenizer:

1. **Spatially conditional normalization.** Every norm of the decoder is a
   :class:`~vqzoo.nn.spatial_norm.SpatialNorm` whose per-pixel scale and shift
   are predicted from the quantized map ``zq``. Two positions holding the same
   index are no longer decoded the same way once the decoder mixes
   neighbourhoods, which removes the repeated-patch artifact of plain VQGAN.
2. **Multichannel quantization.** Each latent position holds ``M`` codes from
   *one* shared codebook instead of one code, so a position can take ``K**M``
   values while the codebook (``K`` vectors) and the model stay the size they
   were ("without increasing the cost of model and codebook", abstract).

This file reads top to bottom like the other tokenizers: encoder (the shared
:class:`~vqzoo.nn.convnet.Encoder`), decoder (the shared
:class:`~vqzoo.nn.convnet.Decoder` built with ``zq_channels``), and the module
that joins them::

    x -> Encoder -> quant_conv (1x1) -> VectorQuantizer -> zq
    zq -> post_quant_conv (1x1) -> h;  Decoder(h, zq) -> x_rec

The training loop, losses, metrics and tokenize/detokenize come from
:class:`~vqzoo.tokenizers.base.Tokenizer`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import Tensor, nn

from vqzoo.nn.convnet import Decoder, Encoder
from vqzoo.quantize import Quantizer
from vqzoo.tokenizers.base import Tokenizer

__all__ = ["MoVQ"]


class MoVQ(Tokenizer):
    """MoVQ tokenizer: VQGAN encoder, multichannel quantizer, SpatialNorm decoder.

    Args:
        quantizer: a :class:`~vqzoo.quantize.VectorQuantizer` with
            ``layout="multichannel"`` (``num_channels=M``) or ``layout="spatial"``
            (the M = 1 case). Its ``feature_dim`` (``M * dim``) is the width of
            the quantized map ``zq`` and of every SpatialNorm's condition.
            ``layout="per_token"`` raises ``ValueError``: SpatialNorm needs a
            spatial map to modulate with.
        in_channels: image channels.
        resolution: nominal image size; places attention (other sizes divisible
            by ``downsample_factor`` are accepted, the model is convolutional).
        ch, ch_mult, num_res_blocks, attn_resolutions, dropout: the taming
            ``ddconfig``; the decoder has ``num_res_blocks + 1`` ResnetBlocks
            per level, as in taming and the MoVQ reproduction.
        z_channels: encoder output / decoder input width. ``None`` (default)
            uses the quantizer's ``feature_dim``, the reference's choice
            ``z_channels == embed_dim`` carried over to M channels.
        **kwargs: training options of :class:`~vqzoo.tokenizers.base.Tokenizer`
            (losses, optimizer, learning rate, ...).

    **Where the condition is taken.** ``zq`` is the quantizer's output *before*
    ``post_quant_conv``; the decoder input is ``post_quant_conv(zq)`` and every
    SpatialNorm (ResnetBlock norms, attention norms in the mid and up blocks,
    ``norm_out``) receives ``zq`` itself, resized by nearest-neighbour
    interpolation (docs/reference-implementations.md §C). ``decode`` does
    both, so :meth:`detokenize` (``decode(quantizer.lookup(indices))``) passes
    ``zq`` exactly as the training forward does. In training ``zq`` carries the
    quantizer's straight-through gradient, so the encoder also learns through
    the modulation path, as in the reproduced code (the decoder receives the
    straight-through tensor there as well).

    **Multichannel quantization: design choices** (the paper's text on it did
    not survive in our copy and no public code implements it, see
    docs/reference-implementations.md §C "Not found anywhere"; what follows is
    vqzoo's design, made from the abstract and the figure captions):

    * *Split.* ``quant_conv`` maps the encoder output to ``M * D`` channels,
      cut into M contiguous chunks of D: channel m is ``z[:, m*D:(m+1)*D]``
      (the shared quantizer's multichannel convention). Contiguous versus
      interleaved chunks is immaterial: a learned 1x1 conv precedes the split,
      so any channel permutation is absorbed by its weights.
    * *One codebook.* All M chunks search the same K codes (the abstract's
      "without increasing the cost of ... codebook"); every index is in
      ``[0, K)`` whatever its channel, and ``vocab_size`` stays K.
    * *Indices.* ``(B, H, W, M)``, channel last, so a prior can treat a
      position's M indices together (Figure 2 right: the bidirectional
      transformer predicts "the discrete representation with multiple
      channels"). :attr:`token_shape` is ``(h, w, M)``.
    * *Loss.* No per-channel term is added: the quantizer's commitment and
      codebook losses are means over all ``M * D`` elements, which equals the
      equal-weight average of the M per-channel losses (every chunk has the
      same size). β = 0.25 sits on the commitment term (docs/pitfalls.md #1).
    * *Condition.* SpatialNorm sees all M chunks concatenated, so its 1x1
      convs predict the modulation from the whole M-tuple of codes at a
      position, not from one code.
    * *Sizes.* The configs keep the reference's per-code width ``dim: 4`` and
      use M = 4, so ``zq`` has 16 channels and ``z_channels`` defaults to 16.
      M = 4 comes from Figure 4 of the paper, a "16x16x4 latent
      representation in a discrete space" for 256x256 images: four indices
      per position. The shipped 256 configs keep the reproduction's f = 8
      (``ch_mult [1,2,2,4]``, a 32x32x4 grid); ``ch_mult [1,1,2,2,4]`` with
      ``attn_resolutions [16]`` gives the paper's 16x16x4 grid.
    * *Per-code width vs. feature width.* M multiplies the feature width
      (``M * dim``) rather than splitting a fixed one: ``dim`` stays a code's
      width, as in every other vqzoo quantizer. To hold the quantized width
      fixed while adding channels (as ``benchmarks/movq_vs_vqgan.py`` does),
      divide ``dim`` by M.
    * *M = 1 equals the spatial layout.* A multichannel quantizer with
      ``num_channels=1`` and a spatial quantizer with the same weights give
      the same indices (up to the trailing axis of size 1) and the same
      reconstruction; both are accepted.

    **Loss recipes** (both are configuration of the base; nothing here is
    recipe-specific) are partial configs to layer over a MoVQ config
    (``vqzoo fit --config configs/tokenizers/movq_ffhq256.yaml --config RECIPE``):
    ``configs/recipes/movq_loss_reference.yaml``, the reproduced code's
    ``(x - x̂)² + 0.1·LPIPS`` with a 2-layer hinge PatchGAN at a fixed weight
    0.1 from the first step, and ``configs/recipes/movq_loss_vqgan.yaml``,
    taming's ``|x - x̂| + 1.0·LPIPS`` with the adaptive weight.

    The reproduced code uses taming's legacy β placement (β on the codebook
    term); vqzoo keeps β on the commitment term. ``quantizer.init_args:
    {beta: 1.0, codebook_loss_weight: 0.25}`` reproduces the legacy weights
    exactly if that is wanted.
    """

    def __init__(
        self,
        quantizer: Quantizer,
        in_channels: int = 3,
        resolution: int = 256,
        ch: int = 128,
        ch_mult: Sequence[int] = (1, 2, 2, 4),
        num_res_blocks: int = 2,
        attn_resolutions: Sequence[int] = (32,),
        z_channels: int | None = None,
        dropout: float = 0.0,
        **kwargs: Any,
    ) -> None:
        if not isinstance(quantizer, Quantizer):
            raise ValueError(f"MoVQ needs a vqzoo Quantizer, got {type(quantizer).__name__}")
        if quantizer.layout not in ("multichannel", "spatial"):
            raise ValueError(
                "MoVQ needs a quantizer with layout='multichannel' (num_channels=M codes per position) "
                f"or layout='spatial' (the M=1 case), got layout={quantizer.layout!r}: SpatialNorm "
                "modulates the decoder with a spatial map of codes, which per-token codes do not form"
            )
        super().__init__(quantizer=quantizer, in_channels=in_channels, resolution=resolution, **kwargs)
        feature_dim = quantizer.feature_dim
        if z_channels is None:
            z_channels = feature_dim
        self.z_channels = z_channels
        self.encoder = Encoder(
            in_channels=in_channels, ch=ch, ch_mult=ch_mult, num_res_blocks=num_res_blocks,
            attn_resolutions=attn_resolutions, resolution=resolution, z_channels=z_channels, dropout=dropout,
        )
        self.quant_conv = nn.Conv2d(z_channels, feature_dim, 1)
        self.post_quant_conv = nn.Conv2d(feature_dim, z_channels, 1)
        self.decoder = Decoder(
            out_channels=in_channels, ch=ch, ch_mult=ch_mult, num_res_blocks=num_res_blocks,
            attn_resolutions=attn_resolutions, resolution=resolution, z_channels=z_channels,
            dropout=dropout, zq_channels=feature_dim,
        )
        self.downsample_factor = self.encoder.downsample_factor

    @property
    def num_channels(self) -> int:
        """M, the number of codes per latent position (1 for a spatial quantizer)."""
        return self.quantizer.num_channels

    def encode(self, x: Tensor) -> Tensor:
        """Images -> pre-quantization features ``(B, M*D, h, w)``."""
        return self.quant_conv(self.encoder(x))

    def decode(self, quantized: Tensor) -> Tensor:
        """Quantized map ``zq`` ``(B, M*D, h, w)`` -> images.

        The decoder input is ``post_quant_conv(zq)``; every SpatialNorm is
        conditioned on ``zq`` itself (before ``post_quant_conv``).
        """
        expected = self.quantizer.feature_dim
        if not isinstance(quantized, Tensor) or quantized.dim() != 4 or quantized.shape[1] != expected:
            got = tuple(quantized.shape) if isinstance(quantized, Tensor) else type(quantized).__name__
            raise ValueError(
                f"MoVQ.decode expects the quantized map of shape (B, {expected}, h, w) "
                f"({self.num_channels} channels x dim {self.quantizer.dim}), got {got}"
            )
        return self.decoder(self.post_quant_conv(quantized), zq=quantized)

    @property
    def last_layer(self) -> Tensor:
        return self.decoder.last_layer
