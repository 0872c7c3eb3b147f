"""VQ-VAE, VQGAN and TE-VQGAN: one convolutional tokenizer, three recipes by config.

* VQ-VAE: ``perceptual_weight: 0`` and no ``adversarial`` (pixel + VQ loss).
* VQGAN (taming): L1 + LPIPS, PatchGAN with the adaptive weight, any of the four
  downsampling methods of the TE paper (``strided_conv``, ``conv_blurpool``,
  ``maxpool``, ``max_blurpool``).
* TE-VQGAN: VQGAN with ``OrthogonalRegularizer(weight=10)`` on the quantizer
  and ``replicate_padding: true`` (the TE code's ``use_replicationpad``).

The encoder, decoder and their blocks live in :mod:`vqzoo.nn.convnet` (MoVQ
reuses them); this file joins them: encoder -> 1x1 quant_conv -> quantizer ->
1x1 post_quant_conv -> decoder.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import Tensor, nn

from vqzoo.nn.convnet import Decoder, Encoder
from vqzoo.nn.sampling import DownsampleMethod
from vqzoo.quantize import Quantizer
from vqzoo.tokenizers.base import Tokenizer


class VQGAN(Tokenizer):
    """Taming-style convolutional VQ tokenizer.

    Args:
        quantizer: any vqzoo quantizer in the spatial or multichannel layout;
            its ``feature_dim`` is the width of the quantized map.
        in_channels: image channels.
        resolution: nominal image size (places attention; other sizes divisible
            by the downsampling factor are accepted).
        ch, ch_mult, num_res_blocks, attn_resolutions, z_channels, dropout: the
            taming ``ddconfig`` (the decoder has ``num_res_blocks + 1`` blocks
            per level, as in taming).
        downsample: the encoder's downsampling method.
        replicate_padding: replication padding in the encoder (TE-VQGAN).
        **kwargs: training options of :class:`~vqzoo.tokenizers.base.Tokenizer`.
    """

    def __init__(
        self,
        quantizer: Quantizer,
        in_channels: int = 3,
        resolution: int = 64,
        ch: int = 128,
        ch_mult: Sequence[int] = (1, 2, 2),
        num_res_blocks: int = 1,
        attn_resolutions: Sequence[int] = (16,),
        z_channels: int = 256,
        dropout: float = 0.0,
        downsample: DownsampleMethod = "strided_conv",
        replicate_padding: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(quantizer=quantizer, in_channels=in_channels, resolution=resolution, **kwargs)
        if quantizer.layout == "per_token":
            raise ValueError("VQGAN needs a spatial or multichannel quantizer layout, got 'per_token'")
        self.encoder = Encoder(
            in_channels=in_channels, ch=ch, ch_mult=ch_mult, num_res_blocks=num_res_blocks,
            attn_resolutions=attn_resolutions, resolution=resolution, z_channels=z_channels,
            dropout=dropout, downsample=downsample, replicate_padding=replicate_padding,
        )
        self.quant_conv = nn.Conv2d(z_channels, quantizer.feature_dim, 1)
        self.post_quant_conv = nn.Conv2d(quantizer.feature_dim, z_channels, 1)
        self.decoder = Decoder(
            out_channels=in_channels, ch=ch, ch_mult=ch_mult, num_res_blocks=num_res_blocks,
            attn_resolutions=attn_resolutions, resolution=resolution, z_channels=z_channels, dropout=dropout,
        )
        self.downsample_factor = self.encoder.downsample_factor

    def encode(self, x: Tensor) -> Tensor:
        return self.quant_conv(self.encoder(x))

    def decode(self, quantized: Tensor) -> Tensor:
        return self.decoder(self.post_quant_conv(quantized))

    @property
    def last_layer(self) -> Tensor:
        return self.decoder.last_layer
