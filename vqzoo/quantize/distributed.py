"""Collectives used by the codebook, resolved at call time.

Lightning builds modules before the process group exists, so nothing here is
decided at construction (docs/pitfalls.md #4): every helper asks ``torch.distributed``
when it is called. Every collective is meant to be called on every rank with
the same shape (docs/pitfalls.md #3); callers guarantee that by calling these helpers
unconditionally from code paths that all ranks execute.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    """True when a process group with more than one rank is active right now."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def all_reduce_sum_(tensor: torch.Tensor) -> torch.Tensor:
    """In-place sum over ranks; a no-op in a single process."""
    if is_distributed():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_reduce_mean_(tensor: torch.Tensor) -> torch.Tensor:
    """In-place mean over ranks; a no-op in a single process."""
    if is_distributed():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        tensor /= dist.get_world_size()
    return tensor


def broadcast_(tensor: torch.Tensor, src: int = 0) -> torch.Tensor:
    """In-place broadcast from ``src``; a no-op in a single process."""
    if is_distributed():
        dist.broadcast(tensor, src=src)
    return tensor


class _AllReduceSum(torch.autograd.Function):
    """Sum over ranks whose backward is the sum over ranks of the incoming gradients.

    That is the gradient of a sum: with DDP averaging the parameter gradients
    afterwards, a loss of the global statistic gets exactly the gradient it
    would have in one process over all ranks' data.
    """

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:  # noqa: ANN001
        out = tensor.detach().clone().contiguous()
        all_reduce_sum_(out)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # noqa: ANN001
        grad = grad.clone().contiguous()
        all_reduce_sum_(grad)
        return grad


def differentiable_all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum over ranks that gradients flow through (a collective in forward and in backward).

    Every rank must call it, and run the backward through it, with the same
    shape (docs/pitfalls.md #3); a no-op (plus a copy) in a single process.
    """
    if not is_distributed():
        return tensor
    return _AllReduceSum.apply(tensor)
