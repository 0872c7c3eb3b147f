"""The shared discrete bottleneck: pure torch, no Lightning."""

from vqzoo.quantize.base import Quantizer, QuantizerOutput
from vqzoo.quantize.codebook import Codebook
from vqzoo.quantize.quantizer import VectorQuantizer
from vqzoo.quantize.regularizers import OrthogonalRegularizer
from vqzoo.quantize.resets import CodebookReset, DeadCodeReset, GradientMagnitudeReset

__all__ = [
    "Codebook",
    "CodebookReset",
    "DeadCodeReset",
    "GradientMagnitudeReset",
    "OrthogonalRegularizer",
    "Quantizer",
    "QuantizerOutput",
    "VectorQuantizer",
]
