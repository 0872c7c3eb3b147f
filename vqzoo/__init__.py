"""vqzoo: discrete image tokenizers and the token priors on top of them."""

from vqzoo.quantize import (
    Codebook,
    DeadCodeReset,
    FiniteScalarQuantizer,
    GradientMagnitudeReset,
    LookupFreeQuantizer,
    OrthogonalRegularizer,
    Quantizer,
    QuantizerOutput,
    ResidualQuantizer,
    VectorQuantizer,
)

from vqzoo.checkpoint import load
from vqzoo.priors import MaskGIT, MiniGPT
from vqzoo.tokenizers import QGVAE, VQGAN, MoVQ, Tokenizer

__version__ = "0.1.0"

__all__ = [
    "Codebook",
    "DeadCodeReset",
    "GradientMagnitudeReset",
    "OrthogonalRegularizer",
    "Quantizer",
    "QuantizerOutput",
    "VectorQuantizer",
    "FiniteScalarQuantizer",
    "LookupFreeQuantizer",
    "ResidualQuantizer",
    "Tokenizer",
    "VQGAN",
    "QGVAE",
    "MoVQ",
    "MiniGPT",
    "MaskGIT",
    "load",
]
