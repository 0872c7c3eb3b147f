"""The codebook: G groups of K codes of D dimensions, and the nearest-code search.

One batched core serves every layout: an ordinary codebook is G = 1, per-token
codebooks (QG-VAE) are G = number of token groups. Inputs to the search are
always grouped as ``(G, N, D)``.

Decisions where the papers are silent:

* Distances are squared L2 from one matrix product, ``‖e‖² − 2 x·e`` (the
  ``‖x‖²`` term is constant per row and does not change the argmin), computed
  in float32 with autocast off and never square-rooted (docs/pitfalls.md #6, #7).
  Cosine distance searches the largest dot product between L2-normalised
  vectors.
* The search is chunked over N so that the ``chunk × K`` score matrix stays
  under ``max_chunk_bytes`` (docs/pitfalls.md #8).
* EMA updates follow the VQ-VAE paper's appendix with Laplace smoothing::

      N_k ← d·N_k + (1−d)·n_k          m_k ← d·m_k + (1−d)·Σ_{z→k} z
      n   = Σ_k N_k                    Ñ_k = (N_k + ε) / (n + K·ε) · n
      e_k = m_k / Ñ_k

  with ``n_k`` and the sums all-reduced across ranks before use (docs/pitfalls.md #2).
  ``N_k`` starts at 1 and ``m_k`` at the initial code, so an unused code
  decays towards zero instead of exploding.
* ``usage`` counts assignments since the last reset (int64, in the
  checkpoint); resets read and clear it.
* ``parameterization="simvq"`` (SimVQ, Zhu et al. 2024, "Addressing
  Representation Collapse in Vector Quantized Models with One Linear Layer"):
  the stored codes ``C`` are frozen at their random initialisation and the
  codes used are ``C W`` with a learned ``D × D`` matrix ``W`` per group
  (bias-free, initialised like ``nn.Linear``). The codebook term's gradient
  then moves every code at once through ``W``, so no code is left behind.
  It is an option of the codebook, not a quantizer of its own, because only
  :meth:`Codebook.vectors` changes: search, lookup, layouts, losses and the
  rotation trick all stay the same code. EMA updates, resets and data init
  write the stored codes directly and are refused with it.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from vqzoo.quantize.distributed import all_reduce_sum_, broadcast_

Distance = Literal["l2", "cosine"]
Update = Literal["gradient", "ema"]
Init = Literal["uniform_inv_k", "uniform_half", "normal", "data"]
Parameterization = Literal["direct", "simvq"]


def sum_rows(index: torch.Tensor, src: torch.Tensor, num_rows: int) -> torch.Tensor:
    """``out[k] = Σ_{n: index[n] = k} src[n]`` for index (N,) and src (N, D) -> (num_rows, D), float32.

    ``index_add_`` is the fast path on GPUs and on one CPU thread (1.0 ms at N=4096,
    D=256, K=1024, against 3.6 ms sorted). With several CPU threads it serialises on
    collisions (85 ms there), so those sort the rows and sum contiguous segments
    instead, which is also deterministic.
    """
    src = src.float()
    if src.device.type != "cpu" or torch.get_num_threads() == 1:
        return torch.zeros(num_rows, src.shape[1], device=src.device).index_add_(0, index, src)
    order = torch.argsort(index, stable=True)
    lengths = torch.bincount(index, minlength=num_rows)
    return torch.segment_reduce(src.index_select(0, order), "sum", lengths=lengths, axis=0, unsafe=True)


#: On CPU a chunk's score matrix is kept near cache size: the argmin then reads what the
#: matmul just wrote (at N=16384, K=8192 about 1.6x faster than one 512 MiB chunk).
CPU_CHUNK_BYTES = 4 * 2**20
#: Block width of :func:`argmin_last` on CPU.
_ARGMIN_BLOCK = 32


def argmin_last(scores: torch.Tensor) -> torch.Tensor:
    """``scores.argmin(-1)``, the first index of the minimum, as torch gives it.

    On CPU, torch's ``argmin`` over a long last dimension is not vectorised (7 ms for
    4096 x 1024, against 1.3 ms for ``amin``); for K >= 512 in blocks of 32 it runs as
    ``amin`` per block, ``argmin`` over the block minima and ``argmin`` inside the winning
    block, about 1.5x faster and the same index (the first block holding the minimum,
    then its first position there).
    """
    K = scores.shape[-1]
    if scores.device.type != "cpu" or K < 512 or K % _ARGMIN_BLOCK:
        return scores.argmin(dim=-1)
    lead = scores.shape[:-1]
    blocks = scores.reshape(-1, K // _ARGMIN_BLOCK, _ARGMIN_BLOCK)
    best_block = blocks.amin(-1).argmin(-1)  # (R,)
    inside = blocks.gather(1, best_block.view(-1, 1, 1).expand(-1, 1, _ARGMIN_BLOCK)).squeeze(1)
    return (best_block * _ARGMIN_BLOCK + inside.argmin(-1)).view(lead)


class _Embed(torch.autograd.Function):
    """Row lookup whose backward sums gradients with :func:`sum_rows` (see there why)."""

    @staticmethod
    def forward(ctx, table: torch.Tensor, index: torch.Tensor) -> torch.Tensor:  # noqa: ANN001
        ctx.save_for_backward(index)
        ctx.num_rows = table.shape[0]
        return table.index_select(0, index)  # about 5x faster than table[index] on CPU

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # noqa: ANN001
        (index,) = ctx.saved_tensors
        return sum_rows(index, grad, ctx.num_rows).to(grad.dtype), None


class Codebook(nn.Module):
    """``num_groups`` × ``num_codes`` × ``dim`` code vectors with search and updates.

    Args:
        num_codes: K, codes per group (vocabulary size of one codebook).
        dim: D, dimension of one code.
        num_groups: G, independent codebooks searched in one batched call.
        distance: ``"l2"`` (squared Euclidean) or ``"cosine"``.
        update: ``"gradient"`` (the codebook term of the loss trains the codes)
            or ``"ema"`` (exponential moving averages of assigned vectors; the
            weight is then not a trainable parameter).
        decay: EMA decay d.
        eps: Laplace smoothing ε of the EMA cluster sizes.
        init: ``"uniform_inv_k"`` = U(−1/K, 1/K) (taming / TE-VQGAN code),
            ``"uniform_half"`` = U(−0.5, 0.5) (QG-VAE code), ``"normal"`` =
            N(0, 1), or ``"data"`` = random encoder outputs of the first
            training batch (chosen on rank 0 and broadcast).
        max_chunk_bytes: memory budget of one chunk of the search's score matrix.
        parameterization: ``"direct"`` (the codes are the parameters) or
            ``"simvq"`` (frozen random codes times a learned linear map; module doc).
    """

    def __init__(
        self,
        num_codes: int,
        dim: int,
        num_groups: int = 1,
        distance: Distance = "l2",
        update: Update = "gradient",
        decay: float = 0.99,
        eps: float = 1e-5,
        init: Init = "uniform_inv_k",
        max_chunk_bytes: int = 256 * 2**20,
        parameterization: Parameterization = "direct",
    ) -> None:
        super().__init__()
        for name, value in (("num_codes", num_codes), ("dim", dim), ("num_groups", num_groups)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"Codebook: {name} must be an integer >= 1, got {value!r}")
        if distance not in ("l2", "cosine"):
            raise ValueError(f"Codebook: distance must be 'l2' or 'cosine', got {distance!r}")
        if update not in ("gradient", "ema"):
            raise ValueError(f"Codebook: update must be 'gradient' or 'ema', got {update!r}")
        if init not in ("uniform_inv_k", "uniform_half", "normal", "data"):
            raise ValueError(
                "Codebook: init must be one of 'uniform_inv_k', 'uniform_half', 'normal', 'data', "
                f"got {init!r}"
            )
        if not 0.0 < decay < 1.0:
            raise ValueError(f"Codebook: decay must lie in (0, 1), got {decay}")
        if eps <= 0:
            raise ValueError(f"Codebook: eps must be > 0, got {eps}")
        if max_chunk_bytes < 1:
            raise ValueError(f"Codebook: max_chunk_bytes must be >= 1, got {max_chunk_bytes}")
        if parameterization not in ("direct", "simvq"):
            raise ValueError(f"Codebook: parameterization must be 'direct' or 'simvq', got {parameterization!r}")
        if parameterization == "simvq" and (update != "gradient" or init == "data"):
            raise ValueError(
                "Codebook: parameterization='simvq' keeps the stored codes frozen and learns a linear map by "
                f"gradient; it needs update='gradient' and an init other than 'data', got update={update!r}, "
                f"init={init!r}"
            )
        self.num_codes = num_codes
        self.dim = dim
        self.num_groups = num_groups
        self.distance = distance
        self.update = update
        self.decay = decay
        self.eps = eps
        self.init = init
        self.max_chunk_bytes = max_chunk_bytes
        self.parameterization = parameterization

        weight = self._initial_codes()
        trainable = update == "gradient" and parameterization == "direct"
        self.weight = nn.Parameter(weight, requires_grad=trainable)
        if parameterization == "simvq":
            bound = 1.0 / dim**0.5  # nn.Linear's default init of a D -> D map
            self.linear = nn.Parameter(torch.empty(num_groups, dim, dim).uniform_(-bound, bound))
        self.register_buffer("initialized", torch.tensor(init != "data"))
        self.register_buffer("usage", torch.zeros(num_groups, num_codes, dtype=torch.long))
        if update == "ema":
            self.register_buffer("ema_count", torch.ones(num_groups, num_codes))
            self.register_buffer("ema_sum", weight.clone())

    def _initial_codes(self) -> torch.Tensor:
        weight = torch.empty(self.num_groups, self.num_codes, self.dim)
        if self.init == "uniform_inv_k":
            weight.uniform_(-1.0 / self.num_codes, 1.0 / self.num_codes)
        elif self.init == "uniform_half":
            weight.uniform_(-0.5, 0.5)
        else:  # "normal", and a placeholder for "data" until the first batch arrives
            weight.normal_()
        return weight

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Draw fresh codes (and SimVQ map) by the init rule; EMA statistics and usage restart."""
        self.weight.data.copy_(self._initial_codes())
        if self.parameterization == "simvq":
            bound = 1.0 / self.dim**0.5
            self.linear.data.uniform_(-bound, bound)
        self.initialized.fill_(self.init != "data")
        self.usage.zero_()
        if self.update == "ema":
            self.ema_count.fill_(1.0)
            self.ema_sum.copy_(self.weight.data)

    def extra_repr(self) -> str:
        return (
            f"num_groups={self.num_groups}, num_codes={self.num_codes}, dim={self.dim}, "
            f"distance={self.distance}, update={self.update}, init={self.init}, "
            f"parameterization={self.parameterization}"
        )

    # ------------------------------------------------------------------ vectors
    def vectors(self) -> torch.Tensor:
        """The code vectors before any normalisation, float32, (G, K, D): ``weight``, or ``C W`` for SimVQ."""
        weight = self.weight.float()
        if self.parameterization == "simvq":
            return torch.bmm(weight, self.linear.float())
        return weight

    def codes(self) -> torch.Tensor:
        """The code vectors used for search and lookup, float32, (G, K, D).

        Carries the gradient to ``weight`` (or SimVQ's map) in gradient mode;
        normalised for cosine.
        """
        vectors = self.vectors()
        return F.normalize(vectors, dim=-1) if self.distance == "cosine" else vectors

    def embed(self, indices: torch.Tensor, codes: torch.Tensor | None = None) -> torch.Tensor:
        """Code vectors for grouped indices ``(G, N)`` -> ``(G, N, D)``."""
        codes = self.codes() if codes is None else codes
        G, K, D = codes.shape
        flat = (indices + torch.arange(G, device=indices.device).unsqueeze(1) * K).reshape(-1)
        table = codes.reshape(G * K, D)
        rows = _Embed.apply(table, flat) if table.requires_grad else table.index_select(0, flat)
        return rows.view(G, -1, D)

    # ------------------------------------------------------------------ search
    def _rows_per_chunk(self, device: torch.device) -> int:
        budget = min(self.max_chunk_bytes, CPU_CHUNK_BYTES) if device.type == "cpu" else self.max_chunk_bytes
        return max(1, budget // (4 * self.num_codes * self.num_groups))

    @torch.no_grad()
    def nearest(self, x: torch.Tensor, codes: torch.Tensor | None = None) -> torch.Tensor:
        """Index of the nearest code for each vector of ``x`` (G, N, D) -> (G, N) int64.

        ``x`` must already be normalised when the distance is cosine.
        """
        with torch.autocast(device_type=x.device.type, enabled=False):
            x = x.float()
            codes = (self.codes() if codes is None else codes).detach().float()
            G, N, _ = x.shape
            out = torch.empty(G, N, dtype=torch.long, device=x.device)
            step = self._rows_per_chunk(x.device)
            if self.distance == "cosine":
                for s in range(0, N, step):
                    scores = torch.bmm(x[:, s : s + step], codes.transpose(1, 2))
                    out[:, s : s + step] = scores.argmax(dim=-1)
                return out
            sq = codes.pow(2).sum(-1)  # (G, K)
            if G == 1:
                c0, sq0, x0 = codes[0].t(), sq[0], x[0]
                for s in range(0, N, step):
                    scores = torch.addmm(sq0, x0[s : s + step], c0, beta=1.0, alpha=-2.0)
                    out[0, s : s + step] = argmin_last(scores)
                return out
            ct = codes.transpose(1, 2)
            for s in range(0, N, step):
                scores = torch.baddbmm(sq.unsqueeze(1), x[:, s : s + step], ct, beta=1.0, alpha=-2.0)
                out[:, s : s + step] = argmin_last(scores)
            return out

    @torch.no_grad()
    def distances(self, x: torch.Tensor) -> torch.Tensor:
        """Full squared L2 (or cosine: 1 − cos) distances (G, N, K), for inspection and tests."""
        x = x.float()
        codes = self.codes().detach()
        if self.distance == "cosine":
            return 1.0 - torch.bmm(F.normalize(x, dim=-1), codes.transpose(1, 2))
        return (
            x.pow(2).sum(-1, keepdim=True)
            - 2.0 * torch.bmm(x, codes.transpose(1, 2))
            + codes.pow(2).sum(-1).unsqueeze(1)
        )

    # ------------------------------------------------------------------ state updates
    @torch.no_grad()
    def histogram(self, indices: torch.Tensor) -> torch.Tensor:
        """Assignment counts (G, K) int64 of grouped indices (G, N)."""
        G, K = self.num_groups, self.num_codes
        offsets = torch.arange(G, device=indices.device).unsqueeze(1) * K
        return torch.bincount((indices + offsets).reshape(-1), minlength=G * K).view(G, K)

    @torch.no_grad()
    def record_usage(self, counts: torch.Tensor) -> None:
        self.usage += counts

    @torch.no_grad()
    def ema_update(self, x: torch.Tensor, indices: torch.Tensor, counts: torch.Tensor) -> None:
        """One EMA step from grouped vectors ``x`` (G, N, D) and their indices (G, N)."""
        G, K, D = self.weight.shape
        offsets = torch.arange(G, device=indices.device).unsqueeze(1) * K
        sums = sum_rows((indices + offsets).reshape(-1), x.reshape(-1, D), G * K)
        counts = counts.float()
        # Statistics are summed over ranks every step so codebooks never diverge (docs/pitfalls.md #2).
        all_reduce_sum_(counts)
        all_reduce_sum_(sums)
        d = self.decay
        self.ema_count.mul_(d).add_(counts, alpha=1.0 - d)
        self.ema_sum.mul_(d).add_(sums.view(G, K, D), alpha=1.0 - d)
        n = self.ema_count.sum(-1, keepdim=True)
        smoothed = (self.ema_count + self.eps) / (n + K * self.eps) * n
        self.weight.data.copy_(self.ema_sum / smoothed.unsqueeze(-1))

    @torch.no_grad()
    def init_from_data(self, x: torch.Tensor) -> None:
        """Initialise codes from random vectors of ``x`` (G, N, D); rank 0 chooses, all ranks copy."""
        G, N, D = x.shape
        pick = torch.randint(0, N, (G, self.num_codes), device=x.device)
        chosen = torch.gather(x.float(), 1, pick.unsqueeze(-1).expand(G, self.num_codes, D))
        chosen = chosen.contiguous()
        broadcast_(chosen, src=0)
        self.set_codes(torch.ones(G, self.num_codes, dtype=torch.bool, device=x.device), chosen)
        self.initialized.fill_(True)

    @torch.no_grad()
    def set_codes(self, mask: torch.Tensor, vectors: torch.Tensor) -> None:
        """Replace the codes where ``mask`` (G, K) is true by ``vectors`` (G, K, D).

        EMA statistics move with the code (count 1, sum = the new code), so the
        next EMA step keeps the new code instead of overwriting it (docs/pitfalls.md #5).
        """
        m = mask.unsqueeze(-1)
        self.weight.data.copy_(torch.where(m, vectors.to(self.weight.dtype), self.weight.data))
        if self.update == "ema":
            self.ema_sum.copy_(torch.where(m, vectors.float(), self.ema_sum))
            self.ema_count.copy_(torch.where(mask, torch.ones_like(self.ema_count), self.ema_count))

    @torch.no_grad()
    def sync_from_rank0(self) -> None:
        """Broadcast every piece of codebook state from rank 0 (after a random reset)."""
        broadcast_(self.weight.data, src=0)
        if self.update == "ema":
            broadcast_(self.ema_sum, src=0)
            broadcast_(self.ema_count, src=0)

    @staticmethod
    def perplexity(counts: torch.Tensor) -> torch.Tensor:
        """exp(entropy) of each group's code distribution, averaged over groups."""
        counts = counts.double()
        p = counts / counts.sum(-1, keepdim=True).clamp_min(1.0)
        entropy = -(p * torch.log(p.clamp_min(1e-30))).sum(-1)
        return entropy.exp().mean().float()
