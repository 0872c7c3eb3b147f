"""The shared discrete bottleneck: pure torch, no Lightning."""

from vqzoo.quantize.base import Quantizer, QuantizerOutput
from vqzoo.quantize.codebook import Codebook
from vqzoo.quantize.fsq import FiniteScalarQuantizer
from vqzoo.quantize.lfq import LookupFreeQuantizer
from vqzoo.quantize.quantizer import VectorQuantizer
from vqzoo.quantize.regularizers import OrthogonalRegularizer
from vqzoo.quantize.residual import ResidualQuantizer
from vqzoo.quantize.resets import CodebookReset, DeadCodeReset, GradientMagnitudeReset

__all__ = [
    "Codebook",
    "CodebookReset",
    "DeadCodeReset",
    "FiniteScalarQuantizer",
    "GradientMagnitudeReset",
    "LookupFreeQuantizer",
    "OrthogonalRegularizer",
    "Quantizer",
    "QuantizerOutput",
    "ResidualQuantizer",
    "VectorQuantizer",
]
