"""Pure-torch building blocks (no Lightning): residual/attention blocks, down/up-sampling
variants, BlurPool, MoVQ's SpatialNorm and the taming-style convolutional encoder/decoder."""

from vqzoo.nn.blocks import AttnBlock, Padding, ResnetBlock, apply_norm, conv3x3, group_norm, make_norm
from vqzoo.nn.convnet import Decoder, Encoder
from vqzoo.nn.sampling import BlurPool, Downsample, DownsampleMethod, Upsample, binomial_filter
from vqzoo.nn.spatial_norm import SpatialNorm, group_count
from vqzoo.nn.transformer import KVCache, Transformer
from vqzoo.nn.unet import QGDiscriminator, QGUNet, grid_positional_encoding

__all__ = [
    "KVCache",
    "QGDiscriminator",
    "QGUNet",
    "Transformer",
    "grid_positional_encoding",
    "AttnBlock",
    "BlurPool",
    "Decoder",
    "Downsample",
    "DownsampleMethod",
    "Encoder",
    "Padding",
    "ResnetBlock",
    "SpatialNorm",
    "Upsample",
    "apply_norm",
    "binomial_filter",
    "conv3x3",
    "group_count",
    "group_norm",
    "make_norm",
]
