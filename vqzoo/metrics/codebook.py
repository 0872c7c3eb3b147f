"""Codebook usage and perplexity over a whole epoch, reduced across ranks.

The histogram is accumulated over every batch of the validation set and summed
across ranks by torchmetrics before ``compute`` (docs/pitfalls.md #10: a sliding window
underestimates usage).
"""

from __future__ import annotations

import torch
from torchmetrics import Metric

from vqzoo.quantize.codebook import Codebook


class CodebookUsage(Metric):
    """Usage (fraction of codes chosen at least once), perplexity and entropy (bits).

    ``update`` takes the (G, K) counts from :meth:`VectorQuantizer.histogram`.
    Perplexity is exp(entropy) of each group's code distribution, averaged over
    groups; ``codes_used`` is the number of (group, code) pairs used.
    """

    full_state_update = False

    def __init__(self, num_codes: int, num_groups: int = 1, **kwargs) -> None:  # noqa: ANN003
        super().__init__(**kwargs)
        if num_codes < 1 or num_groups < 1:
            raise ValueError(f"CodebookUsage: num_codes and num_groups must be >= 1, got {num_codes}, {num_groups}")
        self.add_state("counts", default=torch.zeros(num_groups, num_codes, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, counts: torch.Tensor) -> None:
        if counts.shape != self.counts.shape:
            raise ValueError(f"CodebookUsage expects counts of shape {tuple(self.counts.shape)}, got {tuple(counts.shape)}")
        self.counts += counts.to(self.counts.device, torch.long)

    def compute(self) -> dict[str, torch.Tensor]:
        used = (self.counts > 0).sum()
        counts = self.counts.double()
        p = counts / counts.sum(-1, keepdim=True).clamp_min(1.0)
        entropy_bits = -(p * torch.log2(p.clamp_min(1e-30))).sum(-1).mean().float()
        return {
            "usage": used.float() / self.counts.numel(),
            "codes_used": used,
            "perplexity": Codebook.perplexity(self.counts),
            # mean over groups of the code distribution's entropy, in bits (log2 K at uniform use)
            "entropy": entropy_bits,
        }
