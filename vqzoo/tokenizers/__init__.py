"""Image tokenizers (LightningModules) on the shared base."""

from vqzoo.tokenizers.base import Tokenizer
from vqzoo.tokenizers.vqgan import VQGAN

__all__ = ["Tokenizer", "VQGAN"]
