"""Image tokenizers (LightningModules) on the shared base."""

from vqzoo.tokenizers.base import Tokenizer
from vqzoo.tokenizers.movq import MoVQ
from vqzoo.tokenizers.qgvae import QGVAE
from vqzoo.tokenizers.vqgan import VQGAN

__all__ = ["MoVQ", "QGVAE", "Tokenizer", "VQGAN"]
