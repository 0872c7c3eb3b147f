"""Token priors: LightningModules that model a tokenizer's indices.

* :class:`MiniGPT` — autoregressive (minGPT) prior; unconditional, class- or
  text-conditioned (t2i / i2t), with KV-cache sampling.
* :class:`MaskGIT` — bidirectional masked-token prior with MaskGIT's
  iterative parallel decoding, including multichannel (MoVQ) tokens.
"""

from vqzoo.priors.base import Prior, PriorBatch
from vqzoo.priors.maskgit import MaskGIT
from vqzoo.priors.minigpt import MiniGPT, MiniGPTOutput
from vqzoo.priors.schedules import MASK_SCHEDULES, mask_ratio

__all__ = [
    "MASK_SCHEDULES",
    "MaskGIT",
    "MiniGPT",
    "MiniGPTOutput",
    "Prior",
    "PriorBatch",
    "mask_ratio",
]
