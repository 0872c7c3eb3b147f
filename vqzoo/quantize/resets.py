"""Codebook resets: move codes that do not learn onto places where they will.

A reset plugs into a :class:`~vqzoo.quantize.VectorQuantizer` through three
calls, all made on every rank:

* ``observe(codebook, x, indices)`` in each training forward (grouped vectors);
* ``after_backward(codebook)`` after each backward pass that reaches the codebook;
* ``after_step(codebook)`` after each optimizer step; it counts steps in a
  buffer and applies the reset every ``every`` steps.

Resets run after the optimizer step (and after that step's EMA update), so the
new codes are never overwritten by the update of the same step (docs/pitfalls.md #5).
Random choices are made on every rank and then the whole codebook state is
broadcast from rank 0, so codebooks stay bit-identical on all ranks; every
collective is unconditional with a fixed shape (docs/pitfalls.md #3).
"""

from __future__ import annotations

import abc

import torch
from torch import nn

from vqzoo.quantize.codebook import Codebook
from vqzoo.quantize.distributed import all_reduce_sum_, world_size
from vqzoo.config import Configurable


class CodebookReset(Configurable, nn.Module, abc.ABC):
    """Shared step counting for periodic resets.

    Args:
        every: apply the reset every this many optimizer steps.
    """

    def __init__(self, every: int = 100) -> None:
        super().__init__()
        if not isinstance(every, int) or every < 1:
            raise ValueError(f"{type(self).__name__}: every must be an integer >= 1, got {every!r}")
        self.every = every
        self.register_buffer("step", torch.zeros((), dtype=torch.long))
        # Host-side mirror of ``step``: deciding whether a reset is due reads no tensor
        # (no host sync per step); the buffer carries the count in checkpoints.
        self._step_host: int | None = 0
        self.register_load_state_dict_post_hook(_forget_host_step)
        self.register_buffer("num_resets", torch.zeros((), dtype=torch.long))
        self.register_buffer("last_moved", torch.zeros((), dtype=torch.long))

    def extra_repr(self) -> str:
        return f"every={self.every}"

    def attach(self, codebook: Codebook) -> None:
        """Called once by the quantizer that owns this reset, to size state and check compatibility."""

    def observe(self, codebook: Codebook, x: torch.Tensor, indices: torch.Tensor) -> None:
        """Called in every training forward with grouped vectors (G, N, D)."""

    def after_backward(self, codebook: Codebook) -> None:
        """Called after each backward pass."""

    def _steps_done(self) -> int:
        """Optimizer steps counted so far, from the host mirror (after a load: the buffer, read once)."""
        if self._step_host is None:
            self._step_host = int(self.step)
        return self._step_host

    @torch.no_grad()
    def after_step(self, codebook: Codebook) -> int:
        """Count one optimizer step; reset when due. Returns the number of codes moved."""
        self._step_host = self._steps_done()
        self.step += 1
        self._step_host += 1
        if self._step_host % self.every != 0:
            return 0
        moved = self.apply(codebook)
        self.num_resets += 1
        self.last_moved.fill_(moved)
        return moved

    @abc.abstractmethod
    def apply(self, codebook: Codebook) -> int:
        """Move codes; return how many moved. Must call the same collectives on every rank."""


def _forget_host_step(module: CodebookReset, incompatible_keys: object) -> None:
    module._step_host = None


class DeadCodeReset(CodebookReset):
    """Every ``every`` steps, codes unused since the last reset jump onto encoder outputs.

    A code is dead when its usage since the last reset, summed over ranks, is
    at most ``threshold`` times the mean usage of its group; the default
    ``threshold=0`` means "never chosen". Scaling by the mean keeps the rule
    independent of batch size and tokens per step (docs/pitfalls.md #5, WavTokenizer #82).
    Each dead code takes a distinct encoder output of the current batch, drawn
    at random (with replacement only when the batch has fewer vectors than
    codes). With EMA updates the code's statistics are reset with it.
    """

    def __init__(self, every: int = 100, threshold: float = 0.0) -> None:
        super().__init__(every)
        if threshold < 0:
            raise ValueError(f"DeadCodeReset: threshold must be >= 0, got {threshold}")
        self.threshold = threshold
        self._candidates: torch.Tensor | None = None

    def extra_repr(self) -> str:
        return f"every={self.every}, threshold={self.threshold}"

    @torch.no_grad()
    def observe(self, codebook: Codebook, x: torch.Tensor, indices: torch.Tensor) -> None:
        # Candidates are only read by the reset the coming step applies: other steps draw
        # nothing (decided from the host-side step count, so without a sync).
        if (self._steps_done() + 1) % self.every != 0:
            return
        G, N, D = x.shape
        K = codebook.num_codes
        if G == 1 and N >= K:
            pick = torch.randperm(N, device=x.device)[:K].unsqueeze(0)
        elif N >= K:
            pick = torch.rand(G, N, device=x.device).argsort(dim=1)[:, :K]
        else:
            pick = torch.randint(0, N, (G, K), device=x.device)
        self._candidates = torch.gather(x.detach().float(), 1, pick.unsqueeze(-1).expand(G, K, D))

    @torch.no_grad()
    def apply(self, codebook: Codebook) -> int:
        usage = codebook.usage.clone()
        all_reduce_sum_(usage)
        mean = usage.double().mean(dim=1, keepdim=True)
        dead = usage.double() <= self.threshold * mean
        moved = 0
        if self._candidates is not None:
            codebook.set_codes(dead, self._candidates.to(codebook.weight.device))
            moved = int(dead.sum())
        # Unconditional: every rank calls the broadcast whether or not it moved codes.
        codebook.sync_from_rank0()
        codebook.usage.zero_()
        self._candidates = None
        return moved


