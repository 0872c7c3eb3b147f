"""Lookup-free quantization (MAGVIT-2: Yu et al. 2023, "Language Model Beats Diffusion —
Tokenizer is Key to Visual Generation").

Each of ``B = num_bits`` dimensions is quantized to its sign, ``q_i = s ·
sign(z_i)`` (``s = code_scale``, ``sign(0) = −1``), with a straight-through
gradient; the index is ``Σ_i [z_i > 0] · 2^i``. The implicit codebook is
``{−s, s}^B``: ``2^B`` codes, no lookup.

Loss (float32, autocast off; ``w = entropy_weight``, ``γ = diversity_weight``)::

    loss = commitment_weight · ‖z − sg(q)‖² + w · E_z[H(p(·|z))] − w · γ · H(E_z[p(·|z)])

with the soft assignment ``p(k|z) = softmax_k(−‖z − c_k‖² / τ)`` over all
``2^B`` codes ``c_k`` (``τ = temperature``). The first entropy makes each
position confident; the second (the codebook entropy) spreads the batch over
the codes.

Memory stays bounded at 2^18 codes and more (decisions):

* ``‖z − c‖² = Σ_i (z_i − c_i)²``, so ``p(·|z)`` is a product over bits of
  ``p_i(+) = σ(4 s z_i / τ)``. The per-sample entropy is then exactly
  ``Σ_i H_b(p_i)``: no ``2^B`` axis at all.
* The codebook entropy needs the batch mean ``P = E_z[p(·|z)]``, which is no
  longer a product. ``codebook_entropy="exact"`` splits the bits into a low
  half ``a`` and a high half ``b``: ``p(k|z) = A(k_a|z) · C(k_b|z)``, so
  ``P = AᵀC / N`` is one ``(2^⌈B/2⌉ × N) · (N × 2^⌊B/2⌋)`` product. Memory is
  ``O(N · 2^⌈B/2⌉ + 2^B)``: at 2^18 codes, 512 floats per vector and a 1 MiB
  ``P``. ``"per_bit"`` uses ``Σ_i H_b(E_z[p_i])`` instead, an upper bound on
  ``H(P)`` (the joint entropy is at most the sum of its marginals' entropies)
  that needs only ``B`` numbers; ``"auto"`` is exact up to 20 bits and per-bit
  beyond.
* Under DDP the batch sums behind ``P`` (and the vector count) are summed over
  ranks in training, through a sum whose backward is also a sum over ranks,
  so the loss is the entropy of the global batch and its gradient is the one
  one process over all ranks' data would get (after DDP's averaging). One
  collective of fixed shape per training forward, called on every rank; the
  process group is looked up at call time. Evaluation uses the local batch
  (no collective, so a single rank may tokenize on its own).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

from vqzoo.quantize.base import (
    GroupedLinear,
    Layout,
    Quantizer,
    QuantizerOutput,
    check_int,
    check_num_codes,
    straight_through,
)
from vqzoo.quantize.distributed import differentiable_all_reduce_sum

CodebookEntropy = Literal["auto", "exact", "per_bit"]

#: "auto" computes the exact codebook entropy up to this many bits
MAX_EXACT_BITS = 20


def bit_table(num_bits: int) -> torch.Tensor:
    """``(num_bits, 2^num_bits)`` float: entry ``(i, k)`` is bit ``i`` of ``k``."""
    k = torch.arange(2**num_bits)
    return ((k.unsqueeze(0) >> torch.arange(num_bits).unsqueeze(1)) & 1).float()


def binary_entropy(logits: torch.Tensor) -> torch.Tensor:
    """``H_b(σ(l))`` in nats, elementwise, stable for large ``|l|``."""
    p = torch.sigmoid(logits)
    return -(p * F.logsigmoid(logits) + (1 - p) * F.logsigmoid(-logits))


class LookupFreeQuantizer(Quantizer):
    """LFQ over every layout; one index per position from a vocabulary of ``2^num_bits``.

    Args:
        num_bits: B, bits per position (the code dimension); at most 62.
        dim: width of one vector in ``z``; ``None`` means ``num_bits``. Any
            other width gets learned per-group linear maps in (dim -> B) and out
            (B -> dim) around the sign quantizer.
        layout, num_channels, num_groups, check_inputs: see :class:`~vqzoo.quantize.Quantizer`.
            Per-token groups share the code set; each has its own usage row,
            its own projections and its own codebook entropy (averaged over groups).
        entropy_weight: w, weight of the two entropy terms (0.1 in MAGVIT-2's setup).
        diversity_weight: γ, relative weight of the codebook entropy.
        commitment_weight: weight of ‖z − sg(q)‖².
        temperature: τ of the soft assignment.
        code_scale: s, the code values ±s.
        codebook_entropy: ``"auto"``, ``"exact"`` or ``"per_bit"`` (module doc).
    """

    def __init__(
        self,
        num_bits: int,
        dim: int | None = None,
        layout: Layout = "spatial",
        num_channels: int = 1,
        num_groups: int = 1,
        check_inputs: bool = True,
        entropy_weight: float = 0.1,
        diversity_weight: float = 1.0,
        commitment_weight: float = 0.25,
        temperature: float = 0.01,
        code_scale: float = 1.0,
        codebook_entropy: CodebookEntropy = "auto",
    ) -> None:
        name = type(self).__name__
        check_int(name, "num_bits", num_bits)
        check_num_codes(name, 2**num_bits, f"num_bits={num_bits}")
        if min(entropy_weight, diversity_weight, commitment_weight) < 0:
            raise ValueError(f"{name}: entropy_weight, diversity_weight and commitment_weight must be >= 0")
        if temperature <= 0 or code_scale <= 0:
            raise ValueError(f"{name}: temperature and code_scale must be > 0, got {temperature}, {code_scale}")
        if codebook_entropy not in ("auto", "exact", "per_bit"):
            raise ValueError(f"{name}: codebook_entropy must be 'auto', 'exact' or 'per_bit', got {codebook_entropy!r}")
        if codebook_entropy == "exact" and num_bits > 30:
            raise ValueError(
                f"{name}: codebook_entropy='exact' holds 2^{num_bits} probabilities, too many beyond 30 bits; "
                "use 'per_bit'"
            )
        super().__init__(
            num_bits if dim is None else dim, layout=layout, num_channels=num_channels, num_groups=num_groups,
            check_inputs=check_inputs,
        )
        self.num_bits = num_bits
        self.entropy_weight = entropy_weight
        self.diversity_weight = diversity_weight
        self.commitment_weight = commitment_weight
        self.temperature = temperature
        self.code_scale = code_scale
        if codebook_entropy == "auto":
            codebook_entropy = "exact" if num_bits <= MAX_EXACT_BITS else "per_bit"
        self.codebook_entropy = codebook_entropy
        self.register_buffer("_powers", 2 ** torch.arange(num_bits, dtype=torch.long), persistent=False)
        low = (num_bits + 1) // 2
        self._low_bits = low
        if codebook_entropy == "exact":
            self.register_buffer("_low_table", bit_table(low), persistent=False)
            self.register_buffer("_high_table", bit_table(num_bits - low), persistent=False)
        if self.dim != num_bits:
            self.project_in: GroupedLinear | None = GroupedLinear(num_groups, self.dim, num_bits)
            self.project_out: GroupedLinear | None = GroupedLinear(num_groups, num_bits, self.dim)
        else:
            self.project_in = self.project_out = None

    @property
    def num_codes(self) -> int:
        return 2**self.num_bits

    def extra_repr(self) -> str:
        return (
            f"num_bits={self.num_bits}, dim={self.dim}, {super().extra_repr()}, "
            f"codebook_entropy={self.codebook_entropy}"
        )

    def describe_dim(self) -> str:
        if self.project_in is None:
            return f"one channel per bit: num_bits={self.num_bits}"
        return f"dim {self.dim}, projected to num_bits={self.num_bits}"

    # ------------------------------------------------------------------ entropy terms
    def bit_logits(self, h: torch.Tensor) -> torch.Tensor:
        """Logit of ``p_i(+)``: ``(‖z_i + s‖² − ‖z_i − s‖²) / τ = 4 s z_i / τ``."""
        return h * (4.0 * self.code_scale / self.temperature)

    def _half_probs(self, logits: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
        """``p(k|z)`` over the codes of a subset of bits: ``(G, N, b)`` logits -> ``(G, N, 2^b)``."""
        log_pos, log_neg = F.logsigmoid(logits), F.logsigmoid(-logits)
        return torch.exp(log_neg.sum(-1, keepdim=True) + (log_pos - log_neg) @ table)

    def entropy_terms(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean per-sample entropy, codebook entropy averaged over groups), nats, of ``h`` (G, N, B)."""
        logits = self.bit_logits(h)
        per_sample = binary_entropy(logits).sum(-1).mean()
        G, N, _ = h.shape
        if self.codebook_entropy == "exact":
            low = self._half_probs(logits[..., : self._low_bits], self._low_table)
            high = self._half_probs(logits[..., self._low_bits :], self._high_table)
            sums = torch.bmm(low.transpose(1, 2), high)  # (G, 2^low, 2^high): code k_a + 2^low · k_b
        else:
            sums = torch.sigmoid(logits).sum(1)  # (G, B)
        stats = torch.cat([sums.reshape(-1), h.new_full((1,), float(N))])
        if self.training:
            stats = differentiable_all_reduce_sum(stats)
        mean = (stats[:-1] / stats[-1]).view_as(sums)
        if self.codebook_entropy == "exact":
            codebook = -(mean * torch.log(mean.clamp_min(1e-30))).sum((1, 2))
        else:
            p = mean.clamp(1e-30, 1 - 1e-7)
            codebook = -(p * torch.log(p) + (1 - p) * torch.log1p(-p)).sum(-1)
        return per_sample, codebook.mean()

    # ------------------------------------------------------------------ quantization
    def quantize_vectors(self, x: torch.Tensor) -> QuantizerOutput:
        h = self.project_in(x) if self.project_in is not None else x
        positive = h > 0
        s = self.code_scale
        q = torch.where(positive, s, -s)
        indices = (positive.long() * self._powers).sum(-1)
        losses = {"commitment": self.commitment_weight * (h - q).pow(2).mean()}
        if self.entropy_weight > 0:
            per_sample, codebook = self.entropy_terms(h)
            losses["per_sample_entropy"] = self.entropy_weight * per_sample
            losses["codebook_entropy"] = -self.entropy_weight * self.diversity_weight * codebook
        loss = torch.stack(list(losses.values())).sum()
        grid = straight_through(h, q)
        quantized = self.project_out(grid) if self.project_out is not None else grid
        return QuantizerOutput(quantized=quantized, indices=indices, loss=loss, losses=losses)

    def lookup_vectors(self, codes: torch.Tensor) -> torch.Tensor:
        bits = (codes.unsqueeze(-1) >> torch.arange(self.num_bits, device=codes.device)) & 1
        s = self.code_scale
        grid = torch.where(bits.bool(), s, -s).float()
        return self.project_out(grid) if self.project_out is not None else grid