class GradientMagnitudeReset(CodebookReset):
    """QG-VAE §3.3: codes whose gradient stayed exactly zero take over busy codes.

    After every backward, ``|∂L/∂e|`` averaged over the D dimensions is added
    to a per-code accumulator (a buffer, so it survives a checkpoint). Every
    ``every`` steps, within each group, the codes with zero accumulated
    gradient are paired in index order with the codes of largest accumulated
    gradient (above ``1e-6``) in descending order; each zero code becomes its
    donor plus ``U(−perturbation, perturbation)`` noise. Each donor is split at
    most once per reset, and pairing stops when either list runs out. This is
    the loop of the reference (argmin/argmax with both codes then set to
    ``1e-6``), written without a Python loop over codes. Accumulators are
    averaged over ranks first and cleared after the reset.

    Needs a codebook trained by gradient (EMA codebooks have no gradient).
    """

    def __init__(self, every: int = 1000, perturbation: float = 1e-4, donor_threshold: float = 1e-6) -> None:
        super().__init__(every)
        if perturbation < 0:
            raise ValueError(f"GradientMagnitudeReset: perturbation must be >= 0, got {perturbation}")
        self.perturbation = perturbation
        self.donor_threshold = donor_threshold
        self.register_buffer("magnitude", torch.zeros(0))

    def extra_repr(self) -> str:
        return f"every={self.every}, perturbation={self.perturbation}"

    def attach(self, codebook: Codebook) -> None:
        if codebook.update != "gradient":
            raise ValueError(
                "GradientMagnitudeReset needs a codebook trained by gradient (update='gradient'); "
                "an EMA codebook has no gradient to measure"
            )
        self.magnitude = torch.zeros(codebook.num_groups, codebook.num_codes, device=codebook.weight.device)

    @torch.no_grad()
    def after_backward(self, codebook: Codebook) -> None:
        grad = codebook.weight.grad
        if grad is not None:
            self.magnitude += grad.detach().abs().mean(dim=-1).to(self.magnitude.dtype)

    @torch.no_grad()
    def apply(self, codebook: Codebook) -> int:
        mag = self.magnitude.clone()
        all_reduce_sum_(mag)
        mag /= world_size()
        G, K = mag.shape
        is_zero = mag == 0
        is_donor = mag > self.donor_threshold
        # zero codes first, in index order; donors first, by magnitude descending
        zero_order = torch.argsort((~is_zero).to(torch.int8), dim=1, stable=True)
        donor_key = torch.where(is_donor, mag, torch.full_like(mag, -1.0))
        donor_order = torch.argsort(donor_key, dim=1, descending=True, stable=True)
        n = torch.minimum(is_zero.sum(1), is_donor.sum(1))
        valid = torch.arange(K, device=mag.device).unsqueeze(0) < n.unsqueeze(1)
        groups = torch.arange(G, device=mag.device).unsqueeze(1).expand(G, K)[valid]
        targets = zero_order[valid]
        donors = donor_order[valid]
        moved = int(targets.numel())
        if moved:
            w = codebook.weight.data
            noise = torch.empty(moved, w.shape[-1], device=w.device, dtype=w.dtype)
            noise.uniform_(-self.perturbation, self.perturbation)
            mask = torch.zeros(G, K, dtype=torch.bool, device=w.device)
            mask[groups, targets] = True
            vectors = w.clone()
            vectors[groups, targets] = w[groups, donors] + noise
            codebook.set_codes(mask, vectors)
        # Every rank calls the broadcast, moved or not: collectives stay unconditional.
        codebook.sync_from_rank0()
        self.magnitude.zero_()
        return moved
